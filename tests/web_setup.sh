#!/usr/bin/env bash
# What tests/test_web.py needs beside Python, installed once into .cache/web (ignored by git):
# Debian's Chromium (apt-get, as root or through sudo), playwright-core (pinned) to drive it,
# and the npm tarballs of the web page's runtime (the versions charrnn.generation.webexport pins), laid
# out as the npm registry is, so that the test exports through the library's own download
# code from a file:// mirror instead of the network.
set -euo pipefail
cd "$(dirname "$0")/.."
web=.cache/web
PLAYWRIGHT=playwright-core@1.65.2
apt_install() {  # the package lists may be missing or stale on a fresh machine: refreshed once if so
  "$@" apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { "$@" apt-get update -qq >/dev/null && "$@" apt-get install -y -qq chromium >/dev/null; }
}
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt_install env
  elif sudo -n true 2>/dev/null; then apt_install sudo
  else echo "web_setup.sh: Chromium is missing and cannot be installed here (apt-get install chromium)" >&2
  fi
fi
mkdir -p "$web"
if [ ! -f "$web/node_modules/playwright-core/package.json" ]; then
  npm install --silent --no-audit --no-fund --prefix "$web" "$PLAYWRIGHT" >/dev/null
fi
.venv/bin/python -c 'from charrnn.generation.webexport import RUNTIME
for name, (version, _, _) in RUNTIME.items(): print(name, version)' | while read -r name version; do
  target="$web/registry/$name/-/${name##*/}-$version.tgz"
  if [ ! -f "$target" ]; then
    mkdir -p "$(dirname "$target")"
    packed=$(cd "$(dirname "$target")" && npm pack --silent "$name@$version")
    mv "$(dirname "$target")/$packed" "$target"
  fi
done

"""A trained model as a web page: `export_web` writes a static folder that generates text in
the browser, offline, from any static server (`python -m http.server`).

The folder holds the TFLite export (charrnn.generation.exporter.write_tflite: one step, the state
carried explicitly), the page (index.html) and its small JavaScript API (generator.js, see
charrnn/generation/web/), and the runtime that runs the model: LiteRT.js (`@litertjs/core` and
`@litertjs/wasm-utils`, pinned below). Those npm packages are downloaded once into the
corpus cache (charrnn.text.download, each checked against its sha256) from the npm registry, or
from a mirror named by $CHARRNN_NPM_REGISTRY (an https:// or file:// URL laid out as the
registry is).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from importlib import resources

from charrnn import storage
from charrnn.errors import CharRNNError
from charrnn.generation.exportfiles import WEB_FILES, check_export_dir, take_place
from charrnn.text import download

REGISTRY_ENV = "CHARRNN_NPM_REGISTRY"
_REGISTRY = "https://registry.npmjs.org"
# (package, version, sha256 of its tarball): the runtime the page loads, and from each
# tarball the files it needs (their paths in the tarball -> in the folder).
RUNTIME = {
    "@litertjs/core": ("2.5.3", "a97660833e9e7e1063c95e12016718881240b14f7438728a2f62785e912d30fd", {
        "package/dist/index.js": "runtime/litert/index.js",
        # The page loads the relaxed-SIMD build where the browser has it, else the compat one.
        "package/wasm/litert_wasm_internal.js": "runtime/wasm/litert_wasm_internal.js",
        "package/wasm/litert_wasm_internal.wasm": "runtime/wasm/litert_wasm_internal.wasm",
        "package/wasm/litert_wasm_compat_internal.js": "runtime/wasm/litert_wasm_compat_internal.js",
        "package/wasm/litert_wasm_compat_internal.wasm": "runtime/wasm/litert_wasm_compat_internal.wasm",
        "package/package.json": "runtime/litert/package.json",  # its version and licence
    }),
    "@litertjs/wasm-utils": ("2.5.3", "ce2a1f8379c067be49e59752e5a7f40db6be09f6e497f0f11e59f17b515366a7", {
        "package/dist/index.js": "runtime/wasm-utils/index.js",
        "package/package.json": "runtime/wasm-utils/package.json",
    }),
}
PAGE_FILES = ("index.html", "generator.js")  # from charrnn/generation/web/


def export_web(run_dir: str, export_dir: str, which: str | None = None, overwrite: bool = False) -> str:
    """Writes run_dir's `which` checkpoint as a web page folder at `export_dir` (new or
    empty; with `overwrite`, one holding an earlier web export); returns the checkpoint used.
    The folder is written beside `export_dir` and renamed into place once complete (what a
    killed export left there is removed by the next one)."""
    from charrnn.generation.exporter import write_tflite  # TensorFlow: once the folder is known to be writable

    check_export_dir(export_dir, overwrite=WEB_FILES if overwrite else frozenset())
    if not storage.is_local(export_dir):
        raise CharRNNError(f"--format=web writes to a local directory, not {export_dir}; copy the folder to where "
                           "it is served from")
    tarballs = {name: _runtime_tarball(name) for name in RUNTIME}  # before the model: a download may fail
    export_dir = os.path.realpath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    storage.remove_dead_parts(parent)  # what a killed export left
    part = storage.part_name(export_dir)
    os.mkdir(part)
    try:
        path, model = write_tflite(run_dir, part, which)
        with open(os.path.join(part, "vocab.json"), encoding="utf-8") as f:
            chars = json.load(f)["chars"]
        shape = [sum(len(layer) for layer in model.state_spec()), 1, model.rnn_units]  # as the TFLite step takes it
        with open(os.path.join(part, "model.json"), "w", encoding="utf-8") as f:
            json.dump({"chars": chars, "state_shape": shape, "checkpoint": path}, f)
        web = resources.files("charrnn.generation") / "web"
        for name in PAGE_FILES:
            with open(os.path.join(part, name), "wb") as f:
                f.write((web / name).read_bytes())
        for name, tarball in tarballs.items():
            _extract(tarball, RUNTIME[name][2], part)
        take_place(part, export_dir)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return path


def _runtime_tarball(name: str) -> str:
    """The npm tarball of runtime package `name`, from the cache or downloaded (checked)."""
    version, sha256, _ = RUNTIME[name]
    registry = os.environ.get(REGISTRY_ENV, _REGISTRY).rstrip("/")
    url = f"{registry}/{name}/-/{name.split('/')[-1]}-{version}.tgz#sha256={sha256}"
    from charrnn.text.corpus import cache_dir

    return download.download(url, cache_dir())


def _extract(tarball: str, files: dict[str, str], into: str) -> None:
    """Copies `files` (tarball path -> folder path) out of `tarball`, nothing else."""
    with tarfile.open(tarball, "r:gz") as archive:
        for member, target in files.items():
            try:
                source = archive.extractfile(member)
            except KeyError:
                source = None
            if source is None:
                raise CharRNNError(f"{tarball} lacks {member}: it is not the runtime's package; remove it so that it "
                                   "is downloaded again")
            destination = os.path.join(into, target)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with source, open(destination, "wb") as f:
                shutil.copyfileobj(source, f)

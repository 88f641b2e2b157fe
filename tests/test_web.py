"""The web page export in a real browser: the folder `charrnn-export --format=web` writes,
served on localhost and driven in headless Chromium (one browser start for the file) as a
reader would use it: type a prime, press Generate, read the text.

Needs what tests/web_setup.sh installs (run.sh test runs it); where that is missing the
test skips, except under CHARRNN_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

from charrnn import CharRNNError, Sampler
from charrnn.generation.webexport import REGISTRY_ENV, RUNTIME, export_web
from conftest import REPO

WEB = REPO / ".cache" / "web"
PLAYWRIGHT = WEB / "node_modules" / "playwright-core"
PRIME, NUM_CHARS = "The ", 40


def _missing() -> str | None:
    if shutil.which("chromium") is None:
        return "chromium is not installed (tests/web_setup.sh installs it)"
    if shutil.which("node") is None or not PLAYWRIGHT.exists():
        return "node or playwright-core is missing (tests/web_setup.sh installs it)"
    if not (WEB / "registry").exists():
        return "the runtime's npm tarballs are missing (tests/web_setup.sh fetches them)"
    return None


@pytest.fixture(scope="module")
def browsed(trained_run, tmp_path_factory):
    """The export of trained_run, served, and what the browser did with it (one browser)."""
    if (missing := _missing()) is not None:
        if os.environ.get("CHARRNN_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test must run here: {missing}")
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("web") / "page"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(REGISTRY_ENV, (WEB / "registry").as_uri())
        env.setenv("CHARRNN_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        export_web(str(trained_run), str(folder))
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run(["node", str(REPO / "tests" / "web_drive.mjs"), str(PLAYWRIGHT.parent),
                               shutil.which("chromium"), f"http://127.0.0.1:{server.server_address[1]}/", PRIME,
                               str(NUM_CHARS)], capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, json.loads(proc.stdout)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_greedy_text_in_the_browser_is_charrnn_samples(trained_run, browsed):
    _, seen = browsed
    expected = Sampler.from_checkpoint(str(trained_run)).generate(PRIME, NUM_CHARS, greedy=True)
    assert seen["greedy"] == expected and seen["errors"] == []
    assert seen["transcript"][0]["typed"]["prime"] == PRIME  # typed into the page, read back from it


def test_each_step_s_logits_agree_with_the_sampler_s(trained_run, browsed):
    _, seen = browsed
    sampler = Sampler.from_checkpoint(str(trained_run))
    logits, _ = sampler.model(np.array([sampler.vocab.encode(PRIME)]))
    np.testing.assert_allclose(np.array(seen["logits"]), logits.numpy()[0], atol=1e-4)


def test_a_seed_gives_the_same_text_after_a_reload(browsed):
    _, seen = browsed
    first, again = seen["seeded"]
    assert first == again and first.startswith(PRIME) and len(first) == len(PRIME) + NUM_CHARS


def test_an_unknown_character_is_named_on_the_page(browsed):
    _, seen = browsed
    assert seen["unknown"] == "1 character(s) not in the model's vocabulary: \"\u00a7\""


def test_the_page_asks_nothing_of_any_other_host(browsed):
    folder, seen = browsed
    assert seen["outside"] == []
    assert seen["charsPerSec"] > 0 and seen["long"].startswith(PRIME)
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    runtime = {target for _, _, files in RUNTIME.values() for target in files.values()}
    assert names == {"index.html", "generator.js", "model.tflite", "vocab.json", "model.json", *runtime}


def test_a_web_export_refuses_what_it_cannot_write_and_replaces_only_an_export(trained_run, browsed, tmp_path):
    folder, _ = browsed
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CharRNNError, match="is not empty"):
        export_web(str(trained_run), str(tmp_path))
    with pytest.raises(CharRNNError, match=r"holds files that are not an export \(notes.txt\)"):
        export_web(str(trained_run), str(tmp_path), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(CharRNNError, match="is not empty; pass a new --export_dir, or --overwrite"):
        export_web(str(trained_run), str(folder))


def test_the_checkpoint_which_names_is_the_one_exported(trained_run, browsed, tmp_path):
    """--which reaches the page's model: model.json names the checkpoint the TFLite file holds."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(REGISTRY_ENV, (WEB / "registry").as_uri())
        env.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
        for which, kind in (("latest", "ckpt"), ("best", "best")):
            path = export_web(str(trained_run), str(tmp_path / which), which=which)
            assert f"/{kind}/ckpt-" in path and json.loads((tmp_path / which / "model.json").read_text())[
                "checkpoint"] == path

"""What the tools refuse before TensorFlow loads (charrnn.run.preflight): each case runs a tool in
a process where importing TensorFlow fails, so a refusal that waited for it would show."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn import __version__
from conftest import assert_one_line_error, copy_run, run_cli, snapshot

# Runs tool argv[1] with argv[2:], TensorFlow blocked.
_WITHOUT_TENSORFLOW = r"""
import runpy, sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow.") or name == "keras":
            raise ImportError(f"{name} is blocked: this refusal should not need it")

sys.meta_path.insert(0, _Block())
tool = sys.argv[1]
sys.argv = [f"charrnn-{tool}", *sys.argv[2:]]
runpy.run_module(f"charrnn.cli.{tool}", run_name="__main__")
"""


def _without_tensorflow(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, tool, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return copy_run(trained_run, tmp_path / "run")


def test_training_refusals(run_copy, tmp_path):
    before = snapshot(run_copy)
    cases = [
        (["--learning_rate=inf"], "--learning_rate must be"),
        ([f"--run_dir={run_copy}", "--rnn_units=32", "--data=anything.txt"], "rnn_units=16 in the run, 32 requested"),
        ([f"--data={tmp_path / 'missing.txt'}", f"--run_dir={tmp_path / 'new'}"], "missing.txt' is neither"),
        ([f"--init_from={tmp_path / 'nothing'}", f"--run_dir={tmp_path / 'new'}"],
         "--init_from: run directory"),
        (["--strategy=multi_worker", f"--run_dir={tmp_path / 'new'}"], "needs the TF_CONFIG environment variable"),
    ]
    env_without_tf_config = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, "train", *args], capture_output=True,
                              text=True, timeout=120, env=env_without_tf_config)
        assert_one_line_error(proc, message)
    assert snapshot(run_copy) == before and not (tmp_path / "new").exists()


def test_a_locked_run_is_refused_naming_its_holder(run_copy):
    lock = run_copy / "train.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(json.dumps({"host": "elsewhere", "pid": 4242, "started": "2026-11-29T10:00:00+00:00"}))
        held.flush()
        config = json.loads((run_copy / "config.json").read_text())
        proc = _without_tensorflow("train", f"--run_dir={run_copy}", f"--data={config['data']}",
                                   *(f"--{k}={v}" for k, v in config.items() if k in ("embedding_dim", "rnn_units",
                                                                                       "batch_size", "seq_length")))
    assert_one_line_error(proc, "is in use by another trainer (pid 4242 on host elsewhere")
    assert lock.exists()  # the check took nothing and removed nothing


def test_sampling_evaluation_and_export_refusals(run_copy, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    cases = [
        ("sample", [f"--run_dir={tmp_path / 'nothing'}"], "does not exist; pass the --run_dir of a training run"),
        ("sample", [f"--run_dir={tmp_path}"], "holds no checkpoint"),
        ("sample", [f"--run_dir={run_copy}", "--temperature=0"], "temperature must be between"),
        ("sample", [f"--run_dir={run_copy}", "--num_chars=-1"], "num_chars must be between"),
        ("sample", [f"--run_dir={run_copy}", "--top_p=2"], "top_p must be in (0, 1]"),
        ("sample", [f"--run_dir={run_copy}", "--prime=~"], "not in the model's vocabulary: '~'"),
        ("sample", [f"--run_dir={run_copy}", "--stream", "--num_samples=2"], "one sample at a time"),
        ("sample", ["--length=300"], "unknown flag --length; charrnn's is --num_chars"),  # char-rnn's name
        ("train", ["--rnn_size=512"], "unknown flag --rnn_size; charrnn's is --rnn_units"),
        ("train", ["--max_new_tokens=5"], "Unknown command line flag 'max_new_tokens'"),  # a sampling flag: no hint
        ("sample", [f"--run_dir={run_copy}", "--which=newest"],
         "--which=newest: must be best, latest, list, a step number"),
        ("sample", [f"--run_dir={run_copy}", f"--prime_file={tmp_path / 'no.txt'}"], "no.txt does not exist"),
        ("sample", [f"--run_dir={run_copy}", f"--prime_file={tmp_path}"], "is not a regular file; pass a text file"),
        ("sample", [f"--run_dir={run_copy}", f"--prime_file={tmp_path / 'full' / 'file'}", "--prime=a"],
         "--prime and --prime_file both give a prime"),
        ("eval", [f"--run_dir={run_copy}", "--batch_size=0"], "--batch_size must be between 1 and 2147483647, got 0"),
        ("eval", [f"--run_dir={run_copy}", f"--data={tmp_path / 'missing.txt'}"], "missing.txt' is neither"),
        ("export", [f"--run_dir={run_copy}"], "--export_dir is missing"),
        ("export", [f"--run_dir={run_copy}", f"--export_dir={tmp_path / 'e'}", "--quantize=dynamic"],
         "--quantize applies to --format=tflite"),
        ("export", [f"--run_dir={run_copy}", f"--export_dir={tmp_path / 'full'}"], "is not empty"),
        ("export", [f"--run_dir={tmp_path / 'nothing'}", f"--export_dir={tmp_path / 'e'}"], "does not exist"),
    ]
    for tool, args, message in cases:
        assert_one_line_error(_without_tensorflow(tool, *args), message)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("tool", ["train", "sample", "eval", "export"])
def test_version(tool):
    proc = _without_tensorflow(tool, "--version")
    assert proc.returncode == 0 and proc.stdout == f"charrnn-{tool} (charrnn) {__version__}\n", proc.stderr


FORGED = "\ncharrnn-train: training finished OK\x1b[2K"


@pytest.mark.parametrize("tool, args, what, tensorflow", [
    ("train", ["--data={bad}", "--run_dir={tmp}/new"], "not valid UTF-8", True),  # found as the text is read
    ("train", ["--data={tmp}/missing" + FORGED + ".txt", "--run_dir={tmp}/new"], "matches no file", True),
    ("train", ["--data={good}", "--run_dir={tmp}/run" + FORGED], "is a file, not a directory", False),
    ("sample", ["--run_dir={run}", "--prime_file={tmp}/gone" + FORGED], "--prime_file", False),
])
def test_a_name_with_control_characters_is_shown_escaped_in_the_one_error_line(run_copy, tmp_path, tool, args,
                                                                              what, tensorflow):
    """A file name holding a newline and an escape sequence: the error stays one line, with
    the name's controls escaped (no forged second line, no cursor moved)."""
    bad = tmp_path / ("text" + FORGED)
    bad.write_bytes(b"ok \xff not utf-8")
    good = tmp_path / "good.txt"
    good.write_text("plain text\n" * 500)
    (tmp_path / ("run" + FORGED)).write_text("a file where the run directory would go")
    args = [a.format(bad=bad, good=good, tmp=tmp_path, run=run_copy) for a in args]
    proc = run_cli(tool, *args, "--device=/CPU:0") if tensorflow else _without_tensorflow(tool, *args)
    assert_one_line_error(proc, what)
    (line,) = proc.stderr.strip().splitlines()
    assert "\\ncharrnn-train: training finished OK\\x1b[2K" in line and "\x1b" not in proc.stderr

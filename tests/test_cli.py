"""The command-line tools, run as users run them: in subprocesses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ["--embedding_dim=8", "--rnn_units=16", "--batch_size=4", "--seq_length=20", "--device=/CPU:0"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory trained for 3 steps through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    text = base / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    run = base / "run"
    proc = run_cli("train", f"--data={text}", f"--run_dir={run}", "--max_steps=3", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "Total" in proc.stdout and "logits (Dense)" in proc.stdout  # the model summary
    return run


def test_train_then_sample_end_to_end(trained_run):
    assert json.loads((trained_run / "config.json").read_text())["max_steps"] == 3
    assert (trained_run / "vocab.json").exists() and (trained_run / "ckpt" / "checkpoint").exists()
    args = (f"--run_dir={trained_run}", "--prime=The ", "--num_chars=60", "--seed=4", "--device=/CPU:0")
    first, second = run_cli("sample", *args), run_cli("sample", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The ") and len(first.stdout.rstrip("\n")) >= 64


def test_sample_prints_numbered_parallel_samples(trained_run):
    proc = run_cli("sample", f"--run_dir={trained_run}", "--num_samples=3", "--num_chars=10", "--seed=1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- sample ") == 3


def test_console_scripts_are_installed():
    scripts = Path(sys.executable).parent
    for tool in ("charrnn-train", "charrnn-sample"):
        assert (scripts / tool).exists(), f"{tool} not installed next to {sys.executable}"


def test_preset_values_yield_to_explicit_flags_and_flagfile_works(tmp_path, small_text):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--data={small_text}\n--run_dir={tmp_path / 'run'}\n--rnn_units=16\n")
    proc = run_cli("train", "--preset=seed", f"--flagfile={flagfile}", "--max_steps=1", "--device=/CPU:0")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(small_text) and config["rnn_units"] == 16  # explicit
    assert config["epochs"] == 20 and config["embedding_dim"] == 256 and config["seq_length"] == 100  # preset


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    files = {"empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt", "binary": tmp_path / "bin.dat",
             "short": tmp_path / "short.txt"}
    files["empty"].write_bytes(b"")
    files["latin1"].write_bytes("caf\u00e9 ol\u00e9".encode("latin-1"))
    files["binary"].write_bytes(bytes(range(256)))
    files["short"].write_text("abc" * 100)
    return files


TRAIN_ERRORS = [
    (["--data={missing}"], "neither an existing file nor a registered corpus"),
    (["--data={dir}"], "is a directory"),
    (["--data={empty}"], "is empty"),
    (["--data={latin1}"], "not valid UTF-8 (bad byte 0xe9 at offset 3)"),
    (["--data={binary}"], "looks binary"),
    (["--data={short}"], "corpus too short"),
    (["--data={short}", "--batch_size=0"], "--batch_size must be at least 1"),
    (["--data={short}", "--learning_rate=-1"], "--learning_rate must be positive"),
    (["--data={short}", "--val_fraction=1"], "--val_fraction must be in [0, 1)"),
    (["--data={short}", "--device=/GPU:7"], "is not a device of this machine"),
    (["--data={short}", "stray"], "unexpected arguments"),
]


@pytest.mark.parametrize("args, message", TRAIN_ERRORS, ids=[m for _, m in TRAIN_ERRORS])
def test_train_bad_input_gives_one_line_error(tmp_path, bad_files, args, message):
    names = {k: str(v) for k, v in bad_files.items()} | {"missing": str(tmp_path / "nope.txt"), "dir": str(tmp_path)}
    args = [a.format(**names) for a in args]
    proc = run_cli("train", *args, f"--run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn: error: ") and message in last, proc.stderr


def test_incompatible_resume_leaves_run_directory_byte_identical(trained_run):
    before = _snapshot(trained_run)
    proc = run_cli("train", f"--data={trained_run.parent / 'text.txt'}", f"--run_dir={trained_run}",
                   "--max_steps=6", *TINY[:1], "--rnn_units=32", *TINY[2:])
    assert proc.returncode == 2
    assert "rnn_units=16 in the run, 32 requested" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(trained_run) == before


SAMPLE_ERRORS = [
    (["--run_dir={tmp}/nope"], "does not exist"),
    (["--run_dir={tmp}"], "holds no checkpoint"),
    (["--run_dir={run}", "--prime=Qo#"], "2 character(s) not in the model's vocabulary: '#', 'Q'"),
    (["--run_dir={run}", "--temperature=0"], "temperature must be > 0"),
    (["--run_dir={run}", "--num_chars=-5"], "num_chars must be between 0 and 1,000,000"),
    (["--run_dir={run}", "--num_chars=99999999"], "num_chars must be between 0 and 1,000,000"),
]


@pytest.mark.parametrize("args, message", SAMPLE_ERRORS, ids=[m for _, m in SAMPLE_ERRORS])
def test_sample_bad_input_gives_one_line_error(tmp_path, trained_run, args, message):
    before = _snapshot(trained_run)
    proc = run_cli("sample", *[a.format(tmp=tmp_path, run=trained_run) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn: error: ") and message in last, proc.stderr
    assert _snapshot(trained_run) == before


def test_unwritable_run_directory(tmp_path, small_text):
    if os.geteuid() == 0:
        target = "/proc/charrnn-run"  # root may write anywhere else
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "run")
    proc = run_cli("train", f"--data={small_text}", f"--run_dir={target}", "--max_steps=1", *TINY)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write to run directory" in proc.stderr and "Traceback" not in proc.stderr

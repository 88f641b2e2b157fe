"""Shared fixtures: small corpora, a pre-seeded corpus cache, tiny model configs, CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _id_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Corpora and their id files go to a temporary cache, never to the user's home."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data_cache"))


@pytest.fixture
def corpus_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory seeded with tiny-shakespeare, so name resolution needs no network."""
    if not SHARED_CORPUS.exists():
        pytest.skip(f"{SHARED_CORPUS} is not present")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(SHARED_CORPUS, cache / "tinyshakespeare.txt")
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(cache))
    return cache


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """About 12 KB of real text: enough for a few batches of a tiny model."""
    if SHARED_CORPUS.exists():
        text = SHARED_CORPUS.read_text(encoding="utf-8")[:12_000]
    else:
        text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 200
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_config(data: Path | str, run_dir: Path | str, **overrides) -> TrainConfig:
    """A model small enough that a step takes milliseconds on a laptop CPU."""
    # float32: the same numbers on every machine (auto would pick bfloat16 where the CPU has it).
    values = dict(data=str(data), run_dir=str(run_dir), embedding_dim=8, rnn_units=32, batch_size=4, seq_length=20,
                  epochs=1, checkpoint_every=1000, log_every=1000, val_fraction=0.1, device="/CPU:0",
                  mixed_precision="float32")
    values.update(overrides)
    return TrainConfig(**values)


def run_cli(tool: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m charrnn.<tool> args...` and returns the finished process (text output)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", f"charrnn.{tool}", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


TINY_FLAGS = ["--embedding_dim=8", "--rnn_units=16", "--batch_size=4", "--seq_length=20",
              "--mixed_precision=float32", "--device=/CPU:0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory trained for 3 steps through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    text = base / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    run = base / "run"
    proc = run_cli("train", f"--data={text}", f"--run_dir={run}", "--max_steps=3", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "Total" in proc.stdout and "logits (Dense)" in proc.stdout  # the model summary
    return run


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` with its bytes: equal snapshots mean nothing was changed."""
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def half_written(run: Path) -> list[str]:
    """What an interrupted write leaves in a run directory: checkpoint `_temp` dirs, temporary files."""
    return [str(p) for p in run.rglob("*") if p.name.endswith("_temp") or ".tmp" in p.name]


def leftovers(run: Path) -> list[str]:
    """What a run directory should not hold once no trainer runs: half-written files and a lock."""
    return half_written(run) + [str(p) for p in run.glob("train.lock")]

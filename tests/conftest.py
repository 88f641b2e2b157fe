"""Shared fixtures and helpers: small corpora, a pre-seeded corpus cache, tiny model configs,
one trained run for the whole session, callbacks that record or stop a run, readers of
metrics and TensorBoard logs, and the NumPy oracles of sampling."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import Callback, TrainConfig
from charrnn.log import install_console

# The library's warnings and progress lines on stderr, as the tools show them: the tests
# that call the library in-process read them there (capsys), as a user reads a tool's.
install_console()

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


# The oracles of the core run first, so that a broken refactor fails within minutes; the
# tests that start processes (tools, clusters, kills, benchmarks) run last, the files with
# the longest tests (the docs in sequence, about a minute; the kill-anywhere chaos test)
# first among them, so that the suite does not end on one of them while a worker idles.
_FIRST = ("test_sampler.py", "test_evaluator.py", "test_metrics.py", "test_trainer.py")
_LAST = ("test_docs.py", "test_faults.py", "test_distribute.py", "test_benchmarks.py", "test_cli.py", "test_package.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: (0, 0) if item.path.name in _FIRST else (2, _LAST.index(item.path.name))
               if item.path.name in _LAST else (1, 0))


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


def shakespeare(num_chars: int) -> str:
    """The first `num_chars` characters of real text (a repeated line where the corpus is absent)."""
    if SHARED_CORPUS.exists():
        return SHARED_CORPUS.read_text(encoding="utf-8")[:num_chars]
    line = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    return (line * (num_chars // len(line) + 1))[:num_chars]


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """About 12 KB of real text: enough for a few batches of a tiny model."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare(12_000), encoding="utf-8")
    return path


def tiny_config(data: Path | str, run_dir: Path | str, **overrides) -> TrainConfig:
    """A model small enough that a step takes milliseconds on a laptop CPU."""
    # float32: the same numbers on every machine (auto would pick bfloat16 where the CPU has it).
    # fused: the LSTM that real models train with on a CPU (auto picks Keras' for tiny ones).
    values = dict(data=str(data), run_dir=str(run_dir), embedding_dim=8, rnn_units=32, batch_size=4, seq_length=20,
                  epochs=1, checkpoint_every=1000, log_every=1000, val_fraction=0.1, device="/CPU:0",
                  mixed_precision="float32", lstm_impl="fused")
    values.update(overrides)
    return TrainConfig(**values)


def run_cli(tool: str, *args: str, env: dict | None = None, cwd: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess's name
    """Runs `python -m charrnn.cli.<tool> args...` and returns the finished process (text output)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", f"charrnn.cli.{tool}", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300, input=input)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, no traceback, and the last line of stderr is charrnn's error naming `message`."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn") and ": error: " in last and message in last, proc.stderr


def tensorflow_lines(stderr: str) -> list[str]:
    """The lines of TensorFlow's own C++ logging in `stderr`."""
    return [line for line in stderr.splitlines() if re.match(r"[IWE]\d{4} |WARNING: All log messages", line)]


TINY_FLAGS = ["--embedding_dim=8", "--rnn_units=16", "--batch_size=4", "--seq_length=20",
              "--mixed_precision=float32", "--device=/CPU:0", "--lstm_impl=fused"]
TRAINED_TEXT = "The quick brown fox jumps over the lazy dog.\n" * 40


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained for 3 steps (the model of TINY_FLAGS), shared by the whole
    session: read it, never change it (copy it with `copy_run` first)."""
    from charrnn import Trainer

    base = tmp_path_factory.mktemp("trained")
    text = base / "text.txt"
    text.write_text(TRAINED_TEXT)
    run = base / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARRNN_DATA_DIR", str(base / "cache"))
        Trainer(tiny_config(text, run, rnn_units=16, max_steps=3, checkpoint_every=250, log_every=50)).fit(verbose=0)
    return run


def sigint_as_usual() -> None:
    """preexec_fn for a process that a test interrupts with SIGINT: the default disposition,
    which Python turns into KeyboardInterrupt (a pytest-xdist worker ignores SIGINT, and a
    child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def copy_run(run: Path, destination: Path) -> Path:
    """A copy of run directory `run` at `destination`, to change freely."""
    shutil.copytree(run, destination)
    return destination


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` with its bytes: equal snapshots mean nothing was changed."""
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def half_written(run: Path) -> list[str]:
    """What an interrupted write leaves in a run directory: checkpoint `_temp` dirs, temporary files."""
    return [str(p) for p in run.rglob("*") if p.name.endswith("_temp") or ".tmp" in p.name]


def leftovers(run: Path) -> list[str]:
    """What a run directory should not hold once no trainer runs: half-written files and a lock."""
    return half_written(run) + [str(p) for p in run.glob("train.lock")]


# -- callbacks ------------------------------------------------------------------------------

class Recorder(Callback):
    """Every call with its step and logs, and each step's loss as the trainer reported it."""

    def __init__(self):
        self.events: list[tuple] = []
        self.step_losses: dict[int, float] = {}

    def on_train_begin(self, trainer):
        self.trainer = trainer
        self.events.append(("begin",))

    def on_chunk_end(self, step, logs):
        self.events.append(("chunk", step, dict(logs)))
        losses = self.trainer.last_losses
        self.step_losses.update({step - len(losses) + 1 + i: float(x) for i, x in enumerate(losses)})

    def on_evaluate(self, step, logs):
        self.events.append(("evaluate", step, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch", epoch, dict(logs)))

    def on_train_end(self, logs):
        self.events.append(("end", dict(logs)))

    def of(self, kind: str) -> list[tuple]:
        return [event for event in self.events if event[0] == kind]


class StopAt(Callback):
    """Asks the run to stop once a chunk ends at `step` (as a user's callback would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_begin(self, trainer):
        self.trainer = trainer

    def on_chunk_end(self, step, logs):
        if step == self.step:
            self.trainer.stop_training = True


class Crash(Exception):
    """What `CrashAt` raises: a process dying mid-run, as far as the files can tell."""


class CrashAt(Callback):
    """Raises `Crash` once a chunk ends at `step`, after the run's own observers saw it."""

    def __init__(self, step: int):
        self.step = step

    def on_chunk_end(self, step, logs):
        if step == self.step:
            raise Crash(f"crash at step {step}")


# -- readers ----------------------------------------------------------------------------------

def logged(run: Path | str, key: str) -> dict[int, float]:
    """{step: value} of the metrics.jsonl lines of `run` that hold `key` (the last one per step)."""
    from charrnn.training.metrics import read_metrics

    return {m["step"]: m[key] for m in read_metrics(str(run)) if m.get(key) is not None}


def read_scalars(log_dir: Path | str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files of `log_dir`,
    read with TensorFlow's record reader and event protos (no tensorboard package)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    series: dict[str, dict[int, float]] = {}
    for path in sorted(tf.io.gfile.glob(f"{log_dir}/events.*")):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField("simple_value"):
                    number = value.simple_value if value.HasField("simple_value") else tf.make_ndarray(value.tensor)
                    series.setdefault(value.tag, {})[event.step] = float(number)
    return series


# -- oracles of sampling -----------------------------------------------------------------------

def sampling_probs(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   greedy: bool = False) -> np.ndarray:
    """The distribution a character is drawn from, as the sampling options define it, in
    NumPy: softmax(logits / temperature) restricted to the top_k most likely characters and
    to the smallest set of most likely ones whose probability reaches top_p, renormalised;
    greedy puts everything on the most likely one."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    if greedy:
        order = order[:1]
    keep, total = [], 0.0
    for i in order[:top_k or len(p)]:
        keep.append(i)
        total += p[i]
        if total >= top_p:
            break
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


def draws_deviation(ids: np.ndarray, probs: np.ndarray) -> float:
    """How far the draws `ids` are from the distribution `probs`, in standard deviations: the
    largest |count - n p| / sqrt(n p (1 - p)) over the characters, and inf if a character of
    probability 0 was drawn.

    Why 5 is the bound: each count is binomial, so a correct sampler puts a given count more
    than 5 standard deviations out with probability below 6e-7 (normal approximation, which
    holds for the n p >= 30 of the tests), under 1e-5 for a vocabulary of 16; the tests'
    seeds are fixed, so a pass or a failure is the same on every run. The tests also check
    that the nearest wrong distribution (temperature ignored, a filter left out or off by
    one character) is more than 5 out, so that the bound has teeth."""
    n = len(ids)
    counts = np.bincount(ids, minlength=len(probs))[:len(probs)]
    if len(np.bincount(ids)) > len(probs) or counts[probs == 0].any():
        return math.inf
    varying = (probs > 0) & (probs < 1)
    if not varying.any():
        return 0.0
    sd = np.sqrt(n * probs[varying] * (1 - probs[varying]))
    return float(np.max(np.abs(counts[varying] - n * probs[varying]) / sd))


# Logits of "abcdefgh" for the sampling oracles: unsorted, no two alike, and every top_p the
# tests use at least 0.04 away from a cumulative probability (no rounding decides which
# characters stay).
CONSTANT_CHARS = "abcdefgh"
CONSTANT_LOGITS = [1.9, -0.1, 1.1, -2.4, 0.8, -0.7, 0.2, -1.3]


def constant_logits_model(logits, vocab):
    """A CharRNN whose logits are `logits` at every step whatever the input (output kernel 0,
    bias the logits): each character it samples is an independent draw from one distribution."""
    import tensorflow as tf

    from charrnn import CharRNN

    model = CharRNN(len(vocab), embedding_dim=4, rnn_units=8, seed=0)
    model.build_for_vocab()
    model.dense.kernel.assign(tf.zeros_like(model.dense.kernel))
    model.dense.bias.assign(tf.constant(logits, tf.float32))
    return model


def write_model_run(run_dir: Path, model, vocab) -> Path:
    """A run directory holding `model` (4-dim embedding, 8 LSTM units) as its only checkpoint,
    written with TensorFlow's own checkpoint writer, for the tools that read a run."""
    import tensorflow as tf

    run_dir.mkdir(parents=True)
    config = TrainConfig(data="unused", run_dir=str(run_dir), embedding_dim=4, rnn_units=8,
                         mixed_precision="float32", device="/CPU:0")
    (run_dir / "config.json").write_text(config.to_json())
    (run_dir / "vocab.json").write_text(vocab.to_json())
    tf.train.Checkpoint(model=model).save(str(run_dir / "ckpt" / "ckpt"))  # ckpt/ckpt-1
    return run_dir

"""What can be refused before TensorFlow loads, so that a tool refuses bad input in a blink
(charrnn.cli.tool runs a tool's check first): the run directory a training run would take
(not a file, not held by a live trainer, holding a run these settings may continue), the
run a tool would read, --init_from, the local files of --data, TF_CONFIG, an export's
target.

The library (charrnn.resume, charrnn.trained, charrnn.exporter) runs these functions again: what
they check may change in between, and code that calls the API has no such step. No
TensorFlow here; paths on other filesystems (gs://, ...) are left to the later checks.
"""

from __future__ import annotations

import os

from charrnn import storage
from charrnn.config import TrainConfig
from charrnn.corpus import resolve_sources
from charrnn.errors import CharRNNError
from charrnn.rundir import RunDir, RunFiles
from charrnn.validate import check_tf_config, check_utf8
from charrnn.vocab import Vocabulary


def check_train(config: TrainConfig) -> None:
    """Refuses a training run that cannot start: see the module docstring."""
    if config.strategy == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
    rundir = RunDir(config.run_dir)
    resuming = False
    if storage.is_local(rundir.path):
        if rundir.exists():
            rundir.lock().check_free()
        saved = rundir.read()
        if saved is not None:
            check_continues(config, saved, rundir)
            resuming = rundir.has_checkpoint()
    if config.init_from and storage.is_local(config.init_from) and not resuming:  # resumed: not read again
        try:
            check_run(RunDir(config.init_from))
        except CharRNNError as e:
            raise CharRNNError(f"--init_from: {e}") from None
    check_apart(config, resolve_sources(config.data, fetch=False))


def check_apart(config: TrainConfig, sources: list[str]) -> None:
    """Refuses text files (local ones: `sources`) inside the run directory: the run's own
    files would be read as text, and the next launch would see another text."""
    if not storage.is_local(config.run_dir):
        return
    run_dir = os.path.realpath(config.run_dir)
    inside = [s for s in sources if storage.is_local(s) and os.path.commonpath([run_dir,
                                                                                os.path.realpath(s)]) == run_dir]
    if inside:
        raise CharRNNError(f"--data {inside[0]} is inside the run directory {config.run_dir}, whose own files would "
                           "become part of the text; keep the text and the run apart (another --run_dir)")


def check_run(rundir: RunDir) -> RunFiles:
    """The run files of the trained run in `rundir`."""
    if not rundir.exists():
        raise CharRNNError(f"run directory {rundir.path} does not exist; pass the --run_dir of a training run")
    files = rundir.read()
    if files is None:
        raise CharRNNError(f"run directory {rundir.path} holds no checkpoint; train first with charrnn-train "
                           f"--run_dir={rundir.path}")
    return files


def check_continues(config: TrainConfig, saved: RunFiles, rundir: RunDir, vocab: Vocabulary | None = None) -> None:
    """Refuses settings (and, once the text is read, its `vocab`) that cannot continue the
    run `saved` in `rundir` (TrainConfig.mismatches says which settings must match)."""
    problems = config.mismatches(saved.config)
    if vocab is not None and saved.vocab != vocab:
        problems.append(f"vocabulary of {len(saved.vocab)} characters in the run, {len(vocab)} in {config.data}")
    if problems:
        raise CharRNNError(f"run directory {rundir.path} holds an incompatible run ({'; '.join(problems)}); "
                           "pass the same settings to resume, or a new --run_dir")


TFLITE_FILE = "model.tflite"
VOCAB_FILE = "vocab.json"  # beside the TFLite model: its characters in id order


def check_export_dir(export_dir: str, may_exist: bool = False) -> None:
    """Refuses, before anything is loaded or written, an export directory that cannot take a
    new export (with `may_exist`, it may already hold other files)."""
    if not check_utf8("--export_dir", export_dir).strip():
        raise CharRNNError("--export_dir is empty; pass a new or empty directory for the export")
    if storage.exists(export_dir):
        if not storage.isdir(export_dir):
            raise CharRNNError(f"--export_dir {export_dir} is a file; pass a new or empty directory")
        if storage.listdir(export_dir) and not may_exist:
            raise CharRNNError(f"export directory {export_dir} is not empty; pass a new --export_dir")
        existing = export_dir
    elif not storage.is_local(export_dir):
        return  # an object store has no directories to check: a failed write says why
    else:
        existing = os.path.dirname(os.path.abspath(export_dir))
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise CharRNNError(f"--export_dir {export_dir} is under {existing}, which is a file; pass a directory path")
    if storage.is_local(existing) and not os.access(existing, os.W_OK | os.X_OK):
        raise CharRNNError(f"cannot write to {existing} (permission denied or read-only); pass a writable --export_dir")


def tflite_paths(export_dir: str) -> tuple[str, str]:
    """Where a TFLite export to `export_dir` writes the model and the vocabulary (an
    `export_dir` ending in .tflite names the model file), refusing targets that are taken."""
    check_utf8("--export_dir", export_dir)
    if export_dir.endswith(".tflite"):
        model_path = export_dir
        vocab_path = f"{os.path.dirname(export_dir) or '.'}/{VOCAB_FILE}"
        taken = [p for p in (model_path, vocab_path) if storage.exists(p)]
        if taken:
            raise CharRNNError(f"{taken[0]} exists; pass a new --export_dir (a directory, or a .tflite path whose "
                               "directory has no vocab.json yet)")
        check_export_dir(os.path.dirname(export_dir) or ".", may_exist=True)
    else:
        check_export_dir(export_dir)
        directory = export_dir.rstrip("/")
        model_path, vocab_path = f"{directory}/{TFLITE_FILE}", f"{directory}/{VOCAB_FILE}"
    return model_path, vocab_path

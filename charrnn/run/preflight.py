"""What can be refused before TensorFlow loads, so that a tool refuses bad input in a blink
(charrnn.cli.tool runs a tool's check first): the run directory a training run would take
(not a file, not held by a live trainer, holding a run these settings may continue), the
run a tool would read, --init_from, the local files of --data, TF_CONFIG (an export's
target: charrnn.generation.exportfiles).

The library (charrnn.training.resume, charrnn.run.trained, charrnn.generation.exporter) runs these functions again: what
they check may change in between, and code that calls the API has no such step. No
TensorFlow here; paths on other filesystems (gs://, ...) are left to the later checks.
"""

from __future__ import annotations

import os

from charrnn import storage
from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.run.rundir import RunDir, RunFiles
from charrnn.text.corpus import resolve_sources
from charrnn.text.vocab import Vocabulary
from charrnn.validate import check_tf_config


def check_train(config: TrainConfig) -> None:
    """Refuses a training run that cannot start: see the module docstring."""
    if config.strategy == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
    rundir = RunDir(config.run_dir)
    resuming = False
    if storage.is_local(rundir.path):
        saved = rundir.read()  # its files' kinds first: the lock file may be a link
        if rundir.exists():
            rundir.lock().check_free()
        if saved is not None:
            check_continues(config, saved, rundir)
            resuming = rundir.has_checkpoint()
    if config.init_from and storage.is_local(config.init_from) and not resuming:  # resumed: not read again
        try:
            check_run(RunDir(config.init_from))
        except CharRNNError as e:
            raise CharRNNError(f"--init_from: {e}") from None
    check_apart(config.run_dir, resolve_sources(config.data, fetch=False))


def check_apart(run_dir: str, sources: list[str]) -> None:
    """Refuses text files (local ones: `sources`) inside the run directory: the run's own
    files would be read as text, and the next launch would see another text."""
    if not storage.is_local(run_dir):
        return
    real = os.path.realpath(run_dir)
    inside = [s for s in sources if storage.is_local(s) and os.path.commonpath([real, os.path.realpath(s)]) == real]
    if inside:
        raise CharRNNError(f"--data {inside[0]} is inside the run directory {run_dir}, whose own files would "
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
        problems.append(_vocabulary_difference(saved.vocab, vocab, rundir.vocab_path, config.data))
    if problems:
        raise CharRNNError(f"run directory {rundir.path} holds an incompatible run ({'; '.join(problems)}); "
                           "pass the same settings to resume, or a new --run_dir")


def _vocabulary_difference(run: Vocabulary, text: Vocabulary, vocab_path: str, data: str) -> str:
    """What differs between the run's vocabulary (its vocab.json) and the text's, by character."""
    extra, missing = sorted(set(run.chars) - set(text.chars)), sorted(set(text.chars) - set(run.chars))
    shown = "".join
    parts = [f"{vocab_path} has {shown(extra)!r}, which {data} lacks"] if extra else []
    parts += [f"{data} has {shown(missing)!r}, which {vocab_path} lacks"] if missing else []
    if not parts:  # the same characters in another order: vocab.json was edited
        return f"{vocab_path} lists {len(run)} characters in another order than the vocabulary of {data}"
    return (f"vocabulary of {len(run)} characters in the run, {len(text)} in {data}: {', and '.join(parts)}"
            f"{' (was vocab.json edited?)' if len(run) == len(text) else ''}")

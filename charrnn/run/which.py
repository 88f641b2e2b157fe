"""Which checkpoints a run keeps, and which one `--which` names, read from the run directory
without TensorFlow: a tool refuses a --which the run does not keep, or lists what it keeps
(`--which=list`), before TensorFlow loads. Restoring and writing them is charrnn.run.checkpoint's.
"""

from __future__ import annotations

import os
import re

from charrnn import storage
from charrnn.config import WHICH
from charrnn.errors import CharRNNError
from charrnn.run.rundir import RunDir

LIST = "list"  # --which=list: the checkpoints the run keeps, and nothing else
# The `checkpoint` state file TensorFlow keeps beside them (a CheckpointState in text format)
# is a few lines per checkpoint: one larger is not read whole.
_STATE_LIMIT = 1 << 20


def checkpoint_prefix(path: str) -> str:
    """A checkpoint's path without the suffix of one of its files (`.index`, `.data-...`)."""
    return re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)


def checkpoint_step(path: str) -> int:
    """The step of a checkpoint's path (`.../ckpt-N`, or one of its files), -1 if it is not one."""
    match = re.search(r"ckpt-(\d+)$", checkpoint_prefix(path))
    return int(match.group(1)) if match else -1


def check_which(which: str) -> None:
    """Refuses a --which that is neither best, latest, list, a step number nor a checkpoint's path."""
    # isascii: str.isdigit() also takes digits int() refuses ('²').
    if which not in (*WHICH, LIST) and not (which.isascii() and which.isdigit()) and checkpoint_step(which) < 0:
        raise CharRNNError(f"--which must be best, latest, list, a step number or a checkpoint's path (.../ckpt-N), "
                           f"got {which!r}")


def state_file(directory: str) -> tuple[str | None, list[str]]:
    """The names the `checkpoint` state file of `directory` gives: the newest checkpoint's
    and every one's (basenames); nothing where it is missing or damaged."""
    try:
        text = storage.read_utf8(f"{directory}/checkpoint", _STATE_LIMIT) if storage.isdir(directory) else None
    except CharRNNError:  # damaged (too large, not text): the directory's listing still tells
        text = None
    fields = re.findall(r'^\s*(model_checkpoint_path|all_model_checkpoint_paths)\s*:\s*"(.*)"\s*$', text or "", re.M)
    newest = next((os.path.basename(value) for key, value in fields if key == "model_checkpoint_path"), None)
    return newest, [os.path.basename(value) for key, value in fields if key == "all_model_checkpoint_paths"]


def checkpoint_paths(directory: str) -> list[str]:
    """Every checkpoint prefix in `directory`, newest (highest step) first.

    Both the `checkpoint` state file and the directory listing are consulted, so a
    checkpoint whose index is missing, or one the state file does not name (a save killed
    before it was recorded), still shows up here.
    """
    paths = {f"{directory}/{name}" for name in state_file(directory)[1]}
    for name in storage.glob(f"{directory}/ckpt-*.index") + storage.glob(f"{directory}/ckpt-*.data-*"):
        paths.add(checkpoint_prefix(name))
    return sorted((p for p in paths if checkpoint_step(p) >= 0), key=checkpoint_step, reverse=True)


def newest(directory: str) -> str | None:
    """The checkpoint of `directory` saved last (its state file's), else, without a usable
    state file, the complete one (its index written) of the highest step; None if none.
    Not simply the highest step: a resume that passed over a damaged newer checkpoint saves
    lower steps after it."""
    latest = state_file(directory)[0]
    if latest is not None and checkpoint_step(latest) >= 0 and storage.exists(f"{directory}/{latest}.index"):
        return f"{directory}/{latest}"
    return next((p for p in checkpoint_paths(directory) if storage.exists(p + ".index")), None)


def kept(rundir: RunDir) -> str:
    """What --which=list prints: the steps of the checkpoints the run keeps, by kind."""
    lines = [f"run directory {rundir.path} keeps:"]
    for kind in ("latest", "best"):
        steps = sorted(checkpoint_step(p) for p in checkpoint_paths(rundir.checkpoint_dir(kind)))
        lines.append(f"  {kind:6} {', '.join(map(str, steps)) or 'none'}")
    return "\n".join(lines)


def resolve_which(rundir: RunDir, which: str | None) -> tuple[str, int | None]:
    """The checkpoint directory `which` names, and the step of the checkpoint it chooses
    (None: the newest usable one). `which` is `best` or `latest` (checked), None (`best` if
    the run has one, else `latest`), a step number (of either directory) or a checkpoint's
    path (`.../ckpt-N`, or one of its files)."""
    if which is None or which in WHICH:
        has_best = bool(checkpoint_paths(rundir.checkpoint_dir("best")))
        if which == "best" and not has_best:
            raise CharRNNError(f"run directory {rundir.path} has no best checkpoint (one is kept once a validation "
                               "loss has been measured); use --which=latest")
        return rundir.checkpoint_dir(which or ("best" if has_best else "latest")), None
    check_which(which)
    if which == LIST:
        raise CharRNNError("--which=list only lists the checkpoints a run keeps; pass a step, best or latest")
    if which.isascii() and which.isdigit():
        found = {kind: checkpoint_paths(rundir.checkpoint_dir(kind)) for kind in WHICH}
        for kind in ("latest", "best"):
            if any(checkpoint_step(p) == int(which) for p in found[kind]):
                return rundir.checkpoint_dir(kind), int(which)
        steps = sorted({checkpoint_step(p) for paths in found.values() for p in paths})
        raise CharRNNError(f"run directory {rundir.path} keeps no checkpoint of step {int(which)}; it keeps steps "
                           f"{', '.join(map(str, steps)) or 'none'}")
    path = checkpoint_prefix(which)
    directory = os.path.dirname(path) or "."  # a bare ckpt-N: in the current directory
    if f"{directory}/{os.path.basename(path)}" not in checkpoint_paths(directory):
        raise CharRNNError(f"--which: no checkpoint {path} (pass the path of a ckpt-N file without its suffix)")
    return directory, checkpoint_step(path)

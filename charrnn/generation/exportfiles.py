"""Where an export goes: the SavedModel's directory, or the TFLite model and its vocabulary
(`tflite_paths`), checked before anything is loaded or written; and a complete export put
in its place (`take_place`). charrnn-export runs these
checks before TensorFlow loads, and charrnn.generation.exporter again before it writes. No TensorFlow here.
"""

from __future__ import annotations

import os
import shutil
import stat

from charrnn import storage
from charrnn.errors import CharRNNError
from charrnn.validate import check_utf8

TFLITE_FILE = "model.tflite"
VOCAB_FILE = "vocab.json"  # beside the TFLite model: its characters in id order
# What an export directory holds: a SavedModel's files, or a TFLite export's. --overwrite
# replaces a directory holding nothing else, and never one holding anything else.
SAVEDMODEL_FILES = frozenset({"saved_model.pb", "variables", "assets", "fingerprint.pb"})
TFLITE_FILES = frozenset({TFLITE_FILE, VOCAB_FILE})
WEB_FILES = frozenset({*TFLITE_FILES, "model.json", "index.html", "generator.js", "runtime"})


def check_export_dir(export_dir: str, may_exist: bool = False, overwrite: frozenset[str] = frozenset()) -> None:
    """Refuses, before anything is loaded or written, an export directory that cannot take a
    new export (with `may_exist`, it may already hold other files; with `overwrite`, the
    files of an export it replaces, and no others)."""
    if not check_utf8("--export_dir", export_dir).strip():
        raise CharRNNError("--export_dir is empty; pass a new or empty directory for the export")
    if storage.exists(export_dir):
        if not storage.isdir(export_dir):
            raise CharRNNError(f"--export_dir {export_dir} is a file; pass a new or empty directory")
        held = {name.rstrip("/") for name in storage.listdir(export_dir)}
        if held and not may_exist and not overwrite:
            raise CharRNNError(f"export directory {export_dir} is not empty; pass a new --export_dir, or "
                               "--overwrite to replace the export it holds")
        if overwrite and held - overwrite:
            others = ", ".join(sorted(held - overwrite)[:3])
            raise CharRNNError(f"export directory {export_dir} holds files that are not an export ({others}); "
                               "--overwrite replaces only an export: pass a new --export_dir")
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


def tflite_paths(export_dir: str, overwrite: bool = False) -> tuple[str, str]:
    """Where a TFLite export to `export_dir` writes the model and the vocabulary (an
    `export_dir` ending in .tflite names the model file), refusing targets that are taken
    (unless `overwrite`: by files, not directories)."""
    check_utf8("--export_dir", export_dir)
    if export_dir.endswith(".tflite"):
        model_path = export_dir
        vocab_path = f"{os.path.dirname(export_dir) or '.'}/{VOCAB_FILE}"
        taken = [p for p in (model_path, vocab_path) if storage.exists(p)]
        # --overwrite replaces this export (its model and vocab.json), never another's vocab.json.
        replaces = overwrite and storage.exists(model_path) and not any(storage.isdir(p) for p in taken)
        if taken and not replaces:
            raise CharRNNError(f"{taken[0]} exists; pass a new --export_dir (a directory, or a .tflite path whose "
                               "directory has no vocab.json yet), or --overwrite to replace that export")
        check_export_dir(os.path.dirname(export_dir) or ".", may_exist=True)
    else:
        check_export_dir(export_dir, overwrite=TFLITE_FILES if overwrite else frozenset())
        directory = export_dir.rstrip("/")
        model_path, vocab_path = f"{directory}/{TFLITE_FILE}", f"{directory}/{VOCAB_FILE}"
    return model_path, vocab_path


def take_place(part: str, export_dir: str) -> None:
    """Renames the complete export `part` to `export_dir` (a real path): over the directory
    there, if there is one (empty, or an export --overwrite replaces), which keeps that
    directory's permissions and, when it is setgid (a group's shared directory), its group
    on everything inside."""
    try:
        before = os.stat(export_dir)
    except FileNotFoundError:
        before = None
    if before is not None and os.listdir(export_dir):  # the export it replaces: out of the way, then gone
        old = storage.part_name(f"{export_dir}.replaced")  # a dead process's is removed as any part
        os.rename(export_dir, old)
        try:
            os.rename(part, export_dir)
        except BaseException:  # Ctrl-C included: the export it replaces goes back
            os.rename(old, export_dir)
            raise
        shutil.rmtree(old)
    else:
        os.replace(part, export_dir)
    if before is None:
        return
    os.chmod(export_dir, stat.S_IMODE(before.st_mode))
    if before.st_mode & stat.S_ISGID:
        for root, dirs, files in os.walk(export_dir):
            for path in [root, *(os.path.join(root, name) for name in dirs + files)]:
                try:
                    os.chown(path, -1, before.st_gid)
                except PermissionError:  # not a member of that group: the files stay the user's
                    return
                if path != export_dir and os.path.isdir(path):
                    os.chmod(path, os.stat(path).st_mode | stat.S_ISGID)

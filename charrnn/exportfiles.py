"""Where an export goes: the SavedModel's directory, or the TFLite model and its vocabulary
(`tflite_paths`), checked before anything is loaded or written. charrnn-export runs these
checks before TensorFlow loads, and charrnn.exporter again before it writes. No TensorFlow here.
"""

from __future__ import annotations

import os

from charrnn import storage
from charrnn.errors import CharRNNError
from charrnn.validate import check_utf8

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

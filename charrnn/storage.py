"""Files on any filesystem: the local disk, or gs:// and the others TensorFlow has.

Every file charrnn reads or writes outside the TensorFlow ops of checkpoints and summaries
goes through here: atomic writes, reads, removal, globbing, and the one translation of a
storage fault (no space, quota, read-only, permission) into a one-line CharRNNError. Local
paths use the operating system; others use tf.io.gfile, imported only when one is met (so
that a tool can check local paths before TensorFlow starts).
"""

from __future__ import annotations

import glob as _glob
import os
import re
import shutil
import socket
import tempfile
from typing import Any

from charrnn.errors import CharRNNError


def is_local(path: str) -> bool:
    """Whether `path` is on the local disk (else on a TensorFlow filesystem: gs://, ram://, ...)."""
    return "://" not in path


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a failed read or write of a file or a checkpoint raises: OSError, and TensorFlow's
    errors for the same faults on its filesystems."""
    import tensorflow as tf

    return (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
            tf.errors.FailedPreconditionError, tf.errors.NotFoundError, tf.errors.DataLossError,
            tf.errors.UnknownError)


def storage_error(what: str, path: str, error: BaseException) -> CharRNNError:
    """The one-line error for a failed write or read of `path` (no space, quota, read-only, permission)."""
    if isinstance(error, OSError):
        cause = error.strerror or str(error)
    else:  # tf.errors.OpError: "<path...>; No space left on device [Op:SaveV2]"
        message = (getattr(error, "message", "") or str(error)).strip().splitlines()[0]
        cause = re.sub(r"\s*\[Op:\w+\]$", "", message).rsplit("; ", 1)[-1]
    return CharRNNError(f"cannot {what} {path} ({cause}); nothing older was changed: free space or fix the "
                        "permissions, then run the same command again")


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> list[str]:
    return os.listdir(path) if is_local(path) else [name.rstrip("/") for name in _gfile().listdir(path)]


def open_read(path: str) -> Any:
    """`path` opened for reading bytes: a local file, or TensorFlow's GFile elsewhere."""
    return open(path, "rb") if is_local(path) else _gfile().GFile(path, "rb")


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` via a temporary file and a rename, so a crash leaves old or new.

    On a local disk the file gets the permissions a plain open() would give it (0666 less
    the umask) and reaches the disk before the rename; elsewhere (gs://, ...) it is written
    through tf.io.gfile. The temporary file is removed if the write fails.
    """
    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    mode = "wb" if isinstance(data, bytes) else "w"
    if not is_local(path):
        gfile, tmp = _gfile(), f"{directory}/.{name}.{os.getpid()}.tmp"
        try:
            with gfile.GFile(tmp, mode) as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bytes(path: str) -> bytes | None:
    """The bytes of `path`, or None if it does not exist."""
    if is_local(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


def read_utf8(path: str) -> str | None:
    """The text of `path`, or None if it does not exist; a one-line CharRNNError if it cannot
    be read or is not UTF-8."""
    try:
        raw = read_bytes(path)
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharRNNError(f"{path} is damaged (not UTF-8 at byte {e.start}); restore it from a backup, "
                           "or use another --run_dir") from None
    except Exception as e:  # noqa: BLE001 - OSError, or tf.errors.OpError where TensorFlow reads it
        cause = e.strerror if isinstance(e, OSError) else str(e).strip().splitlines()[0]
        raise CharRNNError(f"cannot read {path} ({cause}); it should be a readable file written by "
                           "charrnn-train, or use another --run_dir") from None


def part_name(path: str) -> str:
    """Where a file on its way to `path` is written: beside it, named by this host and process
    (so that two writers never share one, and one left by a dead writer is known)."""
    return f"{path}.{socket.gethostname()}.{os.getpid()}.part"


def remove_dead_parts(directory: str) -> None:
    """Removes the `.part` files in `directory` (local) left by writers of this host that are gone."""
    host = socket.gethostname()
    for path in glob(os.path.join(directory, f"*.{host}.*.part")):
        pid = path.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove(path: str) -> bool:
    """Removes a file or a directory tree; whether it is gone."""
    try:
        if is_local(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        elif _gfile().isdir(path):
            _gfile().rmtree(path)
        else:
            _gfile().remove(path)
    except FileNotFoundError:
        return True
    except Exception:  # noqa: BLE001 - OSError or tf.errors.OpError: it is not gone
        return not exists(path)
    return True


def glob(pattern: str) -> list[str]:
    """The paths matching `pattern` (none where its directory does not exist)."""
    if is_local(pattern):
        return _glob.glob(pattern)
    import tensorflow as tf

    try:
        return tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:
        return []

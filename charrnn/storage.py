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
import stat
from collections.abc import Iterable
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

    # OutOfRangeError: a write past the file-size limit (ulimit -f: "File too large").
    return (OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
            tf.errors.FailedPreconditionError, tf.errors.NotFoundError, tf.errors.DataLossError,
            tf.errors.UnknownError, tf.errors.OutOfRangeError)


def storage_error(what: str, path: str, error: BaseException) -> CharRNNError:
    """The one-line error for a failed write or read of `path` (no space, quota, read-only, permission)."""
    if isinstance(error, OSError):
        cause = error.strerror or str(error)
    else:  # tf.errors.OpError: "<path...>; No space left on device [Op:SaveV2]"
        message = (getattr(error, "message", "") or str(error)).strip().splitlines()[0]
        cause = re.sub(r"\s*\[Op:\w+\]$", "", message).rsplit("; ", 1)[-1]
    return CharRNNError(f"cannot {what} {path} ({cause}); what was saved before stays: free space, raise the "
                        "file-size limit or fix the permissions, then run the same command again")


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> list[str]:
    return os.listdir(path) if is_local(path) else [name.rstrip("/") for name in _gfile().listdir(path)]


def size(path: str) -> int:
    """The size of the file `path` in bytes."""
    return os.path.getsize(path) if is_local(path) else _gfile().stat(path).length


def open_read(path: str) -> Any:
    """`path` opened for reading bytes: a local file, or TensorFlow's GFile elsewhere."""
    return open(path, "rb") if is_local(path) else _gfile().GFile(path, "rb")


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def temp_name(path: str) -> str:
    """Where an atomic write of `path` writes first: a hidden file beside it, named by this
    host and process, so that one a dead writer left can be told from anyone else's file
    (see remove_dead_temps)."""
    directory, name = path.rsplit("/", 1) if "/" in path else (".", path)
    return f"{directory}/.{name}.{socket.gethostname()}.{os.getpid()}.tmp"


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` via a temporary file and a rename, so a crash leaves old or new.

    On a local disk the file gets the permissions a plain open() would give it (0666 less
    the umask) and reaches the disk before the rename; elsewhere (gs://, ...) it is written
    through tf.io.gfile. The temporary file is removed if the write fails.
    """
    write_atomic_lines(path, [data])


def write_atomic_lines(path: str, pieces: Iterable[str | bytes]) -> None:
    """`write_atomic` of the concatenation of `pieces` (all str or all bytes), written as they
    come: a file far larger than memory can be rewritten."""
    tmp = temp_name(path)
    if not is_local(path):
        gfile = _gfile()
        try:
            with gfile.GFile(tmp, "wb") as f:
                for piece in pieces:
                    f.write(piece if isinstance(piece, bytes) else piece.encode("utf-8"))
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
        return
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece if isinstance(piece, bytes) else piece.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_dead_temps(directory: str, names: Iterable[str]) -> list[str]:
    """Removes the temporary files of atomic writes of `names` in `directory` (local) that
    writers of this host left and are gone (see temp_name); returns them. Any other file,
    whatever its name, is someone else's and stays."""
    host, removed = socket.gethostname(), []
    for name in names:
        for path in _glob.glob(os.path.join(_glob.escape(directory),
                                            f".{_glob.escape(name)}.{_glob.escape(host)}.*.tmp")):
            pid = path.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)) and remove(path):
                removed.append(path)
    return removed


def read_bytes(path: str, limit: int | None = None) -> bytes | None:
    """The bytes of `path`, or None if it does not exist. A local path must be a regular file
    (a pipe or a device would block or never end) of at most `limit` bytes when given: else
    a CharRNNError."""
    if is_local(path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CharRNNError(f"{path} is not a regular file (a pipe, a device or a socket); remove it, or use "
                                   "another directory")
            data = f.read(-1 if limit is None else limit + 1)
        if limit is not None and len(data) > limit:
            raise CharRNNError(f"{path} is larger than the {limit:,} bytes such a file can be; it is not charrnn's, "
                               "or it is damaged: restore it from a backup, or use another directory")
        return data
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read(-1 if limit is None else limit + 1)
    except tf.errors.NotFoundError:
        return None
    if limit is not None and len(data) > limit:
        raise CharRNNError(f"{path} is larger than the {limit:,} bytes such a file can be; restore it from a backup, "
                           "or use another directory")
    return data


def read_utf8(path: str, limit: int | None = None) -> str | None:
    """The text of `path`, or None if it does not exist; a one-line CharRNNError if it cannot
    be read, is not a regular file of at most `limit` bytes, or is not UTF-8."""
    try:
        raw = read_bytes(path, limit)
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharRNNError(f"{path} is damaged (not UTF-8 at byte {e.start}); restore it from a backup, "
                           "or use another --run_dir") from None
    except CharRNNError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, or tf.errors.OpError where TensorFlow reads it
        cause = e.strerror if isinstance(e, OSError) else str(e).strip().splitlines()[0]
        raise CharRNNError(f"cannot read {path} ({cause}); it should be a readable file written by "
                           "charrnn-train, or use another --run_dir") from None


def common_mode(paths: list[str]) -> int | None:
    """The permission bits that every file of `paths` has (a copy made of them should have no
    more: a text readable only by its owner stays so), or None if one is not on the local disk."""
    if not all(is_local(p) for p in paths):
        return None
    mode = 0o666
    for path in paths:
        mode &= os.stat(path).st_mode
    return mode


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

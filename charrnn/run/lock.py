"""`RunLock`: one trainer per run directory.

The lock is a file of the run directory (`RunDir.lock()` names it), held with `flock` for as
long as a trainer runs and holding its host, pid and start time as JSON so that a refused
second trainer can name it.
The kernel drops an `flock` when its holder dies (SIGKILL, a crash), so a lock file left
behind by a dead trainer is taken over by the next one without any manual step. A trainer
that ends normally removes the file.

Guarantees: on a local disk, two processes (on this machine) never hold the lock at once.
On NFS, Linux implements `flock` with the server's byte-range locks, which hold across
machines when the server supports locking (NFSv4 does; a lock of a machine that crashed is
released when the server's lease expires). On a filesystem without locks (some FUSE mounts)
charrnn warns and runs unlocked. On an object store (gs://, s3://, any TensorFlow
filesystem that is not the local disk) there is no lock at all: it cannot be taken
atomically, nor dropped when its holder dies; charrnn says so and runs unlocked, and
keeping one trainer per run directory is then the scheduler's job.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import stat

from charrnn.errors import CharRNNError
from charrnn.log import logger
from charrnn.storage import is_local


class RunLock:
    """Context manager: holds the lock file `path` (its directory must exist) or raises CharRNNError."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        if not is_local(self.path):
            logger.warning(f"{os.path.dirname(self.path)} is not on a local disk, where a run directory "
                           "cannot be locked; make sure no other trainer uses it")
            return
        while True:
            fd = self._open(os.O_RDWR | os.O_CREAT)
            locked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                message = self._in_use(fd)
                os.close(fd)
                raise CharRNNError(message) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                logger.warning(f"{self.path}: the filesystem does not support locks ({e.strerror}); "
                               "nothing stops a second trainer on this run directory")
                locked = False
            # A holder that released the lock unlinks the file first: if ours is no longer
            # the file at that path, lock the new one instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous and locked:  # a record that no one holds: its writer died
            logger.info(f"taking over the lock of {os.path.dirname(self.path)} from a trainer that is gone "
                        f"({_holder_text(previous)})")
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
        self._fd = fd

    def check_free(self) -> None:
        """Refuses, as `acquire` would, when a live trainer holds the lock; takes nothing (a
        shared lock for an instant) and creates nothing. For a refusal before a long start;
        `acquire` decides."""
        if not is_local(self.path):
            return
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return  # no lock file: no trainer, or one that acquire will meet
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise CharRNNError(self._in_use(fd)) from None
        except OSError:
            pass  # a filesystem without locks: acquire warns
        finally:
            os.close(fd)

    def _open(self, flags: int) -> int:
        """The lock file, opened without waiting: a pipe or a device put in its place would
        block an open or a read forever; refused in one line."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK | os.O_NOFOLLOW, 0o666)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CharRNNError(f"cannot open the lock file {self.path} ({e.strerror}); remove it if it is not a "
                               "plain file, and check the run directory's permissions") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CharRNNError(f"the lock file {self.path} is not a plain file (a pipe, a device or a socket); remove "
                               "it, then run again")
        return fd

    def _in_use(self, fd: int) -> str:
        return (f"run directory {os.path.dirname(self.path)} is in use by another trainer "
                f"({_holder_text(_read_holder(fd))}); "
                "wait for it to finish or stop it, or train into another --run_dir")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking, so that no one locks a file about to vanish
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (ValueError, OSError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder_text(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"

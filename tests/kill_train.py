"""charrnn-train that SIGKILLs itself at a chosen point of a chosen save, for the fault tests.

    python tests/kill_train.py WHERE STEP MARKER [charrnn-train flags...]

When the run saves rolling checkpoint STEP, it touches the file MARKER (so the test knows the
save began) and kills itself with SIGKILL, as a power loss or the OOM killer would:

    start   as the save starts, before anything of it is written
    write   while TensorFlow writes the checkpoint's files: as soon as its `_temp` directory
            exists (if the write ends before that is seen, right after it)
    record  after the checkpoint's files are complete, before the `checkpoint` state file
            names it
    sweep   after the state file names it, before the checkpoints beyond max_to_keep are
            deleted

The points are found with tf.train.CheckpointManager's own methods, so nothing of charrnn is
changed.
"""

import os
import signal
import sys
import threading

import tensorflow as tf


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_when_written(temp: str, done: threading.Event) -> None:
    while not os.path.exists(temp) and not done.is_set():
        pass  # a busy wait: the write may last a millisecond
    _kill()


def main() -> None:
    where, step, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_save = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number != step or os.path.basename(self.directory) != "ckpt":
            return real_save(self, checkpoint_number=checkpoint_number, **kwargs)
        open(marker, "w").close()
        if where == "start":
            _kill()
        if where == "record":
            self._record_state = _kill  # noqa: SLF001 - the manager's own step, right after the write
        if where == "sweep":
            self._sweep = _kill  # noqa: SLF001
        done = threading.Event()
        if where == "write":
            threading.Thread(target=_kill_when_written, args=(f"{self._prefix}-{step}_temp", done),  # noqa: SLF001
                             daemon=True).start()
        path = real_save(self, checkpoint_number=checkpoint_number, **kwargs)
        done.set()
        threading.Event().wait(60)  # the killing thread ends the process
        return path

    tf.train.CheckpointManager.save = save
    sys.argv = ["charrnn-train", *sys.argv[4:]]
    from charrnn.cli import train
    train.run()


if __name__ == "__main__":
    main()

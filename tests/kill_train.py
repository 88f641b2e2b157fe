"""charrnn-train that SIGKILLs itself at a chosen point of a chosen save, for the fault tests.

    python tests/kill_train.py WHERE STEP MARKER [charrnn-train flags...]

When the run saves rolling checkpoint STEP, it touches the file MARKER (so the test knows the
save began) and kills itself with SIGKILL, as a power loss or the OOM killer would:

    start   as the save starts, before anything of it is written
    write   inside TensorFlow's write of the checkpoint's files: its shards are written in
            the `_temp` directory, and the merge into the checkpoint's own files is next
    record  after the checkpoint's files are complete, before the `checkpoint` state file
            names it
    sweep   after the state file names it, before the checkpoints beyond max_to_keep are
            deleted

The points are methods that the save calls in order (tf.train.CheckpointManager's own, and
for `write` the merge op of TensorFlow's saver, called eagerly between the shards and the
final files), so each kill lands at its point by construction, however loaded the machine,
and nothing of charrnn is changed.
"""

import os
import signal
import sys

import tensorflow as tf
from tensorflow.python.ops import gen_io_ops


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    where, step, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_save = tf.train.CheckpointManager.save
    real_merge = gen_io_ops.merge_v2_checkpoints
    writing: list[str] = []  # the prefix of the save to kill inside, while it is being written

    def merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        if writing and destination_prefix.numpy().decode() == writing[0]:
            _kill()  # the shards are in <prefix>_temp; the merge would write <prefix>.index and .data
        return real_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)

    gen_io_ops.merge_v2_checkpoints = merge  # the saver looks it up at each save

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
        if where == "write":
            writing.append(f"{self._prefix}-{step}")  # noqa: SLF001
        real_save(self, checkpoint_number=checkpoint_number, **kwargs)
        raise AssertionError(f"the save of checkpoint {step} ended without reaching its {where!r} point")

    tf.train.CheckpointManager.save = save
    sys.argv = ["charrnn-train", *sys.argv[4:]]
    from charrnn.cli import train
    train.run()


if __name__ == "__main__":
    main()

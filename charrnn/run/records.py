"""What a run's checkpoint records beside its weights and optimizer: the training loop's
bookkeeping (`LoopState`: its position, the epoch's loss sum, the last finalised step and
the record of its evaluations, `Evaluations`, read as an `EvalRecord`), and the
fingerprints of the vocabulary and text it was trained on (`Fingerprints`), read back and
checked (`read_fingerprints`, `check_vocab`): a vocab.json that does not belong to the
weights, or a resume on other text, is noticed.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from charrnn.errors import CharRNNError
from charrnn.run.checkpoint import FINGERPRINTS
from charrnn.run.rundir import RunDir
from charrnn.text.vocab import Vocabulary

# Where a checkpoint holds each fingerprint (Fingerprints, under checkpoint.FINGERPRINTS).
_FINGERPRINT_KEY = f"{FINGERPRINTS}/{{}}/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """The evaluations of a run so far: the last one and the best one (steps -1, losses NaN
    and inf before any), and how many came since the best (for --patience)."""

    last_step: int = -1
    last_loss: float = math.nan
    best_step: int = -1
    best_loss: float = math.inf
    since_best: int = 0


class Fingerprints(tf.Module):
    """What a checkpoint's weights were trained on: fingerprints of the vocabulary and the text."""

    def __init__(self, vocab: str = "", data: str = "") -> None:
        super().__init__(name="fingerprints")
        with tf.device("/CPU:0"):
            self.vocab = tf.Variable(vocab, trainable=False, name="vocab")
            self.data = tf.Variable(data, trainable=False, name="data")


class Evaluations(tf.Module):
    """The checkpointed record of validation: the last and the best evaluation, and how
    many came since the best (read as an `EvalRecord`)."""

    def __init__(self) -> None:
        super().__init__(name="validation")
        self.last_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="last_step")
        self.last_loss = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="last_loss")
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_loss")
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        self.since_best = tf.Variable(0, dtype=tf.int64, trainable=False, name="since_best")

    def record(self, step: int, loss: float) -> bool:
        """Records the evaluation at `step`; True when it is the best so far."""
        self.last_step.assign(step)
        self.last_loss.assign(loss)
        best = loss < float(self.best_loss.numpy())
        if best:
            self.best_loss.assign(loss)
            self.best_step.assign(step)
        self.since_best.assign(0 if best else self.since_best + 1)
        return best

    def read(self) -> EvalRecord:
        return EvalRecord(int(self.last_step.numpy()), float(self.last_loss.numpy()), int(self.best_step.numpy()),
                          float(self.best_loss.numpy()), int(self.since_best.numpy()))


class LoopState:
    """The training loop's bookkeeping, the state charrnn.training.loop's Controller reads and writes
    (its `LoopState` protocol) and a checkpoint keeps, so that a resumed run continues the
    schedule exactly: `step` (the steps trained; the compiled step advances it), `epoch`
    (from 0), `epoch_loss_sum` (of the epoch's step losses, so that its mean is the same
    whether or not the epoch was interrupted), `finalized_step` (the step at which an epoch,
    or the run's last partial one, was last evaluated and logged: a step equal to it needs
    no finalising again after a resume) and the record of its evaluations."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.finalized_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="finalized_step")
        self._evaluations = Evaluations()

    def checkpointed(self) -> dict[str, tf.Module | tf.Variable]:
        """Its objects under the names a run's checkpoint keeps them by (charrnn.run.checkpoint)."""
        return dict(step=self.step, epoch=self.epoch, epoch_loss_sum=self.epoch_loss_sum,
                    finalized_step=self.finalized_step, validation=self._evaluations)

    def position(self) -> tuple[int, int]:
        """(step, epoch): the epoch the next step belongs to (the next one once the current
        epoch is trained to its end and finalised)."""
        step, epoch = int(self.step.numpy()), int(self.epoch.numpy())
        if step == (epoch + 1) * self.steps_per_epoch and int(self.finalized_step.numpy()) == step:
            epoch += 1
        return step, epoch

    def begin_epoch(self, epoch: int) -> int:
        """Moves to `epoch` at the current step; returns the step's offset in it (0 at its
        start, which resets the loss sum)."""
        self.epoch.assign(epoch)
        offset = int(self.step.numpy()) - epoch * self.steps_per_epoch
        if offset == 0:
            self.epoch_loss_sum.assign(0.0)
        return offset

    def epoch_train_loss(self) -> float:
        """The mean train loss of the current epoch's steps so far, resumes included."""
        step, epoch = int(self.step.numpy()), int(self.epoch.numpy())
        return float(self.epoch_loss_sum.numpy()) / max(step - epoch * self.steps_per_epoch, 1)

    def last_finalized(self) -> int:
        return int(self.finalized_step.numpy())

    def finalize_epoch(self, step: int) -> None:
        """Marks the epoch finalised at `step` (the checkpoint saved next holds the mark)."""
        self.finalized_step.assign(step)

    def record_evaluation(self, step: int, val_loss: float) -> bool:
        """Records the evaluation at `step`; True when it is the best so far."""
        return self._evaluations.record(step, val_loss)

    @property
    def evaluations(self) -> EvalRecord:
        """The last and the best evaluation so far, and how many came since the best."""
        return self._evaluations.read()


def read_fingerprints(path: str) -> tuple[str, str] | None:
    """The (vocabulary, data) fingerprints of checkpoint `path`; None for one saved before charrnn kept them."""
    try:
        reader = tf.train.load_checkpoint(path)
        return tuple(reader.get_tensor(_FINGERPRINT_KEY.format(k)).decode() for k in ("vocab", "data"))
    except (tf.errors.OpError, ValueError, KeyError):
        return None


def check_vocab(path: str, vocab: Vocabulary, rundir: RunDir) -> tuple[str, str] | None:
    """Refuses a vocab.json that is not the vocabulary the checkpoint at `path` was trained with;
    returns the checkpoint's fingerprints (see `read_fingerprints`)."""
    saved = read_fingerprints(path)
    if saved is not None and saved[0] != vocab.fingerprint:
        raise CharRNNError(f"{rundir.vocab_path} is not the vocabulary {path} was trained with (fingerprint "
                           f"{vocab.fingerprint}, the checkpoint's {saved[0]}); restore the run's original vocab.json")
    return saved

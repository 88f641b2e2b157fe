"""What a run's checkpoint records beside its weights and optimizer: the record of its
evaluations (`Evaluations`, read as a charrnn.cadence.EvalRecord) and the fingerprints of
the vocabulary and text it was trained on (`Fingerprints`), read back and checked
(`read_fingerprints`, `check_vocab`): a vocab.json that does not belong to the weights, or
a resume on other text, is noticed.
"""

from __future__ import annotations

import math

import tensorflow as tf

from charrnn.cadence import EvalRecord
from charrnn.checkpoint import FINGERPRINTS
from charrnn.errors import CharRNNError
from charrnn.rundir import RunDir
from charrnn.vocab import Vocabulary

# Where a checkpoint holds each fingerprint (Fingerprints, under checkpoint.FINGERPRINTS).
_FINGERPRINT_KEY = f"{FINGERPRINTS}/{{}}/.ATTRIBUTES/VARIABLE_VALUE"


class Fingerprints(tf.Module):
    """What a checkpoint's weights were trained on: fingerprints of the vocabulary and the text."""

    def __init__(self, vocab: str = "", data: str = "") -> None:
        super().__init__(name="fingerprints")
        with tf.device("/CPU:0"):
            self.vocab = tf.Variable(vocab, trainable=False, name="vocab")
            self.data = tf.Variable(data, trainable=False, name="data")


class Evaluations(tf.Module):
    """The checkpointed record of validation: the last and the best evaluation, and how
    many came since the best (read as a charrnn.cadence.EvalRecord)."""

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

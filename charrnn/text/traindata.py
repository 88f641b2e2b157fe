"""`TrainData`: the text a run trains on, as the run sees it.

It turns text into ids through the id cache (charrnn.text.idcache), as `idcache.ids_in` does
for charrnn-eval, and splits it with charrnn.text.data.split_ids, as charrnn-eval does, so a
validation loss means the same everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from charrnn.errors import CharRNNError
from charrnn.text.data import Layout, num_windows, split_ids
from charrnn.text.idcache import encode
from charrnn.text.vocab import Vocabulary


class TrainData:
    """The ids of `data` (--data: its vocabulary, or with `base` the union of `base`'s
    characters and the text's: fine-tuning), split into training and validation ids
    (`val_fraction`), checked to hold at least one batch (and one validation window), read
    as `layout` says (windows or carried streams)."""

    def __init__(self, data: str, layout: Layout, *, val_fraction: float, base: Vocabulary | None = None):
        corpus = encode(data, base)
        self.vocab, self.fingerprint = corpus.vocab, corpus.fingerprint
        # The text's own characters: fewer than the vocabulary's when it is merged with `base`'s.
        self.distinct = len(self.vocab) if base is None else int(np.count_nonzero(
            np.bincount(corpus.ids, minlength=len(self.vocab))))
        self.num_files, self.num_chars = corpus.num_files, len(corpus.ids)
        self.train_ids, self.val_ids = split_ids(corpus.ids, val_fraction)
        self.layout = layout
        self._check_sizes(val_fraction, len(corpus.ids))
        self.steps_per_epoch = self.layout.num_batches(len(self.train_ids))

    def dataset(self, epoch: int, start: int = 0) -> tf.data.Dataset:
        """The training batches of `epoch` from batch `start` on, in their order, which depends
        only on the seed and the epoch (with carry_state, the same streams every epoch)."""
        return self.layout.training(self.train_ids, epoch, start)

    def _check_sizes(self, val_fraction: float, num_chars: int) -> None:
        batch_size, window = self.layout.batch_size, self.layout.seq_length + 1
        if num_windows(len(self.train_ids), self.layout.seq_length) < batch_size:
            train_needed = batch_size * window
            raise CharRNNError(
                f"corpus too short: {num_chars:,} characters, but batch_size={batch_size} x (seq_length+1)={window} "
                f"needs {train_needed:,} for training ({math.ceil(train_needed / (1 - val_fraction)):,} with "
                f"val_fraction={val_fraction}); use more text or a smaller --batch_size/--seq_length")
        if val_fraction > 0 and len(self.val_ids) < window:
            raise CharRNNError(
                f"validation split too short: {len(self.val_ids)} characters, one window needs {window}; "
                "raise --val_fraction, lower --seq_length, or pass --val_fraction=0")

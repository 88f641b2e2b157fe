"""The start of a training run, planned once: `Start(config, device)` reads the run directory,
resolves the precision, checks that this configuration may continue what the directory
holds, encodes the text and, for a new fine-tuned run, loads the run the weights come from. Then
`Start.restore` restores the newest usable checkpoint with the checks that need it (the
vocabulary's and the text's fingerprints, the position in the epochs), or, for a new
fine-tuned run, `Start.transfer` copies the weights over.

A new start check goes here, and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.nn.devices import choose_precision
from charrnn.nn.model import CharRNN
from charrnn.run import checkpoint, records
from charrnn.run.preflight import check_apart, check_continues
from charrnn.run.rundir import RunDir
from charrnn.run.trained import TrainedModel, load_model
from charrnn.text.corpus import resolve_sources
from charrnn.text.data import Layout
from charrnn.text.traindata import TrainData


class Start:
    """What a run starts from (see the module docstring). `config` has its precision resolved
    (`precision_reason` says why); `data` is the text to train on; `origin` is the record of
    where a fine-tuned run's weights came from (None for other runs), once known."""

    def __init__(self, config: TrainConfig, device: str, tpu: bool = False):
        self.rundir = RunDir(config.run_dir)
        saved = self.rundir.read()
        # `auto` precision: a resumed run keeps its own (its carried state and checkpoints
        # have that precision's dtypes), a new one gets what the hardware computes fastest.
        self.config, self.precision_reason = config, "as asked"
        if config.mixed_precision == "auto":
            if saved is not None and saved.config.mixed_precision != "auto":
                policy, self.precision_reason = saved.config.mixed_precision, "auto: the run's own, kept on resume"
            else:
                policy, why = choose_precision(device, tpu=tpu)
                self.precision_reason = f"auto: {why}"
            self.config = config.replace(mixed_precision=policy)
        if saved is not None and saved.config.init_from and not config.init_from:  # the run's own (mismatches)
            self.config = self.config.replace(init_from=saved.config.init_from, init_which=saved.config.init_which)
        # A fine-tuned run that saved a checkpoint continues from it: its source is not read
        # again (it may have moved), and its vocabulary is the run's.
        check_apart(self.config.run_dir, resolve_sources(self.config.data, fetch=False))
        resuming = saved is not None and self.rundir.has_checkpoint()
        self._source = _load_source(self.config) if self.config.init_from and not resuming else None
        # Unset model sizes: the run's own, else the --init_from run's, else the defaults.
        self.config = self.config.with_model_sizes(saved.config if saved is not None else
                                                   self._source.config if self._source else None)
        base = (self._source.vocab if self._source else
                saved.vocab if saved is not None and resuming and self.config.init_from else None)
        c = self.config
        layout = Layout(c.seq_length, c.batch_size, c.carry_state, c.shuffle_buffer, c.seed)
        self.data = TrainData(c.data, layout, val_fraction=c.val_fraction, base=base)
        self.sample_prime = self._sample_prime()
        self.origin: dict | None = None
        if saved is not None:  # refuses a run directory whose config or vocabulary this run cannot continue
            check_continues(self.config, saved, self.rundir, self.data.vocab)

    def _sample_prime(self) -> str:
        """The prime of the samples shown while training: --sample_prime, or the vocabulary's default."""
        prime = self.config.sample_prime or self.data.vocab.default_prime
        unknown = sorted(set(prime) - set(self.data.vocab.chars))
        if unknown:
            raise CharRNNError(f"--sample_prime has characters that are not in {self.config.data}: "
                               f"{''.join(unknown)!r}; use characters of the training text")
        return prime

    def recheck(self) -> None:
        """Checks the run directory again, as another trainer may have written it since."""
        saved = self.rundir.reread()
        if saved is not None:
            check_continues(self.config, saved, self.rundir, self.data.vocab)

    def restore(self, state: tf.train.Checkpoint, check_finite: list[tf.Variable],
                position: Callable[[], tuple[int, int]]) -> str | None:
        """Restores the newest usable checkpoint into `state` (see
        checkpoint.restore_newest_readable) and checks that this run can continue it: its
        vocabulary and text (by their fingerprints) and its position (`position()` after the
        restore) in this text's epochs. Returns its path, or None for a new run."""
        path = checkpoint.restore_newest_readable(state, self.rundir.checkpoint_dir("latest"),
                                                  check_finite=check_finite)
        if path is None:
            return None
        saved = records.check_vocab(path, self.data.vocab, self.rundir)
        if saved is not None and saved[1] != self.data.fingerprint and not self.config.allow_new_data:
            raise CharRNNError(f"{self.config.data} is not the text run directory {self.rundir.path} was trained on "
                               f"(fingerprint {self.data.fingerprint}, the checkpoint's {saved[1]}); pass "
                               "--allow_new_data to continue training on it, or use a new --run_dir")
        step, epoch = position()
        steps_per_epoch = self.data.steps_per_epoch
        if not 0 <= step - epoch * steps_per_epoch <= steps_per_epoch:
            raise CharRNNError(f"checkpoint step {step} and epoch {epoch} do not fit {steps_per_epoch} "
                               "steps per epoch; the run directory belongs to other data, use a new --run_dir")
        files = self.rundir.read()
        self.origin = files.origin if files is not None else None
        return path

    def transfer(self, model: CharRNN) -> None:
        """For a new fine-tuned run: copies the weights of the run it starts from into `model`.
        Each of its characters keeps its rows of the embedding and of the output layer; the
        new text's new characters keep the rows `model` was initialised with."""
        source = self._source
        if source is None:
            return
        index = {ch: i for i, ch in enumerate(self.data.vocab.chars)}
        rows = np.array([index[ch] for ch in source.vocab.chars])
        for variable, value, axis in ((model.embedding.embeddings, source.model.embedding.embeddings, 0),
                                      (model.dense.kernel, source.model.dense.kernel, 1),
                                      (model.dense.bias, source.model.dense.bias, 0)):
            merged = variable.numpy()
            if axis == 0:
                merged[rows] = value.numpy()
            else:
                merged[:, rows] = value.numpy()
            variable.assign(merged)
        for layer, old_layer in zip(model.rnns, source.model.rnns):
            for variable, value in zip(layer.weights, old_layer.weights):
                variable.assign(value)
        self.origin = {"run": self.config.init_from, "checkpoint": source.path, "vocab_size_before": len(source.vocab),
                       "vocab_size": len(self.data.vocab)}


def _load_source(c: TrainConfig) -> TrainedModel:
    """The model, vocabulary and checkpoint of --init_from, checked against this run's model."""
    assert c.init_from is not None  # only a fine-tuned run has a source
    if os.path.normpath(c.init_from) == os.path.normpath(c.run_dir):
        raise CharRNNError("--init_from is the run directory itself; pass another run to start from, or leave "
                           "--init_from unset to resume")
    try:
        source = load_model(c.init_from, None if c.init_which == "best" else "latest")
    except CharRNNError as e:
        raise CharRNNError(f"--init_from: {e}") from None
    different = [f"{name}={getattr(source.config, name)!r} there, {getattr(c, name)!r} here"
                 for name in TrainConfig.MODEL_FIELDS if getattr(c, name) not in (None, getattr(source.config, name))]
    if different:
        raise CharRNNError(f"cannot fine-tune from {c.init_from}: its model has other sizes "
                           f"({'; '.join(different)}); leave those flags unset to take its sizes")
    return source

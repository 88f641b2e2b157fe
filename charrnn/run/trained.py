"""A trained run read for inference: the model of one of its checkpoints, with the run's
settings and vocabulary (what the Sampler, the exports, charrnn-eval and fine-tuning load)."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.log import logger
from charrnn.nn.model import CharRNN
from charrnn.run import checkpoint, records
from charrnn.run.preflight import check_run
from charrnn.run.rundir import RunDir
from charrnn.run.which import checkpoint_paths, resolve_which
from charrnn.text.vocab import Vocabulary


class TrainedModel(NamedTuple):
    model: CharRNN
    config: TrainConfig
    vocab: Vocabulary
    path: str  # the checkpoint it was read from


def load_model(run_dir: str, which: str | None = None, device: str = "/CPU:0", lstm_impl: str = "auto",
               precision: str | None = None) -> TrainedModel:
    """The trained model of `run_dir` from its `which` checkpoint (best or latest; None: best
    when the run has one; or a step number, or a checkpoint's path: see
    charrnn.run.which.resolve_which), placed on `device` (with `lstm_impl`, see CharRNN; with
    `precision`, computing in that policy whatever precision it was trained in: the weights
    are float32 under every policy), with the run's config and vocabulary and the
    checkpoint's path.

    If no best checkpoint is usable, the latest one is used, with a warning.
    """
    rundir = RunDir(run_dir)
    files = check_run(rundir)
    no_checkpoint = f"run directory {run_dir} holds no checkpoint; train first with charrnn-train --run_dir={run_dir}"
    directory, step = resolve_which(rundir, which)
    config = files.config.replace(mixed_precision=precision) if precision else files.config
    with tf.device(device):
        try:
            model = CharRNN.from_config(config, len(files.vocab), lstm_impl)
        except CharRNNError as e:
            raise CharRNNError(f"{rundir.path}/config.json: {e}; if it was edited, restore it") from None
        reader = tf.train.Checkpoint(model=model)
        try:
            path = checkpoint.restore_newest_readable(reader, directory, check_finite=model.variables, step=step)
        except checkpoint.ModelMismatch:
            raise
        except CharRNNError as e:
            if directory != rundir.checkpoint_dir("best") or step is not None or \
                    not checkpoint_paths(rundir.checkpoint_dir("latest")):
                raise
            logger.warning(f"{e}; using the latest checkpoint instead")
            path = checkpoint.restore_newest_readable(reader, rundir.checkpoint_dir("latest"),
                                                      check_finite=model.variables)
    if path is None:
        raise CharRNNError(no_checkpoint)
    records.check_vocab(path, files.vocab, rundir)
    return TrainedModel(model, files.config, files.vocab, path)

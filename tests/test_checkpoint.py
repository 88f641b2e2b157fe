"""TensorFlow checkpoints of a run: a save killed after its files were written and before the
state file named it is found, restored, and in its turn deleted like any other."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from charrnn import Trainer
from charrnn.checkpoint import checkpoint_paths
from conftest import Crash, tiny_config


def test_a_checkpoint_the_state_file_does_not_name_is_restored_and_deleted_in_turn(small_text, tmp_path,
                                                                                   monkeypatch):
    run = tmp_path / "run"
    config = tiny_config(small_text, run, max_steps=8, checkpoint_every=1, max_to_keep=2)
    real = tf.train.CheckpointManager._record_state  # noqa: SLF001 - the manager's step after the write

    def record_state(self):
        if self.latest_checkpoint.endswith("ckpt-5"):
            raise Crash("killed after writing ckpt-5, before recording it")
        real(self)

    monkeypatch.setattr(tf.train.CheckpointManager, "_record_state", record_state)
    with pytest.raises(Crash):
        Trainer(config).fit(verbose=0)
    monkeypatch.undo()
    names = tf.train.get_checkpoint_state(str(run / "ckpt")).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in names] == ["ckpt-3", "ckpt-4"]  # the state file knows nothing of 5
    assert checkpoint_paths(str(run / "ckpt"))[0].endswith("ckpt-5")  # the listing does

    resumed = Trainer(config)
    assert resumed.restored_from.endswith("ckpt-5") and int(resumed.step.numpy()) == 5
    resumed.fit(verbose=0)
    assert sorted(p.name for p in (run / "ckpt").glob("*.index")) == ["ckpt-7.index", "ckpt-8.index"]

"""The run directory: the one owner of its layout, its files read once per start, and the
scratch directory of a non-chief worker."""

from __future__ import annotations

import os

import pytest

from charrnn import CharRNNError, Trainer, storage
from charrnn.rundir import RunDir
from conftest import Recorder, tiny_config


def test_every_file_of_a_run_is_one_the_run_directory_names(small_text, tmp_path):
    run = tmp_path / "run"
    rundir = RunDir(str(run))

    class SeesTheLock(Recorder):
        def on_chunk_end(self, step, logs):
            super().on_chunk_end(step, logs)
            assert os.path.exists(rundir.lock().path)  # held while the run trains

    Trainer(tiny_config(small_text, run, max_steps=4, eval_every=2)).fit(callbacks=[SeesTheLock()], verbose=0)
    named = {os.path.basename(path) for path in (rundir.vocab_path, rundir.metrics_path, rundir.log_dir,
                                                 rundir.checkpoint_dir("latest"), rundir.checkpoint_dir("best"))}
    assert set(os.listdir(run)) == named | {"config.json"}  # the lock is gone with the trainer
    files = rundir.read()
    assert files.config.max_steps == 4 and len(files.vocab) > 30 and files.origin is None


def test_config_json_is_read_once_per_start(small_text, tmp_path, monkeypatch):
    config = tiny_config(small_text, tmp_path / "run", max_steps=2)
    Trainer(config).fit(verbose=0)
    reads = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda path: reads.append(os.path.basename(path)) or real(path))
    resumed = Trainer(config.replace(max_steps=4))  # a resume: precision, checks and origin all need it
    resumed.fit(verbose=0)
    assert reads.count("config.json") == 1 and reads.count("vocab.json") == 1


def test_a_non_chief_worker_writes_to_a_scratch_directory_removed_after(tmp_path):
    with RunDir.scratch() as scratch:
        assert os.path.isdir(scratch.path) and os.path.basename(scratch.path).startswith("charrnn_worker_")
        scratch.create()
    assert not os.path.exists(scratch.path)


def test_a_path_that_is_a_file_is_no_run_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CharRNNError, match="is a file, not a directory"):
        RunDir(str(tmp_path / "file"))
    assert RunDir(str(tmp_path / "new")).read() is None and not (tmp_path / "new").exists()

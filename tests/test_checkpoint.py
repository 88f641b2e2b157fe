"""TensorFlow checkpoints of a run: a save killed after its files were written and before the
state file named it is found, restored, and in its turn deleted like any other; a checkpoint
that a running trainer deletes while a reader reads it is no damage."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from charrnn import Sampler, Trainer
from charrnn.run import checkpoint
from charrnn.run.trained import load_model
from charrnn.run.which import checkpoint_paths
from conftest import Crash, Recorder, assert_one_line_error, run_cli, tiny_config


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


def test_a_checkpoint_deleted_by_a_running_trainer_while_it_is_read_is_passed_over_quietly(small_text, tmp_path,
                                                                                          monkeypatch, capfd):
    """A sampler lists the checkpoints; the trainer saves two more and deletes the listed ones
    (max_to_keep); the sampler reads the newest instead, without a word: a race, not damage."""
    run = tmp_path / "run"
    Trainer(tiny_config(small_text, run, max_steps=6, checkpoint_every=1, max_to_keep=2)).fit(verbose=0)
    real = checkpoint.checkpoint_paths
    stale = [str(run / "ckpt" / "ckpt-4"), str(run / "ckpt" / "ckpt-3")]  # what the listing saw, before steps 5, 6
    listings = []

    def listed_before_the_last_saves(directory):
        listings.append(directory)
        return stale if directory.endswith("ckpt") and len(listings) <= 1 else real(directory)

    monkeypatch.setattr(checkpoint, "checkpoint_paths", listed_before_the_last_saves)
    capfd.readouterr()
    sampler = Sampler.from_checkpoint(str(run), which="latest")
    assert capfd.readouterr().err == ""  # no "skipping", no TensorFlow warnings
    monkeypatch.undo()
    newest = load_model(str(run), "latest")
    assert newest.path.endswith("ckpt-6")
    np.testing.assert_array_equal(sampler.model.dense.kernel.numpy(), newest.model.dense.kernel.numpy())


def test_the_latest_keep_max_to_keep_and_the_best_keep_one(tmp_path):
    """Retention counted on disk: ckpt/ holds the newest max_to_keep checkpoints, best/ only
    the one of the lowest validation loss (a checkpoint's files: .index and .data)."""
    from conftest import shakespeare

    text = tmp_path / "text.txt"
    text.write_text(shakespeare(1000), encoding="utf-8")  # 10 steps an epoch
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(text, run, epochs=3, eval_every=2, checkpoint_every=2, max_to_keep=2,
                                  learning_rate=0.01))
    recorder = Recorder()
    trainer.fit(callbacks=[recorder], verbose=0)
    assert sum(e[2]["val_loss"] == e[2]["best_val_loss"] for e in recorder.of("evaluate")) >= 3  # several bests
    latest = sorted(p.name for p in (run / "ckpt").glob("ckpt-*.index"))
    assert latest == ["ckpt-28.index", "ckpt-30.index"]
    best = [p.name for p in (run / "best").glob("*.index")]
    assert best == [f"ckpt-{trainer.evaluations.best_step}.index"]
    assert len(list((run / "best").glob("*.data-*"))) == 1 and len(list((run / "ckpt").glob("*.data-*"))) == 2


def test_which_names_a_checkpoint_by_ascii_digits_or_by_a_path_relative_to_here(trained_run, monkeypatch):
    """'²' and '٣' are digits to str.isdigit() but no step: refused in one line (int() would
    raise, or take another script's digit); a bare ckpt-N from inside ckpt/ is that file."""
    from charrnn import CharRNNError
    from charrnn.run.rundir import RunDir
    from charrnn.run.which import check_which, resolve_which

    for which in ("²", "٣", "1²"):
        with pytest.raises(CharRNNError, match="--which must be best, latest, list, a step number"):
            check_which(which)
    proc = run_cli("sample", f"--run_dir={trained_run}", "--which=²")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--which" in proc.stderr.strip()
    monkeypatch.chdir(trained_run / "ckpt")
    directory, step = resolve_which(RunDir(".."), "ckpt-3")
    assert (directory, step) == (".", 3)
    assert Sampler.from_checkpoint("..", which="ckpt-3").generate("T", 5, seed=0).startswith("T")


def test_which_list_and_a_step_not_kept_are_answered_before_tensorflow_loads(trained_run, tmp_path):
    """With a tensorflow that cannot be imported first on the path: --which=list prints the
    steps the run keeps (the directory's checkpoints, by kind), and a step it does not keep
    is refused naming them, by each tool that reads a run."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    env = {"PYTHONPATH": str(fake.parent)}
    steps = {kind: sorted(int(p.name[5:-6]) for p in (trained_run / kind).glob("ckpt-*.index")) for kind in
             ("ckpt", "best")}
    listed = run_cli("sample", f"--run_dir={trained_run}", "--which=list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (f"run directory {trained_run} keeps:\n  latest {', '.join(map(str, steps['ckpt']))}\n"
                             f"  best   {', '.join(map(str, steps['best']))}\n")
    kept = ", ".join(map(str, sorted(set(steps["ckpt"] + steps["best"]))))
    for tool, *more in (("sample",), ("eval",), ("export", f"--export_dir={tmp_path / 'out'}")):
        proc = run_cli(tool, f"--run_dir={trained_run}", "--which=100", *more, env=env)
        assert_one_line_error(proc, f"keeps no checkpoint of step 100; it keeps steps {kept}")
    assert not (tmp_path / "out").exists()


def test_the_manager_handed_to_the_preemption_handler_saves_as_the_checkpointer_does(tmp_path):
    """TensorFlow's preemption handler saves through `managers["latest"]` itself: that save
    refuses weights that are not finite as Checkpointer.save does, and writes nothing."""
    from charrnn import CharRNNError
    from charrnn.run.checkpoint import Checkpointer
    from charrnn.run.rundir import RunDir

    weight = tf.Variable([1.0, 2.0])
    checkpoints = Checkpointer(tf.train.Checkpoint(weight=weight), RunDir(str(tmp_path)), 2, finite=[weight])
    assert checkpoints.managers["latest"].save(checkpoint_number=3).endswith("ckpt-3")
    weight.assign([1.0, float("nan")])
    handed = checkpoints.managers["latest"]
    for save in (lambda: checkpoints.save("latest", 4), lambda: handed.save(checkpoint_number=4)):
        with pytest.raises(CharRNNError, match="the weights are not finite at step 4"):
            save()
    assert checkpoint_paths(str(tmp_path / "ckpt")) == [str(tmp_path / "ckpt" / "ckpt-3")]

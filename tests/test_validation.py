"""Validation-driven training: periodic evaluation, the best checkpoint, early stopping, charrnn-eval."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest

from charrnn import CharRNNError, Sampler, TrainConfig, Trainer
from charrnn.run.trained import load_model
from charrnn.training.metrics import read_metrics
from conftest import assert_one_line_error, run_cli, tiny_config


@pytest.fixture
def diverging_text(tmp_path):
    """Training text cycles a->b->c; the validation tail runs backwards (c->b->a), so the more
    the model learns, the worse its validation loss gets: the best checkpoint is an early one."""
    path = tmp_path / "abc.txt"
    path.write_text("abc" * 900 + "cba" * 100)
    return path


def _config(text, run_dir, **overrides) -> TrainConfig:
    values = dict(max_steps=20, epochs=100, eval_every=5, checkpoint_every=5, max_to_keep=1, learning_rate=0.02)
    values.update(overrides)
    return tiny_config(text, run_dir, **values)


def test_eval_every_logs_validation_and_keeps_the_best_checkpoint_apart(diverging_text, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_config(diverging_text, run))
    history = trainer.fit()
    evals = {m["step"]: m["val_loss"] for m in read_metrics(run) if m.get("val_loss") is not None}
    assert sorted(evals) == [5, 10, 15, 20]
    assert all(m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2)) for m in read_metrics(run) if "val_bpc" in m)
    assert history.history["val_loss"][-1] == evals[20]
    best_step = min(evals, key=evals.get)
    assert best_step == 5 and evals[20] > evals[5]  # the fixture's point: validation gets worse
    assert trainer.best_val_loss == pytest.approx(evals[5])
    # max_to_keep=1 keeps only the newest rolling checkpoint; the best one is kept apart.
    assert sorted(os.listdir(run / "ckpt")) == ["checkpoint", "ckpt-20.data-00000-of-00001", "ckpt-20.index"]
    assert sorted(os.listdir(run / "best")) == ["checkpoint", "ckpt-5.data-00000-of-00001", "ckpt-5.index"]

    assert load_model(str(run))[3].endswith(os.path.join("best", "ckpt-5"))  # best is the default
    assert load_model(str(run), "latest")[3].endswith(os.path.join("ckpt", "ckpt-20"))
    weights = {which: Sampler.from_checkpoint(str(run), which=which).model.dense.kernel.numpy()
               for which in ("best", "latest", None)}
    np.testing.assert_array_equal(weights[None], weights["best"])
    np.testing.assert_array_equal(weights["latest"], trainer.model.dense.kernel.numpy())
    assert not np.allclose(weights["best"], weights["latest"])


def test_patience_stops_early_and_a_rerun_stays_stopped(diverging_text, tmp_path, capsys):
    config = _config(diverging_text, tmp_path / "run", max_steps=100, patience=2)
    trainer = Trainer(config)
    history = trainer.fit()
    # Evaluations at 5 (best), 10 and 15 (no better): patience 2 runs out at step 15.
    assert int(trainer.step.numpy()) == 15 and history.epoch == [0]
    assert "Stopped early at step 15: no lower validation loss in 2 evaluations" in capsys.readouterr().out
    val_steps = [m["step"] for m in read_metrics(tmp_path / "run") if m.get("val_loss") is not None]
    assert val_steps == [5, 10, 15, 15]  # the early stop's epoch line reuses the evaluation at 15
    assert Trainer(config).fit().epoch == []
    # More patience on the same run continues it from where it stopped.
    more = Trainer(config.replace(patience=4))
    more.fit()
    assert int(more.step.numpy()) == 25


def test_charrnn_eval_reproduces_the_validation_loss_and_reads_any_text(diverging_text, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(diverging_text, run)).fit()
    evals = {m["step"]: m["val_loss"] for m in read_metrics(run) if m.get("val_loss") is not None}

    proc = run_cli("eval", f"--run_dir={run}", "--split=val", "--which=best")
    assert proc.returncode == 0, proc.stderr
    match = re.match(r"loss (\S+) nats/char, (\S+) bits/char on 300 characters", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) == pytest.approx(evals[5], abs=1e-4)
    assert float(match.group(2)) == pytest.approx(evals[5] / math.log(2), abs=1e-4)
    assert proc.stdout.strip().endswith("ckpt-5")

    other = tmp_path / "other.txt"
    other.write_text("abc" * 50)
    proc = run_cli("eval", f"--run_dir={run}", f"--data={other}", "--which=latest")
    assert proc.returncode == 0 and "on 150 characters (all of" in proc.stdout, proc.stderr
    other_loss = float(proc.stdout.split()[1])
    assert other_loss < evals[20]  # the trained direction is the easy one

    bad = tmp_path / "bad.txt"
    bad.write_text("abcxyz" * 50)
    proc = run_cli("eval", f"--run_dir={run}", f"--data={bad}")
    assert_one_line_error(proc, "3 character(s) of")  # before TensorFlow loads: no line of its own
    assert "are not in the model's vocabulary: 'x', 'y', 'z'; pass --unknown_chars=skip" in proc.stderr
    proc = run_cli("eval", f"--run_dir={run}", f"--data={bad}", "--which=latest", "--unknown_chars=skip")
    assert proc.returncode == 0, proc.stderr
    assert "on 150 characters (all of" in proc.stdout  # the "abc" of each "abcxyz", scored as the text above
    assert "150 characters outside the vocabulary skipped ('x' x50, 'y' x50, 'z' x50)" in proc.stdout
    assert float(proc.stdout.split()[1]) == pytest.approx(other_loss, abs=1e-4)


def test_the_validation_split_of_a_text_that_changed_is_refused(diverging_text, tmp_path):
    """The checkpoint holds its text's fingerprint: after the file changed (edited, reversed),
    its last val_fraction is not the run's validation split, and eval says so."""
    run = tmp_path / "run"
    Trainer(_config(diverging_text, run, max_steps=5)).fit(verbose=0)
    diverging_text.write_text(diverging_text.read_text()[::-1])
    proc = run_cli("eval", f"--run_dir={run}", "--split=val")
    assert_one_line_error(proc, "is not the text")
    assert "its last 0.1 is not the run's validation split; evaluate it with --split=all" in proc.stderr


def test_which_best_without_a_best_checkpoint_is_a_clear_error(small_text, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(small_text, run, max_steps=2, val_fraction=0)).fit()
    assert load_model(str(run))[3].endswith("ckpt-2")  # no best: the default falls back to latest
    with pytest.raises(CharRNNError, match="has no best checkpoint .*; use --which=latest"):
        Sampler.from_checkpoint(str(run), which="best")
    with pytest.raises(CharRNNError, match="run directory .*missing does not exist"):
        load_model(str(tmp_path / "missing"))

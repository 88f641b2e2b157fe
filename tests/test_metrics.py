"""metrics.jsonl across a crash: lines written past the last checkpoint are dropped when the
run resumes from it, so that every step is logged once, as in a run that never crashed;
on a local disk (appended to) and on a filesystem that cannot append (ram://, as gs://)."""

from __future__ import annotations

import json

import pytest

from charrnn import Trainer
from charrnn.training.metrics import read_metrics
from conftest import Crash, CrashAt, logged, tiny_config


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_crash_between_two_checkpoints_logs_each_step_once(small_text, tmp_path, where):
    run = str(tmp_path / "run") if where == "local" else f"ram://{tmp_path}/run"
    config = tiny_config(small_text, run, max_steps=11, checkpoint_every=4, log_every=1, eval_every=3)
    reference = config.replace(run_dir=str(tmp_path / "reference"))
    Trainer(reference).fit(verbose=0)

    with pytest.raises(Crash):
        Trainer(config).fit(callbacks=[CrashAt(7)], verbose=0)  # after the checkpoint of step 4
    # Steps 5 to 7 and the evaluation at 6 are logged, though the newest checkpoint is step 4's
    # (appended at once on a local disk; on ram:// the run's end rewrote the file).
    assert sorted(logged(run, "loss")) == list(range(1, 8)) and sorted(logged(run, "val_loss")) == [3, 6]

    resumed = Trainer(config)
    assert resumed.restored_from.endswith("ckpt-4")
    resumed.fit(verbose=0)
    assert read_metrics(run) == read_metrics(reference.run_dir)
    assert sorted(logged(run, "loss")) == list(range(1, 12))


def test_a_step_no_integer_can_hold_is_a_damaged_line(tmp_path):
    """{"step": 1e400} reads as infinity: dropped as damage, not a crash of the resume."""
    from charrnn.training.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 1e400, "loss": 1.0}\n{"step": 2, "loss": 1.5}\n')
    MetricsLog(str(path), 2).on_train_end({})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]

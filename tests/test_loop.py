"""The training loop's cadence (charrnn.training.loop), tested without TensorFlow or a model: a fake
trainer with plain numbers stands in for charrnn.Trainer."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest

from charrnn.run.records import EvalRecord
from charrnn.training.cadence import Cadence
from charrnn.training.callbacks import Callback
from charrnn.training.loop import Controller
from charrnn.training.stopping import Stopped


class FakeTrainer:
    """Trainable with plain numbers: the loss of step s is 1/s, the validation loss at step
    s is `val(s)`. It is its own Checkpoints too: a save of the latest keeps a copy of the
    state, as a checkpoint would; a save of the best, its step."""

    def __init__(self, cadence: Cadence, val=lambda step: 1.0 / step):
        self.cadence, self.val = cadence, val
        self.step, self.epoch, self.finalized, self.loss_sum = 0, 0, -1, 0.0
        self.record = [-1, math.nan, -1, math.inf, 0]  # last step, last loss, best step, best loss, since best
        self.stop_training, self.stop_reason = False, None
        self.saved: dict[int, dict] = {}
        self.best_saves: list[int] = []
        self.trained: list[tuple[int, int]] = []  # (first step, steps) of each train() call
        self.stop_in_evaluation = False

    def _state(self) -> dict:
        return {k: copy.deepcopy(getattr(self, k)) for k in ("step", "epoch", "finalized", "loss_sum", "record")}

    def restore(self, step: int) -> FakeTrainer:
        """A new trainer resumed from the checkpoint of `step`, as after a crash."""
        resumed = FakeTrainer(self.cadence, self.val)
        resumed.__dict__.update(copy.deepcopy(self.saved[step]))
        resumed.saved = dict(self.saved)
        return resumed

    def position(self):
        epoch = self.epoch
        if self.step == (epoch + 1) * self.cadence.steps_per_epoch and self.finalized == self.step:
            epoch += 1
        return self.step, epoch

    def begin_epoch(self, epoch):
        self.epoch = epoch
        if self.step == epoch * self.cadence.steps_per_epoch:
            self.loss_sum = 0.0

    def train(self, num_steps):
        assert 1 <= num_steps <= self.cadence.steps_per_loop
        self.trained.append((self.step + 1, num_steps))
        losses = [1.0 / s for s in range(self.step + 1, self.step + num_steps + 1)]
        self.step += num_steps
        self.loss_sum += sum(losses)
        self.last_losses = losses
        return losses

    def train_logs(self):
        return {"learning_rate": 0.01, "grad_norm": 2.0}

    def validate(self, should_stop):
        if self.stop_in_evaluation:
            self.stop_training = True
        if should_stop():
            raise Stopped
        loss = self.val(self.step)
        return None if loss is None else {"loss": loss, "bpc": loss / math.log(2)}

    def record_evaluation(self, step, val_loss):
        r = self.record
        r[0], r[1] = step, val_loss
        if val_loss < r[3]:
            r[2], r[3], r[4] = step, val_loss, 0
            return True
        r[4] += 1
        return False

    @property
    def evaluations(self):
        return EvalRecord(*self.record)

    def epoch_train_loss(self):
        return self.loss_sum / max(self.step - self.epoch * self.cadence.steps_per_epoch, 1)

    def last_finalized(self):
        return self.finalized

    def finalize_epoch(self, step):
        self.finalized = step

    def save(self, which, step):
        assert step == self.step  # the state of the step it names
        if which == "best":
            self.best_saves.append(step)
        else:
            self.saved[step] = self._state()
        return f"{which}/ckpt-{step}"


class Recorder(Callback):
    """Every call, in order, with its step and logs."""

    def __init__(self):
        self.events: list[tuple] = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.position()[0]))

    def on_chunk_end(self, step, logs):
        self.events.append(("chunk", step, round(logs["loss"], 12)))

    def on_evaluate(self, step, logs):
        self.events.append(("evaluate", step, logs["val_loss"]))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch", epoch, round(logs["loss"], 12), logs.get("val_loss")))

    def on_train_end(self, logs):
        self.events.append(("end",))


def test_the_loop_module_needs_no_tensorflow():
    code = ("import sys, charrnn.training.loop, charrnn.training.callbacks, charrnn.training.console; "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize("values", [
    dict(steps_per_epoch=100, total_steps=250, steps_per_loop=10, checkpoint_every=25, eval_every=30, log_every=50),
    dict(steps_per_epoch=37, total_steps=80, steps_per_loop=7, checkpoint_every=11, log_every=4, sample_every=9),
    dict(steps_per_epoch=10, total_steps=10, steps_per_loop=50, checkpoint_every=1000, log_every=1000),
])
def test_chunks_end_at_every_point_and_are_never_longer_than_steps_per_loop(values):
    cadence = Cadence(**values)
    for epoch in range(math.ceil(cadence.total_steps / cadence.steps_per_epoch)):
        step, end = epoch * cadence.steps_per_epoch, cadence.epoch_end(epoch)
        ends = []
        while step < end:
            size = cadence.chunk(step, end)
            assert 1 <= size <= cadence.steps_per_loop
            step += size
            ends.append(step)
        assert ends[-1] == end
        points = {s for s in range(epoch * cadence.steps_per_epoch + 1, end + 1)
                  if any(every and s % every == 0 for every in
                         (cadence.checkpoint_every, cadence.eval_every, cadence.log_every, cadence.sample_every))}
        assert points <= set(ends)
        # As few calls as that allows: a chunk is cut short only by a point or the epoch's end.
        for a, b in zip([epoch * cadence.steps_per_epoch] + ends, ends):
            assert b - a == cadence.steps_per_loop or b in points or b == end


def test_the_run_evaluates_saves_and_reports_on_schedule():
    cadence = Cadence(steps_per_epoch=10, total_steps=25, steps_per_loop=4, checkpoint_every=6, eval_every=5,
                      log_every=100)
    trainer, recorder = FakeTrainer(cadence), Recorder()
    history = Controller(trainer, cadence, [recorder], state=trainer, checkpoints=trainer).run()
    assert [(s.epoch, s.step) for s in history] == [(1, 10), (2, 20), (3, 25)]
    assert history[0].train_loss == pytest.approx(sum(1 / s for s in range(1, 11)) / 10)
    assert history[2].train_loss == pytest.approx(sum(1 / s for s in range(21, 26)) / 5)
    assert [e[1] for e in recorder.events if e[0] == "evaluate"] == [5, 10, 15, 20, 25]
    assert sorted(trainer.saved) == [6, 10, 12, 18, 20, 24, 25]  # every 6 steps and at each epoch's end
    assert trainer.best_saves == [5, 10, 15, 20, 25]  # 1/step: each evaluation is a new best
    chunks = [e[1] for e in recorder.events if e[0] == "chunk"]
    assert chunks == [4, 5, 6, 10, 12, 15, 18, 20, 24, 25]
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "begin" and kinds[-1] == "end" and kinds.count("epoch") == 3
    # An epoch's end: its last chunk, its evaluation, then the epoch.
    assert recorder.events[kinds.index("epoch") - 2:kinds.index("epoch") + 1] == [
        ("chunk", 10, round(sum(1 / s for s in range(7, 11)) / 4, 12)), ("evaluate", 10, 0.1),
        ("epoch", 1, round(history[0].train_loss, 12), 0.1)]
    assert trainer.stop_reason is None
    # The last epoch is finalised too, in the state and in its checkpoint: a rerun, or a
    # resume from that checkpoint, has nothing left to do or report.
    assert trainer.finalized == 25 and trainer.saved[25]["finalized"] == 25
    for finished in (trainer, trainer.restore(25)):
        again = Recorder()
        assert Controller(finished, cadence, [again], state=finished, checkpoints=finished).run() == []
        assert [e[0] for e in again.events] == ["begin", "end"]


@pytest.mark.parametrize("stop_at", [9, 10, 11, 20])
def test_a_stop_at_an_epochs_last_step_loses_none_of_its_reports(stop_at):
    """At step 10, the first epoch's last: evaluated, then stopped with a checkpoint that
    records the epoch as not yet finalised, so the resume reports it before going on to
    the second epoch; every event comes once across the two parts, in the uninterrupted
    run's order. Steps 9 and 11, on either side, for contrast; step 20, the run's last: the
    resume still has its last epoch to finalise and report."""
    cadence = Cadence(steps_per_epoch=10, total_steps=20, checkpoint_every=100, eval_every=5)

    class Stop(Callback):
        def on_train_begin(self, trainer):
            self.trainer = trainer

        def on_chunk_end(self, step, logs):
            if step == stop_at:
                self.trainer.stop_training, self.trainer.stop_reason = True, "asked"

    reference, everything = FakeTrainer(cadence), Recorder()
    Controller(reference, cadence, [everything], state=reference, checkpoints=reference).run()
    trainer, before = FakeTrainer(cadence), Recorder()
    history = Controller(trainer, cadence, [Stop(), before], state=trainer, checkpoints=trainer).run()
    assert trainer.step == stop_at and sorted(trainer.saved) == {9: [9], 10: [10], 11: [10, 11], 20: [10, 20]}[stop_at]
    assert [s.epoch for s in history] == ([1] if stop_at > 10 else [])
    assert trainer.saved[stop_at]["finalized"] == (10 if stop_at > 10 else -1)
    resumed, after = trainer.restore(stop_at), Recorder()
    Controller(resumed, cadence, [after], state=resumed, checkpoints=resumed).run()
    # Every event once, across the two parts: the reference run's, in order.
    assert before.events[1:-1] + after.events[1:-1] == everything.events[1:-1]
    assert [e[1] for e in before.events + after.events if e[0] == "epoch"] == [1, 2]


@pytest.mark.parametrize("eval_every,crash_at", [(5, 6), (5, 10), (5, 12), (5, 18), (3, 6), (3, 12)])
def test_a_resume_from_any_checkpoint_repeats_nothing_and_misses_nothing(eval_every, crash_at):
    """Including checkpoints at evaluation points (eval_every=3): the checkpoint holds that
    evaluation's record, so the resumed run does not evaluate (nor report) it again."""
    cadence = Cadence(steps_per_epoch=10, total_steps=25, steps_per_loop=4, checkpoint_every=6, eval_every=eval_every,
                      log_every=2)
    reference, recorder = FakeTrainer(cadence), Recorder()
    Controller(reference, cadence, [recorder], state=reference, checkpoints=reference).run()
    # The events after the checkpoint (the crash loses what came later; the resumed run redoes it).
    cut = next(i for i, e in enumerate(recorder.events) if e[0] == "chunk" and e[1] == crash_at) + 1
    while recorder.events[cut][0] == "evaluate" and recorder.events[cut][1] == crash_at and crash_at % 10:
        cut += 1  # evaluated before that checkpoint was saved
    if crash_at % 10 == 0:  # an epoch's end: its evaluation and report came before the save
        cut = next(i for i, e in enumerate(recorder.events) if e[0] == "epoch" and e[3] is not None
                   and e[1] == crash_at // 10) + 1
    resumed, rest = reference.restore(crash_at), Recorder()
    Controller(resumed, cadence, [rest], state=resumed, checkpoints=resumed).run()
    assert rest.events[1:] == recorder.events[cut:]
    assert resumed._state() == reference._state()


def test_patience_stops_the_run_and_a_rerun_stays_stopped():
    cadence = Cadence(steps_per_epoch=100, total_steps=100, checkpoint_every=50, eval_every=5, patience=2)
    trainer = FakeTrainer(cadence, val=lambda step: float(step))  # worse every time after the first
    history = Controller(trainer, cadence, state=trainer, checkpoints=trainer).run()
    assert trainer.step == 15 and trainer.stop_reason == "patience" and history[-1].val_loss == 15.0
    assert history[-1].fraction == 0.15  # the epoch it ended is said to be partial
    assert trainer.evaluations.best_step == 5 and trainer.best_saves == [5]  # the best kept, not the worse ones
    assert Controller(trainer, cadence, state=trainer, checkpoints=trainer).run() == [] and trainer.step == 15


def test_the_time_budget_counts_training_only_and_not_the_first_chunk():
    ticks = iter(range(10**6))
    cadence = Cadence(steps_per_epoch=100, total_steps=100, checkpoint_every=1000, time_budget=3)
    trainer = FakeTrainer(cadence, val=lambda step: None)
    controller = Controller(trainer, cadence, state=trainer, checkpoints=trainer, clock=lambda: float(next(ticks)))
    history = controller.run()
    # One tick per chunk: the first (tracing) is free, then three chunks of one second.
    assert trainer.step == 4 and controller.train_seconds == 3 and trainer.stop_reason == "time_budget"
    assert history[-1].step == 4 and 4 in trainer.saved and history[-1].fraction == 0.04


def test_a_callback_stops_the_run_with_a_checkpoint_and_a_rerun_continues():
    cadence = Cadence(steps_per_epoch=10, total_steps=20, checkpoint_every=100)

    class StopAt7(Callback):
        def on_train_begin(self, trainer):
            self.trainer = trainer

        def on_chunk_end(self, step, logs):
            if step == 7:
                self.trainer.stop_training, self.trainer.stop_reason = True, "enough"

    trainer = FakeTrainer(cadence)
    history = Controller(trainer, cadence, [StopAt7()], state=trainer, checkpoints=trainer).run()
    assert history == []  # stopped before the first epoch's end
    assert trainer.step == 7 and sorted(trainer.saved) == [7] and trainer.stop_reason == "enough"
    resumed = trainer.restore(7)
    assert [s.step for s in Controller(resumed, cadence, state=resumed, checkpoints=resumed).run()] == [10, 20]
    assert resumed.stop_reason is None


def test_a_stop_during_an_evaluation_saves_without_it_and_the_resume_evaluates_first():
    cadence = Cadence(steps_per_epoch=20, total_steps=20, checkpoint_every=100, eval_every=5)
    trainer = FakeTrainer(cadence)
    trainer.stop_in_evaluation = True
    Controller(trainer, cadence, state=trainer, checkpoints=trainer).run()
    assert trainer.step == 5 and sorted(trainer.saved) == [5] and trainer.saved[5]["record"][0] == -1
    assert trainer.stop_reason == "stop_requested"
    resumed, recorder = trainer.restore(5), Recorder()
    Controller(resumed, cadence, [recorder], state=resumed, checkpoints=resumed).run()
    assert recorder.events[1] == ("evaluate", 5, 0.2)


def test_an_epoch_finalised_after_a_resume_at_its_evaluation_logs_every_metric_without_reporting_it_again():
    """A run stopped right after evaluating at step 15 (patience then exhausted), resumed in
    a new process: the epoch it finalises at 15 carries the evaluation's every metric (loss
    and bpc, measured again since the record keeps the loss only), and no evaluation is
    reported twice."""
    cadence = Cadence(steps_per_epoch=100, total_steps=100, checkpoint_every=5, eval_every=5, patience=2)
    trainer = FakeTrainer(cadence, val=lambda step: float(step))
    Controller(trainer, cadence, state=trainer, checkpoints=trainer).run()
    resumed = trainer.restore(15)
    resumed.finalized = -1  # as if stopped before the epoch was finalised
    recorder = Recorder()
    history = Controller(resumed, cadence, [recorder], state=resumed, checkpoints=resumed).run()
    assert [(s.step, s.val_metrics) for s in history] == [(15, {"loss": 15.0, "bpc": 15.0 / math.log(2)})]
    assert [e for e in recorder.events if e[0] in ("evaluate", "epoch")] == [("epoch", 1, round(
        sum(1 / s for s in range(1, 16)) / 15, 12), 15.0)]

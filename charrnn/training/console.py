"""The console's side of a training run, on stdout: `describe` (what a run shows as it
starts: its corpus, plan and model), and the observers `ProgressLogger` (that description,
progress, evaluations and how the run ended) and `SamplePrinter` (samples while training).
No TensorFlow here."""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from charrnn.config import TrainConfig
from charrnn.errors import one_line
from charrnn.training.callbacks import Callback, TrainerView


class RunPlan(Protocol):
    """What `describe` reads of a run (charrnn.Trainer is one)."""

    config: TrainConfig
    data: Any  # charrnn.text.traindata.TrainData: num_chars, num_files, distinct
    vocab: Any  # charrnn.text.vocab.Vocabulary
    steps_per_epoch: int
    total_steps: int
    distribution: Any  # charrnn.training.distribute.Distribution: where() it computes
    precision_reason: str
    model: Any  # charrnn.nn.model.CharRNN: its summary_table(batch_size)

    @property
    def origin(self) -> dict | None:
        """Where a fine-tuned run's first weights came from (None for other runs)."""


def describe(run: RunPlan) -> str:
    """What the console shows as a run starts: the corpus and plan, a fine-tuned run's
    origin, the model's table."""
    c, o, data = run.config, run.origin, run.data
    name = one_line(c.data)  # a name the user gave, shown as one line
    files = f"{data.num_files} files" if data.num_files != 1 else "1 file"
    budget = f" unless the --time_budget of {c.time_budget:g} s ends it first" if c.time_budget else ""
    distinct = f"{data.distinct} distinct" + (
        f" ({len(run.vocab)} with the run's vocabulary)" if data.distinct != len(run.vocab) else "")
    lines = [f"Corpus {name}: {data.num_chars:,} characters ({files}), {distinct}; "
             f"{run.steps_per_epoch} steps per epoch, "
             f"{run.total_steps} steps in all{budget}; {run.distribution.where()}; "
             f"precision {c.mixed_precision} ({run.precision_reason})"]
    if o is not None:
        lines.append(f"Fine-tuning from {one_line(o['checkpoint'])}: its {o['vocab_size_before']} characters keep "
                     f"their weights, {o['vocab_size'] - o['vocab_size_before']} new one(s) from {name}")
    return "\n".join([*lines, run.model.summary_table(c.batch_size)])


class ProgressLogger(Callback):
    """The console: `header` as the run starts (its `describe`); `verbose=1` a live line on
    a terminal (redrawn in place, its least useful parts left out so that it never wraps;
    where even its step count does not fit, one line per `log_every` steps instead),
    `verbose=2` one line per `log_every` steps (the interval's mean loss); evaluations, epoch
    ends (one a time budget or patience ended early says so) and how the run ended, either way.
    No escape sequences: a terminal that knows none (TERM=dumb) shows the same.

    The rate and the ETA cover this whole invocation (not just the current epoch), and the
    epoch count is the run's own (charrnn.training.cadence.Cadence: max_steps included). When a
    --time_budget ends the run before its last step, the totals are the budget's: the step
    and epoch it will end at, at this invocation's training rate (`~`), and the percentage
    is the budget's time spent.
    """

    _trainer: TrainerView  # from on_train_begin

    def __init__(self, verbose: int = 1, header: str = ""):
        self.live, self.header = verbose == 1, header

    def on_train_begin(self, trainer: TrainerView) -> None:
        self._trainer, self._cadence = trainer, trainer.cadence
        self.total_steps, self.epochs = trainer.cadence.total_steps, trainer.cadence.num_epochs
        self._start_step, self._step = trainer.position()[0], trainer.position()[0]
        self._start, self._last_draw, self._train_seconds, self._timed_steps = time.monotonic(), 0.0, 0.0, 0
        self._interval_sum = self._interval_steps = 0.0
        if self.header:
            print(self.header, flush=True)
        if trainer.restored_from is not None:
            step, epoch = trainer.position()
            print(f"Resumed from {one_line(str(trainer.restored_from))} at step {step}, epoch {epoch + 1}", flush=True)

    def rate(self, step: int) -> float:
        """Steps per second since this invocation started (evaluations and saves included)."""
        elapsed = time.monotonic() - self._start
        return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def _plan(self, step: int) -> tuple[str, str, float]:
        """(epochs, steps, fraction done) of the run as it will really end: its own totals, or,
        when the time budget ends it first, the budget's (`?` until a training rate is known)."""
        budget = self._cadence.time_budget
        if budget is None:
            return str(self.epochs), str(self.total_steps), step / self.total_steps
        if self._train_seconds == 0:
            return "?", "?", 0.0
        train_rate = self._timed_steps / self._train_seconds
        end = step + round(max(budget - self._train_seconds, 0.0) * train_rate)
        if end >= self.total_steps:
            return str(self.epochs), str(self.total_steps), step / self.total_steps
        return f"~{math.ceil(end / self._cadence.steps_per_epoch)}", f"~{end}", min(self._train_seconds / budget, 1.0)

    def line(self, epoch: int, step: int, loss: float, width: int | None = None) -> str:
        """The progress line; with `width`, its least useful parts are left out until it fits
        ("" when not even one fits: a part is never cut)."""
        rate = self.rate(step)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        if self._cadence.time_budget is not None:  # the budget may end the run first
            eta = min(eta, max(self._cadence.time_budget - self._train_seconds, 0.0))
        epochs, steps, done = self._plan(step)
        # In the order shown; the number is the rank of what goes first when space is short.
        parts = [(f"epoch {epoch + 1}/{epochs}", 3), (f"step {step}/{steps}", 6),
                 (f"{100 * done:.0f}%", 5), (f"loss {loss:.4f}", 4),
                 (f"{rate:.2f} steps/s", 1), (f"elapsed {_hms(time.monotonic() - self._start)}", 0),
                 (f"ETA {_hms(eta)}", 2)]
        while True:
            line = " ".join(text for text, _ in parts)
            if width is None or len(line) < width:
                return line
            if len(parts) == 1:
                return ""
            parts.remove(min(parts, key=lambda part: part[1]))

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        previous, self._step = self._step, step
        if "steps_per_sec" in logs:  # not the first chunk's (it traces the step)
            self._train_seconds += (step - previous) / logs["steps_per_sec"]
            self._timed_steps += step - previous
        self._interval_sum += logs["loss"] * (step - previous)
        self._interval_steps += step - previous
        epoch = (step - 1) // self._cadence.steps_per_epoch
        if self.live and (time.monotonic() - self._last_draw > 0.5 or step == self.total_steps):
            self._last_draw = time.monotonic()
            text = self.line(epoch, step, logs["loss"], shutil.get_terminal_size().columns)
            if text:
                sys.stdout.write(_clear_line() + text)
                sys.stdout.flush()
            else:  # a terminal too narrow for a live line: lines of their own from now on
                sys.stdout.write(_clear_line())
                self.live = False
                # Their means start with this chunk (a live line keeps no interval).
                self._interval_sum, self._interval_steps = logs["loss"] * (step - previous), step - previous
        if not self.live and self._cadence.log_due(step):
            loss = self._interval_sum / self._interval_steps
            self._interval_sum = self._interval_steps = 0.0
            print(self.line(epoch, step, loss), flush=True)

    def _print(self, text: str) -> None:
        """A line of its own, over the live line if there is one."""
        print(_clear_line() + text if self.live else text, flush=True)

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        best = " (best)" if logs["val_loss"] == logs["best_val_loss"] else ""
        self._print(f"step {step} val_loss {logs['val_loss']:.4f} val_bpc {logs['val_bpc']:.3f}{best}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        val = f" val_loss {logs['val_loss']:.4f} val_bpc {logs['val_bpc']:.3f}" if "val_loss" in logs else ""
        start, end = (epoch - 1) * self._cadence.steps_per_epoch, self._cadence.epoch_end(epoch - 1)
        partial = f" (ended early: {self._step - start} of its {end - start} steps)" if self._step < end else ""
        self._print(f"epoch {epoch}/{self._plan(self._step)[0]}{partial} step {self._step} loss {logs['loss']:.4f}"
                    f"{val} {logs['steps_per_sec']:.2f} steps/s")

    def on_train_end(self, logs: dict[str, float]) -> None:
        t = self._trainer
        step, reason = t.position()[0], t.stop_reason
        if reason == "patience":
            best = t.evaluations
            print(f"Stopped early at step {step}: no lower validation loss in {t.config.patience} evaluations; "
                  f"the best, {best.best_loss:.4f} at step {best.best_step}, is in {t.checkpoint_path('best')}",
                  flush=True)
        elif reason == "time_budget":
            print(f"Time budget of {self._cadence.time_budget:g} s reached at step {step}; run the same command "
                  "again to continue", flush=True)
        elif reason is not None and not reason.startswith("SIG"):  # signals: the tool reports them
            print(f"Stopped at step {step} ({reason}); checkpoint saved to "
                  f"{one_line(str(t.checkpoint_path('latest')))}; run the same command again to continue", flush=True)


class SamplePrinter(Callback):
    """Prints `sample(step)` (charrnn.generation.sampler.TrainingSamples.at) every `--sample_every` steps."""

    _trainer: TrainerView  # from on_train_begin

    def __init__(self, sample: Callable[[int], str], live: bool = False):
        self.sample, self.live = sample, live

    def on_train_begin(self, trainer: TrainerView) -> None:
        self._trainer = trainer

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        if self._trainer.cadence.sample_due(step):
            prefix = _clear_line() if self.live else ""
            print(f"{prefix}--- sample at step {step} ---\n{self.sample(step)}\n---", flush=True)


def _clear_line() -> str:
    """Back to the start of the line, blanked with spaces: ESC[K would print raw on a terminal
    that knows no escape sequences (TERM=dumb: Emacs' shell, some CI consoles)."""
    return "\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

"""When things happen in a run, as a function of the step alone (`Cadence`). Plain Python,
no TensorFlow."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When things happen, as a function of the step alone.

    `total_steps` is the last step of the run (epochs and max_steps applied); `eval_every`,
    `patience` and `time_budget` are None when unset.
    """

    steps_per_epoch: int
    total_steps: int
    steps_per_loop: int = 1
    checkpoint_every: int = 250
    eval_every: int | None = None
    log_every: int = 50
    patience: int | None = None
    time_budget: float | None = None
    sample_every: int | None = None

    @property
    def num_epochs(self) -> int:
        """Epochs this run trains (a partial last one counts)."""
        return max(math.ceil(self.total_steps / self.steps_per_epoch), 1)

    def epoch_end(self, epoch: int) -> int:
        """The step that ends (0-based) `epoch`: its last step, or the run's."""
        return min((epoch + 1) * self.steps_per_epoch, self.total_steps)

    def chunk(self, step: int, epoch_end: int) -> int:
        """Steps of the next compiled call from `step`: at most steps_per_loop, never past the
        epoch's end or the next checkpoint, log, evaluation or sample point, so that those
        land on the same steps whatever steps_per_loop is (and a callback sees each)."""
        size = min(self.steps_per_loop, epoch_end - step, self.checkpoint_every - step % self.checkpoint_every)
        for every in (self.log_every, self.eval_every, self.sample_every):
            if every is not None:
                size = min(size, every - step % every)
        return size

    def evaluation_due(self, step: int, epoch_end: int) -> bool:
        """Whether `step` is an eval_every point inside its epoch (epoch ends are evaluated
        when the epoch is finalised)."""
        return self.eval_every is not None and 0 < step < epoch_end and step % self.eval_every == 0

    def checkpoint_due(self, step: int, epoch_end: int) -> bool:
        """Whether `step` is a checkpoint_every point inside its epoch (epoch ends are saved
        when the epoch is finalised)."""
        return 0 < step < epoch_end and step % self.checkpoint_every == 0

    def log_due(self, step: int) -> bool:
        """Whether `step` is a log_every point (a chunk ends at each: see `chunk`)."""
        return step % self.log_every == 0

    def sample_due(self, step: int) -> bool:
        """Whether `step` is a sample_every point (a chunk ends at each: see `chunk`)."""
        return self.sample_every is not None and step % self.sample_every == 0

    def patience_exhausted(self, evaluations_since_best: int) -> bool:
        return self.patience is not None and evaluations_since_best >= self.patience

    def out_of_time(self, train_seconds: float) -> bool:
        return self.time_budget is not None and train_seconds >= self.time_budget

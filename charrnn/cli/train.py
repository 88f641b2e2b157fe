"""charrnn-train: train a character-level LSTM; run it again to resume.

Every TrainConfig field is a flag, listed below; --preset=cpu_small is a recipe for a
laptop's CPU, --preset=seed the case study's settings; --flagfile reads flags from a file.
"""

from __future__ import annotations

import shlex

from charrnn.cli import tool
from charrnn.config import TrainConfig
from charrnn.run import preflight

tool.define_dataclass_flags(TrainConfig)
tool.define_preset_flag()


def check() -> None:
    preflight.check_train(tool.dataclass_from_flags(TrainConfig))


def main() -> None:
    from charrnn.training.trainer import Trainer  # TensorFlow: after the flags are parsed

    config = tool.dataclass_from_flags(TrainConfig)
    trainer = Trainer(config)
    origin = f" (fine-tuned from {trainer.origin['checkpoint']})" if trainer.origin is not None else ""
    trainer.fit()
    print(f"Done at step {int(trainer.step.numpy())}{origin}. Sample with: {tool.command('charrnn-sample')} "
          f"--run_dir={shlex.quote(config.run_dir)}")


def run() -> None:
    tool.run(main, __doc__, check, keep_going=True)  # a run whose console goes away trains on


if __name__ == "__main__":
    run()

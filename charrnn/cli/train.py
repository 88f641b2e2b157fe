"""charrnn-train: train a character-level LSTM; run it again to resume.

Every TrainConfig field is a flag (see --help); --preset=seed gives the case study's
settings and --flagfile reads flags from a file.
"""

from __future__ import annotations

from charrnn.cli import tool
from charrnn.config import TrainConfig

tool.define_dataclass_flags(TrainConfig)
tool.define_preset_flag()


def main() -> None:
    from charrnn.trainer import Trainer  # TensorFlow: after the flags are parsed

    config = tool.dataclass_from_flags(TrainConfig)
    trainer = Trainer(config)
    print(f"Corpus {config.data}: {len(trainer.vocab)} distinct characters, "
          f"{trainer.steps_per_epoch} steps per epoch, {trainer.total_steps} steps in all; "
          f"{trainer.distribution.describe()}; precision {trainer.config.mixed_precision} ({trainer.precision_reason})")
    origin = ""
    if trainer.origin is not None:
        o = trainer.origin
        origin = f" (fine-tuned from {o['checkpoint']})"
        print(f"Fine-tuning from {o['checkpoint']}: its {o['vocab_size_before']} characters keep their weights, "
              f"{o['vocab_size'] - o['vocab_size_before']} new one(s) from {config.data}")
    print(trainer.model.summary_table(config.batch_size), flush=True)
    trainer.fit()
    print(f"Done at step {int(trainer.step.numpy())}{origin}. Sample with: charrnn-sample --run_dir={config.run_dir}")


def run() -> None:
    tool.run(main, __doc__)


if __name__ == "__main__":
    run()

"""Model quality for a fixed wall-clock budget: best validation loss on tiny-shakespeare.

nanoGPT's setup for comparison: the first 90% of tiny-shakespeare's characters train,
the last 10% validate, and the number that counts is the best validation loss (nats per
character) reached within a training budget. The budget (--time_budget, default from the
preset: 180 s for cpu_small) counts training only; start-up, tracing (the first compiled
call) and evaluations are timed and reported apart. Then a 300-character sample from the
best checkpoint, and last one JSON line with best_val_loss, steps, chars_seen,
train_seconds, preset (and more).

    python benchmarks/bench_quality.py                       # --preset=cpu_small, 180 s
    python benchmarks/bench_quality.py --preset=cpu_medium   # 600 s on a CPU
    python benchmarks/bench_quality.py --preset=gpu          # one modern GPU, 600 s
    python benchmarks/bench_quality.py --time_budget=20 --rnn_units=64   # flags override the preset

The corpus comes from $CHARRNN_DATA_DIR, else ../shared/data beside the repository when
it is there, else the download cache; --data=PATH measures another text (its last 10%
validates). A fresh temporary run directory is used and kept (its path is printed, for
charrnn-eval or charrnn-sample afterwards) unless --run_dir names an empty or new one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags, logging

from charrnn.cli import tool
from charrnn.config import TrainConfig
from charrnn.log import install_console

tool.define_dataclass_flags(TrainConfig)
tool.define_preset_flag()
flags.DEFINE_float("temperature", 0.8, "Temperature of the 300-character sample.")
FLAGS = flags.FLAGS
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _config() -> TrainConfig:
    if FLAGS.preset is None:
        FLAGS.preset = "cpu_small"
    tool.apply_preset()
    config = tool.dataclass_from_flags(TrainConfig)
    if not FLAGS["run_dir"].present:
        config = config.replace(run_dir=tempfile.mkdtemp(prefix="bench_quality_"))
    elif os.path.isdir(config.run_dir) and os.listdir(config.run_dir):
        raise SystemExit(f"bench_quality: error: --run_dir {config.run_dir} is not empty; a benchmark starts "
                         "from scratch, pass a new directory")
    return config


def main(argv: list[str]) -> None:
    del argv
    install_console()  # the library's progress lines and warnings, as the tools show them
    logging.set_verbosity(logging.WARNING)  # TensorFlow logs each checkpoint save at INFO
    if "CHARRNN_DATA_DIR" not in os.environ and (SHARED / "tinyshakespeare.txt").exists():
        os.environ["CHARRNN_DATA_DIR"] = str(SHARED)
    config = _config()
    from charrnn import Sampler, Trainer  # after the flags: importing TensorFlow is slow

    wall = time.perf_counter()
    trainer = Trainer(config)
    config = trainer.config  # resolved: the model's sizes and precision
    print(f"preset {FLAGS.preset}: {config.num_layers}x{config.cell.upper()}({config.rnn_units}), "
          f"embedding {config.embedding_dim}, batch {config.batch_size}x{config.seq_length}, lr {config.learning_rate} "
          f"({config.lr_schedule}), dropout {config.dropout}, carry_state {config.carry_state}, "
          f"{trainer.config.mixed_precision} ({trainer.precision_reason}); {trainer.model.count_params():,} "
          f"parameters; "
          f"budget {config.time_budget} s; "
          f"train/val {len(trainer.data.train_ids):,}/{len(trainer.data.val_ids):,} characters; run "
          f"directory {config.run_dir}",
          flush=True)
    trainer.fit(handle_signals=False)
    wall = time.perf_counter() - wall
    steps = int(trainer.step.numpy())
    best, best_step = trainer.best_val_loss, trainer.evaluations.best_step
    other = wall - trainer.train_seconds - trainer.eval_seconds
    print(f"\ntrained {steps} steps, {steps * config.batch_size * config.seq_length:,} characters seen, in "
          f"{trainer.train_seconds:.1f} s of training; evaluation {trainer.eval_seconds:.1f} s; start-up, tracing "
          f"and checkpoints {other:.1f} s; {wall:.1f} s in all")
    print(f"best validation loss {best:.4f} nats/char ({best / math.log(2):.3f} bits/char) at step {best_step}")
    sample = Sampler.from_checkpoint(config.run_dir, which="best").generate(
        "\n", num_chars=300, temperature=FLAGS.temperature, seed=0)
    print(f"\nsample from the best checkpoint (temperature {FLAGS.temperature}, seed 0):\n{sample}\n")
    print(json.dumps({
        "best_val_loss": round(best, 4), "steps": steps, "chars_seen": steps * config.batch_size * config.seq_length,
        "train_seconds": round(trainer.train_seconds, 1), "preset": FLAGS.preset, "best_step": best_step,
        "eval_seconds": round(trainer.eval_seconds, 1), "other_seconds": round(other, 1),
        "parameters": trainer.model.count_params(), "device": trainer.device,
        "precision": trainer.config.mixed_precision, "machine": platform.processor()
        or platform.machine(), "cpus": os.cpu_count(), "argv": sys.argv[1:], "run_dir": config.run_dir,
    }))


if __name__ == "__main__":
    app.run(main)

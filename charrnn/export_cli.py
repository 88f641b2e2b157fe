"""charrnn-export: write a training run's checkpoint as a SavedModel (see charrnn.exporter)."""

from __future__ import annotations

from absl import flags

from charrnn import _cli
from charrnn.exporter import export

_cli.define_checkpoint_flags(device=False)
flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel to (new or empty).", required=True)
FLAGS = flags.FLAGS


def main() -> None:
    path = export(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which)
    print(f"Exported {path} to {FLAGS.export_dir} (signatures: serving_default = generate, step)")


def run() -> None:
    _cli.run(main)


if __name__ == "__main__":
    run()

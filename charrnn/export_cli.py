"""charrnn-export: write a training run's checkpoint as a SavedModel (see charrnn.exporter)."""

from __future__ import annotations

from absl import flags

from charrnn import _cli

_cli.define_checkpoint_flags(device=False)
flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel to (new or empty).", required=True)
FLAGS = flags.FLAGS


def main() -> None:
    from charrnn.exporter import export  # TensorFlow: after the flags are parsed

    path = export(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which)
    print(f"Exported {path} to {FLAGS.export_dir} (signatures: serving_default = generate, step)")


def run() -> None:
    _cli.run(main, __doc__)


if __name__ == "__main__":
    run()

"""charrnn-export: write a training run's checkpoint as a SavedModel, or as a TFLite model
of one step for phones (see charrnn.exporter)."""

from __future__ import annotations

from absl import flags

from charrnn.cli import tool

tool.define_checkpoint_flags(device=False)
flags.DEFINE_string("export_dir", None, "Directory to write to (new or empty).", required=True)
flags.DEFINE_enum("format", "savedmodel", ["savedmodel", "tflite"], "savedmodel: generate and step signatures "
                  "for TensorFlow and TF Serving; tflite: model.tflite (one step, TFLite builtin ops) and vocab.json.")
flags.DEFINE_enum("quantize", "none", ["none", "dynamic"], "With --format=tflite: dynamic stores the weights as "
                  "int8 (dynamic range quantization).")
FLAGS = flags.FLAGS


def main() -> None:
    from charrnn.errors import CharRNNError
    from charrnn.exporter import TFLITE_FILE, export, export_tflite  # TensorFlow: after the flags are parsed

    if FLAGS.format == "tflite":
        path = export_tflite(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which, FLAGS.quantize)
        print(f"Exported {path} to {FLAGS.export_dir}/{TFLITE_FILE} and vocab.json "
              f"({'int8 weights' if FLAGS.quantize == 'dynamic' else 'float32'}; signature: step)")
        return
    if FLAGS.quantize != "none":
        raise CharRNNError("--quantize applies to --format=tflite; a SavedModel keeps float weights")
    path = export(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which)
    print(f"Exported {path} to {FLAGS.export_dir} (signatures: serving_default, generate, step)")


def run() -> None:
    tool.run(main, __doc__)


if __name__ == "__main__":
    run()

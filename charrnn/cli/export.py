"""charrnn-export: write a training run's checkpoint as a SavedModel, as a TFLite model of
one step for phones (see charrnn.generation.exporter), or as a web page that generates in the browser
(see charrnn.generation.webexport)."""

from __future__ import annotations

from absl import flags

from charrnn.cli import tool
from charrnn.errors import CharRNNError
from charrnn.generation import exportfiles

tool.define_checkpoint_flags(device=False)
flags.DEFINE_string("export_dir", None, "Directory to write to (new or empty); with --format=tflite, a path ending "
                    "in .tflite names the model file.")
flags.DEFINE_enum("format", "savedmodel", ["savedmodel", "tflite", "web"], "savedmodel: generate and step "
                  "signatures for TensorFlow and TF Serving; tflite: model.tflite (one step, TFLite builtin ops) and "
                  "vocab.json; web: a static folder (index.html, the TFLite model, LiteRT.js) that generates in a "
                  "browser, served by any static server.")
flags.DEFINE_boolean("overwrite", False, "Replace the export --export_dir holds (a SavedModel, or a TFLite model "
                     "and its vocab.json); a directory holding anything else is still refused.")
flags.DEFINE_enum("quantize", "none", ["none", "dynamic"], "With --format=tflite: dynamic stores the weights as "
                  "int8 (dynamic range quantization).")
FLAGS = flags.FLAGS


def check() -> None:
    if FLAGS.export_dir is None:
        raise CharRNNError("--export_dir is missing; pass a new or empty directory to write the export to")
    if FLAGS.format != "tflite" and FLAGS.quantize != "none":
        raise CharRNNError("--quantize applies to --format=tflite; a SavedModel keeps float weights")
    if FLAGS.format == "tflite":
        exportfiles.tflite_paths(FLAGS.export_dir, FLAGS.overwrite)
    elif FLAGS.format == "web":
        exportfiles.check_export_dir(FLAGS.export_dir, overwrite=exportfiles.WEB_FILES if FLAGS.overwrite
                                     else frozenset())
    else:
        exportfiles.check_export_dir(FLAGS.export_dir,
                                     overwrite=exportfiles.SAVEDMODEL_FILES if FLAGS.overwrite else frozenset())
    tool.local_run()


def main() -> None:
    from charrnn.generation.exporter import export, export_tflite  # TensorFlow: after the flags are parsed

    if FLAGS.format == "web":
        from charrnn.generation.webexport import export_web

        path = export_web(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which, FLAGS.overwrite)
        print(f"Exported {path} to {FLAGS.export_dir} as a web page; serve it with: python -m http.server "
              f"--directory {FLAGS.export_dir} 8000, then open http://localhost:8000/")
        return
    if FLAGS.format == "tflite":
        model_path, vocab_path = exportfiles.tflite_paths(FLAGS.export_dir, FLAGS.overwrite)
        path = export_tflite(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which, FLAGS.quantize, FLAGS.overwrite)
        print(f"Exported {path} to {model_path} and {vocab_path} "
              f"({'int8 weights' if FLAGS.quantize == 'dynamic' else 'float32'}; signature: step)")
        return
    path = export(FLAGS.run_dir, FLAGS.export_dir, FLAGS.which, FLAGS.overwrite)
    print(f"Exported {path} to {FLAGS.export_dir} (signatures: serving_default, generate, generate_with_options, step)")


def run() -> None:
    tool.run(main, __doc__, check, keep_going=True)  # the export is its files: written whatever the console


if __name__ == "__main__":
    run()

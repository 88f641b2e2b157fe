"""The TFLite export of a run: model sizes, the interpreter's chars/s at batch 1 against the
compiled Sampler, and the validation loss of the float and the int8 (dynamic range) models.

Both TFLite models are written to a temporary directory by `charrnn.generation.exporter.export_tflite`.
Speed: --chars characters generated one interpreter call per character (numpy sampling at
temperature 0.5), against `Sampler.generate` of as many characters (after a warm-up call
that traces it). Loss: the run's validation split (its --val_fraction of its --data),
read one character at a time with the state carried from the start, in nats per character.
Prints a table, then one JSON line.

    python benchmarks/bench_tflite.py --run_dir=runs/shakespeare
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time

from absl import app, flags, logging

from charrnn.log import install_console

flags.DEFINE_string("run_dir", None, "Run directory to export.", required=True)
flags.DEFINE_integer("chars", 2000, "Characters generated for the speed figures.")
flags.DEFINE_integer("val_chars", None, "Use only the first this many characters of the validation split.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    install_console()  # the library's progress lines and warnings, as the tools show them
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer logs each file at INFO
    import numpy as np
    import tensorflow as tf

    from charrnn import Sampler
    from charrnn.generation.exporter import export_tflite
    from charrnn.generation.exportfiles import TFLITE_FILE
    from charrnn.run.rundir import RunDir
    from charrnn.text.data import split_ids
    from charrnn.text.idcache import ids_in
    try:  # LiteRT, what the TFLite example uses; else TensorFlow's deprecated one
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806

    files = RunDir(FLAGS.run_dir).read()
    config, vocab = files.config, files.vocab
    val = split_ids(ids_in(config.data, vocab).ids, config.val_fraction)[1][: FLAGS.val_chars]
    sampler = Sampler.from_checkpoint(FLAGS.run_dir, device="/CPU:0")
    work = tempfile.mkdtemp(prefix="charrnn_bench_tflite_")
    results = {}
    try:
        for quantize in ("none", "dynamic"):
            export_tflite(FLAGS.run_dir, os.path.join(work, quantize), quantize=quantize)
            path = os.path.join(work, quantize, TFLITE_FILE)
            step = Interpreter(model_path=path).get_signature_runner("step")
            zero = np.zeros(step.get_input_details()["state"]["shape"], np.float32)
            rng, out = np.random.default_rng(0), step(ids=val[:1].astype(np.int32), state=zero)
            start = time.perf_counter()
            for _ in range(FLAGS.chars):
                logits = out["logits"][0].astype(np.float64) / 0.5
                p = np.exp(logits - logits.max())
                out = step(ids=np.array([rng.choice(len(p), p=p / p.sum())], np.int32), state=out["state"])
            chars_per_s = FLAGS.chars / (time.perf_counter() - start)
            total, state = 0.0, zero
            for current, target in zip(val[:-1], val[1:]):
                out = step(ids=np.array([current], np.int32), state=state)
                logits = out["logits"][0].astype(np.float64)
                total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[target]
                state = out["state"]
            results[quantize] = {"bytes": os.path.getsize(path), "chars_per_s": chars_per_s,
                                 "val_loss": total / (len(val) - 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prime = vocab.decode(val[:1])
    sampler.generate(prime, 10, seed=0)  # trace
    start = time.perf_counter()
    sampler.generate(prime, FLAGS.chars, 0.5, seed=0)
    sampler_cps = FLAGS.chars / (time.perf_counter() - start)
    params = sampler.model.count_params()
    print(f"run {FLAGS.run_dir}: {params:,} parameters ({params * 4 / 1e6:.2f} MB as float32), validation split "
          f"{len(val):,} characters")
    print(f"{'model':<18}{'bytes':>12}{'chars/s':>10}{'val loss':>10}")
    for name, r in results.items():
        print(f"{'tflite ' + name:<18}{r['bytes']:>12,}{r['chars_per_s']:>10.0f}{r['val_loss']:>10.4f}")
    print(f"{'Sampler (compiled)':<18}{'':>12}{sampler_cps:>10.0f}")
    print(json.dumps({"benchmark": "tflite", "run_dir": FLAGS.run_dir, "parameters": params, "tflite": results,
                      "sampler_chars_per_s": sampler_cps, "val_chars": len(val),
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    app.run(main)

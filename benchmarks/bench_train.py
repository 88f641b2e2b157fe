"""Training speed: the case study's Keras `model.fit` and PyTorch's nn.LSTM against charrnn.

In one process, on the same batches (tiny-shakespeare from $CHARRNN_DATA_DIR or the cache,
or --data), the same model size, batch and sequence length:

  (a) the case study ported to Keras 3: Sequential([Input(batch_shape=(B, None)),
      Embedding, LSTM(stateful=True, return_sequences=True), Dense]), compile(adam,
      sparse CE from logits), model.fit, in --fit_precision (the case study's float32);
  (b) charrnn's Trainer step with charrnn's defaults (what `auto` picks for this model and
      CPU: implementation and precision), or the --mixed_precision, --steps_per_loop,
      --lstm_impl given;
  (c) where torch is importable, PyTorch's nn.LSTM in the usual training loop
      (benchmarks/torch_lstm.py, a process of its own; the benchmark never requires torch),
      in float32 and, on a CPU that multiplies bfloat16 natively (avx512_bf16, amx_bf16),
      under bfloat16 autocast; "vs torch" compares with the faster of the two.

Warm-up steps (tracing included) are timed apart; then --steps steps are timed and the
median step reported. FLOPs per step = 3 x 2*B*T*(4H*(E+H) + H*V) (forward; the backward
pass costs about twice the forward). The peak is the best `tf.matmul` rate measured in this
run at the step's own matrix shapes, in the precision the step multiplies in (bfloat16 in a
mixed_bfloat16 run); the "matmul floor" is the time the step's matmuls alone take at
their measured rates. Peak resident memory (VmHWM) of each variant is measured in a
fresh subprocess of this script that builds it and runs --warmup + 2 steps, so neither
variant is charged for the other's allocations. Prints the CPU's model and vector
features, a table, then one JSON line. With --sweep, each size runs in a process of its
own and one table compares them.

    python benchmarks/bench_train.py                    # the case-study model
    python benchmarks/bench_train.py --sweep=64:64,256:64,1024:256   # units:embedding, a table
    python benchmarks/bench_train.py --rnn_units=32 --embedding_dim=8 --batch_size=8 \\
        --seq_length=16 --steps=2 --warmup=1            # smoke test
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf
from absl import app, flags

import charrnn
from charrnn.log import install_console
from charrnn.nn.lstm import chains_for, variant_for

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuinfo import cpu  # noqa: E402 - a sibling module of the benchmarks

flags.DEFINE_string("data", "tinyshakespeare", "Corpus path or registered name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seq_length", 100, "Sequence length.")
flags.DEFINE_integer("embedding_dim", 256, "Embedding size.")
flags.DEFINE_integer("rnn_units", 1024, "LSTM units.")
flags.DEFINE_integer("steps", 10, "Timed steps per variant.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first one traces).")
flags.DEFINE_integer("steps_per_loop", None, "charrnn: steps per compiled call (default: charrnn's).")
flags.DEFINE_boolean("jit_compile", False, "charrnn: XLA-compile the train step.")
flags.DEFINE_string("mixed_precision", "auto", "charrnn's precision policy (auto: what charrnn picks for this CPU).")
flags.DEFINE_string("fit_precision", "float32", "Precision policy of the Keras fit baseline (the case "
                                                "study's: float32).")
flags.DEFINE_string("lstm_impl", "auto", "charrnn: auto, fused or keras.")
flags.DEFINE_enum("torch_bf16", "auto", ["auto", "true", "false"], "Also time PyTorch under bfloat16 autocast "
                  "(auto: where the CPU multiplies bfloat16 natively, avx512_bf16 or amx_bf16).")
flags.DEFINE_boolean("baseline", True, "Also run the Keras model.fit baseline (and PyTorch's, if installed).")
flags.DEFINE_boolean("peak_rss", True, "Also measure each variant's peak memory (a process each).")
flags.DEFINE_list("sweep", [], "Sizes to compare, units:embedding each (e.g. 64:64,256:64,1024:256).")
flags.DEFINE_string("device", "auto", "Device.")
flags.DEFINE_enum("memory_of", None, ["keras_fit", "charrnn"], "Internal: run only this variant briefly and "
                  "print its peak resident memory.")
FLAGS = flags.FLAGS


def _torch(b: int, t: int, e: int, h: int) -> dict[str, dict]:
    """PyTorch's nn.LSTM step (benchmarks/torch_lstm.py) in float32 ("torch_fp32") and, where
    the CPU multiplies bfloat16 natively, under bfloat16 autocast ("torch_bf16"); none
    without torch."""
    if importlib.util.find_spec("torch") is None:
        return {}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_lstm.py")
    results = {}
    bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu()["features"])) if FLAGS.torch_bf16 == "auto" else (
        FLAGS.torch_bf16 == "true")
    for name, autocast in (("torch_fp32", False), ("torch_bf16", True)):
        if autocast and not bf16:
            continue
        settings = {"job": "train", "data": FLAGS.data, "batch_size": b, "seq_length": t, "embedding_dim": e,
                    "rnn_units": h, "steps": FLAGS.steps, "warmup": FLAGS.warmup, "autocast": autocast}
        proc = subprocess.run([sys.executable, script, json.dumps(settings)], capture_output=True, text=True,
                              check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _sweep() -> None:
    """Runs this benchmark once per size of --sweep, each in a process of its own, and
    prints one table: step times, charrnn against PyTorch and Keras fit, % of matmul peak."""
    rows = []
    for size in FLAGS.sweep:
        units, embedding = (int(x) for x in size.split(":"))
        args = [a for a in sys.argv[1:] if not a.startswith(("--sweep", "--rnn_units", "--embedding_dim"))]
        proc = subprocess.run([sys.executable, sys.argv[0], *args, f"--rnn_units={units}",
                               f"--embedding_dim={embedding}"], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(proc.stdout.strip().splitlines()[-2], flush=True)  # the ratios line of that size
    features = rows[0]["cpu"]
    print(f"CPU: {features['model']}, {features['cores']} cores, {' '.join(features['features'])}")
    print(f"{'model':<18}{'charrnn s':>10}{'torch fp32':>11}{'torch bf16':>11}{'fit s':>8}{'vs torch':>9}"
          f"{'vs fit':>8}{'% peak':>8}{'peak GF/s':>10}  charrnn chose")
    nan = float("nan")
    for r in rows:
        res = r["results"]
        step = {name: res[name]["median_step_s"] if name in res else nan
                for name in ("charrnn", "torch_fp32", "torch_bf16", "keras_fit")}
        print(f"{'E' + str(r['embedding_dim']) + ' LSTM ' + str(r['rnn_units']):<18}{step['charrnn']:>10.3f}"
              f"{step['torch_fp32']:>11.3f}{step['torch_bf16']:>11.3f}{step['keras_fit']:>8.3f}"
              f"{r['speedup_vs_torch'] or nan:>8.2f}x{r['speedup_vs_fit'] or nan:>7.2f}x"
              f"{res['charrnn']['fraction_of_peak']:>8.0%}{r['peak_gflops']:>10.0f}  {r['chosen']}")
    print(json.dumps({"benchmark": "train_sweep", "cpu": features, "rows": rows}))


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _peak_rss_of(variant: str) -> float:
    """Peak RSS in MB of a fresh process that builds `variant` and trains a few steps."""
    args = [a for a in sys.argv[1:] if not a.startswith(("--steps=", "--memory_of"))]
    proc = subprocess.run([sys.executable, sys.argv[0], *args, f"--memory_of={variant}", "--steps=2"],
                          capture_output=True, text=True, check=True)
    return float(re.search(r"peak_rss_mb=([\d.]+)", proc.stdout).group(1))


def _time_matmul(dtype: tf.DType, m: int, k: int, n: int, transpose_a: bool = False) -> float:
    """GFLOP/s of tf.matmul in `dtype` for an [m, k] x [k, n] product laid out as the step lays it
    out, run `reps` times in one compiled loop (as the step runs its matmuls: no Python call
    between them)."""
    a = tf.cast(tf.random.normal([k, m] if transpose_a else [m, k]), dtype)
    b = tf.cast(tf.random.normal([k, n]), dtype)
    reps = max(3, min(1000, int(1e10 / (2 * m * k * n))))  # about 0.05 s of work at 200 GFLOP/s

    @tf.function
    def matmuls() -> tf.Tensor:
        total = tf.zeros([], dtype)
        for _ in tf.range(reps):
            total += tf.matmul(a, b, transpose_a=transpose_a)[0, 0]
        return total

    matmuls()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        matmuls().numpy()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * m * k * n / best / 1e9


def _uses_cudnn(trainer: charrnn.Trainer) -> bool:
    """Whether the compiled train step contains a cuDNN RNN kernel (it can only on a GPU)."""
    graph = trainer.train_step.get_concrete_function().graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    return any(op.startswith("CudnnRNN") for op in ops)


def _matmul_inventory(b: int, t: int, e: int, h: int, v: int) -> list[tuple[str, int, tuple]]:
    """(name, FLOPs per step, matmul shape) of the matmuls in one fused-LSTM train step
    (charrnn.nn.lstm): the recurrent ones per time step and chain, the others over all rows."""
    bt, rows = b * t, b // chains_for(b, h)
    return [
        ("input projection [TB,E]x[E,4H]", 2 * bt * e * 4 * h, (bt, e, 4 * h)),
        ("recurrent fwd T x [B/chains,H]x[H,4H]", 2 * bt * h * 4 * h, (rows, h, 4 * h)),
        ("recurrent bwd T x [B/chains,4H]x[4H,H]", 2 * bt * 4 * h * h, (rows, 4 * h, h)),
        ("input grad [TB,4H]x[4H,E]", 2 * bt * 4 * h * e, (bt, 4 * h, e)),
        ("kernel grad [TB,E]^T x [TB,4H]", 2 * bt * e * 4 * h, (e, bt, 4 * h, True)),
        ("recurrent grad [TB,H]^T x [TB,4H]", 2 * bt * h * 4 * h, (h, bt, 4 * h, True)),
        ("logits fwd+bwd 3 x [TB,H]x[H,V]", 3 * 2 * bt * h * v, (bt, h, v)),
    ]


class _BatchTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _keras_fit(dataset: tf.data.Dataset, vocab_size: int) -> dict:
    """The case study's approach: a stateful Keras model trained with compile/fit."""
    b, precision = FLAGS.batch_size, FLAGS.fit_precision
    model = keras.Sequential([
        keras.Input(batch_shape=(b, None)),
        keras.layers.Embedding(vocab_size, FLAGS.embedding_dim, dtype=precision),
        keras.layers.LSTM(FLAGS.rnn_units, return_sequences=True, stateful=True,
                          recurrent_initializer="glorot_uniform", dtype=precision),
        keras.layers.Dense(vocab_size, dtype=precision),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    warm, timed = _BatchTimer(), _BatchTimer()
    model.fit(dataset.take(FLAGS.warmup), epochs=1, verbose=0, shuffle=False, callbacks=[warm])
    model.fit(dataset.take(FLAGS.steps), epochs=1, verbose=0, shuffle=False, callbacks=[timed])
    return {"first_step_s": warm.times[0], "median_step_s": statistics.median(timed.times)}


def _charrnn(trainer: charrnn.Trainer) -> dict:
    batches = iter(trainer.data.dataset(0).repeat())
    spl = trainer.config.steps_per_loop
    calls = []
    for i in range(max(1, FLAGS.warmup) + max(1, FLAGS.steps // spl)):
        start = time.perf_counter()
        losses, *_ = trainer._train_loop(batches, tf.constant(spl))  # noqa: SLF001 - train()'s compiled loop
        losses.numpy()
        calls.append(time.perf_counter() - start)
    warm = max(1, FLAGS.warmup)
    return {"first_step_s": calls[0], "median_step_s": statistics.median(calls[warm:]) / spl}


def main(argv: list[str]) -> None:
    del argv
    install_console()  # the library's progress lines and warnings, as the tools show them
    if FLAGS.sweep:
        _sweep()
        return
    b, t, e, h = FLAGS.batch_size, FLAGS.seq_length, FLAGS.embedding_dim, FLAGS.rnn_units
    with tempfile.TemporaryDirectory() as run_dir:
        chosen = {} if FLAGS.steps_per_loop is None else {"steps_per_loop": FLAGS.steps_per_loop}
        config = charrnn.TrainConfig(
            data=FLAGS.data, run_dir=run_dir, batch_size=b, seq_length=t, embedding_dim=e, rnn_units=h,
            val_fraction=0.0, device=FLAGS.device, jit_compile=FLAGS.jit_compile,
            mixed_precision=FLAGS.mixed_precision, lstm_impl=FLAGS.lstm_impl, **chosen)
        trainer = charrnn.Trainer(config)
        v = len(trainer.vocab)
        dataset = trainer.data.dataset(0).repeat()
        with tf.device(trainer.device):
            if FLAGS.memory_of:
                if FLAGS.memory_of == "keras_fit":
                    _keras_fit(dataset, v)
                else:
                    _charrnn(trainer)
                print(f"peak_rss_mb={_peak_rss_mb():.1f}")
                return
            results = {"keras_fit": _keras_fit(dataset, v)} if FLAGS.baseline else {}
            results["charrnn"] = _charrnn(trainer)
            if FLAGS.baseline:
                results.update(_torch(b, t, e, h))
            inventory = _matmul_inventory(b, t, e, h, v)
            step_dtype = tf.as_dtype(trainer.model.state_dtype)  # what the step multiplies in
            rates = {name: _time_matmul(step_dtype, *shape) for name, _, shape in inventory}

    cudnn = _uses_cudnn(trainer)
    flops = 3 * 2 * b * t * (4 * h * (e + h) + h * v)
    peak = max(rates.values())
    floor_s = sum(f / (rates[name] * 1e9) for name, f, _ in inventory)
    for name, r in results.items():
        r["peak_rss_mb"] = _peak_rss_of(name) if not name.startswith("torch") and FLAGS.peak_rss else float("nan")
        r["steps_per_s"] = 1 / r["median_step_s"]
        r["gflops_per_s"] = flops / r["median_step_s"] / 1e9
        r["fraction_of_peak"] = r["gflops_per_s"] / peak
        r["floor_over_step"] = floor_s / r["median_step_s"]
    c = cpu()
    print(f"CPU: {c['model']}, {c['cores']} cores, {' '.join(c['features'])}")
    print(f"FLOPs per step = 3 x 2*B*T*(4H*(E+H) + H*V) = {flops / 1e9:.1f} GFLOP "
          f"(B={b} T={t} E={e} H={h} V={v})")
    print(f"tf.matmul in {step_dtype.name} at the step's shapes (GFLOP/s): "
          + "; ".join(f"{k} {r:.0f}" for k, r in rates.items()))
    print(f"peak {peak:.0f} GFLOP/s; matmul floor {floor_s:.3f} s/step; cuDNN RNN in charrnn's step: {cudnn}")
    print(f"{'variant':<12}{'first (s)':>10}{'step (s)':>10}{'steps/s':>9}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'floor/step':>11}{'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:<12}{r['first_step_s']:>10.2f}{r['median_step_s']:>10.3f}{r['steps_per_s']:>9.3f}"
              f"{r['gflops_per_s']:>9.1f}{r['fraction_of_peak']:>9.0%}{r['floor_over_step']:>11.0%}"
              f"{r['peak_rss_mb']:>12.0f}")
    fused = trainer.model.fused_on(trainer.device)
    variant = f" {variant_for(FLAGS.rnn_units, trainer.model.state_dtype)}" if fused else ""
    chosen = (f"lstm {'fused' if fused else 'keras'}{variant}, "
              f"{trainer.config.mixed_precision}, steps_per_loop {trainer.config.steps_per_loop}, "
              f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}")
    step = results["charrnn"]["median_step_s"]
    ratio = results["keras_fit"]["median_step_s"] / step if FLAGS.baseline else None
    torch_steps = [r["median_step_s"] for name, r in results.items() if name.startswith("torch")]
    torch_ratio = min(torch_steps) / step if torch_steps else None
    torches = ", ".join(r for r in results if r.startswith("torch")) or "none"
    print(f"charrnn ({chosen}) speed: {ratio or float('nan'):.2f}x keras fit ({FLAGS.fit_precision}), "
          f"{torch_ratio or float('nan'):.2f}x PyTorch nn.LSTM (the faster of {torches})")
    print(json.dumps({
        "benchmark": "train", "machine": platform.machine(), "cpu": cpu(), "chosen": chosen, "device": trainer.device,
        "batch_size": b,
        "seq_length": t, "embedding_dim": e, "rnn_units": h, "vocab_size": v,
        "steps_per_loop": trainer.config.steps_per_loop,
        "jit_compile": FLAGS.jit_compile, "mixed_precision": trainer.config.mixed_precision,
        "fit_precision": FLAGS.fit_precision, "lstm_impl": FLAGS.lstm_impl, "matmul_dtype": step_dtype.name,
        "flops_per_step": flops, "matmul_gflops": rates, "peak_gflops": peak, "matmul_floor_s": floor_s,
        "results": results, "speedup_vs_fit": ratio, "speedup_vs_torch": torch_ratio, "timed_steps": FLAGS.steps,
        "cudnn_in_step": cudnn,
    }))


if __name__ == "__main__":
    app.run(main)

"""One LSTM layer at batch 64 x 100, op by op: what decides the fused LSTM's variants.

For each size (embedding:units), in --precision (bfloat16 multiplies, as a mixed bfloat16
run does, or float32):

- the recurrent product alone, 100 dependent steps in a compiled loop, in the two layouts
  the fused LSTM keeps its state in: batch-major, state [B, H] x weight [H, 4H], and
  unit-major, weight [4H, H] x state [H, B] (GFLOP/s; what the CPU's matrix unit is
  fastest at decides the layout);
- the layer forward and backward in each of the fused LSTM's `VARIANTS` (median time);
- TensorFlow's whole-sequence LSTM kernel (`tf.raw_ops.BlockLSTMV2`, float32 only: it has
  no bfloat16 kernel; same maths and gate order as Keras, forward outputs equal; its
  gradient is TensorFlow's registered one), with the largest relative difference of its
  weight gradients from the fused LSTM's: in TensorFlow 2.21 they differ (charrnn's agree
  with autodiff through a plain loop), so it is no drop-in.

    python benchmarks/bench_lstm_ops.py --sizes=64:64,64:256,256:1024
    python benchmarks/bench_lstm_ops.py --precision=float32
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from charrnn.nn.lstm import VARIANTS, fused_lstm

flags.DEFINE_list("sizes", ["64:64", "64:256", "256:1024"], "embedding:units pairs.")
flags.DEFINE_enum("precision", "bfloat16", ["bfloat16", "float32"], "The matmuls' dtype.")
flags.DEFINE_integer("repeats", 5, "Timed calls per variant.")
FLAGS = flags.FLAGS
B, T = 64, 100


def block_lstm(inputs, h0, c0, kernel, recurrent_kernel, bias):
    """The layer through BlockLSTMV2 (time-major inside; no peepholes, no cell clipping)."""
    zeros = tf.zeros([recurrent_kernel.shape[0]])
    _, cs, _, _, _, _, h = tf.raw_ops.BlockLSTMV2(
        seq_len_max=tf.cast(tf.shape(inputs)[1], tf.int64), x=tf.transpose(inputs, [1, 0, 2]), cs_prev=c0,
        h_prev=h0, w=tf.concat([kernel, recurrent_kernel], 0), wci=zeros, wcf=zeros, wco=zeros, b=bias,
        cell_clip=-1.0, use_peephole=False)
    return tf.transpose(h, [1, 0, 2]), h[-1], cs[-1]


def _median_time(fn) -> tuple[float, object]:
    """fn's median wall time over --repeats calls after one (which traces), and its last result."""
    result = fn()
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        result = tf.nest.map_structure(lambda t: t.numpy(), fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recurrent_product_gflops(units: int, dtype: tf.DType, unit_major: bool) -> float:
    """GFLOP/s of T dependent recurrent products in a compiled loop, in one layout."""
    weight = tf.cast(tf.random.normal([units, 4 * units]) * 0.05, dtype)
    if unit_major:
        weight = tf.transpose(weight)
    state = tf.random.normal([units, B] if unit_major else [B, units])

    @tf.function
    def loop(h):
        def body(t, h):
            z = tf.matmul(weight, tf.cast(h, dtype)) if unit_major else tf.matmul(tf.cast(h, dtype), weight)
            return t + 1, tf.cast(z[:units] if unit_major else z[:, :units], tf.float32)
        return tf.while_loop(lambda t, _: t < T, body, (0, h))[1]

    seconds, _ = _median_time(lambda: loop(state))
    return T * 2 * B * units * 4 * units / seconds / 1e9


def main(argv: list[str]) -> None:
    del argv
    dtype = tf.bfloat16 if FLAGS.precision == "bfloat16" else tf.float32
    rng = np.random.default_rng(0)
    for size in FLAGS.sizes:
        e, h = (int(v) for v in size.split(":"))
        rates = {layout: recurrent_product_gflops(h, dtype, layout == "unit-major")
                 for layout in ("batch-major", "unit-major")}
        print(f"E{e} H{h} {FLAGS.precision}: recurrent product "
              + ", ".join(f"{layout} {rate:.0f} GFLOP/s" for layout, rate in rates.items()), flush=True)
        x = tf.constant(rng.normal(size=(B, T, e)).astype(np.float32))
        h0 = c0 = tf.zeros([B, h])
        weights = [tf.Variable(rng.normal(size=shape).astype(np.float32) * 0.05)
                   for shape in ((e, 4 * h), (h, 4 * h), (4 * h,))]
        layers = {v: lambda *args, v=v: fused_lstm(*args, variant=v) for v in VARIANTS}
        if dtype == tf.float32:
            layers["BlockLSTMV2"] = block_lstm
        results = {}
        for name, layer in layers.items():
            @tf.function
            def step(layer=layer):
                with tf.GradientTape() as tape:
                    out, _, c_last = layer(*(tf.cast(v, dtype) for v in (x, h0, c0, *weights)))
                    out, c_last = tf.cast(out, tf.float32), tf.cast(c_last, tf.float32)
                    loss = tf.reduce_sum(out * out) + tf.reduce_sum(c_last)
                return tape.gradient(loss, weights)
            results[name] = _median_time(step)
        line = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, (seconds, _) in results.items())
        if "BlockLSTMV2" in results:
            diff = max(float(np.abs(a - b).max() / np.abs(a).max())
                       for a, b in zip(results["batch_major"][1], results["BlockLSTMV2"][1]))
            line += f" (BlockLSTMV2's weight gradients differ by up to {diff:.1e})"
        print(f"E{e} H{h} {FLAGS.precision}: layer forward + backward: {line}", flush=True)


if __name__ == "__main__":
    app.run(main)

"""One LSTM layer, forward and backward, batch 64 x 100: charrnn's fused LSTM against
TensorFlow's whole-sequence LSTM kernel (`tf.raw_ops.BlockLSTMV2`: the same maths and
gate order as Keras, forward outputs equal; its gradient is TensorFlow's registered one).
Prints each median time and the largest relative difference of their weight gradients:
in TensorFlow 2.21 BlockLSTMV2's kernel gradients differ from the LSTM's (charrnn's agree
with autodiff through a plain loop; its bias gradients agree), so it is no drop-in.

    python benchmarks/bench_lstm_ops.py --sizes=64:64,64:256,256:1024   # embedding:units
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from charrnn.lstm import fused_lstm

flags.DEFINE_list("sizes", ["64:64", "64:256", "256:1024"], "embedding:units pairs.")
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


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    for size in FLAGS.sizes:
        e, h = (int(v) for v in size.split(":"))
        x = tf.constant(rng.normal(size=(B, T, e)).astype(np.float32))
        h0 = c0 = tf.zeros([B, h])
        weights = [tf.Variable(rng.normal(size=shape).astype(np.float32) * 0.05)
                   for shape in ((e, 4 * h), (h, 4 * h), (4 * h,))]
        results = {}
        for name, layer in (("fused", fused_lstm), ("BlockLSTMV2", block_lstm)):
            @tf.function
            def step(layer=layer):
                with tf.GradientTape() as tape:
                    out, _, c_last = layer(x, h0, c0, *weights)
                    loss = tf.reduce_sum(out * out) + tf.reduce_sum(c_last)
                return tape.gradient(loss, weights)
            step()
            times = []
            for _ in range(FLAGS.repeats):
                start = time.perf_counter()
                grads = [g.numpy() for g in step()]
                times.append(time.perf_counter() - start)
            results[name] = (statistics.median(times), grads)
        diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(results["fused"][1],
                                                                              results["BlockLSTMV2"][1]))
        print(f"E{e} H{h}: fused {results['fused'][0]:.3f} s, BlockLSTMV2 {results['BlockLSTMV2'][0]:.3f} s "
              f"(gradients agree to {diff:.1e})", flush=True)


if __name__ == "__main__":
    app.run(main)

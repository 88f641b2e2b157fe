"""A fused LSTM layer function for devices without cuDNN, with a hand-written gradient.

Same maths and weight layout as `keras.layers.LSTM` (gates i, f, c, o; kernel [E, 4H],
recurrent kernel [H, 4H], bias [4H]), arranged for a CPU, where what costs is the chain of
small ops each time step runs one after the other (benchmarks/RESULTS.md, issue 29):

- the input projection of every time step is one [T*B, E] x [E, 4H] matmul before the
  loop; inside it, each step multiplies only the state ([B, H] x [H, 4H]);
- the four gate activations are one tanh over [B, 4H]: sigmoid(z) = tanh(z/2)/2 + 1/2,
  the halving folded into the weights' i, f and o columns once per call;
- inside the loops every elementwise op computes in float32, also in a mixed bfloat16 or
  float16 run, whose matmuls stay in 16 bits (TensorFlow's 16-bit elementwise kernels
  convert element by element, 2-3x slower);
- backward (`tf.custom_gradient`), each step computes the gates' gradient and multiplies
  it by the recurrent kernel; after the loop, the gradients of the inputs, the kernel and
  the recurrent kernel are one large matmul each;
- up to `_CHAINED_UP_TO` units, the batch runs as `_CHAINS` independent recurrences of a
  part of its rows, which the executor runs side by side: one chain of small ops leaves
  a second core mostly idle (at 256 units, 0.67-0.82x the step time of one chain on a
  2-core Zen 4). Larger matmuls keep every core busy on their own, and two chains of them
  contend (at 1024 units, 1.04-1.06x).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import tensorflow as tf

# Independent recurrences the batch is split into (rows are independent: only the weight
# gradients add up across them), measured on 2 cores: more than the cores would contend.
_CHAINS = min(2, os.cpu_count() or 1)
# The largest layer whose batch is split into chains, and the rows a chain needs at least.
_CHAINED_UP_TO = 512
_MIN_CHAIN_ROWS = 8


def fused_lstm(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor,
               bias: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Runs an LSTM over `inputs` [B, T, E] from state (h0, c0) [B, H].

    Returns (outputs [B, T, H], h_T, c_T), in the inputs' dtype. Differentiable with respect
    to every argument.
    """
    chains = chains_for(inputs.shape[0], recurrent_kernel.shape[0])
    if chains == 1:
        return _lstm(inputs, h0, c0, kernel, recurrent_kernel, bias)
    parts = zip(*(tf.split(value, chains) for value in (inputs, h0, c0)))
    results = [_lstm(x, h, c, kernel, recurrent_kernel, bias) for x, h, c in parts]
    return tuple(tf.concat(outputs, 0) for outputs in zip(*results))


def chains_for(batch: int | None, units: int) -> int:
    """How many independent recurrences `fused_lstm` splits a batch of `batch` rows into (1
    when the batch size is unknown until run time)."""
    if batch is None or units > _CHAINED_UP_TO or batch % _CHAINS or batch < _CHAINS * _MIN_CHAIN_ROWS:
        return 1
    return _CHAINS


def _gate_columns(units: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per column of the gates [i, f, c, o]: the factor that halves the sigmoid gates' inputs
    and scales tanh back to a sigmoid (1/2 on i, f, o; 1 on c), the shift that follows (1/2
    on i, f, o; 0 on c), and 1 on the tanh gate c."""
    half, one, zero = tf.fill([units], 0.5), tf.ones([units]), tf.zeros([units])
    return tf.concat([half, half, one, half], 0), tf.concat([half, half, zero, half], 0), tf.concat([zero, zero,
                                                                                                     one, zero], 0)


@tf.custom_gradient
def _lstm(inputs, h0, c0, kernel, recurrent_kernel, bias):
    dtype = inputs.dtype
    batch, steps = tf.shape(inputs)[0], tf.shape(inputs)[1]
    features, units = kernel.shape[0], recurrent_kernel.shape[0]  # weights have static shapes
    scale, shift, tanh_gate = _gate_columns(units)
    half_scale = tf.cast(scale, dtype)
    inputs_2d = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, features])  # time-major rows
    projected = tf.matmul(inputs_2d, kernel * half_scale) + bias * half_scale
    projected = tf.reshape(tf.cast(projected, tf.float32), [steps, batch, 4 * units])
    recurrent = recurrent_kernel * half_scale

    def forward_step(t, h, c, gates_ta, c_prev_ta, tanh_c_ta, hs_ta):
        z = projected[t] + tf.cast(tf.matmul(tf.cast(h, dtype), recurrent), tf.float32)
        gates = tf.tanh(z) * scale + shift  # sigmoid on i, f, o; tanh on c
        i, f, g, o = tf.split(gates, 4, axis=1)
        c_prev_ta = c_prev_ta.write(t, c)
        c = f * c + i * g
        tanh_c = tf.tanh(c)
        h = o * tanh_c
        return t + 1, h, c, gates_ta.write(t, gates), c_prev_ta, tanh_c_ta.write(t, tanh_c), hs_ta.write(t, h)

    def ta(width: int) -> tf.TensorArray:
        return tf.TensorArray(tf.float32, size=steps, element_shape=[None, width])

    # The per-step values stay in their TensorArrays for the backward pass.
    _, h_last, c_last, gates_ta, c_prev_ta, tanh_c_ta, hs_ta = tf.while_loop(
        lambda t, *_: t < steps, forward_step,
        (0, tf.cast(h0, tf.float32), tf.cast(c0, tf.float32), ta(4 * units), ta(units), ta(units), ta(units)))
    hs = hs_ta.stack()  # [T, B, H]
    outputs = tf.cast(tf.transpose(hs, [1, 0, 2]), dtype)

    saved = _Forward(inputs_2d, h0, c0, kernel, recurrent_kernel, gates_ta, c_prev_ta, tanh_c_ta, hs, tanh_gate)

    def grad(d_outputs, d_h_last, d_c_last):
        # Outputs nothing depends on (e.g. the final state in training) come as None.
        d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
        dh = tf.zeros_like(h_last) if d_h_last is None else tf.cast(d_h_last, tf.float32)
        dc = tf.zeros_like(c_last) if d_c_last is None else tf.cast(d_c_last, tf.float32)
        return _backward(saved, tf.cast(tf.transpose(d_outputs, [1, 0, 2]), tf.float32), dh, dc)

    return (outputs, tf.cast(h_last, h0.dtype), tf.cast(c_last, c0.dtype)), grad


class _Forward(NamedTuple):
    """What the backward pass of `_lstm` reads of its forward pass: the inputs as time-major
    rows, the initial state, the weights, each step's gates, previous cell, tanh of the cell
    and output (TensorArrays, the outputs stacked [T, B, H]) and the tanh gate's columns."""

    inputs_2d: tf.Tensor
    h0: tf.Tensor
    c0: tf.Tensor
    kernel: tf.Tensor
    recurrent_kernel: tf.Tensor
    gates_ta: tf.TensorArray
    c_prev_ta: tf.TensorArray
    tanh_c_ta: tf.TensorArray
    hs: tf.Tensor
    tanh_gate: tf.Tensor


def _backward(fw: _Forward, d_hs: tf.Tensor, dh: tf.Tensor, dc: tf.Tensor) -> tuple:
    """The gradients of `_lstm`'s arguments, given those of its outputs (time-major, float32)
    and of its final state: backpropagation through time, one step after another."""
    dtype = fw.inputs_2d.dtype
    steps, batch = tf.shape(fw.hs)[0], tf.shape(fw.h0)[0]
    features, units = fw.kernel.shape[0], fw.recurrent_kernel.shape[0]
    # Transposed once: a matmul with transpose_b is ~3x slower (oneDNN on CPU).
    recurrent_t = tf.transpose(fw.recurrent_kernel)

    def backward_step(t, dh, dc, dz_ta):
        gates = fw.gates_ta.read(t)
        i, forget, g, o = tf.split(gates, 4, axis=1)
        tanh_c = fw.tanh_c_ta.read(t)
        dh = d_hs[t] + dh
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        # The gates' gradient before their activations: sigmoid' = s (1 - s) and tanh' =
        # 1 - g^2 are both (gates + tanh_gate) * (1 - gates).
        d_gates = tf.concat([dc * g, dc * fw.c_prev_ta.read(t), dc * i, dh * tanh_c], 1)
        dz = tf.cast(d_gates * ((gates + fw.tanh_gate) * (1.0 - gates)), dtype)
        dh = tf.cast(tf.matmul(dz, recurrent_t), tf.float32)  # the previous step's h
        return t - 1, dh, dc * forget, dz_ta.write(t, dz)

    _, dh0, dc0, dz_ta = tf.while_loop(
        lambda t, *_: t >= 0, backward_step,
        (steps - 1, dh, dc, tf.TensorArray(dtype, size=steps, element_shape=[None, 4 * units])))
    dz = tf.reshape(dz_ta.stack(), [-1, 4 * units])  # [T*B, 4H], time-major rows
    # Transposed once: as above.
    d_inputs = tf.matmul(dz, tf.transpose(fw.kernel))
    d_inputs = tf.transpose(tf.reshape(d_inputs, [steps, batch, features]), [1, 0, 2])
    h_prev = tf.concat([tf.cast(fw.h0, tf.float32)[None], fw.hs[:-1]], 0)
    d_recurrent = tf.matmul(tf.cast(tf.reshape(h_prev, [-1, units]), dtype), dz, transpose_a=True)
    d_kernel = tf.matmul(fw.inputs_2d, dz, transpose_a=True)
    return (d_inputs, tf.cast(dh0, fw.h0.dtype), tf.cast(dc0, fw.c0.dtype), d_kernel, d_recurrent,
            tf.reduce_sum(dz, 0))

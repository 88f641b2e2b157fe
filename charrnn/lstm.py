"""A fused LSTM layer function for devices without cuDNN, with a hand-written gradient.

Same maths and weight layout as `keras.layers.LSTM` (gates i, f, c, o; kernel [E, 4H],
recurrent kernel [H, 4H], bias [4H]), arranged for large matrix products:

- forward: the input projection of all time steps is one [B*T, E] x [E, 4H] matmul before
  the recurrence, so each step only multiplies by the recurrent kernel;
- backward (`tf.custom_gradient`): the recurrence runs backwards producing the gate
  gradients of every step; then the kernel and recurrent-kernel gradients are one
  [E or H, T*B] x [T*B, 4H] matmul each, instead of T small accumulations inside the loop.
"""

from __future__ import annotations

import tensorflow as tf


def fused_lstm(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor,
               bias: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Runs an LSTM over `inputs` [B, T, E] from state (h0, c0) [B, H].

    Returns (outputs [B, T, H], h_T, c_T). Differentiable with respect to every argument.
    """
    return _fused_lstm(inputs, h0, c0, kernel, recurrent_kernel, bias)


@tf.custom_gradient
def _fused_lstm(inputs, h0, c0, kernel, recurrent_kernel, bias):
    steps = tf.shape(inputs)[1]
    features, units = tf.shape(kernel)[0], tf.shape(recurrent_kernel)[0]
    # Everything runs time-major ([T, B, ...]): the rows of the big matmuls below are then
    # (t, b) pairs in the loop's own order and no [T, B, 4H] array is ever transposed.
    flat_inputs = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, features])
    # The bias is added per step: added here it would cost a second [T, B, 4H] array.
    projected = tf.reshape(tf.matmul(flat_inputs, kernel), [steps, -1, 4 * units])

    def forward_step(t, h, c, gates_ta, c_prev_ta, h_prev_ta, hs_ta):
        z = projected[t] + bias + tf.matmul(h, recurrent_kernel)
        i, f, g, o = tf.split(z, 4, axis=1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c_prev_ta, h_prev_ta = c_prev_ta.write(t, c), h_prev_ta.write(t, h)
        c = f * c + i * g
        h = o * tf.tanh(c)
        return t + 1, h, c, gates_ta.write(t, tf.concat([i, f, g, o], 1)), c_prev_ta, h_prev_ta, hs_ta.write(t, h)

    def ta():
        return tf.TensorArray(inputs.dtype, size=steps)

    # The per-step gates and states stay in their TensorArrays for the backward pass:
    # stacking them would briefly hold two copies of the largest arrays of the step.
    _, h_last, c_last, gates_ta, c_prev_ta, h_prev_ta, hs_ta = tf.while_loop(
        lambda t, *_: t < steps, forward_step, (0, h0, c0, ta(), ta(), ta(), ta()))
    outputs = tf.transpose(hs_ta.stack(), [1, 0, 2])

    def grad(d_outputs, d_h_last, d_c_last):
        # Outputs nothing depends on (e.g. the final state in training) come as None.
        d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
        d_h_last = tf.zeros_like(h_last) if d_h_last is None else d_h_last
        d_c_last = tf.zeros_like(c_last) if d_c_last is None else d_c_last
        d_hs = tf.transpose(d_outputs, [1, 0, 2])
        flat_h_prev = tf.reshape(h_prev_ta.stack(), [-1, units])
        # Transposed once: a matmul with transpose_b is ~3x slower (oneDNN on CPU).
        recurrent_t, kernel_t = tf.transpose(recurrent_kernel), tf.transpose(kernel)

        def backward_step(t, dh_next, dc_next, dz_ta):
            i, f, g, o = tf.split(gates_ta.read(t), 4, axis=1)
            c_prev = c_prev_ta.read(t)
            tanh_c = tf.tanh(f * c_prev + i * g)  # c_t, recomputed rather than stored
            dh = d_hs[t] + dh_next
            dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
            dz = tf.concat([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                            dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], 1)
            return t - 1, tf.matmul(dz, recurrent_t), dc * f, dz_ta.write(t, dz)

        _, dh0, dc0, dz_ta = tf.while_loop(
            lambda t, *_: t >= 0, backward_step, (steps - 1, d_h_last, d_c_last, ta()))
        dz = tf.reshape(dz_ta.stack(), [-1, 4 * units])  # rows (t, b), as flat_inputs and flat_h_prev
        d_inputs = tf.transpose(tf.reshape(tf.matmul(dz, kernel_t), [steps, -1, features]), [1, 0, 2])
        d_kernel = tf.matmul(flat_inputs, dz, transpose_a=True)
        d_recurrent = tf.matmul(flat_h_prev, dz, transpose_a=True)
        return d_inputs, dh0, dc0, d_kernel, d_recurrent, tf.reduce_sum(dz, 0)

    return (outputs, h_last, c_last), grad

"""A fused LSTM layer function for devices without cuDNN, with a hand-written gradient.

Same maths and weight layout as `keras.layers.LSTM` (gates i, f, c, o; kernel [E, 4H],
recurrent kernel [H, 4H], bias [4H]), arranged for large matrix products:

- forward: each step computes all four gates with one [B, E+H] x [E+H, 4H] matmul of the
  concatenated input and state;
- backward (`tf.custom_gradient`): the recurrence runs backwards, one [B, 4H] x [4H, E+H]
  matmul a step giving the gradients of both the step's input and the previous state;
  every 25 steps, the weight gradient of those steps is one [E+H, 25*B] x [25*B, 4H]
  matmul, instead of one small accumulation per step (as autodiff through the loop does).
"""

from __future__ import annotations

import tensorflow as tf


def fused_lstm(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor,
               bias: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Runs an LSTM over `inputs` [B, T, E] from state (h0, c0) [B, H].

    Returns (outputs [B, T, H], h_T, c_T). Differentiable with respect to every argument.
    """
    return _fused_lstm(inputs, h0, c0, kernel, recurrent_kernel, bias)


# Time steps per weight-gradient matmul in the backward pass: large enough that the
# matmuls ([E+H, K*B] x [K*B, 4H]) run near peak, small enough that the gate gradients
# waiting for them are a fraction of the activations. A Python constant, so every chunk
# but one has a static size and the loop compiles under XLA.
_CHUNK = 25


@tf.custom_gradient
def _fused_lstm(inputs, h0, c0, kernel, recurrent_kernel, bias):
    steps = tf.shape(inputs)[1]
    features, units = kernel.shape[0], recurrent_kernel.shape[0]  # weights have static shapes
    inputs_tm = tf.transpose(inputs, [1, 0, 2])  # time-major [T, B, E]
    # One [B, E+H] x [E+H, 4H] matmul per step computes all four gates from input and state.
    weights = tf.concat([kernel, recurrent_kernel], 0)

    def forward_step(t, h, c, gates_ta, c_prev_ta, xh_ta, hs_ta):
        xh = tf.concat([inputs_tm[t], h], 1)
        i, f, g, o = tf.split(tf.matmul(xh, weights) + bias, 4, axis=1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c_prev_ta, xh_ta = c_prev_ta.write(t, c), xh_ta.write(t, xh)
        c = f * c + i * g
        h = o * tf.tanh(c)
        return t + 1, h, c, gates_ta.write(t, tf.concat([i, f, g, o], 1)), c_prev_ta, xh_ta, hs_ta.write(t, h)

    def ta(size=steps):
        return tf.TensorArray(inputs.dtype, size=size)

    # The per-step values stay in their TensorArrays for the backward pass: stacking them
    # would briefly hold two copies of the largest arrays of the step.
    _, h_last, c_last, gates_ta, c_prev_ta, xh_ta, hs_ta = tf.while_loop(
        lambda t, *_: t < steps, forward_step, (0, h0, c0, ta(), ta(), ta(), ta()))
    outputs = tf.transpose(hs_ta.stack(), [1, 0, 2])

    def grad(d_outputs, d_h_last, d_c_last):
        # Outputs nothing depends on (e.g. the final state in training) come as None.
        d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
        d_h_last = tf.zeros_like(h_last) if d_h_last is None else d_h_last
        d_c_last = tf.zeros_like(c_last) if d_c_last is None else d_c_last
        d_hs = tf.transpose(d_outputs, [1, 0, 2])
        # Transposed once: a matmul with transpose_b is ~3x slower (oneDNN on CPU).
        weights_t = tf.transpose(weights)

        def backward_step(t, first, dh_next, dc_next, dz_ta, dx_ta):
            i, f, g, o = tf.split(gates_ta.read(t), 4, axis=1)
            c_prev = c_prev_ta.read(t)
            tanh_c = tf.tanh(f * c_prev + i * g)  # c_t, recomputed rather than stored
            dh = d_hs[t] + dh_next
            dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
            dz = tf.concat([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f),
                            dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], 1)
            d_xh = tf.matmul(dz, weights_t)  # gradients of this step's input and previous h at once
            return (t - 1, first, d_xh[:, features:], dc * f, dz_ta.write(t - first, dz),
                    dx_ta.write(t, d_xh[:, :features]))

        def backward_chunk(first, size, dh, dc, d_weights, d_bias, dx_ta):
            """Steps [first, first + size) backwards, then their weight gradient in one matmul."""
            _, _, dh, dc, dz_ta, dx_ta = tf.while_loop(
                lambda t, *_: t >= first, backward_step, (first + size - 1, first, dh, dc, ta(size), dx_ta))
            dz = tf.reshape(dz_ta.stack(), [-1, 4 * units])
            # gather, not slice: XLA checks a slice's static size against the array even in a
            # loop that never runs (sequences shorter than one chunk).
            xh = tf.reshape(tf.gather(xh_ta_stacked, first + tf.range(size)), [-1, features + units])
            return dh, dc, d_weights + tf.matmul(xh, dz, transpose_a=True), d_bias + tf.reduce_sum(dz, 0), dx_ta

        xh_ta_stacked = xh_ta.stack()  # [T, B, E+H]
        full = steps // _CHUNK
        head = steps - full * _CHUNK  # the first steps in time, done last

        def full_chunk(j, dh, dc, d_weights, d_bias, dx_ta):
            return (j + 1, *backward_chunk(steps - (j + 1) * _CHUNK, _CHUNK, dh, dc, d_weights, d_bias, dx_ta))

        _, dh, dc, d_weights, d_bias, dx_ta = tf.while_loop(
            lambda j, *_: j < full, full_chunk,
            (0, d_h_last, d_c_last, tf.zeros_like(weights), tf.zeros_like(bias), ta()))
        # The first `head` steps (none when T is a multiple of _CHUNK: the loop then runs no
        # step and the matmul is empty). Not under a tf.cond: a while loop inside a cond,
        # inside the train loop's while loop, makes Grappler fail to sort the graph
        # ("topological sort failed" errors, and the optimisations it then skips).
        dh0, dc0, d_weights, d_bias, dx_ta = backward_chunk(0, head, dh, dc, d_weights, d_bias, dx_ta)
        d_inputs = tf.transpose(dx_ta.stack(), [1, 0, 2])
        return d_inputs, dh0, dc0, d_weights[:features], d_weights[features:], d_bias

    return (outputs, h_last, c_last), grad

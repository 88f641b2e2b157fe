"""A fused LSTM layer function for devices without cuDNN, with a hand-written gradient.

Same maths and weight layout as `keras.layers.LSTM` (gates i, f, c, o; kernel [E, 4H],
recurrent kernel [H, 4H], bias [4H]), arranged for a CPU, where what costs is the chain of
small ops each time step runs one after the other (benchmarks/RESULTS.md, issues 29, 37):

- the input projection of every time step is one [T*B, E] x [E, 4H] matmul before the
  loop; inside it, each step multiplies only the state by the recurrent kernel;
- the four gate activations are one tanh over the gates: sigmoid(z) = tanh(z/2)/2 + 1/2,
  the halving folded into the weights' i, f and o columns once per call;
- inside the loops every elementwise op computes in float32, also in a mixed bfloat16 or
  float16 run, whose matmuls stay in 16 bits (TensorFlow's 16-bit elementwise kernels
  convert element by element, 2-3x slower);
- backward (`tf.custom_gradient`), each step computes the gates' gradient and multiplies
  it by the recurrent kernel; after the loop, the gradients of the inputs, the kernel and
  the recurrent kernel are one large matmul each;
- the state inside the loops is kept `batch_major`, [B, H] times the weight [H, 4H], or
  `unit_major`, transposed, the weight on the left: [4H, H] x [H, B] forward and
  [H, 4H] x [4H, B] backward, each gate a contiguous block of rows; and each time step's
  elementwise work (with the casts around the matmul) runs as TensorFlow's ops or, `+xla`,
  as one XLA cluster (the matmuls stay with oneDNN). Which of the four `VARIANTS` is
  fastest depends on the CPU, the precision and the size (`variant_for`);
- up to `_CHAINED_UP_TO` units, the batch runs as `_CHAINS` independent recurrences of a
  part of its rows, which the executor runs side by side: one chain of small ops leaves
  a second core mostly idle (at 256 units, 0.67-0.82x the step time of one chain on a
  2-core Zen 4). Larger matmuls keep every core busy on their own, and two chains of them
  contend (at 1024 units, 1.04-1.06x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from charrnn.nn.devices import cpu_flags

# Independent recurrences the batch is split into (rows are independent: only the weight
# gradients add up across them), measured on 2 cores: more than the cores would contend.
# Fixed, not the machine's core count: the compiled graph, and so the rounding of the
# weight gradients, is then the same wherever a run is resumed (one core runs them in turn).
_CHAINS = 2
# The largest layer whose batch is split into chains, and the rows a chain needs at least.
_CHAINED_UP_TO = 512
_MIN_CHAIN_ROWS = 8

VARIANTS = ("batch_major", "unit_major", "batch_major+xla", "unit_major+xla")
# The smallest layer whose steps `auto` compiles with XLA and, in bfloat16 on a CPU with a
# matrix unit (AMX), keeps unit-major (benchmarks/RESULTS.md, issue 37).
_LARGE = 256


def fused_lstm(inputs: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor,
               bias: tf.Tensor, variant: str = "auto") -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Runs an LSTM over `inputs` [B, T, E] from state (h0, c0) [B, H].

    Returns (outputs [B, T, H], h_T, c_T), in the inputs' dtype. Differentiable with respect
    to every argument. `variant` is `auto` (`variant_for`) or one of `VARIANTS`: how the
    loops keep the state and compile each step (the results agree to float rounding).
    """
    units = recurrent_kernel.shape[0]
    lstm = _LSTMS[variant_for(units, inputs.dtype) if variant == "auto" else variant]
    chains = chains_for(inputs.shape[0], units)
    if chains == 1:
        return lstm(inputs, h0, c0, kernel, recurrent_kernel, bias)
    parts = zip(*(tf.split(value, chains) for value in (inputs, h0, c0)))
    results = [lstm(x, h, c, kernel, recurrent_kernel, bias) for x, h, c in parts]
    return tuple(tf.concat(outputs, 0) for outputs in zip(*results))


def chains_for(batch: int | None, units: int) -> int:
    """How many independent recurrences `fused_lstm` splits a batch of `batch` rows into (1
    when the batch size is unknown until run time)."""
    if batch is None or units > _CHAINED_UP_TO or batch % _CHAINS or batch < _CHAINS * _MIN_CHAIN_ROWS:
        return 1
    return _CHAINS


def variant_for(units: int, dtype: tf.DType) -> str:
    """The variant `auto` picks for a layer of `units` whose matmuls compute in `dtype`, on
    this machine's CPU, as measured (benchmarks/RESULTS.md, issue 37; the whole train step,
    paired with `benchmarks/bench_lstm_ab.py --variant=V --baseline_variant=W`):

    - from `_LARGE` units each step's elementwise work as one XLA cluster: on a Zen 4,
      0.85-0.98x the step at 256-1024 units in bfloat16 and float32; below, 0.97-1.03x,
      for a compile at the first step; with oneDNN off at AVX2's ISA, 0.99x;
    - unit-major in bfloat16 where AMX multiplies it: on Sapphire Rapids the recurrent
      product 1.8x as fast (567 -> 1,006 GFLOP/s at 1024 units) and a 1024-unit layer's
      forward pass 175 -> 122 ms (34 -> 28 ms at 256; slower at 64), with XLA 402 -> 351 ms
      forward and backward; on a Zen 4, without AMX, 0.95-1.07x: batch-major stays.
    """
    if units < _LARGE:
        return "batch_major"
    if dtype == tf.bfloat16 and "amx_bf16" in cpu_flags():
        return "unit_major+xla"
    return "batch_major+xla"


class _Variant(NamedTuple):
    """How the loops run: the state [B, H] (batch-major) or [H, B] (unit-major), and each
    step's elementwise work as TensorFlow ops or one XLA cluster."""

    unit_major: bool
    xla: bool

    @property
    def gate_axis(self) -> int:
        return 0 if self.unit_major else 1

    def swap(self, x: tf.Tensor) -> tf.Tensor:
        """A [.., B, H] value in the loops' layout, or back (its last two axes swapped when
        unit-major)."""
        return tf.linalg.matrix_transpose(x) if self.unit_major else x

    def column(self, v: tf.Tensor) -> tf.Tensor:
        """A per-gate-column vector [4H], broadcastable over the loops' gates."""
        return v[:, None] if self.unit_major else v

    def shape(self, width: int) -> list[int | None]:
        """A loop value's shape, `width` wide per row of the batch."""
        return [width, None] if self.unit_major else [None, width]

    def weight(self, w: tf.Tensor) -> tf.Tensor:
        """`w` arranged, once per call, for `times`: transposed when unit-major."""
        return tf.transpose(w) if self.unit_major else w

    def times(self, state: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        """state x w in the loops' layout (w as `weight` gave it: the weight on the left when
        unit-major)."""
        return tf.matmul(w, state) if self.unit_major else tf.matmul(state, w)

    def compiled(self, fn: Callable) -> Callable:
        """`fn`, one XLA cluster when this variant compiles each step's elementwise work."""
        return tf.function(fn, jit_compile=True) if self.xla else fn


def _gate_columns(units: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per column of the gates [i, f, c, o]: the factor that halves the sigmoid gates' inputs
    and scales tanh back to a sigmoid (1/2 on i, f, o; 1 on c), the shift that follows (1/2
    on i, f, o; 0 on c), and 1 on the tanh gate c."""
    half, one, zero = tf.fill([units], 0.5), tf.ones([units]), tf.zeros([units])
    return tf.concat([half, half, one, half], 0), tf.concat([half, half, zero, half], 0), tf.concat([zero, zero,
                                                                                                     one, zero], 0)


def _make_lstm(variant: _Variant) -> Callable:
    """The LSTM over a whole sequence, with its gradient, run as `variant`."""

    @tf.custom_gradient
    def lstm(inputs, h0, c0, kernel, recurrent_kernel, bias):
        dtype = inputs.dtype
        batch, steps = tf.shape(inputs)[0], tf.shape(inputs)[1]
        features, units = kernel.shape[0], recurrent_kernel.shape[0]  # weights have static shapes
        scale, shift, tanh_gate = _gate_columns(units)
        half_scale = tf.cast(scale, dtype)
        inputs_2d = tf.reshape(tf.transpose(inputs, [1, 0, 2]), [-1, features])  # time-major rows
        projected = tf.matmul(inputs_2d, kernel * half_scale) + bias * half_scale
        projected = variant.swap(tf.reshape(tf.cast(projected, tf.float32), [steps, batch, 4 * units]))
        recurrent = variant.weight(recurrent_kernel * half_scale)
        scale, shift = variant.column(scale), variant.column(shift)

        @variant.compiled
        def cell(projected_t, product, c):
            """A step's gates, cell, its tanh and output, from the state's product with the
            recurrent kernel (in the run's dtype)."""
            gates = tf.tanh(projected_t + tf.cast(product, tf.float32)) * scale + shift  # sigmoid on i, f, o
            i, f, g, o = tf.split(gates, 4, axis=variant.gate_axis)
            c = f * c + i * g
            tanh_c = tf.tanh(c)
            return gates, c, tanh_c, o * tanh_c

        def forward_step(t, h, c, gates_ta, c_prev_ta, tanh_c_ta, hs_ta):
            c_prev_ta = c_prev_ta.write(t, c)
            gates, c, tanh_c, h = cell(projected[t], variant.times(tf.cast(h, dtype), recurrent), c)
            return t + 1, h, c, gates_ta.write(t, gates), c_prev_ta, tanh_c_ta.write(t, tanh_c), hs_ta.write(t, h)

        def ta(width: int) -> tf.TensorArray:
            return tf.TensorArray(tf.float32, size=steps, element_shape=variant.shape(width))

        # The per-step values stay in their TensorArrays for the backward pass.
        _, h_last, c_last, gates_ta, c_prev_ta, tanh_c_ta, hs_ta = tf.while_loop(
            lambda t, *_: t < steps, forward_step,
            (0, variant.swap(tf.cast(h0, tf.float32)), variant.swap(tf.cast(c0, tf.float32)), ta(4 * units),
             ta(units), ta(units), ta(units)))
        hs = variant.swap(hs_ta.stack())  # [T, B, H]
        outputs = tf.cast(tf.transpose(hs, [1, 0, 2]), dtype)
        h_last, c_last = variant.swap(h_last), variant.swap(c_last)

        saved = _Forward(variant, inputs_2d, h0, c0, kernel, recurrent_kernel, gates_ta, c_prev_ta, tanh_c_ta, hs,
                         variant.column(tanh_gate))

        def grad(d_outputs, d_h_last, d_c_last):
            # Outputs nothing depends on (e.g. the final state in training) come as None.
            d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
            dh = tf.zeros_like(h_last) if d_h_last is None else tf.cast(d_h_last, tf.float32)
            dc = tf.zeros_like(c_last) if d_c_last is None else tf.cast(d_c_last, tf.float32)
            return _backward(saved, tf.cast(tf.transpose(d_outputs, [1, 0, 2]), tf.float32), dh, dc)

        return (outputs, tf.cast(h_last, h0.dtype), tf.cast(c_last, c0.dtype)), grad

    return lstm


class _Forward(NamedTuple):
    """What the backward pass reads of the forward pass: the variant, the inputs as
    time-major rows, the initial state, the weights, each step's gates, previous cell and
    tanh of the cell (TensorArrays, in the variant's layout), the outputs stacked [T, B, H]
    and the tanh gate's columns."""

    variant: _Variant
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
    """The gradients of the LSTM's arguments, given those of its outputs (time-major
    [T, B, H], float32) and of its final state: backpropagation through time, one step after
    another."""
    variant, dtype = fw.variant, fw.inputs_2d.dtype
    steps, batch = tf.shape(fw.hs)[0], tf.shape(fw.h0)[0]
    features, units = fw.kernel.shape[0], fw.recurrent_kernel.shape[0]
    # The state's gradient is dz times the recurrent kernel's transpose: [4H, B] -> [H, B] is the
    # kernel itself on the left (unit-major); batch-major, it is transposed once here (a matmul
    # with transpose_b is ~3x slower, oneDNN on CPU).
    recurrent = fw.recurrent_kernel if variant.unit_major else tf.transpose(fw.recurrent_kernel)
    d_hs = variant.swap(d_hs)

    @variant.compiled
    def cell(gates, tanh_c, c_prev, dh, dc):
        """A step's gradient before the gate activations (in the run's dtype) and the cell's
        gradient passed to the step before, from the output's and the cell's."""
        i, forget, g, o = tf.split(gates, 4, axis=variant.gate_axis)
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        # sigmoid' = s (1 - s) and tanh' = 1 - g^2 are both (gates + tanh_gate) * (1 - gates).
        d_gates = tf.concat([dc * g, dc * c_prev, dc * i, dh * tanh_c], variant.gate_axis)
        return tf.cast(d_gates * ((gates + fw.tanh_gate) * (1.0 - gates)), dtype), dc * forget

    def backward_step(t, dh, dc, dz_ta):
        dz, dc = cell(fw.gates_ta.read(t), fw.tanh_c_ta.read(t), fw.c_prev_ta.read(t), d_hs[t] + dh, dc)
        dh = tf.cast(variant.times(dz, recurrent), tf.float32)  # the previous step's h
        return t - 1, dh, dc, dz_ta.write(t, dz)

    _, dh0, dc0, dz_ta = tf.while_loop(
        lambda t, *_: t >= 0, backward_step,
        (steps - 1, variant.swap(dh), variant.swap(dc),
         tf.TensorArray(dtype, size=steps, element_shape=variant.shape(4 * units))))
    dz = tf.reshape(variant.swap(dz_ta.stack()), [-1, 4 * units])  # [T*B, 4H], time-major rows
    # Transposed once: as above.
    d_inputs = tf.matmul(dz, tf.transpose(fw.kernel))
    d_inputs = tf.transpose(tf.reshape(d_inputs, [steps, batch, features]), [1, 0, 2])
    h_prev = tf.concat([tf.cast(fw.h0, tf.float32)[None], fw.hs[:-1]], 0)
    d_recurrent = tf.matmul(tf.cast(tf.reshape(h_prev, [-1, units]), dtype), dz, transpose_a=True)
    d_kernel = tf.matmul(fw.inputs_2d, dz, transpose_a=True)
    return (d_inputs, tf.cast(variant.swap(dh0), fw.h0.dtype), tf.cast(variant.swap(dc0), fw.c0.dtype), d_kernel,
            d_recurrent, tf.reduce_sum(dz, 0))


_LSTMS = {name: _make_lstm(_Variant(unit_major=name.startswith("unit_major"), xla=name.endswith("+xla")))
          for name in VARIANTS}

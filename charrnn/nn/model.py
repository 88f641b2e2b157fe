"""`CharRNN`: Embedding -> LSTM (or GRU) x num_layers -> Dense, with the recurrent state passed explicitly.

No layer is stateful: a caller that wants to continue a sequence passes the state the
previous call returned. That makes the same model serve training (full sequences, zero
state), sampling (one character at a time, state as loop variables) and any batch size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import tensorflow as tf

from charrnn.config import TrainConfig
from charrnn.errors import CharRNNError
from charrnn.nn.lstm import fused_lstm

# Per layer, an LSTM's (h, c) or a GRU's (h,); the whole state is one such tuple per layer.
LayerState = tuple[tf.Tensor, ...]
State = tuple[LayerState, ...]


def token_losses(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The cross-entropy of each target id under softmax(logits), in nats, shape of `targets`:
    the log-sum-exp of the logits minus the target's logit. The same as
    tf.nn.sparse_softmax_cross_entropy_with_logits to float32's rounding, and, forward and
    backward, half its time on a CPU (1.0 against 1.95 ms at 64 x 100 x 65, Zen 4)."""
    return tf.reduce_logsumexp(logits, -1) - tf.gather(logits, targets, batch_dims=len(targets.shape))


def sequence_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-sequence mean sparse cross-entropy from logits, shape [batch]."""
    return tf.reduce_mean(token_losses(targets, logits), axis=-1)


class CharRNN(keras.Model):
    """Character-level recurrent language model.

    `cell` is `lstm` or `gru` (keras.layers.GRU, reset_after as cuDNN wants). `seed` fixes
    the initial weights. For LSTMs, `lstm_impl` picks how full sequences run: `keras`
    (keras.layers.LSTM, which uses cuDNN on a GPU), `fused` (charrnn.nn.lstm, the faster on a
    CPU at every size measured, benchmarks/RESULTS.md), or `auto`: Keras on a GPU, fused on
    a CPU. Both use the same weights. `precision` is
    a Keras dtype policy (float32, mixed_float16, mixed_bfloat16); logits are float32.
    `logits, state = model(ids, state=None, training=False, seed=None)` maps int ids of
    shape [batch, time] to logits [batch, time, vocab_size] and the state after the last
    step. `seed` (int64 [2]) drives dropout, which is stateless so that a training run can
    be reproduced and resumed exactly; it is required when training with dropout > 0.
    `rows=(first, total)` says that `ids` are rows first.. of a global batch of `total`
    rows (a replica's share): the dropout masks are then those of the global batch, so
    that training does not depend on the number of replicas. With `last_only`, the logits
    are those of the last step only ([batch, 1, vocab_size]).
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 256, rnn_units: int = 1024,
                 num_layers: int = 1, dropout: float = 0.0, seed: int | None = None, lstm_impl: str = "auto",
                 precision: str = "float32", cell: str = "lstm", **kwargs):
        # No autocast: Keras would cast a bfloat16/float16 state passed to call() to float32.
        super().__init__(autocast=False, **kwargs)
        # What float32_copy() builds again in float32.
        self._settings = dict(vocab_size=vocab_size, embedding_dim=embedding_dim, rnn_units=rnn_units,
                              num_layers=num_layers, dropout=dropout, seed=seed, lstm_impl=lstm_impl, cell=cell)
        self.lstm_impl = lstm_impl
        self.cell = cell
        # Weights stay float32 under every policy; a mixed policy computes in 16 bits.
        self.state_dtype = keras.DTypePolicy(precision).compute_dtype

        def init(kind: str, index: int) -> keras.initializers.Initializer:
            # A distinct, fixed seed per weight makes initialisation a function of `seed`
            # without touching global random state.
            weight_seed = None if seed is None else seed * 1000 + index
            if kind == "uniform":  # keras.layers.Embedding's default
                return keras.initializers.RandomUniform(-0.05, 0.05, seed=weight_seed)
            return keras.initializers.GlorotUniform(seed=weight_seed)

        self.vocab_size = vocab_size
        self.rnn_units = rnn_units
        self.dropout_rate = dropout
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, embeddings_initializer=init("uniform", 0),
                                                dtype=precision, name="embedding")
        # One attribute per layer: tf.train.Checkpoint does not track layers held in a plain
        # list on a Keras 3 model, so a model-only restore (the Sampler's) would miss them.
        self.num_layers = num_layers
        layer_class = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
        for i in range(num_layers):
            # glorot_uniform as in the case study (Keras defaults to orthogonal).
            setattr(self, f"{cell}_{i}", layer_class(
                rnn_units, return_sequences=True, return_state=True, kernel_initializer=init("glorot", 2 * i + 1),
                recurrent_initializer=init("glorot", 2 * i + 2), dtype=precision, name=f"{cell}_{i}"))
        self.dense = keras.layers.Dense(vocab_size, kernel_initializer=init("glorot", 2 * num_layers + 1),
                                        dtype=precision, name="logits")

    @classmethod
    def from_config(cls, config: TrainConfig, vocab_size: int, lstm_impl: str | None = None) -> CharRNN:
        """The model `config` describes for `vocab_size` characters, its variables created;
        `lstm_impl` overrides the config's (inference may pick another implementation of
        the same weights)."""
        parameters = cls.parameter_count(config, vocab_size)
        embedding_dim, rnn_units, num_layers, cell = config.model_sizes()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if 4 * parameters > memory:  # its float32 weights alone
            raise CharRNNError(f"a model of embedding_dim={embedding_dim}, rnn_units={rnn_units}, "
                               f"num_layers={num_layers} and {vocab_size} characters has {parameters:,} "
                               f"weights ({4 * parameters / 2**30:,.1f} GiB), more than this machine's memory "
                               f"({memory / 2**30:,.1f} GiB); use smaller sizes")
        model = cls(vocab_size, embedding_dim, rnn_units, num_layers, config.dropout, seed=config.seed,
                    lstm_impl=lstm_impl or config.lstm_impl, precision=config.mixed_precision, cell=cell)
        try:
            model.build_for_vocab()
        except tf.errors.ResourceExhaustedError:
            raise CharRNNError(f"not enough memory for a model of {parameters:,} weights; use smaller sizes") from None
        return model

    @staticmethod
    def parameter_count(config: TrainConfig, vocab_size: int) -> int:
        """The weights of the model `config` describes for `vocab_size` characters: the
        embedding, each recurrent layer's kernels and biases (a GRU's two, as cuDNN's), the
        output layer."""
        e, h, num_layers, cell = config.model_sizes()
        gates = 4 if cell == "lstm" else 3
        layers = sum(gates * h * (inputs + h) + gates * h * (1 if cell == "lstm" else 2)
                     for inputs in [e] + [h] * (num_layers - 1))
        return vocab_size * e + layers + h * vocab_size + vocab_size

    def float32_copy(self) -> CharRNN:
        """A model of the same shape that computes in float32, built, with a copy of this one's
        weights (`copy_weights` refreshes them). The weights are float32 under every policy,
        so the copy is exact."""
        copy = CharRNN(**self._settings, precision="float32")  # type: ignore[arg-type]  # its own settings
        copy.build_for_vocab()
        copy.copy_weights(self)
        return copy

    def copy_weights(self, source: CharRNN) -> None:
        """Sets this model's weights to `source`'s (a model of the same shape)."""
        for mine, theirs in zip(self.variables, source.variables, strict=True):
            mine.assign(theirs)

    @property
    def rnns(self) -> list[keras.layers.RNN]:
        return [getattr(self, f"{self.cell}_{i}") for i in range(self.num_layers)]

    @property
    def state_size(self) -> int:
        """Tensors of shape [batch, rnn_units] per layer in a state: 2 for an LSTM, 1 for a GRU."""
        return 2 if self.cell == "lstm" else 1

    def state_spec(self, batch: int | None = None) -> State:
        """The state of `batch` sequences (None: any number) as TensorSpecs, nested as `call`
        takes and returns it: per layer, `state_size` tensors [batch, rnn_units]. What a
        compiled function's signature, a variable per tensor or a stacked export is made of."""
        layer = tuple(tf.TensorSpec([batch, self.rnn_units], self.state_dtype) for _ in range(self.state_size))
        return (layer,) * self.num_layers

    def nest_state(self, flat: Sequence[tf.Tensor]) -> State:
        """A state's tensors in tf.nest.flatten's order, nested as `call` takes them."""
        return tf.nest.pack_sequence_as(self.state_spec(), list(flat))

    def initial_state(self, batch_size: int | tf.Tensor) -> State:
        """The zero state for `batch_size` sequences."""
        zeros = tf.zeros([batch_size, self.rnn_units], self.state_dtype)
        return tuple((zeros,) * self.state_size for _ in self.rnns)

    def call(self, ids: tf.Tensor, state: State | None = None, training: bool = False,
             seed: tf.Tensor | None = None, rows: tuple[tf.Tensor, tf.Tensor] | None = None,
             last_only: bool = False) -> tuple[tf.Tensor, State]:
        if state is None:
            state = self.initial_state(tf.shape(ids)[0])
        x = self.embedding(ids)
        fused = self._use_fused(x)
        new_state = []
        for i, (layer, initial) in enumerate(zip(self.rnns, state)):
            if fused:
                if not layer.built:
                    layer.build(x.shape)
                cell = layer.cell
                weights = [tf.cast(w.value, x.dtype) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)]
                x, *final = fused_lstm(x, *initial, *weights)
            else:
                x, *final = layer(x, initial_state=list(initial), training=training)
            new_state.append(tuple(final))
            x = self._dropout(x, training, seed, i, rows)
        if last_only:  # a prime's pass needs the last step's logits only, not [time, vocab] of them
            x = x[:, -1][:, None]  # [batch, 1, units], known to be 1 long
        # float32 logits keep the softmax and the loss accurate under a mixed policy.
        return tf.cast(self.dense(x), tf.float32), tuple(new_state)

    def _use_fused(self, x: tf.Tensor) -> bool:
        # Where the op was placed (charrnn's compiled functions set a device scope; eager
        # tensors know theirs).
        return self.fused_on(x.device)

    def fused_on(self, device: str) -> bool:
        """Whether full sequences run the fused LSTM on `device` (unplaced, "": a GPU whenever
        there is one)."""
        if self.cell != "lstm":
            return False
        if self.lstm_impl != "auto":
            return self.lstm_impl == "fused"
        if device:
            return "GPU" not in device.upper()
        return not tf.config.list_logical_devices("GPU")

    def step(self, ids: tf.Tensor, state: State) -> tuple[tf.Tensor, State]:
        """One time step for ids of shape [batch]: logits [batch, vocab] and the new state.

        Runs the recurrent cells directly (same weights as `call`), which avoids the per-call
        loop machinery of a whole layer when sampling one character at a time.
        """
        # The embedding's rows by tf.gather, which refuses an id outside [0, vocab) where Keras'
        # lookup would wrap a negative one around (the one-step exports take ids from clients).
        x = tf.cast(tf.gather(self.embedding.embeddings, ids), self.state_dtype)
        new_state = []
        for layer, layer_state in zip(self.rnns, state):
            x, layer_state = layer.cell(x, list(layer_state), training=False)
            new_state.append(tuple(layer_state))
        return tf.cast(self.dense(x), tf.float32), tuple(new_state)

    def _dropout(self, x: tf.Tensor, training: bool, seed: tf.Tensor | None, layer: int,
                 rows: tuple[tf.Tensor, tf.Tensor] | None) -> tf.Tensor:
        if not training or self.dropout_rate == 0:
            return x
        if seed is None:
            raise ValueError("CharRNN: training with dropout needs a seed (int64 [2]) for reproducible masks")
        layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
        first, total = rows if rows is not None else (0, tf.shape(x)[0])
        noise = tf.random.stateless_uniform(tf.concat([[total], tf.shape(x)[1:]], 0), layer_seed)
        keep = noise[first:first + tf.shape(x)[0]] >= self.dropout_rate
        return tf.where(keep, x / tf.cast(1 - self.dropout_rate, x.dtype), tf.zeros_like(x))

    def build_for_vocab(self) -> None:
        """Creates all variables by running one character through the model."""
        self(tf.zeros([1, 1], tf.int32))

    def summary_table(self, batch_size: int | None = None) -> str:
        """Each layer's output shape and parameter count, and the total, as text."""
        b = "None" if batch_size is None else str(batch_size)
        rows = [("embedding (Embedding)", f"({b}, None, {self.embedding.output_dim})", self.embedding.count_params())]
        rows += [(f"{layer.name} ({type(layer).__name__})", f"({b}, None, {self.rnn_units})", layer.count_params())
                 for layer in self.rnns]
        rows.append(("logits (Dense)", f"({b}, None, {self.vocab_size})", self.dense.count_params()))
        width = max(len(r[0]) for r in rows) + 2
        lines = [f"{'Layer':<{width}}{'Output shape':<24}{'Params':>12}"]
        lines += [f"{name:<{width}}{shape:<24}{params:>12,}" for name, shape, params in rows]
        lines.append(f"{'Total':<{width}}{'':<24}{self.count_params():>12,}")
        return "\n".join(lines)

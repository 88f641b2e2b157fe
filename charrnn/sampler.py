"""`Sampler`: text generation as one compiled call.

The prime runs through the model once to build the recurrent state; then a `tf.range`
loop inside a `tf.function` samples each next character from logits / temperature with
stateless ops and feeds it back, the state carried as loop variables. `num_samples`
sequences are generated in parallel as one batch, and a seed reproduces the output exactly.
"""

from __future__ import annotations

import os
import secrets

import tensorflow as tf

from charrnn import checkpoint
from charrnn.data import Vocabulary
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN

MAX_NUM_CHARS = 1_000_000
MAX_NUM_SAMPLES = 4096


class Sampler:
    """Generates text from a `CharRNN` and its vocabulary."""

    def __init__(self, model: CharRNN, vocab: Vocabulary, device: str = "auto"):
        if model.vocab_size != len(vocab):
            raise CharRNNError(f"the model has {model.vocab_size} output classes but the vocabulary {len(vocab)} characters")
        self.model = model
        self.vocab = vocab
        self.device = resolve_device(device)
        self._generate_ids = tf.function(
            self._generate_ids_fn,
            input_signature=[
                tf.TensorSpec([None, None], tf.int32),  # prime ids, one row per sample
                tf.TensorSpec([], tf.int32),  # number of characters to generate (>= 1)
                tf.TensorSpec([], tf.float32),  # temperature
                tf.TensorSpec([2], tf.int64),  # stateless seed
            ],
        )

    @classmethod
    def from_checkpoint(cls, run_dir: str, device: str = "auto") -> Sampler:
        """Loads the model of `run_dir`'s latest checkpoint; only the run directory is needed."""
        if not os.path.isdir(run_dir):
            raise CharRNNError(f"run directory {run_dir} does not exist; pass the --run_dir of a training run")
        no_checkpoint = f"run directory {run_dir} holds no checkpoint; train first with charrnn-train --run_dir={run_dir}"
        files = checkpoint.load_run_files(run_dir)
        if files is None:
            raise CharRNNError(no_checkpoint)
        config, vocab = files
        with tf.device(resolve_device(device)):
            model = CharRNN(len(vocab), config.embedding_dim, config.rnn_units, config.num_layers,
                            precision=config.mixed_precision)
            model.build_for_vocab()
            if checkpoint.restore_newest_readable(tf.train.Checkpoint(model=model), run_dir, partial=True) is None:
                raise CharRNNError(no_checkpoint)
        return cls(model, vocab, device)

    def generate(self, prime: str, num_chars: int = 500, temperature: float = 0.5, num_samples: int = 1,
                 seed: int | None = None) -> str | list[str]:
        """Returns `prime` followed by `num_chars` sampled characters (a list if num_samples > 1).

        The same `seed` and arguments give the same text; without one a random seed is drawn.
        """
        if not prime:
            raise CharRNNError("the prime is empty; pass at least one character to start from")
        if not temperature > 0:
            raise CharRNNError(f"temperature must be > 0, got {temperature}")
        if not 0 <= num_chars <= MAX_NUM_CHARS:
            raise CharRNNError(f"num_chars must be between 0 and {MAX_NUM_CHARS:,}, got {num_chars}")
        if not 1 <= num_samples <= MAX_NUM_SAMPLES:
            raise CharRNNError(f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {num_samples}")
        prime_ids = self.vocab.encode(prime)
        if num_chars == 0:
            texts = [prime] * num_samples
        else:
            if seed is None:
                seed = secrets.randbits(63)
            batch = tf.tile(tf.constant(prime_ids[None, :]), [num_samples, 1])
            ids = self._generate_ids(batch, tf.constant(num_chars, tf.int32), tf.constant(temperature, tf.float32),
                                     tf.constant([seed, 0], tf.int64))
            texts = [prime + self.vocab.decode(row) for row in ids.numpy()]
        return texts if num_samples > 1 else texts[0]

    def _generate_ids_fn(self, prime_ids: tf.Tensor, num_chars: tf.Tensor, temperature: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
        with tf.device(self.device):
            return self._generate_ids_body(prime_ids, num_chars, temperature, seed)

    def _generate_ids_body(self, prime_ids: tf.Tensor, num_chars: tf.Tensor, temperature: tf.Tensor,
                           seed: tf.Tensor) -> tf.Tensor:
        logits, state = self.model(prime_ids)

        def sample(step_logits: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
            step_seed = tf.random.experimental.stateless_fold_in(seed, i)
            return tf.random.stateless_categorical(step_logits / temperature, 1, seed=step_seed)[:, 0]

        next_ids = tf.cast(sample(logits[:, -1, :], 0), tf.int32)
        out = tf.TensorArray(tf.int32, size=num_chars).write(0, next_ids)
        for i in tf.range(1, num_chars):
            step_logits, state = self.model.step(next_ids, state)
            next_ids = tf.cast(sample(step_logits, i), tf.int32)
            out = out.write(i, next_ids)
        return tf.transpose(out.stack())

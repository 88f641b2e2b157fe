"""PyTorch's nn.LSTM on the case study's model, for bench_train.py's PyTorch column.

Embedding(E) -> nn.LSTM(H, batch_first) -> Linear(V), Adam, cross-entropy, float32, the
usual training loop (zero_grad, forward, backward, step), on batches of B windows of T+1
characters of --data (its ids; what they are does not change the speed). Threads: as many
as TensorFlow uses by default (the machine's cores). Prints one JSON line: the first step
and the median of --steps timed steps. Needs torch; bench_train.py runs it only where
torch is importable.

    python benchmarks/torch_lstm.py --rnn_units=256 --embedding_dim=64
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import torch
from absl import app, flags

from charrnn.corpus import read_text
from charrnn.vocab import Vocabulary

flags.DEFINE_string("data", "tinyshakespeare", "Corpus path or registered name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seq_length", 100, "Sequence length.")
flags.DEFINE_integer("embedding_dim", 256, "Embedding size.")
flags.DEFINE_integer("rnn_units", 1024, "LSTM units.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
FLAGS = flags.FLAGS


class _CharLSTM(torch.nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, units: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, units, batch_first=True)
        self.logits = torch.nn.Linear(units, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return self.logits(out)


def main(argv: list[str]) -> None:
    del argv
    torch.set_num_threads(os.cpu_count() or 1)
    text = read_text(FLAGS.data)
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text).astype(np.int64)
    b, t, v = FLAGS.batch_size, FLAGS.seq_length, len(vocab)
    rng = np.random.default_rng(0)
    model = _CharLSTM(v, FLAGS.embedding_dim, FLAGS.rnn_units)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(FLAGS.warmup + FLAGS.steps):
        starts = rng.integers(0, len(ids) - t - 1, b)
        windows = torch.from_numpy(np.stack([ids[s:s + t + 1] for s in starts]))
        inputs, targets = windows[:, :-1], windows[:, 1:]
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(inputs).reshape(-1, v), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    print(json.dumps({"benchmark": "torch_lstm", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "first_step_s": times[0], "median_step_s": statistics.median(times[FLAGS.warmup:])}))


if __name__ == "__main__":
    app.run(main)

"""PyTorch's nn.LSTM on the case study's model, for bench_train.py's PyTorch column.

Embedding(E) -> nn.LSTM(H, batch_first) -> Linear(V), Adam, cross-entropy, float32, the
usual training loop (zero_grad, forward, backward, step), on batches of B windows of T+1
characters of `data` (its ids; what they are does not change the speed). Threads: as many
as TensorFlow uses by default (the machine's cores). Takes bench_train.py's settings as
one JSON argument; prints one JSON line: the first step and the median of `steps` timed
steps after `warmup`. Needs torch; bench_train.py runs it only where torch is importable.

    python benchmarks/torch_lstm.py '{"data": "tinyshakespeare", "batch_size": 64,
        "seq_length": 100, "embedding_dim": 64, "rnn_units": 256, "steps": 10, "warmup": 2}'
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from charrnn.corpus import read_text
from charrnn.vocab import Vocabulary


class _CharLSTM(torch.nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, units: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, units, batch_first=True)
        self.logits = torch.nn.Linear(units, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return self.logits(out)


def main(settings: dict) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    text = read_text(settings["data"])
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text).astype(np.int64)
    b, t, v = settings["batch_size"], settings["seq_length"], len(vocab)
    rng = np.random.default_rng(0)
    model = _CharLSTM(v, settings["embedding_dim"], settings["rnn_units"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(settings["warmup"] + settings["steps"]):
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
                      "first_step_s": times[0], "median_step_s": statistics.median(times[settings["warmup"]:])}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

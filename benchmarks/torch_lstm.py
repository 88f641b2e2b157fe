"""PyTorch's nn.LSTM on the case study's model: bench_train.py's and bench_sample.py's PyTorch columns.

Embedding(E) -> nn.LSTM(H, batch_first) -> Linear(V). Threads: as many as TensorFlow uses
by default (the machine's cores). Takes the settings as one JSON argument and prints one
JSON line; needs torch (the benchmarks run it only where torch is importable). Two jobs:

- `"job": "train"` (bench_train.py): Adam, cross-entropy, the usual training loop
  (zero_grad, forward, backward, step) on batches of B windows of T+1 characters of
  `data` (its ids; what they are does not change the speed), in float32 or, with
  `"autocast": true`, under `torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's mixed
  precision on a CPU: bfloat16 matmuls and LSTM, float32 weights). Prints the first step
  and the median of `steps` timed steps after `warmup`.
- `"job": "sample"` (bench_sample.py): the usual per-character generation loop, batch 1,
  float32, under `torch.no_grad()`: one nn.LSTM call per character with its (h, c) state
  carried, softmax of logits / 0.5, `torch.multinomial`, `.item()`. Prints characters per
  second over `num_chars` characters after a warm-up of 20.

    python benchmarks/torch_lstm.py '{"job": "train", "data": "tinyshakespeare", "batch_size": 64,
        "seq_length": 100, "embedding_dim": 64, "rnn_units": 256, "steps": 10, "warmup": 2,
        "autocast": false}'
    python benchmarks/torch_lstm.py '{"job": "sample", "vocab_size": 65, "embedding_dim": 256,
        "rnn_units": 1024, "num_chars": 500}'
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch


class _CharLSTM(torch.nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, units: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, units, batch_first=True)
        self.logits = torch.nn.Linear(units, vocab_size)

    def forward(self, ids: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        out, state = self.lstm(self.embedding(ids), state)
        return self.logits(out), state


def train(settings: dict) -> dict:
    from charrnn.text.corpus import read_text
    from charrnn.text.vocab import Vocabulary

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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.get("autocast", False)):
            loss = loss_fn(model(inputs)[0].reshape(-1, v), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return {"autocast": settings.get("autocast", False), "first_step_s": times[0],
            "median_step_s": statistics.median(times[settings["warmup"]:])}


def sample(settings: dict) -> dict:
    model = _CharLSTM(settings["vocab_size"], settings["embedding_dim"], settings["rnn_units"]).eval()
    generator = torch.Generator().manual_seed(0)

    def generate(num_chars: int) -> list[int]:
        ids, state, out = torch.zeros([1, 8], dtype=torch.int64), None, []
        for _ in range(num_chars):
            logits, state = model(ids, state)
            probs = torch.softmax(logits[:, -1, :] / 0.5, dim=-1)
            ids = torch.multinomial(probs, 1, generator=generator)
            out.append(ids.item())
        return out

    with torch.no_grad():
        generate(20)
        start = time.perf_counter()
        generate(settings["num_chars"])
        seconds = time.perf_counter() - start
    return {"chars_per_s": settings["num_chars"] / seconds}


def main(settings: dict) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    result = {"train": train, "sample": sample}[settings.get("job", "train")](settings)
    print(json.dumps({"benchmark": "torch_lstm", "job": settings.get("job", "train"), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), **result}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

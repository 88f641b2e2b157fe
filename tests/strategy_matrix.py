"""Trains each row of a matrix of settings twice, mirrored over two logical CPU devices and on
one device, in one process (the devices can only be split before TensorFlow starts), and
prints one JSON line per row: the two runs' losses, or the error of the one that failed.

    python tests/strategy_matrix.py TEXT_FILE WORK_DIR ROWS_JSON

ROWS_JSON: a list of TrainConfig settings, each on top of a tiny model's.
"""

import json
import sys

from charrnn.training.distribute import configure_cpu_devices

configure_cpu_devices(2)

from charrnn import TrainConfig, Trainer  # noqa: E402 - after the devices are split
from charrnn.training.metrics import read_metrics  # noqa: E402

TINY = dict(embedding_dim=8, rnn_units=16, batch_size=8, seq_length=20, max_steps=3, log_every=1,
            checkpoint_every=1000, val_fraction=0.1, epochs=1)


def main(text: str, work: str, rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        result = {"row": row}
        for name, strategy in (("mirrored", dict(strategy="mirrored", num_cpu_devices=2)),
                               ("single", dict(device="/CPU:0"))):
            config = TrainConfig(data=text, run_dir=f"{work}/{index}-{name}", **{**TINY, **row, **strategy})
            try:
                Trainer(config).fit(verbose=0)
                result[name] = [m["loss"] for m in read_metrics(config.run_dir) if "loss" in m and "epoch" not in m]
            except Exception as e:  # noqa: BLE001 - the row's failure, reported, not the process's
                result[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))

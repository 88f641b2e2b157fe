"""Generation speed of the web page export in headless Chromium against charrnn's Sampler.

For each size of --sizes: a run of that many LSTM units (embedding 256, one training step
on --data: speed does not depend on training), exported with `--format=web`, served on
localhost and driven in Chromium by tests/web_drive.mjs (which also checks the page as the
tests do); it reports the page API's characters per second over a greedy --num_chars text
(LiteRT.js, WebAssembly on the CPU), the Sampler's on the same machine (greedy, batch 1,
float32, after a warm-up call), both after the same one-character prime; the folder's size
and the model file's. Needs what tests/web_setup.sh installs. Prints the CPU, a table, then one JSON line.

    python benchmarks/bench_web.py --data=../shared/data/tinyshakespeare.txt          # 256 and 1024 units
    python benchmarks/bench_web.py --data=text.txt --sizes=16 --num_chars=20               # smoke
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
WEB = REPO / ".cache" / "web"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--num_chars", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("CHARRNN_NPM_REGISTRY", (WEB / "registry").as_uri())
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpuinfo import cpu

    from charrnn import Sampler, TrainConfig, Trainer
    from charrnn.generation.webexport import export_web

    machine = cpu()
    print(json.dumps(machine))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CHARRNN_DATA_DIR", os.path.join(tmp, "cache"))
        for units in map(int, args.sizes.split(",")):
            run, folder = os.path.join(tmp, f"run{units}"), os.path.join(tmp, f"web{units}")
            Trainer(TrainConfig(data=args.data, run_dir=run, rnn_units=units, embedding_dim=256, batch_size=4,
                                seq_length=20, max_steps=1, val_fraction=0.1)).fit(verbose=0)
            export_web(run, folder)
            sampler = Sampler.from_checkpoint(run)
            prime = sampler.vocab.default_prime  # a character of the text, whatever it is
            page = _drive(folder, prime, args.num_chars)
            sampler.generate(prime, args.num_chars, greedy=True)  # traces the loop
            start = time.perf_counter()
            sampler.generate(prime, args.num_chars, greedy=True)
            sample_rate = args.num_chars / (time.perf_counter() - start)
            size = sum(p.stat().st_size for p in pathlib.Path(folder).rglob("*") if p.is_file())
            rows.append({"units": units, "browser_chars_per_sec": page["charsPerSec"],
                         "sampler_chars_per_sec": sample_rate, "folder_bytes": size,
                         "model_bytes": os.path.getsize(os.path.join(folder, "model.tflite")),
                         "outside_requests": len(page["outside"])})
    print(f"{'units':>6} {'browser chars/s':>16} {'Sampler chars/s':>16} {'ratio':>6} {'folder MB':>10} "
          f"{'model MB':>9}")
    for r in rows:
        print(f"{r['units']:>6} {r['browser_chars_per_sec']:>16.0f} {r['sampler_chars_per_sec']:>16.0f} "
              f"{r['browser_chars_per_sec'] / r['sampler_chars_per_sec']:>6.2f} {r['folder_bytes'] / 1e6:>10.1f} "
              f"{r['model_bytes'] / 1e6:>9.2f}")
    print(json.dumps({"benchmark": "web", "cpu": machine, "rows": rows}))


def _drive(folder: str, prime: str, num_chars: int) -> dict:
    """What tests/web_drive.mjs measured and read of the page served from `folder`."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run(["node", str(REPO / "tests" / "web_drive.mjs"), str(WEB / "node_modules"),
                               shutil.which("chromium") or "chromium", f"http://127.0.0.1:{server.server_address[1]}/",
                               prime, str(min(num_chars, 40)), str(num_chars)],
                              capture_output=True, text=True, timeout=900)
    finally:
        server.shutdown()
        server.server_close()
    if proc.returncode != 0:
        raise SystemExit(f"bench_web.py: the browser run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


if __name__ == "__main__":
    main()

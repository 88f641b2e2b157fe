#!/usr/bin/env bash
# One prepared GPU check, meant to finish within 9 minutes on one modern GPU: both
# benchmarks at the case-study size, the train benchmark at batch 256 and 1024, with
# steps_per_loop and with mixed precision, a short mirrored-strategy training; a short
# table last. (The quality benchmark, `bench_quality.py --preset=gpu`, takes 10 minutes
# by itself and is not part of this check.)
#
# Needs TensorFlow with GPU support importable by the python3 it runs (set PYTHON to
# choose one). Usage: bash benchmarks/gpu_check.sh   (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# The corpus for the train benchmark: the cache, or a copy carried next to the repository.
export CHARRNN_DATA_DIR=${CHARRNN_DATA_DIR:-$PWD/../shared/data}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - <<'PY' || { echo "gpu_check: TensorFlow sees no GPU; nothing to check" >&2; exit 2; }
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "GPUs:", gpus)
raise SystemExit(0 if gpus else 1)
PY

run() {  # name, timeout in seconds, script, flags...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$PYTHON" "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.out" | tail -n 8
}
run train_b64 90 benchmarks/bench_train.py --steps=20 --warmup=3
run train_b64_spl10 60 benchmarks/bench_train.py --baseline=false --steps=40 --steps_per_loop=10
run train_b64_fp16 90 benchmarks/bench_train.py --mixed_precision=mixed_float16 --steps=20 --steps_per_loop=10
run train_b256 90 benchmarks/bench_train.py --batch_size=256 --steps=20 --steps_per_loop=10
run train_b1024 90 benchmarks/bench_train.py --batch_size=1024 --steps=10 --steps_per_loop=5
run sample 60 benchmarks/bench_sample.py --baseline_chars=100
# A short training under tf.distribute's MirroredStrategy over every GPU of the machine.
run mirrored 120 -m charrnn.cli.train --strategy=mirrored --run_dir="$OUT/mirrored_run" --max_steps=40 \
  --steps_per_loop=10 --log_every=10 --eval_every=40

echo "== summary (s/step: keras fit | charrnn; speed-up; cuDNN in charrnn's step)"
for f in "$OUT"/train_*.out; do
  "$PYTHON" - "$f" <<'PY'
import json, os, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if not lines:
    print(f"{os.path.basename(sys.argv[1]):<24} no result"); raise SystemExit
r = json.loads(lines[-1])
fit = r["results"].get("keras_fit", {}).get("median_step_s")
ours = r["results"]["charrnn"]["median_step_s"]
print(f"{os.path.basename(sys.argv[1]):<24} b={r['batch_size']:<5} {r['mixed_precision']:<15} "
      f"fit {fit if fit is None else round(fit, 4)} | charrnn {ours:.4f} s/step; "
      f"x{r['speedup_vs_fit'] or float('nan'):.2f}; cuDNN {r['cudnn_in_step']}")
PY
done
"$PYTHON" - "$OUT/sample.out" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if lines:
    r = json.loads(lines[-1])
    rows = "; ".join(f"charrnn x{c['num_samples']} {c['chars_per_s']:.0f}" for c in r["charrnn"])
    print(f"sample chars/s: eager {r['eager_chars_per_s']:.0f}; {rows}")
PY

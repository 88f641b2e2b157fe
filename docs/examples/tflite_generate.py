"""Generates text with a charrnn TFLite export and its vocabulary only (no charrnn needed).

    charrnn-export --run_dir=runs/shakespeare --export_dir=exports/phone --format=tflite
    python docs/examples/tflite_generate.py exports/phone "ROMEO: " 200
On a phone the same loop runs with the platform's TFLite runtime; here LiteRT's interpreter
(pip install ai-edge-litert), else TensorFlow's deprecated tf.lite.Interpreter."""

import json
import sys

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter

export_dir, prime, num_chars = sys.argv[1], sys.argv[2], int(sys.argv[3])
temperature, rng = 0.5, np.random.default_rng(1)  # the same seed gives the same text

with open(f"{export_dir}/vocab.json", encoding="utf-8") as f:
    chars = json.load(f)["chars"]
index = {ch: i for i, ch in enumerate(chars)}
if not prime:  # the prime's last step gives the first logits: there must be one
    sys.exit("the prime is empty; pass at least one character to start from")
if unknown := "".join(sorted(set(prime) - set(index))):
    sys.exit(f"not in the model's vocabulary: {unknown!r}; use characters of its training text")
step = Interpreter(model_path=f"{export_dir}/model.tflite").get_signature_runner("step")
state = np.zeros(step.get_input_details()["state"]["shape"], np.float32)  # zeros start a text

text = prime
for ch in prime:  # the prime builds the state; its last step gives the first logits
    out = step(ids=np.array([index[ch]], np.int32), state=state)
    state = out["state"]
for _ in range(num_chars):
    logits = out["logits"][0].astype(np.float64) / temperature
    p = np.exp(logits - logits.max())
    ch = chars[rng.choice(len(chars), p=p / p.sum())]
    text += ch
    out = step(ids=np.array([index[ch]], np.int32), state=out["state"])
print(text)

"""The TFLite export: builtin operators only, the Sampler's logits step by step, and the
documented example that generates with the interpreter and vocab.json alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from charrnn import CharRNNError, Sampler, Vocabulary
from charrnn.generation.exporter import export_tflite
from conftest import (
    CONSTANT_CHARS,
    CONSTANT_LOGITS,
    REPO,
    assert_one_line_error,
    constant_logits_model,
    draws_deviation,
    run_cli,
    sampling_probs,
    write_model_run,
)


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("tflite")
    for quantize in ("none", "dynamic"):
        export_tflite(str(trained_run), str(base / quantize), quantize=quantize)
    return base


def _runner(path):
    interpreter = Interpreter(model_path=str(path))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}  # noqa: SLF001 - the only listing TFLite has
    return interpreter.get_signature_runner("step"), ops


def test_the_tflite_step_uses_builtin_ops_and_matches_the_sampler(trained_run, exports):
    sampler = Sampler.from_checkpoint(str(trained_run))
    chars = json.loads((exports / "none" / "vocab.json").read_text())["chars"]
    assert tuple(chars) == sampler.vocab.chars
    step, ops = _runner(exports / "none" / "model.tflite")
    assert ops and not any(op.startswith("Flex") or "HASHTABLE" in op.upper() for op in ops), ops
    ids = sampler.vocab.encode("The quick brown fox")
    state = np.zeros(step.get_input_details()["state"]["shape"], np.float32)
    model_state = sampler.model.initial_state(1)
    for i in ids:
        out = step(ids=np.array([i], np.int32), state=state)
        expected, model_state = sampler.model.step(tf.constant([i]), model_state)
        np.testing.assert_allclose(out["logits"], expected.numpy(), atol=1e-4)
        state = out["state"]
    # Greedy decoding with the interpreter is the Sampler's greedy text.
    text, state = "The ", np.zeros_like(state)
    for ch in text:
        out = step(ids=np.array([chars.index(ch)], np.int32), state=state)
        state = out["state"]
    for _ in range(30):
        ch = chars[int(np.argmax(out["logits"][0]))]
        text += ch
        out = step(ids=np.array([chars.index(ch)], np.int32), state=out["state"])
    assert text == sampler.generate("The ", 30, greedy=True)

    quantized, _ = _runner(exports / "dynamic" / "model.tflite")
    assert (exports / "dynamic" / "model.tflite").stat().st_size < (exports / "none" / "model.tflite").stat().st_size
    zero = np.zeros_like(state)
    a, b = step(ids=ids[:1], state=zero)["logits"], quantized(ids=ids[:1], state=zero)["logits"]
    assert np.abs(a - b).max() < 0.5  # int8 weights (TFLite leaves tensors under 1024 values in float)


def test_the_documented_example_samples_from_softmax_of_logits_over_temperature(tmp_path):
    """The example (temperature 0.5, seeded) on a model whose logits never change: its 4,000
    characters against softmax(logits / 0.5) computed in NumPy (see conftest.draws_deviation)."""
    script = REPO / "docs" / "examples" / "tflite_generate.py"
    assert len(script.read_text().splitlines()) <= 42
    vocab = Vocabulary(list(CONSTANT_CHARS))
    run = write_model_run(tmp_path / "run", constant_logits_model(CONSTANT_LOGITS, vocab), vocab)
    export_tflite(str(run), str(tmp_path / "phone"))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "phone"), "a", "4000"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout.rstrip("\n")
    assert text.startswith("a") and len(text) == 4001
    ids = vocab.encode(text[1:])
    assert draws_deviation(ids, sampling_probs(CONSTANT_LOGITS, temperature=0.5)) <= 5
    assert draws_deviation(ids, sampling_probs(CONSTANT_LOGITS, temperature=1.0)) > 5
    unknown = subprocess.run([sys.executable, str(script), str(tmp_path / "phone"), "a~", "10"], capture_output=True,
                             text=True, timeout=300)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip() == "not in the model's vocabulary: '~'; use characters of its training text"
    empty = subprocess.run([sys.executable, str(script), str(tmp_path / "phone"), "", "10"], capture_output=True,
                           text=True, timeout=300)
    assert empty.returncode == 1 and empty.stderr.strip() == ("the prime is empty; pass at least one character to "
                                                              "start from")


def test_the_one_step_models_refuse_ids_outside_the_vocabulary(trained_run, exports, tmp_path):
    """The vocabulary's ids are 0..V-1: V and above, and negative ids (which Keras' lookup
    wraps around), are refused by the SavedModel's `step` and by the TFLite model."""
    vocab_size = len(json.loads((exports / "none" / "vocab.json").read_text())["chars"])
    step, _ = _runner(exports / "none" / "model.tflite")
    state = np.zeros(step.get_input_details()["state"]["shape"], np.float32)
    step(ids=np.array([vocab_size - 1], np.int32), state=state)
    for bad in (vocab_size, -1, -vocab_size):
        with pytest.raises((RuntimeError, ValueError)):
            step(ids=np.array([bad], np.int32), state=state)
    charrnn_export = tmp_path / "sm"
    from charrnn import export
    export(str(trained_run), str(charrnn_export))
    saved = tf.saved_model.load(str(charrnn_export)).signatures["step"]
    zeros = tf.zeros(saved.structured_input_signature[1]["state"].shape.as_list()[:1] + [1] +
                     saved.structured_input_signature[1]["state"].shape.as_list()[2:])
    saved(ids=tf.constant([vocab_size - 1]), state=zeros)
    for bad in (vocab_size, -1, -vocab_size):
        with pytest.raises(tf.errors.InvalidArgumentError):
            saved(ids=tf.constant([bad]), state=zeros)


def test_tflite_export_refuses_what_it_cannot_write(trained_run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("taken")
    with pytest.raises(CharRNNError, match="is not empty"):
        export_tflite(str(trained_run), str(tmp_path / "full"))
    proc = run_cli("export", f"--run_dir={trained_run}", f"--export_dir={tmp_path / 'sm'}", "--quantize=dynamic")
    assert proc.returncode == 2 and "--quantize applies to --format=tflite" in proc.stderr
    assert not (tmp_path / "sm").exists()


def test_a_mixed_precision_run_exports_in_float32_to_a_named_file(small_text, tmp_path):
    from charrnn import Trainer
    from charrnn.run.trained import load_model
    from conftest import tiny_config

    run = tmp_path / "run"
    Trainer(tiny_config(small_text, run, max_steps=2, mixed_precision="mixed_bfloat16")).fit(verbose=0)
    export_tflite(str(run), str(tmp_path / "phone" / "charrnn.tflite"), quantize="none")
    assert sorted(p.name for p in (tmp_path / "phone").iterdir()) == ["charrnn.tflite", "vocab.json"]
    step, _ = _runner(tmp_path / "phone" / "charrnn.tflite")
    model, _, vocab, _ = load_model(str(run), precision="float32")
    state = np.zeros(step.get_input_details()["state"]["shape"], np.float32)
    expected, _ = model.step(tf.constant([3]), model.initial_state(1))
    np.testing.assert_allclose(step(ids=np.array([3], np.int32), state=state)["logits"], expected.numpy(), atol=1e-4)
    with pytest.raises(CharRNNError, match="charrnn.tflite exists"):
        export_tflite(str(run), str(tmp_path / "phone" / "charrnn.tflite"))


@pytest.mark.parametrize("taken", ["vocab.json", "new.tflite"])
def test_a_tflite_export_to_a_new_file_name_refuses_to_replace_a_file_beside_it(trained_run, tmp_path, taken):
    """A .tflite path names the model; its vocabulary goes beside it as vocab.json. Either
    one already there (the user's, or another export's) is refused, and left as it was."""
    phone = tmp_path / "phone"
    phone.mkdir()
    (phone / taken).write_text("the user's")
    with pytest.raises(CharRNNError, match=rf"{re.escape(str(phone / taken))} exists; pass a new --export_dir"):
        export_tflite(str(trained_run), str(phone / "new.tflite"))
    proc = run_cli("export", f"--run_dir={trained_run}", f"--export_dir={phone / 'new.tflite'}", "--format=tflite")
    assert_one_line_error(proc, f"{phone / taken} exists")
    assert {p.name: p.read_text() for p in phone.iterdir()} == {taken: "the user's"}


@pytest.mark.parametrize("named", [False, True])
def test_overwrite_replaces_a_tflite_export(trained_run, tmp_path, named):
    """Into a directory, or to a named .tflite: its model.tflite and vocab.json are replaced
    with --overwrite (refused without it, and in a directory holding other files)."""
    target = tmp_path / ("phone.tflite" if named else "phone")
    export_tflite(str(trained_run), str(target), quantize="dynamic")
    model = target if named else target / "model.tflite"
    quantized = model.read_bytes()
    with pytest.raises(CharRNNError, match="--overwrite"):
        export_tflite(str(trained_run), str(target))
    export_tflite(str(trained_run), str(target), overwrite=True)
    assert model.read_bytes() != quantized  # float32 weights now, not int8
    assert tuple(json.loads((model.parent / "vocab.json").read_text())["chars"]) == Sampler.from_checkpoint(
        str(trained_run)).vocab.chars
    if not named:
        (target / "notes.txt").write_text("mine")
        with pytest.raises(CharRNNError, match=r"holds files that are not an export \(notes.txt\)"):
            export_tflite(str(trained_run), str(target), overwrite=True)


def test_overwrite_never_replaces_another_exports_vocabulary(trained_run, tmp_path):
    """A .tflite path beside another export's vocab.json: --overwrite replaces this export's
    files only, so a new name there is still refused."""
    export_tflite(str(trained_run), str(tmp_path / "a.tflite"))
    before = (tmp_path / "vocab.json").read_bytes()
    with pytest.raises(CharRNNError, match=r"vocab.json exists"):
        export_tflite(str(trained_run), str(tmp_path / "b.tflite"), overwrite=True)
    assert (tmp_path / "vocab.json").read_bytes() == before and not (tmp_path / "b.tflite").exists()

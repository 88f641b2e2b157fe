"""The SavedModel export (used without charrnn) and streamed sampling."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import charrnn
from charrnn import CharRNNError, Sampler, Vocabulary
from charrnn.text.data import mix_seed
from conftest import (
    CONSTANT_CHARS,
    CONSTANT_LOGITS,
    REPO,
    constant_logits_model,
    draws_deviation,
    run_cli,
    sampling_probs,
    snapshot,
    write_model_run,
)

# Runs in a process where importing charrnn fails: the SavedModel must stand on its own.
LOAD_WITHOUT_CHARRNN = r"""
import json, sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "charrnn" or name.startswith("charrnn."):
            raise ImportError("charrnn is blocked in this process")

sys.meta_path.insert(0, _Block())
try:
    import charrnn
    raise SystemExit("charrnn could be imported")
except ImportError:
    pass
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
inputs = dict(prompt=tf.constant(["The ", "The "]), num_chars=tf.constant(60), temperature=tf.constant(0.7),
              seed=tf.constant(11, tf.int64))
out = model.signatures["generate"](**inputs)
with_options = model.signatures["generate_with_options"](**inputs, top_k=tf.constant(0), top_p=tf.constant(1.0),
                                                         greedy=tf.constant(False))
assert with_options["text"].numpy().tolist() == out["text"].numpy().tolist()
step = model.signatures["step"](ids=tf.constant([1, 2, 3]), state=tf.zeros([2, 3, 16]))
try:
    model.generate(tf.constant(["The ~ {"]), tf.constant(5), tf.constant(1.0), tf.constant(1, tf.int64))
    error = None
except tf.errors.InvalidArgumentError as e:
    error = e.message
print(json.dumps({"text": [t.decode() for t in out["text"].numpy()], "logits": step["logits"].shape.as_list(),
                  "state": step["state"].shape.as_list(), "error": error}))
"""


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    export_dir = tmp_path_factory.mktemp("export") / "model"
    charrnn.export(str(trained_run), str(export_dir))
    assert (export_dir / "saved_model.pb").exists()
    return export_dir


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported))


@pytest.fixture(scope="module")
def sampler(trained_run) -> Sampler:
    return Sampler.from_checkpoint(str(trained_run))


@pytest.fixture(scope="module")
def constant_export(tmp_path_factory):
    """The SavedModel of a model whose logits are CONSTANT_LOGITS at every step."""
    base = tmp_path_factory.mktemp("constant")
    vocab = Vocabulary(list(CONSTANT_CHARS))
    run = write_model_run(base / "run", constant_logits_model(CONSTANT_LOGITS, vocab), vocab)
    charrnn.export(str(run), str(base / "export"))
    return tf.saved_model.load(str(base / "export"))


@pytest.mark.parametrize("options", [dict(temperature=0.5), dict(temperature=1.5, top_k=4),
                                     dict(temperature=1.0, top_p=0.7), dict(temperature=0.7, greedy=True)],
                         ids=str)
def test_the_exported_generate_draws_from_the_distribution_the_options_define(constant_export, options):
    """4,000 independent draws through the `generate_with_options` signature (what
    TensorFlow Serving calls, all seven inputs) against NumPy (see conftest.draws_deviation)."""
    full = dict(temperature=1.0, top_k=0, top_p=1.0, greedy=False) | options
    out = constant_export.signatures["generate_with_options"](
        prompt=tf.constant(["a"] * 8), num_chars=tf.constant(500), temperature=tf.constant(full["temperature"]),
        seed=tf.constant(21, tf.int64), top_k=tf.constant(full["top_k"]), top_p=tf.constant(full["top_p"]),
        greedy=tf.constant(full["greedy"]))
    generated = "".join(text.decode()[1:] for text in out["text"].numpy())
    ids = np.array([CONSTANT_CHARS.index(ch) for ch in generated])
    assert len(ids) == 4000
    assert draws_deviation(ids, sampling_probs(CONSTANT_LOGITS, **options)) <= 5
    assert draws_deviation(ids, sampling_probs(CONSTANT_LOGITS)) > 5  # the options did change the draws


def test_exported_generate_equals_the_sampler_without_charrnn(trained_run, exported):
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_CHARRNN, str(exported)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = Sampler.from_checkpoint(str(trained_run)).generate("The ", 60, 0.7, num_samples=2, seed=11)
    assert result["text"] == expected
    vocab_size = len(Sampler.from_checkpoint(str(trained_run)).vocab)
    assert result["logits"] == [3, vocab_size] and result["state"] == [2, 3, 16]  # (h, c) of one LSTM layer
    assert "characters not in the vocabulary of the model:] [~{]" in result["error"]
    assert "custom gradient" not in proc.stderr  # the export holds none, so loading it warns of none


@pytest.mark.parametrize("options", [
    dict(), dict(top_k=5), dict(top_p=0.8), dict(greedy=True), dict(top_k=3, top_p=0.9, greedy=False),
])
def test_exported_generate_takes_the_samplers_options(loaded, sampler, options):
    for num_chars in (0, 1, 40):
        expected = sampler.generate("The ", num_chars, 0.8, num_samples=2, seed=5, **options)
        tensors = {k: tf.constant(v) for k, v in options.items()}  # what is left out takes the default
        got = loaded.generate_with_options(tf.constant(["The ", "The "]), tf.constant(num_chars), tf.constant(0.8),
                                           tf.constant(5, tf.int64), **tensors)
        assert [t.decode() for t in got["text"].numpy()] == expected, (options, num_chars)
    for bad, message in [(dict(top_k=tf.constant(-1)), "top_k must be >= 0"),
                         (dict(top_p=tf.constant(0.0)), "top_p must be in"),
                         (dict(num_chars=tf.constant(10**7)), "num_chars must be between 0 and")]:
        args = dict(prompt=tf.constant(["The "]), num_chars=tf.constant(5), temperature=tf.constant(1.0),
                    seed=tf.constant(1, tf.int64)) | bad
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.generate_with_options(**args)


def test_the_serving_requests_of_the_docs_match_their_signatures(loaded):
    """Each TF Serving request in docs/export.md sends exactly its signature's inputs (TF
    Serving fills in no defaults), and the signature runs with them; the saved_model_cli line
    likewise."""
    doc = (REPO / "docs" / "export.md").read_text()
    requests = [json.loads(body.replace("\\\n", "")) for body in re.findall(r"curl -d '(\{.*?\})'", doc, re.S)]
    assert {r["signature_name"] for r in requests} == {"generate", "generate_with_options"}
    exprs = re.search(r"--signature_def (\w+) --input_exprs '([^']*)'", doc)
    cli = {k: json.loads(v) for k, v in (e.split("=", 1) for e in exprs.group(2).split(";"))}
    for name, inputs in [(r["signature_name"], r["inputs"]) for r in requests] + [(exprs.group(1), cli)]:
        signature = loaded.signatures[name]
        specs = signature.structured_input_signature[1]
        assert set(inputs) == set(specs), name
        inputs = {**inputs, "prompt": ["The "], "num_chars": 20}  # characters and a length this tiny model has
        out = signature(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
        assert out["text"].numpy()[0].decode().startswith("The "), name


def test_serving_default_runs_through_saved_model_cli(trained_run, exported):
    cli = Path(sys.executable).parent / "saved_model_cli"
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    proc = subprocess.run([str(cli), "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def",
                           "serving_default", "--input_exprs", 'prompt=["The "];num_chars=30;temperature=0.5;seed=4'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = Sampler.from_checkpoint(str(trained_run)).generate("The ", 30, 0.5, seed=4)
    assert "Result for output key text:" in proc.stdout
    assert repr(expected.encode()) in proc.stdout


def test_export_refuses_a_non_empty_directory(trained_run, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(CharRNNError, match="is not empty"):
        charrnn.export(str(trained_run), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    proc = run_cli("export", f"--run_dir={trained_run}", f"--export_dir={tmp_path}")
    assert proc.returncode == 2 and "is not empty" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"top_p": 0.8}, {"greedy": True}, {"stop_at": "o"}])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_stream_yields_exactly_the_generated_text(sampler, options, chunk):
    pieces = list(sampler.stream("The ", 50, 0.9, seed=5, chunk=chunk, **options))
    assert "The " + "".join(pieces) == sampler.generate("The ", 50, 0.9, seed=5, **options)
    if chunk == 7 and not options:
        assert len(pieces) > 5  # text arrives in pieces, not at the end


def test_stream_and_interactive_on_the_command_line(trained_run):
    streamed = run_cli("sample", f"--run_dir={trained_run}", "--prime=The ", "--num_chars=80", "--seed=9", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == Sampler.from_checkpoint(str(trained_run)).generate("The ", 80, 0.5, seed=9) + "\n"
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--num_chars=20",
                           "--seed=9", "--interactive"], input="The \nbad ~\n\nquick\n", capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sampler = Sampler.from_checkpoint(str(trained_run))
    # Each answer has a seed of its own, derived from --seed (charrnn.cli.repl).
    assert proc.stdout == "".join(sampler.generate(p, 20, 0.5, seed=mix_seed(9, i)) + "\n"
                                  for i, p in enumerate(("The ", "quick")))
    assert "error: 1 character(s) not in the model's vocabulary: '~'" in proc.stderr


def test_an_export_into_an_existing_empty_directory_keeps_its_permissions_and_group(trained_run, tmp_path):
    """A private 0700 directory reached through a link stays 0700 (and the link a link); a
    group's setgid 2770 directory stays 2770, and what the export puts in it belongs to
    that group, as files created there would."""
    import grp
    import stat

    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)
    (tmp_path / "link").symlink_to(private)
    charrnn.export(str(trained_run), str(tmp_path / "link"))
    assert (tmp_path / "link").is_symlink() and (private / "saved_model.pb").exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700

    shared = tmp_path / "shared"
    shared.mkdir()
    group = os.getgid() if os.getuid() else grp.getgrnam("nogroup").gr_gid  # root: a group of others
    os.chown(shared, -1, group)
    shared.chmod(0o2770)
    charrnn.export(str(trained_run), str(shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2770 and shared.stat().st_gid == group
    inside = list(shared.rglob("*"))
    assert inside and all(p.stat().st_gid == group for p in inside)
    assert all(p.stat().st_mode & stat.S_ISGID for p in inside if p.is_dir())


def test_overwrite_replaces_an_export_and_nothing_else(trained_run, tmp_path):
    """--overwrite: a directory holding a SavedModel gets the new one (keeping its own
    permissions); one holding anything else is refused, unchanged; without it, the refusal
    names the option."""
    target = tmp_path / "model"
    charrnn.export(str(trained_run), str(target), which="latest")
    target.chmod(0o700)
    old = (target / "saved_model.pb").stat().st_ino
    with pytest.raises(CharRNNError, match="is not empty; pass a new --export_dir, or --overwrite to replace"):
        charrnn.export(str(trained_run), str(target))
    proc = run_cli("export", f"--run_dir={trained_run}", f"--export_dir={target}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (target / "saved_model.pb").stat().st_ino != old and (target.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it
    loaded = tf.saved_model.load(str(target))
    expected = Sampler.from_checkpoint(str(trained_run)).generate("The ", 20, 0.5, seed=3)
    got = loaded.generate(prompt=tf.constant(["The "]), num_chars=tf.constant(20), temperature=tf.constant(0.5),
                          seed=tf.constant(3, tf.int64))["text"]
    assert got.numpy()[0].decode() == expected
    (target / "notes.txt").write_text("mine")
    before = snapshot(target)
    with pytest.raises(CharRNNError, match=r"holds files that are not an export \(notes.txt\); --overwrite replaces "
                                           r"only an export"):
        charrnn.export(str(trained_run), str(target), overwrite=True)
    assert snapshot(target) == before


def test_an_export_that_cannot_take_its_place_leaves_the_one_it_replaces(trained_run, tmp_path, monkeypatch):
    """--overwrite moves the old export aside, then the new one in: when the second rename
    fails (Ctrl-C, a full disk), the old export goes back where it was."""
    target = tmp_path / "model"
    charrnn.export(str(trained_run), str(target))
    before = snapshot(target)
    real, renames = os.rename, []

    def failing_second(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "rename", failing_second)
    with pytest.raises(KeyboardInterrupt):
        charrnn.export(str(trained_run), str(target), overwrite=True)
    monkeypatch.undo()
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_every_sampling_option_reaches_each_face_from_its_declaration(loaded):
    """charrnn.sampling declares each option once; the SavedModel takes each one the compiled
    loop does (after generate's inputs, with its dtype; from Python in that order, defaults
    kept), charrnn-sample has a flag with its default and help, and the REPL a command for
    each that declares an example, listed in :help."""
    import inspect

    from absl import flags

    import charrnn.cli.sample  # noqa: F401 - defines the flags
    from charrnn.cli import repl
    from charrnn.sampling import OPTIONS, TENSOR_OPTIONS

    specs = loaded.signatures["generate_with_options"].structured_input_signature[1]
    inputs = {name: spec.dtype.name for name, spec in specs.items()}
    assert inputs == {"prompt": "string", "num_chars": "int32", "seed": "int64", **TENSOR_OPTIONS}
    # The serving contract, written out: a client of the first exports sends exactly these.
    assert inputs == {"prompt": "string", "num_chars": "int32", "temperature": "float32", "seed": "int64",
                      "top_k": "int32", "top_p": "float32", "greedy": "bool"}
    parameters = list(inspect.signature(loaded.generate_with_options).parameters)
    others = [name for name in TENSOR_OPTIONS if name != "temperature"]
    assert parameters == ["prompt", "num_chars", "temperature", "seed", *others]
    for field in OPTIONS:
        flag = flags.FLAGS[field.name]
        assert (flag.default, flag.help) == (field.default, field.metadata["help"]), field.name
        assert (field.name in repl._SETTINGS) == (field.metadata["example"] is not None), field.name
        assert field.name not in repl._SETTINGS or f":{field.name} " in repl.HELP, field.name

"""Any TensorFlow filesystem: a run with its corpus, id cache, run directory and export all
on TensorFlow's in-memory ram:// filesystem, and nothing on the local disk but the
memory-mapped copy of the id file."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from charrnn import Sampler, Trainer, export
from charrnn.training.metrics import read_metrics
from conftest import tiny_config


def test_train_resume_evaluate_sample_and_export_on_ram(small_text, tmp_path, monkeypatch, capsys):
    watched = tmp_path / "local"
    watched.mkdir()
    for name in ("HOME", "TMPDIR", "KERAS_HOME"):
        monkeypatch.setenv(name, str(watched))
    monkeypatch.setattr(tempfile, "tempdir", str(watched))
    monkeypatch.chdir(watched)
    monkeypatch.setenv("CHARRNN_DATA_DIR", "ram://cache")
    with tf.io.gfile.GFile("ram://data/text.txt", "w") as f:
        f.write(small_text.read_text())

    config = tiny_config("ram://data/text.txt", "ram://runs/one", max_steps=4, checkpoint_every=2, eval_every=2,
                         log_every=1)
    first = Trainer(config)
    first.fit(verbose=0)
    resumed = Trainer(config.replace(max_steps=6))
    assert resumed.restored_from == "ram://runs/one/ckpt/ckpt-4"
    resumed.fit(verbose=0)
    assert [m["step"] for m in read_metrics("ram://runs/one") if "loss" in m] == list(range(1, 7))
    assert resumed.evaluate() == pytest.approx(min(m["val_loss"] for m in read_metrics("ram://runs/one")
                                                   if m.get("val_loss") is not None and m["step"] == 6))
    names = set(tf.io.gfile.listdir("ram://runs/one"))
    assert {"config.json", "vocab.json", "metrics.jsonl", "ckpt/", "best/", "train/", "validation/"} <= names | {
        n + "/" for n in names}
    assert tf.io.gfile.glob("ram://runs/one/train/events.*") and tf.io.gfile.glob("ram://cache/ids/*.ids")

    sampler = Sampler.from_checkpoint("ram://runs/one", which="latest")
    text = sampler.generate("First", num_chars=20, seed=3)
    np.testing.assert_array_equal(sampler.model.dense.kernel.numpy(), resumed.model.dense.kernel.numpy())
    export("ram://runs/one", "ram://exports/one", which="latest")
    loaded = tf.saved_model.load("ram://exports/one")
    out = loaded.signatures["serving_default"](prompt=tf.constant(["First"]), num_chars=tf.constant(20),
                                               temperature=tf.constant(0.5), seed=tf.constant(3, tf.int64))
    assert out["text"].numpy()[0].decode() == text

    capsys.readouterr()
    # Nothing of the run reached the local disk (home, temporary directory, working directory)
    # but the local copy of the id file, which is memory-mapped from there; AutoGraph's
    # generated code for compiled functions is TensorFlow's own.
    local = [str(p.relative_to(watched)) for p in watched.rglob("*")
             if p.is_file() and not p.name.startswith("__autograph_generated_file")]
    ids = [name for name in local if name.startswith("datasets/charrnn/ids/")]
    assert sorted(local) == sorted(ids) and {os.path.splitext(name)[1] for name in ids} == {".ids", ".json"}, local

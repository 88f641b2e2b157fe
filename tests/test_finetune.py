"""Fine-tuning: a new run started from another run's weights (--init_from), on a text with
characters the other run never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from charrnn import CharRNNError, Trainer
from charrnn.run.trained import load_model
from charrnn.training.metrics import read_metrics
from conftest import SHARED_CORPUS, run_cli, tiny_config

SIZES = dict(embedding_dim=16, rnn_units=48, batch_size=8, seq_length=40, learning_rate=0.01, device="/CPU:0")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """An origin text, and a second text in the same style with characters the first lacks."""
    if not SHARED_CORPUS.exists():
        pytest.skip(f"{SHARED_CORPUS} is not present")
    shakespeare = SHARED_CORPUS.read_text(encoding="utf-8")
    directory = tmp_path_factory.mktemp("texts")
    origin, new = directory / "origin.txt", directory / "new.txt"
    origin.write_text(shakespeare[:40_000])
    # New characters: accented vowels and a few digits, sprinkled through other Shakespeare.
    new.write_text(shakespeare[200_000:230_000].replace("e,", "é,").replace("a ", "à ").replace("I ", "1 "))
    return origin, new


@pytest.fixture(scope="module")
def origin_run(texts, tmp_path_factory):
    run = tmp_path_factory.mktemp("origin") / "run"
    Trainer(tiny_config(texts[0], run, max_steps=150, eval_every=50, **SIZES)).fit(verbose=0)
    return run


def test_old_characters_keep_their_weights_and_new_ones_start_as_initialised(texts, origin_run, tmp_path):
    config = tiny_config(texts[1], tmp_path / "tuned", max_steps=40, init_from=str(origin_run), **SIZES)
    tuned = Trainer(config)
    # A text without some of the run's characters: the corpus line counts the text's own,
    # and the merged vocabulary's apart.
    fewer = tmp_path / "fewer.txt"
    fewer.write_text(texts[1].read_text().translate({ord(c): None for c in "ZXJQ"}))
    partial = Trainer(config.replace(data=str(fewer), run_dir=str(tmp_path / "partial")))
    own = len(set(fewer.read_text()))
    assert own < len(partial.vocab) and f" {own} distinct ({len(partial.vocab)} with the run's vocabulary); " in \
        partial.describe()
    assert f" {len(tuned.vocab)} distinct; " in tuned.describe()  # the new text has every character of the run's
    old_model, _, old_vocab, path = load_model(str(origin_run))
    assert set(old_vocab.chars) < set(tuned.vocab.chars) and {"é", "à", "1"} <= set(tuned.vocab.chars)
    assert int(tuned.step.numpy()) == 0 and int(tuned.optimizer.iterations.numpy()) == 0
    rows = [tuned.vocab.chars.index(c) for c in old_vocab.chars]
    context = tf.constant([old_vocab.encode("ROMEO:\nWhat say you, my lord?")])
    expected, _ = old_model(context)
    got, _ = tuned.model(tf.constant([[tuned.vocab.chars.index(c) for c in old_vocab.decode(context[0])]]))
    np.testing.assert_allclose(tf.gather(got, rows, axis=-1).numpy(), expected.numpy(), atol=1e-5)
    scratch = Trainer(config.replace(run_dir=str(tmp_path / "scratch"), init_from=None))
    new_rows = [tuned.vocab.chars.index(c) for c in ("é", "à", "1")]
    np.testing.assert_array_equal(tuned.model.embedding.embeddings.numpy()[new_rows],
                                  scratch.model.embedding.embeddings.numpy()[new_rows])
    np.testing.assert_array_equal(tuned.model.dense.bias.numpy()[new_rows], scratch.model.dense.bias.numpy()[new_rows])

    tuned.fit(verbose=0)
    origin = json.loads((tmp_path / "tuned" / "config.json").read_text())["origin"]
    assert origin == {"run": str(origin_run), "checkpoint": path, "vocab_size_before": len(old_vocab),
                      "vocab_size": len(tuned.vocab)}
    resumed = Trainer(config.replace(max_steps=45))  # a resume keeps the vocabulary and the record
    assert resumed.restored_from is not None and resumed.vocab == tuned.vocab and resumed.origin == origin


def test_fine_tuning_starts_lower_and_stays_lower_than_training_from_scratch(texts, origin_run, tmp_path):
    losses = {}
    for name, init_from in (("tuned", str(origin_run)), ("scratch", None)):
        config = tiny_config(texts[1], tmp_path / name, max_steps=40, log_every=1, init_from=init_from, **SIZES)
        Trainer(config).fit(verbose=0)
        losses[name] = [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]
    assert losses["tuned"][0] < losses["scratch"][0] - 1.0  # the first step's loss
    assert np.mean(losses["tuned"][-10:]) < np.mean(losses["scratch"][-10:])  # after the same 40 steps


def test_fine_tuning_refuses_what_it_cannot_start_from(texts, origin_run, tmp_path):
    for overrides, message in [
        (dict(rnn_units=64), r"cannot fine-tune from .*: its model has other sizes \(rnn_units=48 there, 64 here\)"),
        (dict(init_from=str(tmp_path / "nowhere")), "--init_from: run directory .* does not exist"),
        (dict(init_from=str(tmp_path / "tuned")), "--init_from is the run directory itself"),
    ]:
        values = {**SIZES, "init_from": str(origin_run), **overrides}
        with pytest.raises(CharRNNError, match=message):
            Trainer(tiny_config(texts[1], tmp_path / "tuned", max_steps=5, **values))
    assert not (tmp_path / "tuned").exists()


def test_fine_tuning_takes_the_sizes_of_the_run_it_starts_from(texts, origin_run, tmp_path):
    """charrnn-train --init_from without model flags: the source's sizes (48 units, not the
    default 1024), recorded in config.json; a rerun without --init_from or sizes continues it."""
    run = tmp_path / "tuned"
    proc = run_cli("train", f"--data={texts[1]}", f"--run_dir={run}", f"--init_from={origin_run}", "--max_steps=2",
                   "--batch_size=8", "--seq_length=40", "--mixed_precision=float32", "--device=/CPU:0")
    assert proc.returncode == 0, proc.stderr
    assert ", None, 48)" in proc.stdout, proc.stdout  # the model table: 48 units
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved[k] for k in ("embedding_dim", "rnn_units", "num_layers", "cell")} == \
        {"embedding_dim": 16, "rnn_units": 48, "num_layers": 1, "cell": "lstm"}
    values = {k: v for k, v in SIZES.items() if k not in ("embedding_dim", "rnn_units")}
    resumed = Trainer(tiny_config(texts[1], run, max_steps=3, **{**values, "embedding_dim": None, "rnn_units": None}))
    assert resumed.restored_from is not None and resumed.config.rnn_units == 48
    assert resumed.origin["run"] == str(origin_run)

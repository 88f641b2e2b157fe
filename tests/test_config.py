"""TrainConfig: every setting checked when it is made (range, type, what it needs), its JSON
form, what a resume must share, and the presets."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from charrnn import PRESETS, CharRNNError, TrainConfig, Vocabulary
from charrnn.validate import check_tf_config
from conftest import tiny_config


@pytest.mark.parametrize("overrides, message", [
    (dict(learning_rate=float("inf")), "--learning_rate must be a finite number"),
    (dict(learning_rate=float("nan")), "--learning_rate must be a finite number"),
    (dict(learning_rate=5.0), "--learning_rate must be in (0, 1]"),
    (dict(grad_clip=float("inf")), "--grad_clip must be a finite number"),
    (dict(weight_decay=float("nan")), "--weight_decay must be a finite number"),
    (dict(time_budget=float("inf")), "--time_budget must be a finite number"),
    (dict(eval_every=0), "--eval_every must be at least 1"),
    (dict(patience=0), "--patience must be at least 1"),
    (dict(patience=3, val_fraction=0), "--patience needs a validation split"),
    (dict(eval_every=3, val_fraction=0), "--eval_every needs a validation split"),
    (dict(cell="rnn"), "--cell must be lstm or gru"),
    (dict(devices="/CPU:0"), "--devices applies to --strategy=one_device or mirrored"),
    # Each range at its bounds: the first value outside it is refused.
    (dict(dropout=1.0), "--dropout must be in [0, 1)"),
    (dict(dropout=-0.01), "--dropout must be in [0, 1)"),
    (dict(val_fraction=1.0), "--val_fraction must be in [0, 1)"),
    (dict(learning_rate=0.0), "--learning_rate must be in (0, 1]"),
    (dict(lr_decay=0.0), "--lr_decay must be in (0, 1]"),
    (dict(lr_decay=1.01), "--lr_decay must be in (0, 1]"),
    (dict(weight_decay=1.0), "--weight_decay must be in [0, 1)"),
    (dict(seed=-1), "--seed must be between 0 and 4294967295"),
    (dict(seed=2**32), "--seed must be between 0 and 4294967295"),
    (dict(grad_clip=0.0), "--grad_clip must be positive"),
    (dict(time_budget=0.0), "--time_budget must be positive"),
    (dict(max_steps=0), "--max_steps must be at least 1"),
    (dict(warmup_steps=-1), "--warmup_steps must be >= 0"),
    (dict(max_to_keep=0), "--max_to_keep must be at least 1"),
    (dict(sample_chars=100_001), "--sample_chars must be between 0 and 100000"),
    (dict(sample_temperature=0.0), "--sample_temperature must be between 1e-06 and 1e+06"),
])
def test_bad_settings_are_refused_naming_the_flag(tmp_path, overrides, message):
    with pytest.raises(CharRNNError, match=re.escape(message)):
        tiny_config(tmp_path / "t.txt", tmp_path / "run", **overrides)


@pytest.mark.parametrize("field, value, words", [
    ("rnn_units", "32", "must be an integer or None, got '32'"), ("rnn_units", 32.5, "must be an integer or "
                                                                                     "None, got 32.5"),
    ("seed", "x", "must be an integer, got 'x'"), ("carry_state", 1, "must be True or False"),
    ("dropout", "0.1", "must be a number"), ("eval_every", 2.0, "must be an integer or None"),
    ("seed", 2**40, "must be between 0 and"), ("epochs", True, "must be an integer"),
])
def test_train_config_checks_types_and_names_the_field(tmp_path, field, value, words):
    with pytest.raises(CharRNNError, match=rf"{field}.*{re.escape(words)}"):
        tiny_config(tmp_path / "t.txt", tmp_path / "run", **{field: value})
    assert tiny_config(tmp_path / "t.txt", tmp_path / "run", learning_rate=1).learning_rate == 1.0  # int for float


def test_json_round_trip_ignores_what_it_does_not_know():
    config = TrainConfig(rnn_units=128, dropout=0.25, eval_every=10).with_model_sizes(None)  # as a run saves it
    assert TrainConfig.from_json(config.to_json()) == config
    # A hand-written config.json without sizes reads as the defaults' (a saved run has sizes).
    assert TrainConfig.from_json(TrainConfig(rnn_units=128).to_json()).num_layers == 1
    record = json.loads(config.to_json()) | {"origin": {"run": "elsewhere"}, "from_a_later_version": 1}
    assert TrainConfig.from_json(json.dumps(record)) == config
    for payload, message in (("[1, 2]", "expected a JSON object"), ("{", "not JSON")):
        with pytest.raises(CharRNNError, match=message):  # charrnn's own error, as every bad input
            TrainConfig.from_json(payload)
    with pytest.raises(CharRNNError, match="expected"):
        Vocabulary.from_json('{"letters": "ab"}')


def test_a_preset_sets_only_training_and_sampling_settings(monkeypatch):
    from charrnn import config

    assert TrainConfig.preset("seed").rnn_units == 1024  # its sampling keys are charrnn-sample's
    monkeypatch.setitem(config.PRESETS, "typo", {"rnn_unit": 64})
    with pytest.raises(CharRNNError, match="preset 'typo' sets rnn_unit, which is neither a training nor a sampling"):
        TrainConfig.preset("typo")


def test_a_resume_must_share_the_model_and_the_data_order_only():
    saved = TrainConfig().with_model_sizes(None)  # as config.json holds it: sizes resolved
    assert (saved.embedding_dim, saved.rnn_units, saved.num_layers, saved.cell) == (256, 1024, 1, "lstm")
    assert TrainConfig().mismatches(saved.replace(rnn_units=384, num_layers=2)) == []  # unset: the run's own
    changed = {"rnn_units": 512, "seed": 3, "batch_size": 32, "carry_state": True}
    mismatches = saved.replace(**changed, learning_rate=0.01, max_steps=9, log_every=7).mismatches(saved)
    assert sorted(m.split("=")[0] for m in mismatches) == sorted(changed)
    assert "rnn_units=1024 in the run, 512 requested" in mismatches


def test_every_preset_names_settings_of_the_tools():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, values in PRESETS.items():
        training = {k: v for k, v in values.items() if k not in ("num_chars", "temperature")}  # charrnn-sample's
        assert set(training) <= fields, name
        TrainConfig(**training)  # valid as they stand


@pytest.mark.parametrize("field, value", [("data", "caf\udce9.txt"), ("run_dir", "runs/\ud800"),
                                          ("init_from", "runs/\udcff"), ("sample_prime", "\udc80")])
def test_text_that_is_not_utf8_is_refused_naming_the_flag(field, value):
    """Bytes that are not UTF-8 in an argument reach Python as lone surrogates (so do such
    strings passed in code); no filesystem would take them later."""
    with pytest.raises(CharRNNError, match=rf"--{field}\)? '.*' is not valid UTF-8 \(at character \d+\)"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field", ["data", "run_dir"])
def test_blank_paths_are_refused(field):
    with pytest.raises(CharRNNError, match=f"--{field} is empty"):
        TrainConfig(**{field: "  "})


@pytest.mark.parametrize("value, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("[1, 2]", 'TF_CONFIG has no "cluster" of task lists'),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', "TF_CONFIG's \"task\" must name this process's type, one of "
                                                "['worker']"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's address 'b' is not host:port with a port from 1 to 65535"),
    ('{"cluster": {"worker": ["a:70000", "b:2"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's address 'a:70000' is not host:port"),
    ('{"cluster": {"worker": ["a:http", "b:2"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's address 'a:http' is not host:port"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}', "must name this process's type"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index must be 0 to 1 (its 'worker' list has 2), got 2"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "0"}}', "got '0'"),
])
def test_a_tf_config_that_does_not_place_this_process_in_a_cluster_is_refused(value, message):
    with pytest.raises(CharRNNError, match=re.escape(message)):
        check_tf_config(value)
    check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')


def test_a_preset_in_python_is_what_the_flag_gives():
    config = TrainConfig.preset("cpu_small", run_dir="runs/x", rnn_units=128)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    expected = {k: v for k, v in PRESETS["cpu_small"].items() if k in fields} | {"run_dir": "runs/x", "rnn_units": 128}
    assert {k: getattr(config, k) for k in expected} == expected
    assert TrainConfig.preset("seed").rnn_units == 1024  # "seed" also holds sampling settings, left out
    with pytest.raises(CharRNNError, match="unknown preset 'fast'; choose one of: seed, cpu_small"):
        TrainConfig.preset("fast")

"""Every bounded option at its exact bounds: the last value inside is accepted and the first
outside refused, on both sides, so that a bound off by one (`>` for `>=`, 2**31 for
2**31 - 1) fails a test. In-process: the tools run these same checks before TensorFlow loads."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest

from charrnn import CharRNNError, SampleOptions, TrainConfig
from charrnn.sampling import (
    MAX_NUM_CHARS,
    MAX_NUM_SAMPLES,
    MAX_PRIME_CHARS,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_TEMPERATURE,
    SEED_RANGE,
    check_request,
)
from charrnn.validate import MAX_INT
from conftest import assert_one_line_error, run_cli, tiny_config

INT32_MAX = 2**31 - 1


def _config(tmp_path, **overrides) -> TrainConfig:
    return tiny_config(tmp_path / "t.txt", tmp_path / "run", **overrides)


def _refused(message: str):
    return pytest.raises(CharRNNError, match=re.escape(message))


def _int_fields() -> list[str]:
    """TrainConfig's integer settings that only the int32 bound limits from above."""
    hints = typing.get_type_hints(TrainConfig)
    own_upper_bound = {"seed", "num_cpu_devices", "sample_chars"}
    return [f.name for f in dataclasses.fields(TrainConfig)
            if int in (hints[f.name], *typing.get_args(hints[f.name])) and f.name not in own_upper_bound]


def test_the_int32_bound_is_exactly_int32s_largest_value():
    assert MAX_INT == INT32_MAX == MAX_TOP_K


@pytest.mark.parametrize("name", _int_fields())
def test_every_integer_setting_takes_int32s_largest_value_and_refuses_the_next(tmp_path, name):
    assert getattr(_config(tmp_path, **{name: INT32_MAX}), name) == INT32_MAX
    with _refused(f"--{name} must be at most {INT32_MAX}, got {INT32_MAX + 1}"):
        _config(tmp_path, **{name: INT32_MAX + 1})


@pytest.mark.parametrize("name, inside, outside, message", [
    *[(name, 1, 0, f"--{name} must be at least 1, got 0") for name in (
        "epochs", "batch_size", "seq_length", "embedding_dim", "rnn_units", "num_layers", "checkpoint_every",
        "max_to_keep", "log_every", "shuffle_buffer", "steps_per_loop", "max_steps", "sample_every", "eval_every",
        "patience")],
    ("warmup_steps", 0, -1, "--warmup_steps must be >= 0, got -1"),
    ("seed", 0, -1, "--seed must be between 0 and 4294967295, got -1"),
    ("seed", 2**32 - 1, 2**32, "--seed must be between 0 and 4294967295, got 4294967296"),
    ("sample_chars", 0, -1, "--sample_chars must be between 0 and 100000, got -1"),
    ("sample_chars", 100_000, 100_001, "--sample_chars must be between 0 and 100000, got 100001"),
    ("num_cpu_devices", 1, 0, "--num_cpu_devices must be between 1 and 256, got 0"),
    ("num_cpu_devices", 256, 257, "--num_cpu_devices must be between 1 and 256, got 257"),
    ("sample_temperature", 1e-6, math.nextafter(1e-6, 0), "--sample_temperature must be between 1e-06 and 1e+06"),
    ("sample_temperature", 1e6, math.nextafter(1e6, math.inf), "--sample_temperature must be between 1e-06 and"),
    ("learning_rate", 1.0, math.nextafter(1.0, 2), "--learning_rate must be in (0, 1]"),
    ("learning_rate", 5e-324, 0.0, "--learning_rate must be in (0, 1]"),
    ("lr_decay", 1.0, math.nextafter(1.0, 2), "--lr_decay must be in (0, 1]"),
    ("lr_decay", 5e-324, 0.0, "--lr_decay must be in (0, 1]"),
    ("weight_decay", 0.0, -5e-324, "--weight_decay must be in [0, 1)"),
    ("weight_decay", math.nextafter(1.0, 0), 1.0, "--weight_decay must be in [0, 1)"),
    ("dropout", 0.0, -5e-324, "--dropout must be in [0, 1)"),
    ("dropout", math.nextafter(1.0, 0), 1.0, "--dropout must be in [0, 1)"),
    ("val_fraction", math.nextafter(1.0, 0), 1.0, "--val_fraction must be in [0, 1)"),
    ("grad_clip", 5e-324, 0.0, "--grad_clip must be positive"),
    ("time_budget", 5e-324, 0.0, "--time_budget must be positive"),
    ("cluster_timeout", 5e-324, 0.0, "--cluster_timeout must be positive"),
])
def test_each_ranged_setting_at_both_sides_of_its_bound(tmp_path, name, inside, outside, message):
    assert getattr(_config(tmp_path, **{name: inside}), name) == inside
    with _refused(message):
        _config(tmp_path, **{name: outside})


@pytest.mark.parametrize("name, inside, outside, message", [
    ("top_k", 0, -1, f"top_k must be between 0 and {MAX_TOP_K}"),
    ("top_k", MAX_TOP_K, MAX_TOP_K + 1, f"top_k must be between 0 and {MAX_TOP_K}"),
    ("temperature", MIN_TEMPERATURE, math.nextafter(MIN_TEMPERATURE, 0), "temperature must be between 1e-06"),
    ("temperature", MAX_TEMPERATURE, math.nextafter(MAX_TEMPERATURE, math.inf), "temperature must be between"),
    ("top_p", 1.0, math.nextafter(1.0, 2), "top_p must be in (0, 1]"),
    ("top_p", 5e-324, 0.0, "top_p must be in (0, 1]"),
])
def test_each_sampling_option_at_both_sides_of_its_bound(name, inside, outside, message):
    assert getattr(SampleOptions(**{name: inside}), name) == inside
    with _refused(message):
        SampleOptions(**{name: outside})


@pytest.mark.parametrize("name, inside, outside, message", [
    ("num_chars", 0, -1, f"num_chars must be between 0 and {MAX_NUM_CHARS:,}, got -1"),
    ("num_chars", MAX_NUM_CHARS, MAX_NUM_CHARS + 1, f"num_chars must be between 0 and {MAX_NUM_CHARS:,}"),
    ("num_samples", 1, 0, f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got 0"),
    ("num_samples", MAX_NUM_SAMPLES, MAX_NUM_SAMPLES + 1, f"num_samples must be between 1 and {MAX_NUM_SAMPLES}"),
    ("seed", SEED_RANGE[0], SEED_RANGE[0] - 1, "seed must be a 64-bit integer"),
    ("seed", SEED_RANGE[1], SEED_RANGE[1] + 1, "seed must be a 64-bit integer"),
    ("prime", "a" * MAX_PRIME_CHARS, "a" * (MAX_PRIME_CHARS + 1), f"more than the {MAX_PRIME_CHARS:,} a prime may"),
])
def test_each_request_limit_at_both_sides_of_its_bound(name, inside, outside, message):
    request = dict(prime="x", num_chars=10, num_samples=1, seed=0)
    check_request(**{**request, name: inside})
    with _refused(message):
        check_request(**{**request, name: outside})
    assert SEED_RANGE == (-(2**63), 2**63 - 1)


def test_evals_batch_size_at_both_sides_of_its_bounds(tmp_path):
    """Checked before the run is looked at: the value just inside gets as far as the missing run."""
    missing = f"--run_dir={tmp_path / 'none'}"
    for outside in (0, INT32_MAX + 1):
        assert_one_line_error(run_cli("eval", missing, f"--batch_size={outside}"),
                              f"--batch_size must be between 1 and {INT32_MAX}, got {outside}")
    for inside in (1, INT32_MAX):
        proc = run_cli("eval", missing, f"--batch_size={inside}")
        assert proc.returncode == 2 and "--batch_size" not in proc.stderr and "none" in proc.stderr, proc.stderr


def test_a_prime_file_is_bounded_before_it_is_read_and_by_its_characters(trained_run, tmp_path):
    """At most 4 bytes a character: a file over 4 x MAX_PRIME_CHARS bytes is refused by its
    size; one within it but of more characters than a prime may have, by its length."""
    big, long = tmp_path / "big.txt", tmp_path / "long.txt"
    big.write_text("a" * (4 * MAX_PRIME_CHARS + 1))
    long.write_text("a" * (4 * MAX_PRIME_CHARS))
    assert_one_line_error(run_cli("sample", f"--run_dir={trained_run}", f"--prime_file={big}"),
                          f"is larger than {4 * MAX_PRIME_CHARS:,} bytes")
    assert_one_line_error(run_cli("sample", f"--run_dir={trained_run}", f"--prime_file={long}"),
                          f"the prime has {4 * MAX_PRIME_CHARS:,} characters, more than the {MAX_PRIME_CHARS:,}")


def test_an_integer_beyond_every_float_is_one_error_naming_the_setting(tmp_path):
    with _refused("TrainConfig.learning_rate (--learning_rate) must be a finite number, got an integer of 401 digits"):
        _config(tmp_path, learning_rate=10**400)
    with _refused("--learning_rate must be in (0, 1]"):  # the largest that is a float: refused by its range
        _config(tmp_path, learning_rate=2**1023)

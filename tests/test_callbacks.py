"""Watching a run: callbacks, the console's verbosity, TensorBoard's logs (read with
TensorBoard's own reader) and samples while training."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

import charrnn
from charrnn import Trainer
from charrnn.training.metrics import read_metrics
from conftest import Recorder, StopAt, tiny_config


def test_callbacks_see_the_run_as_plain_floats(small_text, tmp_path, capsys):
    recorder = Recorder()
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=6, eval_every=3, steps_per_loop=2,
                                  sample_chars=0))
    trainer.fit(callbacks=[recorder], verbose=0)
    assert capsys.readouterr().out == ""  # verbose=0: silent
    events = [event_pb2.Event.FromString(record.numpy()) for path in (tmp_path / "run").glob("events.*")
              for record in tf.data.TFRecordDataset(str(path))]
    tags = {value.tag for event in events for value in event.summary.value}
    assert "_hparams_/session_start_info" in tags and "sample" not in tags  # sample_chars=0: no samples
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["begin", "chunk", "chunk", "evaluate", "chunk", "chunk", "evaluate", "epoch", "end"]
    chunks = [e for e in recorder.events if e[0] == "chunk"]
    assert [e[1] for e in chunks] == [2, 3, 5, 6]  # two steps a call, cut at the evaluation point
    assert "steps_per_sec" not in chunks[0][2]  # the first call traces the step
    for _, step, logs in chunks[1:]:
        assert set(logs) == {"loss", "learning_rate", "grad_norm", "steps_per_sec"}
        assert all(type(v) is float and math.isfinite(v) and v > 0 for v in logs.values())
    assert chunks[0][2]["loss"] == pytest.approx((recorder.step_losses[1] + recorder.step_losses[2]) / 2)
    assert chunks[0][2]["learning_rate"] == pytest.approx(0.001)
    evaluations = {e[1]: e[2] for e in recorder.events if e[0] == "evaluate"}
    metrics = {m["step"]: m["val_loss"] for m in read_metrics(tmp_path / "run") if m.get("val_loss") is not None}
    assert {s: logs["val_loss"] for s, logs in evaluations.items()} == metrics
    assert evaluations[6]["val_bpc"] == pytest.approx(evaluations[6]["val_loss"] / math.log(2))
    assert evaluations[6]["best_val_loss"] == min(logs["val_loss"] for logs in evaluations.values())
    epoch = recorder.events[-2][2]
    assert epoch["loss"] == pytest.approx(np.mean([recorder.step_losses[s] for s in range(1, 7)]))
    assert recorder.events[-1][1]["best_val_loss"] == trainer.best_val_loss


def test_verbose_2_prints_a_line_per_log_interval_with_its_mean_loss(small_text, tmp_path, capsys):
    recorder = Recorder()
    Trainer(tiny_config(small_text, tmp_path / "run", max_steps=6, log_every=3, steps_per_loop=2)).fit(
        callbacks=[recorder], verbose=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "ETA" in line]
    assert [re.search(r"step (\d+)/6", line).group(1) for line in lines] == ["3", "6"]
    for line, first in zip(lines, (1, 4)):
        mean = np.mean([recorder.step_losses[s] for s in range(first, first + 3)])
        assert f"loss {mean:.4f}" in line
    with pytest.raises(charrnn.CharRNNError, match="verbose must be 0, 1, 2 or 'auto', got 3"):
        Trainer(tiny_config(small_text, tmp_path / "other")).fit(verbose=3)
    with pytest.raises(TypeError, match="charrnn.Callback"):
        Trainer(tiny_config(small_text, tmp_path / "other")).fit(callbacks=[print], verbose=0)


def test_a_callback_stops_the_run_with_a_checkpoint_and_a_rerun_continues(small_text, tmp_path, capsys):
    config = tiny_config(small_text, tmp_path / "run", max_steps=7, log_every=1)
    trainer = Trainer(config)
    assert trainer.fit(callbacks=[StopAt(4)], verbose=2).epoch == []
    assert int(trainer.step.numpy()) == 4 and trainer.stop_reason == "stop_requested"
    assert trainer.checkpoint_path().endswith("ckpt-4")
    assert "Stopped at step 4 (stop_requested); checkpoint saved to" in capsys.readouterr().out
    resumed = Trainer(config)
    assert resumed.fit(verbose=0).epoch == [0] and resumed.step == 7 and resumed.stop_reason is None
    reference = Trainer(config.replace(run_dir=str(tmp_path / "reference")))
    reference.fit(verbose=0)
    assert read_metrics(tmp_path / "run") == read_metrics(tmp_path / "reference")


def test_tensorboard_logs_as_keras_lays_them_out(small_text, tmp_path, capsys):
    """Train and validation loss under one tag in train/ and validation/, interval means at
    log_every whatever stdout is, the run's hparams and samples, read by TensorBoard itself."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    from charrnn.training.tensorboard import HPARAMS

    run = tmp_path / "run"
    recorder = Recorder()
    trainer = Trainer(tiny_config(small_text, run, max_steps=12, log_every=4, eval_every=6, steps_per_loop=2,
                                  sample_chars=30, sample_prime="The "))
    trainer.fit(callbacks=[recorder], verbose=2)
    printed = capsys.readouterr().out

    def read(sub: str) -> EventAccumulator:
        reader = EventAccumulator(str(run / sub), size_guidance={"tensors": 0})
        reader.Reload()
        return reader

    def series(reader: EventAccumulator, tag: str) -> dict[int, object]:
        return {e.step: tensor_util.make_ndarray(e.tensor_proto).item() for e in reader.Tensors(tag)}

    train, validation, root = read("train"), read("validation"), read("")
    assert train.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    loss = series(train, "loss")
    assert sorted(loss) == [4, 8, 12]
    for step, value in loss.items():
        assert value == pytest.approx(np.mean([recorder.step_losses[s] for s in range(step - 3, step + 1)]), rel=1e-6)
    assert series(train, "bpc")[8] == pytest.approx(loss[8] / math.log(2), rel=1e-6)
    assert series(train, "learning_rate")[4] == pytest.approx(0.001)
    assert all(v > 0 for v in series(train, "grad_norm").values())
    assert sorted(series(train, "steps_per_sec")) == [4, 8, 12]
    val = {m["step"]: m["val_loss"] for m in read_metrics(run) if m.get("val_loss") is not None}
    assert series(validation, "loss") == pytest.approx(val) and sorted(val) == [6, 12]
    assert set(validation.Tags()["tensors"]) == {"loss", "bpc"}

    content = root.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    # Every setting of HPARAMS the run has, with its value and kind, falsy ones too (False, 0, 0.0).
    config = trainer.config
    settings = {name: getattr(config, name) for name in HPARAMS if getattr(config, name) is not None}
    assert set(hparams) == set(settings) and "max_to_keep" not in hparams and "run_dir" not in hparams
    assert {"carry_state", "dropout", "warmup_steps", "weight_decay", "seed"} <= {
        name for name, value in settings.items() if not value}  # the falsy ones this run has
    for name, value in settings.items():
        kind = "bool_value" if isinstance(value, bool) else "number_value" if isinstance(value, (int, float)) \
            else "string_value"
        assert hparams[name].WhichOneof("kind") == kind, name
        assert getattr(hparams[name], kind) == (value if kind != "number_value" else pytest.approx(value)), name
    best = {step: min(v for s, v in val.items() if s <= step) for step in val}  # the running minimum
    assert series(root, "best_val_loss") == pytest.approx(best)  # the hparams plugin's metric

    layout = layout_pb2.Layout.FromString(series(root, "custom_scalars__config__")[0])
    first = layout.category[0]
    assert first.title == "Loss" and not first.closed and list(first.chart[0].multiline.tag) == ["^loss$"]
    charted = {tag.strip("^$") for category in layout.category for chart in category.chart
               for tag in chart.multiline.tag}
    assert charted == set(train.Tags()["tensors"]) | {"best_val_loss"}  # every scalar, and nothing else

    samples = {step: text.decode() for step, text in series(root, "sample").items()}
    assert sorted(samples) == [6, 12]  # one at each evaluation
    assert all(text.startswith("    The ") and len(text) >= 30 for text in samples.values())
    assert "--- sample" not in printed  # without --sample_every, none on the console


def test_samples_while_training_leave_the_run_unchanged_and_survive_a_resume(small_text, tmp_path, capsys):
    config = tiny_config(small_text, tmp_path / "plain", max_steps=8, log_every=1, dropout=0.1, steps_per_loop=3)
    plain = Trainer(config)
    plain.fit(verbose=0)
    capsys.readouterr()

    sampled = config.replace(run_dir=str(tmp_path / "sampled"), sample_every=4, sample_chars=25)
    whole = Trainer(sampled)
    whole.fit(verbose=2)
    printed = re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---\n", capsys.readouterr().out, re.S)
    assert [int(step) for step, _ in printed] == [4, 8]
    assert all(len(text) == 26 for _, text in printed)  # the default prime (a newline) and 25 characters
    variables = [(t.model.trainable_variables + t.optimizer.variables + [t.rng.state]) for t in (plain, whole)]
    for a, b in zip(*variables):  # sampling did not touch training
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert read_metrics(tmp_path / "plain") == read_metrics(tmp_path / "sampled")

    interrupted = sampled.replace(run_dir=str(tmp_path / "interrupted"))
    Trainer(interrupted).fit(callbacks=[StopAt(5)], verbose=2)
    Trainer(interrupted).fit(verbose=2)
    again = re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---\n", capsys.readouterr().out, re.S)
    assert again == printed
    assert read_metrics(tmp_path / "interrupted") == read_metrics(tmp_path / "sampled")


def test_sample_options_are_checked_before_anything_is_written(small_text, tmp_path):
    with pytest.raises(charrnn.CharRNNError, match=r"--sample_prime has characters that are not in .*'€'"):
        Trainer(tiny_config(small_text, tmp_path / "run", sample_prime="€uro"))
    for overrides, message in [(dict(sample_every=0), "--sample_every must be at least 1"),
                               (dict(sample_chars=-1), "--sample_chars must be between 0 and 100000"),
                               (dict(sample_temperature=0.0), "--sample_temperature must be between")]:
        with pytest.raises(charrnn.CharRNNError, match=message):
            tiny_config(small_text, tmp_path / "run", **overrides)
    assert not (tmp_path / "run").exists()


class _Clock:
    """A clock the test sets: what time.monotonic() returns in charrnn.training.console."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("start_step", [0, 40])  # a new run, and one resumed at step 40
def test_the_progress_line_reports_rate_eta_and_epoch_computed_from_the_clock(monkeypatch, capsys, start_step):
    """The numbers of the progress line against a recorded clock: the rate counts the steps
    trained since this invocation started (not the resumed ones) over the time since; the ETA
    is the steps left at that rate; the epoch is the one the last step trained belongs to."""
    from types import SimpleNamespace

    from charrnn.training.cadence import Cadence
    from charrnn.training.console import ProgressLogger

    clock = _Clock(1000.0)
    monkeypatch.setattr(charrnn.training.console.time, "monotonic", clock)
    cadence = Cadence(steps_per_epoch=30, total_steps=100, log_every=10)
    progress = ProgressLogger(verbose=2)
    progress.on_train_begin(SimpleNamespace(cadence=cadence, position=lambda: (start_step, start_step // 30),
                                            restored_from="ckpt-40" if start_step else None, describe=lambda: "a run"))
    capsys.readouterr()
    seconds_per_step = 0.5
    for step in range(start_step + 5, 101, 5):
        clock.now = 1000.0 + (step - start_step) * seconds_per_step + 7.0  # 7 s of evaluations and saves, too
        progress.on_chunk_end(step, {"loss": 2.0, "steps_per_sec": 1 / seconds_per_step})
        if step % 10:
            continue
        line = capsys.readouterr().out.strip()
        elapsed = clock.now - 1000.0
        rate = (step - start_step) / elapsed
        eta = (100 - step) / rate
        hms = lambda s: f"{int(s) // 3600}:{int(s) % 3600 // 60:02d}:{int(s) % 60:02d}"  # noqa: E731
        want = (f"epoch {(step - 1) // 30 + 1}/4 step {step}/100 {step}% loss 2.0000 {rate:.2f} steps/s "
                f"elapsed {hms(elapsed)} ETA {hms(eta)}")
        assert line == want


def test_each_sample_while_training_is_drawn_with_a_seed_of_its_own(small_text, tmp_path):
    """The same weights, three steps: three texts, each what generate() draws with the seed of
    its step (mix_seed of the run's seed and the step), so a resumed run shows the same ones."""
    from charrnn.text.data import mix_seed

    trainer = Trainer(tiny_config(small_text, tmp_path / "run", sample_chars=60, sample_prime="The ", seed=5))
    samples = {step: trainer.sample(step) for step in (7, 14, 21)}
    assert len(set(samples.values())) == 3
    for step, text in samples.items():
        assert text == trainer.generate("The ", 60, 0.8, seed=mix_seed(5, step))


def test_under_a_time_budget_the_progress_line_shows_the_budgets_totals(monkeypatch, capsys):
    """A 50-s budget on a plan of 100,000 steps, training at 2 steps/s: the line counts to the
    step and epoch the budget will end at (this invocation's training rate times the budget
    left), its percentage is the budget's, and the epoch-end line says the same total."""
    from types import SimpleNamespace

    from charrnn.training.cadence import Cadence
    from charrnn.training.console import ProgressLogger

    clock = _Clock(1000.0)
    monkeypatch.setattr(charrnn.training.console.time, "monotonic", clock)
    cadence = Cadence(steps_per_epoch=30, total_steps=100_000, log_every=10, time_budget=50.0)
    progress = ProgressLogger(verbose=2)
    progress.on_train_begin(SimpleNamespace(cadence=cadence, position=lambda: (0, 0), restored_from=None,
                                            describe=lambda: "a run"))
    capsys.readouterr()
    progress.on_chunk_end(10, {"loss": 3.0})  # the first chunk traces: no rate yet
    assert capsys.readouterr().out.startswith("epoch 1/? step 10/? 0% loss 3.0000 ")
    for step in range(20, 101, 10):
        clock.now += 5.0
        progress.on_chunk_end(step, {"loss": 2.0, "steps_per_sec": 2.0})
        trained = (step - 10) / 2.0  # seconds of training (the first chunk has none)
        end = step + round((50.0 - trained) * 2.0)
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"epoch {(step - 1) // 30 + 1}/~{math.ceil(end / 30)} step {step}/~{end} "
                               f"{100 * trained / 50:.0f}% loss 2.0000 "), line
        assert line.endswith(f" ETA 0:00:{int(50 - trained):02d}"), line
    progress.on_epoch_end(4, {"loss": 2.0, "steps_per_sec": 2.0})
    ended = "(ended early: 10 of its 30 steps)"  # epoch 4 is steps 91-120
    assert capsys.readouterr().out.startswith(f"epoch 4/~{math.ceil(end / 30)} {ended} step 100 ")


def test_keras_callbacks_run_as_keras_fit_calls_them_and_may_stop_the_run(small_text, tmp_path, capsys):
    """EarlyStopping (min_delta so large that only the first epoch counts as better) stops
    the run after its second epoch, with a checkpoint; CSVLogger writes each epoch's logs;
    LambdaCallback sees the hooks in Keras' order with Keras' 0-based epochs; the History
    returned holds the same numbers. Callbacks whose job charrnn does are refused by name."""
    import csv

    import keras

    from charrnn.training.metrics import read_metrics

    calls, batches = [], []
    hooks = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(f"epoch_begin {epoch}"),
        on_train_batch_end=lambda batch, logs: calls.append("batch") or batches.append((batch, sorted(logs))),
        on_epoch_end=lambda epoch, logs: calls.append(f"epoch_end {epoch} {sorted(logs)}"),
        on_train_end=lambda logs: calls.append("train_end"))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    config = tiny_config(small_text, tmp_path / "run", epochs=5, steps_per_loop=2)
    trainer = charrnn.Trainer(config)
    spe = trainer.steps_per_epoch
    history = trainer.fit(callbacks=[hooks, keras.callbacks.CSVLogger(str(tmp_path / "log.csv")), stop], verbose=2)

    assert int(trainer.step.numpy()) == 2 * spe and history.epoch == [0, 1] and stop.stopped_epoch == 1
    assert f"Stopped at step {2 * spe} (a Keras callback set model.stop_training); checkpoint saved" in \
        capsys.readouterr().out
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith(f"ckpt-{2 * spe}")
    keys = "['epoch_fraction', 'loss', 'steps_per_sec', 'val_bpc', 'val_loss']"
    chunks = math.ceil(spe / 2)
    assert calls == ["train_begin", "epoch_begin 0", *["batch"] * chunks, f"epoch_end 0 {keys}", "epoch_begin 1",
                     *["batch"] * chunks, f"epoch_end 1 {keys}", "train_end"]
    # Each chunk's last step, counted from 0 in its epoch, as Keras' batch index.
    per_epoch = [(min(end, spe) - 1, ["loss"]) for end in range(2, spe + 2, 2)]
    assert batches == per_epoch * 2
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [m for m in read_metrics(tmp_path / "run") if "epoch" in m]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([m["val_loss"] for m in epochs])
    assert history.history["loss"] == pytest.approx([m["train_loss"] for m in epochs])

    resumed = charrnn.Trainer(config.replace(epochs=3))  # a resume: Keras sees the run's own epoch
    calls.clear()
    resumed.fit(callbacks=[hooks], verbose=0)
    assert calls[:2] == ["train_begin", "epoch_begin 2"] and calls[-2:] == [f"epoch_end 2 {keys}", "train_end"]

    for refused, words in [(keras.callbacks.BackupAndRestore(str(tmp_path / "b")), "BackupAndRestore does not apply"),
                           (keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")), "keeps the best in"),
                           (keras.callbacks.ReduceLROnPlateau(), "--lr_schedule")]:
        with pytest.raises(charrnn.CharRNNError, match=words):
            resumed.fit(callbacks=[refused], verbose=0)
    with pytest.raises(TypeError, match="charrnn.Callback or keras.callbacks.Callback instances, got object"):
        resumed.fit(callbacks=[object()], verbose=0)

    # fit() again on a trainer a Keras callback stopped, without that callback: on to the end.
    again = charrnn.Trainer(config.replace(run_dir=str(tmp_path / "again"), epochs=2))
    halt = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(again.model, "stop_training", True))
    again.fit(callbacks=[halt], verbose=0)
    assert int(again.step.numpy()) == spe
    again.fit(verbose=0)
    assert int(again.step.numpy()) == 2 * spe and len(read_metrics(tmp_path / "again")) > 0


def test_a_new_validation_metric_needs_only_the_evaluator(small_text, tmp_path, monkeypatch):
    """The path README's "Where a change goes" promises: a key added to Evaluator.metrics
    reaches the callbacks (val_<name>), metrics.jsonl and TensorBoard's validation run, with
    no other change."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    from charrnn.training.evaluator import Evaluator

    measured = Evaluator.metrics
    monkeypatch.setattr(Evaluator, "metrics", lambda self, ids, should_stop=lambda: False: {
        **measured(self, ids, should_stop), "perplexity": math.exp(measured(self, ids, should_stop)["loss"])})
    run, recorder = tmp_path / "run", Recorder()
    Trainer(tiny_config(small_text, run, max_steps=4, eval_every=2, sample_chars=0)).fit(callbacks=[recorder],
                                                                                           verbose=0)
    logged = {step: logs for kind, step, logs in recorder.of("evaluate")}
    assert sorted(logged) == [2, 4]
    assert all(logs["val_perplexity"] == pytest.approx(math.exp(logs["val_loss"])) for logs in logged.values())
    lines = {m["step"]: m for m in read_metrics(run) if "val_loss" in m and "epoch" not in m}
    assert {step: m["val_perplexity"] for step, m in lines.items()} == {
        step: pytest.approx(logs["val_perplexity"]) for step, logs in logged.items()}
    reader = EventAccumulator(str(run / "validation"), size_guidance={"tensors": 0})
    reader.Reload()
    charted = {e.step: tensor_util.make_ndarray(e.tensor_proto).item() for e in reader.Tensors("perplexity")}
    assert charted == {step: pytest.approx(logs["val_perplexity"], rel=1e-6) for step, logs in logged.items()}


def test_a_keras_callback_reads_the_learning_rate_as_keras_lets_it_and_may_not_set_it(small_text, tmp_path):
    """`self.model.optimizer.learning_rate`, Keras' idiom, is the run's rate at that step;
    setting it is refused in one line: the rate follows --lr_schedule."""
    import keras

    seen = []

    class Reads(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    class Sets(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.learning_rate = 0.5

    config = tiny_config(small_text, tmp_path / "run", epochs=1, learning_rate=0.01, warmup_steps=1000)
    trainer = Trainer(config)
    trainer.fit(callbacks=[Reads()], verbose=0)
    assert seen == [pytest.approx(0.01 * (trainer.steps_per_epoch + 1) / 1000)]  # warm-up at the step reached
    assert not hasattr(trainer.model, "optimizer") or trainer.model.optimizer is None  # the model holds none
    with pytest.raises(charrnn.CharRNNError, match=r"Sets set the optimizer's learning rate, which in a charrnn run "
                                                   r"follows --lr_schedule"):
        Trainer(config.replace(run_dir=str(tmp_path / "other"))).fit(callbacks=[Sets()], verbose=0)

"""The training loop: learning, history, checkpoints, exact resume, run-directory checks."""

from __future__ import annotations

import glob
import json
import math
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import charrnn
import charrnn.nn.lstm
from charrnn import CharRNNError, Sampler, TrainConfig, Trainer, Vocabulary
from charrnn.nn.model import sequence_loss
from charrnn.training.metrics import read_metrics
from conftest import Recorder, read_scalars, shakespeare, tiny_config


def test_learns_a_repetitive_text_and_reproduces_it(tmp_path):
    path = tmp_path / "rep.txt"
    path.write_text("hello world! " * 300)
    config = tiny_config(path, tmp_path / "run", rnn_units=64, embedding_dim=16, batch_size=8, seq_length=26,
                         learning_rate=0.01, epochs=20, val_fraction=0.1)
    history = Trainer(config).fit()
    assert history.history["loss"][-1] < 0.1
    assert history.history["val_loss"][-1] < 0.1
    sampler = Sampler.from_checkpoint(str(tmp_path / "run"))
    text = sampler.generate("hello", num_chars=52, temperature=0.01, seed=0)
    assert text == ("hello world! " * 5)[:57]


def test_fit_returns_a_keras_history_of_the_epochs_it_ran(small_text, tmp_path):
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", epochs=2, log_every=1))
    history = trainer.fit()
    assert isinstance(history, keras.callbacks.History) and history.epoch == [0, 1]
    assert sorted(history.history) == ["epoch_fraction", "loss", "steps_per_sec", "val_bpc", "val_loss"]
    epochs = [m for m in read_metrics(tmp_path / "run") if "epoch" in m]  # what metrics.jsonl recorded
    assert history.history["epoch_fraction"] == [m["epoch_fraction"] for m in epochs] == [1.0, 1.0]
    assert history.history["loss"] == [m["train_loss"] for m in epochs]
    assert history.history["val_loss"] == [m["val_loss"] for m in epochs]
    assert all(s > 0 for s in history.history["steps_per_sec"])
    assert history.history["val_bpc"] == pytest.approx([v / math.log(2) for v in history.history["val_loss"]])
    assert int(trainer.state.finalized_step.numpy()) == 2 * trainer.steps_per_epoch
    assert Trainer(tiny_config(small_text, tmp_path / "run", epochs=2)).fit().epoch == []  # already complete


def _all_state(trainer: Trainer) -> list[np.ndarray]:
    # model.variables also holds the Keras LSTM cells' unused dropout seed generators.
    tensors = list(trainer.model.trainable_variables) + list(trainer.optimizer.variables)
    tensors += [trainer.step, trainer.epoch, trainer.rng.state]
    return [np.array(t.numpy()) for t in tensors]


@pytest.mark.parametrize("cpu, precision", [(None, "float32"), ("avx512_bf16", "mixed_bfloat16"),
                                            ("amx_bf16", "mixed_bfloat16")])
def test_resume_restores_every_variable_and_continues_the_run(small_text, tmp_path, monkeypatch, cpu, precision):
    """Bit for bit, whichever variant of the fused LSTM runs: with a CPU named, the tiny layer
    counts as large, so its steps are XLA clusters (unit-major on an AMX CPU)."""
    if cpu:
        monkeypatch.setattr(charrnn.nn.lstm, "_LARGE", 1)
        monkeypatch.setattr(charrnn.nn.lstm, "cpu_flags", lambda: frozenset({cpu}))
    first = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=5, dropout=0.2, mixed_precision=precision))
    first.fit()
    saved = _all_state(first)
    resumed = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=12, dropout=0.2,
                                  mixed_precision=precision))
    assert resumed.restored_from.endswith("ckpt-5")
    assert len(resumed.optimizer.variables) == len(first.optimizer.variables) > 3  # Adam moments are there
    for before, after in zip(saved, _all_state(resumed)):
        np.testing.assert_array_equal(before, after)
    assert int(resumed.optimizer.iterations.numpy()) == 5
    resumed.fit()
    assert int(resumed.step.numpy()) == 12

    straight = Trainer(tiny_config(small_text, tmp_path / "straight", max_steps=12, dropout=0.2,
                                   mixed_precision=precision))
    straight.fit()
    for a, b in zip(straight.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoints_every_n_steps_and_at_epoch_end(small_text, tmp_path):
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", checkpoint_every=3, max_to_keep=100))
    trainer.fit()
    steps = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(tmp_path / "run/ckpt/ckpt-*.index")))
    spe = trainer.steps_per_epoch
    assert steps == sorted(set(list(range(3, spe, 3)) + [spe]))


def test_every_event_of_a_run_happens_at_its_steps_once(tmp_path, capsys):
    """A real run of 2.5 epochs (10 steps each): each evaluation, checkpoint, log line, sample
    and epoch end counted against the steps that the settings name, each exactly once; the
    last, partial epoch is finalised, so that running again does nothing."""
    text = tmp_path / "text.txt"
    text.write_text(shakespeare(1000), encoding="utf-8")  # 900 for training: 10 steps of 4 x 21
    config = tiny_config(text, tmp_path / "run", epochs=3, max_steps=25, eval_every=4, checkpoint_every=3,
                         log_every=5, steps_per_loop=2, sample_every=7, sample_chars=5, max_to_keep=100)
    recorder = Recorder()
    trainer = Trainer(config)
    assert trainer.steps_per_epoch == 10
    trainer.fit(callbacks=[recorder], verbose=2)
    printed = capsys.readouterr().out
    assert [e[1] for e in recorder.of("evaluate")] == [4, 8, 10, 12, 16, 20, 24, 25]
    assert [e[1] for e in recorder.of("epoch")] == [1, 2, 3]  # at steps 10, 20, 25: the console's lines below
    assert [e[2]["val_loss"] for e in recorder.of("epoch")] == [
        e[2]["val_loss"] for e in recorder.of("evaluate") if e[1] in (10, 20, 25)]
    saved = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(tmp_path / "run/ckpt/ckpt-*.index")))
    assert saved == [3, 6, 9, 10, 12, 15, 18, 20, 21, 24, 25]  # every 3 steps inside an epoch, and each epoch's end
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m] == [5, 10, 15, 20, 25]
    assert re.findall(r"--- sample at step (\d+) ---", printed) == ["7", "14", "21"]
    assert re.findall(r"^epoch \d+/3 step (\d+)/25 ", printed, re.M) == ["5", "10", "15", "20", "25"]  # log lines
    ends = re.findall(r"^epoch (\d+)/3 step (\d+) loss ([\d.]+) val_loss ([\d.]+) val_bpc ([\d.]+) ", printed, re.M)
    assert [(int(e), int(s)) for e, s, *_ in ends] == [(1, 10), (2, 20), (3, 25)]
    evaluations = {e[1]: e[2]["val_loss"] for e in recorder.of("evaluate")}
    for (_, step, loss, val_loss, val_bpc), first in zip(ends, (1, 11, 21)):
        # The numbers printed at an epoch's end, against the steps' own losses and the evaluation.
        assert float(loss) == pytest.approx(np.mean([recorder.step_losses[s] for s in range(first, int(step) + 1)]),
                                            abs=5e-5)
        assert float(val_loss) == pytest.approx(evaluations[int(step)], abs=5e-5)
        assert float(val_bpc) == pytest.approx(evaluations[int(step)] / math.log(2), abs=5e-4)
    again = Recorder()
    Trainer(config).fit(callbacks=[again], verbose=0)
    assert [e[0] for e in again.events] == ["begin", "end"]  # the run was complete: nothing repeated


def test_a_new_validation_metric_reaches_the_epoch_logs_history_and_metrics_jsonl(small_text, tmp_path,
                                                                                   monkeypatch):
    """A metric the Evaluator returns is a new key there and nothing else: it reaches each
    evaluation's and each epoch's logs, Keras' History and metrics.jsonl as `val_<name>`."""
    from charrnn.training.evaluator import Evaluator

    measured = Evaluator.metrics
    monkeypatch.setattr(Evaluator, "metrics", lambda self, ids, should_stop=lambda: False: {
        **measured(self, ids, should_stop), "half_loss": measured(self, ids, should_stop)["loss"] / 2})
    history = Trainer(tiny_config(small_text, tmp_path / "run", epochs=2, eval_every=2)).fit(verbose=0)
    assert history.history["val_half_loss"] == pytest.approx([v / 2 for v in history.history["val_loss"]])
    lines = read_metrics(tmp_path / "run")
    assert [m["val_half_loss"] for m in lines if "epoch" in m] == history.history["val_half_loss"]
    evaluations = [m for m in lines if "best_val_loss" in m]
    assert evaluations and all(m["val_half_loss"] == pytest.approx(m["val_loss"] / 2) for m in evaluations)


def test_the_corpus_line_and_the_model_table_count_what_they_describe(tmp_path):
    """The numbers the console shows as a run starts, against counts made here: the text's
    distinct characters, its windows per batch, the run's steps, and each layer's weights."""
    text = shakespeare(1000)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    trainer = Trainer(tiny_config(path, tmp_path / "run", epochs=7, max_steps=65, embedding_dim=8, rnn_units=32))
    described = trainer.describe()
    vocab = len(set(text))
    steps_per_epoch = (int(len(text) * 0.9) // 21) // 4  # windows of seq_length + 1, batches of 4
    assert re.match(rf"Corpus \S+: {len(text):,} characters \(1 file\), {vocab} distinct; {steps_per_epoch} steps "
                    rf"per epoch, {min(7 * steps_per_epoch, 65)} steps in all;", described), described
    params = {"embedding": vocab * 8, "lstm_0": 4 * 32 * (8 + 32) + 4 * 32, "logits": 32 * vocab + vocab}
    rows = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in described.splitlines()[2:]}
    assert rows == {**params, "Total": sum(params.values())}
    (tmp_path / "more.txt").write_text(text[:500], encoding="utf-8")
    joined = Trainer(tiny_config(f"{path},{tmp_path / 'more.txt'}", tmp_path / "two", max_steps=1))
    assert f": {len(text) + 500:,} characters (2 files), " in joined.describe()
    budget = Trainer(tiny_config(path, tmp_path / "budget", epochs=7, time_budget=600))
    assert f"{7 * steps_per_epoch} steps in all unless the --time_budget of 600 s ends it first;" in budget.describe()


def test_incompatible_resume_is_refused_and_touches_nothing(small_text, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(small_text, run, max_steps=2)).fit()
    before = {p: open(p, "rb").read() for p in glob.glob(str(run / "**"), recursive=True) if os.path.isfile(p)}
    with pytest.raises(CharRNNError, match="rnn_units=32 in the run, 16 requested"):
        Trainer(tiny_config(small_text, run, rnn_units=16))
    other = tmp_path / "other.txt"
    other.write_text("zzzz yyyy " * 2000)
    with pytest.raises(CharRNNError, match="vocabulary of"):
        Trainer(tiny_config(other, run))
    after = {p: open(p, "rb").read() for p in glob.glob(str(run / "**"), recursive=True) if os.path.isfile(p)}
    assert after == before


def test_too_short_corpus_says_how_much_is_needed(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghij" * 5)
    with pytest.raises(CharRNNError, match=r"needs 84 for training .*smaller --batch_size/--seq_length"):
        Trainer(tiny_config(path, tmp_path / "run", val_fraction=0.0))


def test_steps_per_loop_gives_the_same_run(small_text, tmp_path):
    """Several steps per compiled call change nothing but speed: same weights, same checkpoints."""
    import charrnn

    class ChunkEnds(charrnn.Callback):
        def __init__(self):
            self.steps = []

        def on_chunk_end(self, step, logs):
            self.steps.append(step)

    runs, chunk_ends = {}, {}
    for spl in (1, 3):
        # Chunks end at checkpoint and log points: 0-3, 3-4, 4-5, 5-8, 8-10, 10-11 with spl=3.
        trainer = Trainer(tiny_config(small_text, tmp_path / f"spl{spl}", max_steps=11, checkpoint_every=4,
                                      log_every=5, steps_per_loop=spl, dropout=0.1))
        chunk_ends[spl] = ChunkEnds()
        trainer.fit(callbacks=[chunk_ends[spl]])
        runs[spl] = trainer
    assert chunk_ends[1].steps == list(range(1, 12)) and chunk_ends[3].steps == [3, 4, 5, 8, 10, 11]
    for a, b in zip(runs[1].model.trainable_variables, runs[3].model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for spl in (1, 3):
        names = sorted(p.name for p in (tmp_path / f"spl{spl}" / "ckpt").glob("*.index"))
        assert names == ["ckpt-11.index", "ckpt-4.index", "ckpt-8.index"]
    assert read_metrics(str(tmp_path / "spl1")) == read_metrics(str(tmp_path / "spl3"))


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_and_samples(small_text, tmp_path, precision):
    import keras

    trainer = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=4, mixed_precision=precision))
    history = trainer.fit()
    assert math.isfinite(history.history["loss"][-1]) and math.isfinite(history.history["val_loss"][-1])
    logits, state = trainer.model(tf.constant([[1, 2, 3]]))
    sixteen = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}[precision]
    assert logits.dtype == tf.float32 and state[0][0].dtype == sixteen  # computed in 16 bits
    # float16 needs loss scaling (bfloat16 has float32's range).
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    assert all(v.dtype == tf.float32 for v in trainer.model.trainable_variables)
    text = Sampler.from_checkpoint(str(tmp_path / "run"), device="/CPU:0").generate("The ", 40, seed=1)
    assert len(text) == 44 and text == trainer.generate("The ", 40, seed=1)


def test_jit_compiled_step_matches_the_plain_one(small_text, tmp_path):
    losses = {}
    for jit in (False, True):
        trainer = Trainer(tiny_config(small_text, tmp_path / f"jit{jit}", max_steps=3, log_every=1, jit_compile=jit))
        trainer.fit()
        losses[jit] = [m["loss"] for m in read_metrics(str(tmp_path / f"jit{jit}")) if "loss" in m]
        # The step that ran: XLA must compile its forward and backward pass with jit_compile.
        step = trainer._train_loop.get_concrete_function(iter(trainer.data.dataset(0)), tf.constant(1))
        xla = [f for f in step.graph.as_graph_def().library.function
               if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
        assert bool(xla) == jit
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_learning_rate_schedules():
    from charrnn.nn.optimizer import LearningRate

    def lr(step, **kw):
        return float(LearningRate(base=0.01, steps_per_epoch=10, total_steps=110, **kw)(step))

    assert lr(0) == lr(57) == pytest.approx(0.01)
    assert lr(0, warmup_steps=10) == pytest.approx(0.001) and lr(4, warmup_steps=10) == pytest.approx(0.005)
    assert lr(10, warmup_steps=10) == pytest.approx(0.01)
    assert lr(10, schedule="cosine", warmup_steps=10) == pytest.approx(0.01)
    assert lr(60, schedule="cosine", warmup_steps=10) == pytest.approx(0.005)
    assert lr(110, schedule="cosine", warmup_steps=10) == pytest.approx(0.0, abs=1e-9)
    assert lr(9, schedule="exponential", decay=0.5) == pytest.approx(0.01)
    assert lr(25, schedule="exponential", decay=0.5) == pytest.approx(0.0025)
    schedule = LearningRate(base=0.01, steps_per_epoch=10, total_steps=110, schedule="cosine", warmup_steps=10)
    assert float(LearningRate.from_config(schedule.get_config())(60)) == pytest.approx(0.005)  # Keras' round trip


def test_weight_decay_uses_adamw_and_schedule_survives_resume(small_text, tmp_path):
    import keras

    config = tiny_config(small_text, tmp_path / "run", max_steps=3, weight_decay=0.1, lr_schedule="cosine",
                         warmup_steps=2)
    trainer = Trainer(config)
    assert isinstance(trainer.optimizer, keras.optimizers.AdamW) and trainer.optimizer.weight_decay == 0.1
    trainer.fit()
    plain = Trainer(config.replace(run_dir=str(tmp_path / "plain"), weight_decay=0.0))
    plain.fit()
    decayed, undecayed = trainer.model.dense.kernel.numpy(), plain.model.dense.kernel.numpy()
    assert np.abs(decayed).sum() < np.abs(undecayed).sum()  # the decay pulled the weights towards 0
    resumed = Trainer(config.replace(max_steps=6))
    # The cosine curve (warm-up 2 steps, to 0 at step 6) continues at the restored step 3.
    expected = config.learning_rate * 0.5 * (1 + math.cos(math.pi * (3 - 2) / (6 - 2)))
    assert float(resumed.optimizer.learning_rate) == pytest.approx(expected)
    resumed.fit()
    assert int(resumed.optimizer.iterations.numpy()) == 6


def test_weight_decay_is_decoupled_from_the_gradient(small_text, tmp_path):
    """AdamW's definition: each step first shrinks every weight by lr * weight_decay * w, apart
    from Adam's own update of the gradient; the same first step with and without the decay
    differs by exactly that (an L2 penalty in the loss would change the gradient instead)."""
    config = tiny_config(small_text, tmp_path / "adam", learning_rate=0.01)
    plain, decayed = Trainer(config), Trainer(config.replace(run_dir=str(tmp_path / "adamw"), weight_decay=0.1))
    before = [w.numpy() for w in decayed.model.trainable_variables]
    plain.train(1)
    decayed.train(1)
    for w0, a, b in zip(before, plain.model.trainable_variables, decayed.model.trainable_variables):
        np.testing.assert_allclose(b.numpy() - a.numpy(), -0.01 * 0.1 * w0, atol=1e-7)


def test_a_fit_that_fails_still_reports_its_training_time(small_text, tmp_path):
    class Fails(charrnn.Callback):
        def on_chunk_end(self, step, logs):
            if step == 5:
                raise RuntimeError("a callback's own failure")

    trainer = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=20))
    with pytest.raises(RuntimeError, match="a callback's own failure"):
        trainer.fit(callbacks=[Fails()], verbose=0)
    assert trainer.train_seconds > 0  # steps 2 to 5 were timed (the first traces) before the failure


def test_time_budget_stops_after_a_partial_epoch_and_the_run_continues(small_text, tmp_path, monkeypatch):
    import charrnn.training.loop

    # A clock that advances 0.1 s at each reading: the budget is met after the same steps
    # however fast this machine is (the first chunk traces, and is not counted).
    clock = iter(np.arange(0.0, 1e6, 0.1))
    monkeypatch.setattr(charrnn.training.loop.time, "perf_counter", lambda: float(next(clock)))
    config = tiny_config(small_text, tmp_path / "run", time_budget=0.5, epochs=3)
    trainer = Trainer(config)
    history = trainer.fit()
    stopped_at = int(trainer.step.numpy())
    assert stopped_at == 6 and trainer.train_seconds >= 0.5  # five counted steps of 0.1 s, not the end of the run
    monkeypatch.undo()
    assert history.epoch == [0] and "val_loss" in history.history  # the partial epoch was evaluated
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith(f"ckpt-{stopped_at}")
    resumed = Trainer(config.replace(time_budget=None))
    resumed.fit()
    assert int(resumed.step.numpy()) == 3 * resumed.steps_per_epoch


def test_grad_clip_scales_every_gradient_by_one_global_factor(small_text, tmp_path):
    """tf.clip_by_global_norm's definition, computed in NumPy: when the gradients' global norm
    exceeds the clip, every gradient is scaled by clip / global norm. Adam's first moment
    after one step is (1 - beta_1) times the gradient it applied. The clip lies between the
    smallest and the largest gradient's own norm, where clipping each gradient to the norm
    alone would leave the small ones as they are and give other values."""
    raw_trainer = Trainer(tiny_config(small_text, tmp_path / "raw"))
    inputs, targets = next(iter(raw_trainer.data.dataset(0)))  # the first step's batch
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(sequence_loss(targets, raw_trainer.model(inputs, training=True)[0]))
    variables = raw_trainer.model.trainable_variables
    raw = [tf.convert_to_tensor(g).numpy().astype(np.float64) for g in tape.gradient(loss, variables)]
    norms = np.array([np.linalg.norm(g) for g in raw])
    global_norm = np.sqrt(np.sum(norms ** 2))
    clip = float(np.median(norms))
    assert norms.min() < clip < global_norm  # the case where the two clippings differ
    want = [g * clip / global_norm for g in raw]
    per_tensor = [g * min(1.0, clip / n) for g, n in zip(raw, norms)]

    trainer = Trainer(tiny_config(small_text, tmp_path / "clipped", grad_clip=clip))
    trainer.train(1)
    momentums = [v.numpy() for v in trainer.optimizer.variables if v.path.endswith("_momentum")]
    applied = [m / (1 - trainer.optimizer.beta_1) for m in momentums]
    assert [a.shape for a in applied] == [g.shape for g in raw]
    for got, expected in zip(applied, want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7 * clip)
    assert not all(np.allclose(got, other, rtol=1e-3) for got, other in zip(applied, per_tensor))
    assert trainer.train_logs()["grad_norm"] == pytest.approx(global_norm, rel=1e-4)  # reported before clipping


@pytest.mark.parametrize("impl, units, fused", [("fused", 32, True), ("keras", 32, False), ("auto", 32, True),
                                                ("auto", 128, True)])
def test_lstm_impl_picks_the_implementation_that_runs(small_text, tmp_path, monkeypatch, impl, units, fused):
    """On a CPU, auto runs the fused LSTM at every size; keras runs Keras' own."""
    import charrnn.nn.model

    calls = []
    real = charrnn.nn.model.fused_lstm
    monkeypatch.setattr(charrnn.nn.model, "fused_lstm", lambda *args: calls.append(1) or real(*args))
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", max_steps=2, lstm_impl=impl, rnn_units=units))
    calls.clear()  # building the model may run it once
    trainer.fit(verbose=0)
    assert bool(calls) == fused


def test_auto_precision_follows_the_hardware_and_a_run_keeps_its_own(small_text, tmp_path, monkeypatch):
    import charrnn.nn.devices as devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert devices.choose_precision("/job:localhost/replica:0/task:0/device:CPU:0")[0] == "mixed_bfloat16"
    assert devices.choose_precision("/device:CPU:0", tpu=True)[0] == "mixed_bfloat16"
    monkeypatch.setattr(devices.tf.config, "list_physical_devices", lambda kind=None: ["gpu0", "gpu1"])
    for capability, policy in (((8, 0), "mixed_float16"), ((6, 1), "float32")):
        monkeypatch.setattr(devices.tf.config.experimental, "get_device_details",
                            lambda device, c=capability: {"compute_capability": c})
        assert devices.choose_precision("/job:localhost/replica:0/task:0/device:GPU:1")[0] == policy
    monkeypatch.undo()

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    config = tiny_config(small_text, tmp_path / "run", max_steps=2, mixed_precision="auto")
    trainer = Trainer(config)
    assert trainer.config.mixed_precision == "mixed_bfloat16" and "avx512_bf16" in trainer.precision_reason
    assert trainer.model.state_dtype == tf.bfloat16
    trainer.fit(verbose=0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["mixed_precision"] == "mixed_bfloat16"
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset())  # another machine: auto alone would pick float32
    assert devices.choose_precision("/device:CPU:0") == ("float32", "this CPU has no native bfloat16 (no avx512_bf16 "
                                                                    "or amx_bf16)")
    resumed = Trainer(config.replace(max_steps=3))
    assert resumed.config.mixed_precision == "mixed_bfloat16" and resumed.restored_from is not None
    resumed.fit(verbose=0)
    assert TrainConfig().mixed_precision == "auto"


def test_each_epoch_is_another_permutation_and_reports_the_mean_of_its_steps(tmp_path):
    """Two epochs: each trains on distinct whole windows of the text in an order of its own;
    fit() equals a hand-written loop over those batches; each epoch's train loss is the mean
    of its steps' losses as a callback saw them."""
    text = shakespeare(3_000)
    (tmp_path / "t.txt").write_text(text)
    config = tiny_config(tmp_path / "t.txt", tmp_path / "run", epochs=2, steps_per_loop=3, shuffle_buffer=1000)
    trainer = Trainer(config)
    ids = Vocabulary.from_text(text).encode(text[: int(len(text) * 0.9)])
    windows = {tuple(w): i for i, w in enumerate(ids[: len(ids) // 21 * 21].reshape(-1, 21))}
    orders = []
    for epoch in (0, 1):
        rows = [np.concatenate([x, y[:, -1:]], 1) for x, y in trainer.data.dataset(epoch).as_numpy_iterator()]
        order = [windows[tuple(row)] for row in np.concatenate(rows)]  # KeyError: not a window of the text
        assert len(order) == len(set(order)) == trainer.steps_per_epoch * 4
        orders.append(order)
    assert orders[0] != orders[1] and sorted(orders[0]) != orders[0]

    recorder = Recorder()
    history = trainer.fit(callbacks=[recorder], verbose=0)
    spe = trainer.steps_per_epoch
    for loss, first in zip(history.history["loss"], (1, spe + 1), strict=True):
        steps = [recorder.step_losses[s] for s in range(first, first + spe)]
        assert loss == pytest.approx(np.mean(steps), rel=1e-6)

    replay = Trainer(config.replace(run_dir=str(tmp_path / "replay")))
    losses = [float(replay.train_step(x, y)[0]) for epoch in (0, 1) for x, y in replay.data.dataset(epoch)]
    np.testing.assert_allclose(losses, [recorder.step_losses[s] for s in range(1, 2 * spe + 1)], rtol=1e-5)
    for a, b in zip(replay.model.trainable_variables, trainer.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def _scheduled_rate(step: int, base: float, warmup: int, kind: str, decay: float, spe: int, total: int) -> float:
    """The learning rate of the step that runs after `step` steps, from the flags' definitions:
    linear warm-up over `warmup` steps, then constant, cosine to 0 at the run's last step,
    or times `decay` each epoch."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if kind == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * min(max((step - warmup) / (total - warmup), 0.0), 1.0)))
    elif kind == "exponential":
        shape = decay ** (step // spe)
    else:
        shape = 1.0
    return base * warm * shape


@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential"])
def test_the_logged_learning_rate_is_the_schedules_at_the_step_that_ran(tmp_path, schedule):
    (tmp_path / "t.txt").write_text(shakespeare(3_000))  # 32 steps per epoch
    config = tiny_config(tmp_path / "t.txt", tmp_path / "run", epochs=3, max_steps=70, warmup_steps=5,
                         lr_schedule=schedule, lr_decay=0.5, learning_rate=0.01, log_every=3, steps_per_loop=2)
    trainer, recorder = Trainer(config), Recorder()
    trainer.fit(callbacks=[recorder], verbose=0)
    assert trainer.steps_per_epoch == 32
    expected = {s: _scheduled_rate(s - 1, 0.01, 5, schedule, 0.5, 32, 70) for s in range(1, 71)}
    seen = {step: logs["learning_rate"] for _, step, logs in recorder.of("chunk")}
    assert len(seen) > 30 and seen == pytest.approx({s: expected[s] for s in seen}, rel=1e-5)
    tensorboard = read_scalars(tmp_path / "run" / "train")["learning_rate"]
    assert sorted(tensorboard) == list(range(3, 70, 3))
    assert tensorboard == pytest.approx({s: expected[s] for s in tensorboard}, rel=1e-5)


def test_the_first_step_moves_each_weight_by_the_warmed_up_rate(small_text, tmp_path):
    """Adam's first update is lr * g / (|g| + epsilon): about the learning rate itself for
    every weight with a gradient, here the first of 4 warm-up steps: 0.01 / 4."""
    trainer = Trainer(tiny_config(small_text, tmp_path / "run", learning_rate=0.01, warmup_steps=4))
    before = trainer.model.dense.bias.numpy()
    trainer.train(1)
    moved = np.abs(trainer.model.dense.bias.numpy() - before)
    np.testing.assert_allclose(moved, 0.0025, rtol=1e-3)


@pytest.mark.parametrize("precision, tolerance", [("mixed_bfloat16", 0.05), ("mixed_float16", 0.01)])
def test_a_mixed_precision_step_reports_what_a_float32_step_does(small_text, tmp_path, precision, tolerance):
    """The same first step in 16 bits: its loss and gradient norm within the precision's
    rounding of float32's, so a norm left multiplied by float16's loss scale (2**15) or a
    loss reported scaled fails."""
    reported = {}
    for name in ("float32", precision):
        trainer = Trainer(tiny_config(small_text, tmp_path / name, mixed_precision=name))
        loss = float(trainer.train(1)[0])
        reported[name] = (loss, trainer.train_logs()["grad_norm"])
    (loss32, norm32), (loss16, norm16) = reported["float32"], reported[precision]
    assert loss16 == pytest.approx(loss32, rel=tolerance) and norm16 == pytest.approx(norm32, rel=tolerance)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_a_step_with_a_finite_loss_but_non_finite_gradients_changes_no_weight(small_text, tmp_path, monkeypatch,
                                                                            precision):
    """The logits pass through an identity whose gradient is NaN: the loss is the usual one,
    every gradient NaN. In float32 and bfloat16 the step is refused, naming it; under
    float16's loss scaling a step that overflowed is skipped and the scale lowered (routine
    there), so training goes on: in every case no weight moves."""
    import charrnn.training.step

    @tf.custom_gradient
    def nan_gradient(x):
        return tf.identity(x), lambda dy: dy * float("nan")

    def poisoned(targets, logits):
        return sequence_loss(targets, nan_gradient(logits))

    trainer = Trainer(tiny_config(small_text, tmp_path / "run", mixed_precision=precision))
    monkeypatch.setattr(charrnn.training.step, "sequence_loss", poisoned)  # read when the step is traced, below
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    if precision == "mixed_float16":
        scale = float(trainer.optimizer.dynamic_scale)
        losses = trainer.train(1)
        assert np.isfinite(losses).all() and float(trainer.optimizer.dynamic_scale) < scale
    else:
        with pytest.raises(CharRNNError, match=r"loss or gradients not finite at step 1 \(loss [0-9.]+\)"):
            trainer.train(1)
        assert int(trainer.step.numpy()) == 0
    for weight, value in zip(trainer.model.trainable_variables, before):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_a_run_stopped_at_an_epochs_last_step_resumes_with_that_epochs_report(small_text, tmp_path):
    """Stopped right after the first epoch's last step (before it was finalised): the resume
    reports that epoch, then the next, and the run's records equal an uninterrupted run's."""
    config = tiny_config(small_text, tmp_path / "run", epochs=2)
    trainer = Trainer(config)
    spe = trainer.steps_per_epoch

    class StopAtTheEpochsEnd(charrnn.Callback):
        def on_train_begin(self, view):
            self.view = view

        def on_chunk_end(self, step, logs):
            if step == spe:
                self.view.stop_training, self.view.stop_reason = True, "asked"

    assert trainer.fit(callbacks=[StopAtTheEpochsEnd()], verbose=0).epoch == []
    assert int(trainer.step.numpy()) == spe and trainer.stop_reason == "asked"
    history = Trainer(config).fit(verbose=0)
    straight = Trainer(config.replace(run_dir=str(tmp_path / "straight"))).fit(verbose=0)
    assert history.epoch == straight.epoch == [0, 1]
    assert history.history["val_loss"] == straight.history["val_loss"]
    assert read_metrics(str(tmp_path / "run")) == read_metrics(str(tmp_path / "straight"))

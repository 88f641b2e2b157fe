"""`TensorBoard`: the run's TensorBoard logs, an observer of the training loop.

Keras' layout, so that train and validation loss share one chart: `<run_dir>/train` and
`<run_dir>/validation` hold the same tags (`loss`, `bpc`), the train side also the
learning rate, the global gradient norm and steps/s, each the mean of its `log_every`
interval (metrics.jsonl, by contrast, has each logged step's own loss: the console and
TensorBoard smooth over the interval, the file keeps the raw values). `<run_dir>` itself
holds the run's best validation loss so far (`best_val_loss`, the metric the hparams
plugin offers next to the settings), the settings that tell runs apart (`HPARAMS`) in
the hparams plugin's format, a Custom Scalars layout with the loss first, and, under the
text plugin, a generated sample at each evaluation and every `--sample_every` steps (see
charrnn.training.cadence.Cadence).

Written with `tf.summary.write` and the plugins' metadata, so that logging needs no
tensorboard package (viewing does). After a resume, the first interval's means cover the
steps trained since the resume.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from google.protobuf import struct_pb2
from tensorflow.core.framework import summary_pb2

from charrnn.storage import storage_error, storage_errors
from charrnn.training.callbacks import Callback
from charrnn.training.evaluator import bits_per_char


def _metadata(plugin: str, data_class: int, content: bytes = b"") -> bytes:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content),
        data_class=data_class).SerializeToString()


_SCALAR = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_TEXT = _metadata("text", summary_pb2.DATA_CLASS_TENSOR)
_HPARAMS_TAG = "_hparams_/session_start_info"
# The settings the hparams plugin shows: what tells one model, text, optimizer or precision
# from another (not where a run writes, computes or how often it logs).
HPARAMS = ("data", "init_from", "cell", "embedding_dim", "rnn_units", "num_layers", "dropout", "batch_size",
           "seq_length", "carry_state", "val_fraction", "learning_rate", "lr_schedule", "warmup_steps", "lr_decay",
           "weight_decay", "grad_clip", "mixed_precision", "seed")
# The Custom Scalars tab: (category, closed, charts of (title, tag regexes)), loss first.
_LAYOUT = (("Loss", False, (("loss (nats/char): train and validation", ("^loss$",)),
                            ("best validation loss so far", ("^best_val_loss$",)),
                            ("bits per character", ("^bpc$",)))),
           ("Training", True, (("learning rate", ("^learning_rate$",)), ("gradient norm", ("^grad_norm$",)),
                               ("steps per second", ("^steps_per_sec$",)), ("epoch mean loss", ("^epoch_loss$",)))))


class TensorBoard(Callback):
    """Writes the run's TensorBoard logs to `log_dirs` (`run`, `train` and `validation`:
    charrnn.run.rundir.RunDir.log_dirs; see the module docstring)."""

    def __init__(self, log_dirs: dict[str, str], sample: Callable[[int], str] | None = None):
        self.log_dirs, self.sample = log_dirs, sample
        self._trainer: Any = None
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def on_train_begin(self, trainer: Any) -> None:
        self._trainer, self._cadence = trainer, trainer.cadence
        self._step = trainer.position()[0]
        self._sums: dict[str, float] = {}
        self._steps = self._timed_steps = 0
        self._seconds = 0.0
        self._sampled_at = -1
        self._guard(self._open)
        self._guard(lambda: self._write_hparams(trainer.config))
        self._guard(self._write_layout)

    def _open(self) -> None:
        for name in ("run", "train", "validation"):
            self._writers[name] = tf.summary.create_file_writer(self.log_dirs[name])

    def _guard(self, write: Any) -> None:
        try:
            write()
        except storage_errors() as e:
            raise storage_error("write TensorBoard logs to", self.log_dirs["run"], e) from None

    def _scalars(self, writer: str, step: int, values: dict[str, float]) -> None:
        with self._writers[writer].as_default(step=step):
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_SCALAR)

    def _sample(self, step: int) -> None:
        # An evaluation and a --sample_every point on the same step share one sample.
        if step != self._sampled_at and self.sample is not None and self._trainer.config.sample_chars:
            self._sampled_at = step
            sample = self.sample
            self._guard(lambda: self._text("sample", step, sample(step)))

    def _text(self, tag: str, step: int, text: str) -> None:
        # Markdown: indented four spaces, the sample shows as written (line breaks kept).
        markdown = "\n".join("    " + line for line in text.split("\n"))
        with self._writers["run"].as_default(step=step):
            tf.summary.write(tag, tf.constant(markdown), metadata=_TEXT)

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        count = step - self._step
        self._step = step
        for key in ("loss", "grad_norm"):
            if key in logs:
                self._sums[key] = self._sums.get(key, 0.0) + logs[key] * count
        self._steps += count
        if "steps_per_sec" in logs:
            self._timed_steps += count
            self._seconds += count / logs["steps_per_sec"]
        if self._cadence.log_due(step):
            values = {key: total / self._steps for key, total in self._sums.items()}
            if "loss" in values:
                values["bpc"] = bits_per_char(values["loss"])
            values["learning_rate"] = logs["learning_rate"]
            if self._timed_steps:
                values["steps_per_sec"] = self._timed_steps / self._seconds
            self._guard(lambda: self._scalars("train", step, values))
            self._sums, self._steps, self._timed_steps, self._seconds = {}, 0, 0, 0.0
        if self._cadence.sample_due(step):
            self._sample(step)

    def on_evaluate(self, step: int, logs: dict[str, float]) -> None:
        # Every key: `val_<name>` as <name> of the validation run (beside the train run's
        # <name>), the others (best_val_loss) in the run's own.
        validation = {key[len("val_"):]: value for key, value in logs.items() if key.startswith("val_")}
        run = {key: value for key, value in logs.items() if not key.startswith("val_")}
        self._guard(lambda: self._scalars("validation", step, validation))
        self._guard(lambda: self._scalars("run", step, run))
        self._sample(step)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._guard(lambda: self._scalars("train", self._step, {"epoch_loss": logs["loss"]}))

    def on_train_end(self, logs: dict[str, float]) -> None:
        def close() -> None:
            for writer in self._writers.values():
                writer.flush()
        self._guard(close)

    def _write_hparams(self, config: Any) -> None:
        """The run's settings (HPARAMS) as the hparams plugin's session start record."""
        values = {name: getattr(config, name) for name in HPARAMS if getattr(config, name) is not None}
        with self._writers["run"].as_default(step=0):
            tf.summary.write(_HPARAMS_TAG, tf.constant(0.0), metadata=_hparams_metadata(values))

    def _write_layout(self) -> None:
        """The Custom Scalars layout (_LAYOUT), encoded by hand from the plugin's layout.proto:
        Layout {category = 2}, Category {title = 1; chart = 2; closed = 3},
        Chart {title = 1; multiline = 2}, MultilineChartContent {tag = 1}."""
        layout = b""
        for title, closed, charts in _LAYOUT:
            category = _proto_field(1, title.encode()) + (bytes([3 << 3, 1]) if closed else b"")
            for chart_title, tags in charts:
                category += _proto_field(2, _proto_field(1, chart_title.encode())
                                   + _proto_field(2, b"".join(_proto_field(1, tag.encode()) for tag in tags)))
            layout += _proto_field(2, category)
        with self._writers["run"].as_default(step=0):
            tf.summary.write("custom_scalars__config__", tf.constant(layout),
                             metadata=_metadata("custom_scalars", summary_pb2.DATA_CLASS_UNKNOWN))


def _hparams_metadata(values: dict[str, Any]) -> bytes:
    """SummaryMetadata for the hparams plugin holding HParamsPluginData{session_start_info}.

    Encoded by hand (protobuf wire format) from the plugin's plugin_data.proto, because its
    generated classes ship with the tensorboard package, which charrnn does not require:
    SessionStartInfo { map<string, Value> hparams = 1; double start_time_secs = 5; }.
    """
    info = b""
    for name, value in sorted(values.items()):
        if isinstance(value, bool):
            proto = struct_pb2.Value(bool_value=value)
        elif isinstance(value, (int, float)):
            proto = struct_pb2.Value(number_value=float(value))
        else:
            proto = struct_pb2.Value(string_value=str(value))
        entry = _proto_field(1, name.encode()) + _proto_field(2, proto.SerializeToString())
        info += _proto_field(1, entry)
    info += bytes([5 << 3 | 1]) + struct.pack("<d", time.time())
    return _metadata("hparams", summary_pb2.DATA_CLASS_UNKNOWN, _proto_field(3, info))


def _proto_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([byte])
        out += bytes([byte | 0x80])

"""`TrainConfig`: every setting of a training run, validated, with presets.

The command-line flags of `charrnn-train` are generated from this dataclass, so a field's
`help` metadata is also its flag's help text.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from charrnn.errors import CharRNNError
from charrnn.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from charrnn.validate import MAX_INT, check_types, json_object

LSTM_IMPLS = ("auto", "fused", "keras")
# Which checkpoint of a run to read: the best by validation loss, or the newest.
WHICH = ("best", "latest")
# The tf.distribute strategies of --strategy (charrnn.training.distribute builds them).
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
CELLS = ("lstm", "gru")
LR_SCHEDULES = ("constant", "cosine", "exponential")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _field(default: Any, help: str, group: str, choices: tuple[str, ...] = ()) -> Any:  # noqa: A002 - absl's name
    """A setting: its default, its flag's help text, the group --help lists it under and,
    for a choice, the values allowed (the flag is then an absl enum)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Defaults are the case study's model and optimiser."""

    data: str = _field("tinyshakespeare", "UTF-8 text: a file, a directory, a glob, a comma-separated list of them, a "
                       "URL (add #sha256=<hex> to check it) or a registered corpus (tinyshakespeare, shakespeare); "
                       "paths may be on gs:// or any TensorFlow filesystem.", "Data and run")
    run_dir: str = _field("runs/charrnn", "Run directory: config, vocabulary, checkpoints, TensorBoard logs (a local "
                          "path, or gs:// or any TensorFlow filesystem).", "Data and run")
    epochs: int = _field(20, "Epochs to train, counted from the start of the run (a resume does not restart "
                             "the count).", "How long")
    max_steps: int | None = _field(None, "Stop after this many steps in total, counted from the start of "
                                         "the run.", "How long")
    time_budget: float | None = _field(None, "Stop after this many seconds of training in this invocation (start-up, "
                                       "tracing and evaluation not counted); running again continues the run.",
                                       "How long")
    batch_size: int = _field(64, "Sequences per batch.", "Optimisation")
    seq_length: int = _field(100, "Characters per training sequence (windows are seq_length + 1 long).", "Optimisation")
    embedding_dim: int | None = _field(None, "Embedding size (unset: 256, or the run's own or its "
                                             "--init_from run's).", "Model")
    rnn_units: int | None = _field(None, "Units per recurrent layer (unset: 1024, or the run's own or "
                                         "--init_from's).", "Model")
    num_layers: int | None = _field(None, "Stacked recurrent layers (unset: 1, or the run's own or "
                                          "--init_from's).", "Model")
    cell: str | None = _field(None, "Recurrent cell: lstm or gru (unset: lstm, or the run's own or "
                                    "--init_from's).", "Model",
                              CELLS)
    dropout: float = _field(0.0, "Dropout rate after each recurrent layer during training (0 disables).", "Model")
    learning_rate: float = _field(0.001, "Adam learning rate, in (0, 1].", "Optimisation")
    lr_schedule: str = _field("constant", "Learning-rate schedule after warm-up: constant, cosine (to 0 at the last "
                              "step) or exponential (times lr_decay each epoch, as char-rnn).", "Optimisation",
                              LR_SCHEDULES)
    warmup_steps: int = _field(0, "Steps of linear learning-rate warm-up from 0.", "Optimisation")
    lr_decay: float = _field(0.97, "Per-epoch factor of the exponential schedule.", "Optimisation")
    weight_decay: float = _field(0.0, "Decoupled weight decay (AdamW) when > 0; plain Adam when 0.", "Optimisation")
    grad_clip: float | None = _field(None, "Clip gradients to this global norm (unset: no clipping).", "Optimisation")
    val_fraction: float = _field(0.1, "Fraction of the text, taken from its end, held out for validation (0 "
                                      "disables).", "Validation")
    eval_every: int | None = _field(None, "Also evaluate on the validation split every this many steps "
                                    "(unset: at epoch ends only); the best checkpoint is kept in "
                                    "<run_dir>/best.", "Validation")
    patience: int | None = _field(None, "Stop early after this many evaluations without a new best validation "
                                  "loss (unset: never).", "Validation")
    carry_state: bool = _field(False, "Stateful truncated BPTT: lay the text out as batch_size contiguous streams "
                               "and carry each batch's final state into the next (no shuffling).", "Optimisation")
    shuffle_buffer: int = _field(10000, "Shuffle buffer in windows (as in the case study).", "Optimisation")
    checkpoint_every: int = _field(250, "Save a checkpoint every this many steps (and at every epoch end).",
                                   "Checkpoints and logs")
    max_to_keep: int = _field(5, "Checkpoints to keep.", "Checkpoints and logs")
    log_every: int = _field(50, "Every this many steps: a metrics.jsonl line, TensorBoard's interval means and, "
                            "off a terminal, a progress line.", "Checkpoints and logs")
    seed: int = _field(0, f"Seed for initialisation, data order and dropout (0 to {2**32 - 1}).", "Optimisation")
    steps_per_loop: int = _field(1, "Train steps per compiled call: fewer Python round trips (helps small "
                                    "models and GPUs).", "Speed")
    jit_compile: bool = _field(False, "Compile the train step with XLA.", "Speed")
    mixed_precision: str = _field("auto", "Precision policy: auto (bfloat16 on CPUs with native bfloat16 and on TPUs, "
                                  "float16 with loss scaling on GPUs of compute capability 7.0+, else float32; a run "
                                  "keeps what it started with), float32, mixed_float16 or mixed_bfloat16.", "Speed",
                                  PRECISIONS)
    lstm_impl: str = _field("auto", "LSTM implementation: auto (keras/cuDNN on a GPU, fused on a CPU), "
                                    "fused, keras. The fused LSTM arranges its loops by size, precision and CPU "
                                    "(charrnn.nn.lstm.variant_for).", "Speed",
                            LSTM_IMPLS)
    deterministic: bool = _field(False, "Enable TensorFlow op determinism: a run, interrupted or not, is "
                                        "reproducible bit for bit.", "Speed")
    device: str = _field("auto", "Device: auto (first GPU, else CPU) or a TensorFlow device name such as "
                                 "/GPU:1.", "Devices and distribution")
    strategy: str = _field("default", "tf.distribute strategy: default (one device, --device), one_device, mirrored "
                           "(all GPUs or --devices of this machine), multi_worker (TF_CONFIG), tpu.",
                           "Devices and distribution",
                           STRATEGIES)
    devices: str | None = _field(None, "Comma-separated devices for --strategy=one_device or mirrored "
                                 "(default: the first GPU; all GPUs, else all CPU devices).",
                                 "Devices and distribution")
    tpu: str | None = _field(None, "TPU address for --strategy=tpu (default: the local or Cloud TPU found by "
                             "TPUClusterResolver).", "Devices and distribution")
    num_cpu_devices: int | None = _field(None, "Split the host CPU into this many logical devices before "
                                         "TensorFlow starts (to try mirrored without GPUs).",
                                         "Devices and distribution")
    cluster_timeout: float = _field(300.0, "With --strategy=multi_worker: seconds to wait for every worker of "
                                    "TF_CONFIG to come up before giving up (exit status 75).",
                                    "Devices and distribution")
    sample_every: int | None = _field(None, "Print a sample (and log it to TensorBoard) every this many steps "
                                      "(unset: none; TensorBoard also gets one at each evaluation).",
                                      "Samples while training")
    sample_chars: int = _field(200, "Characters per sample shown while training (0: no samples, not even in "
                               "TensorBoard at evaluations).", "Samples while training")
    sample_prime: str = _field("", "Text the samples shown while training start from (default: a newline, or "
                               "the text's first character if it has none).", "Samples while training")
    sample_temperature: float = _field(0.8, "Temperature of the samples shown while training.",
                                       "Samples while training")
    init_from: str | None = _field(None, "Fine-tune: start this new run from the weights of that run directory "
                                   "(step 0, a fresh optimizer); the vocabulary grows by the new text's characters.",
                                   "Fine-tuning")
    init_which: str = _field("best", "Checkpoint of --init_from: best (lowest validation loss, else the latest) or "
                             "latest.", "Fine-tuning", WHICH)
    allow_new_data: bool = _field(False, "Resume even though --data is not the text the run was trained on "
                                  "(every checkpoint records a fingerprint of its training text).",
                                  "Checkpoints and logs")

    # Settings a resume must share with the run it continues: the model's shape, and
    # what decides the order of the training data.
    MODEL_FIELDS = ("embedding_dim", "rnn_units", "num_layers", "cell")
    DATA_FIELDS = ("batch_size", "seq_length", "val_fraction", "shuffle_buffer", "seed", "carry_state", "init_from")

    def __post_init__(self) -> None:
        self._check_kinds()
        self._check_ranges()
        self._check_together()

    def _check_kinds(self) -> None:
        """Each setting's type, choices, finiteness and the int32 bound."""
        check_types(self, lambda name: f"TrainConfig.{name} (--{name})")
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) is not None and getattr(self, field.name) not in choices:
                raise CharRNNError(f"--{field.name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                                   f"got {getattr(self, field.name)!r}")
        for name in ("learning_rate", "lr_decay", "weight_decay", "dropout", "val_fraction", "cluster_timeout",
                     "sample_temperature"):
            if not math.isfinite(getattr(self, name)):
                raise CharRNNError(f"--{name} must be a finite number, got {getattr(self, name)}")
        for name in ("time_budget", "grad_clip"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                off = "no limit" if name == "time_budget" else "no clipping"
                raise CharRNNError(f"--{name} must be a finite number, got {getattr(self, name)} (--{name}=off or "
                                   f"None for {off})")
        for field in dataclasses.fields(self):  # ints that TensorFlow takes as int32 (counts: nowhere near)
            value = getattr(self, field.name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT and field.name != "seed":
                raise CharRNNError(f"--{field.name} must be at most {MAX_INT}, got {value}")

    def _check_ranges(self) -> None:
        """Each setting's own range."""
        if not 0 <= self.seed < 2**32:
            raise CharRNNError(f"--seed must be between 0 and {2**32 - 1}, got {self.seed}")
        if not 0 < self.learning_rate <= 1:
            raise CharRNNError(f"--learning_rate must be in (0, 1] (Adam's usual range is 1e-4 to 1e-2), "
                               f"got {self.learning_rate}")
        if not self.cluster_timeout > 0:
            raise CharRNNError(f"--cluster_timeout must be positive, got {self.cluster_timeout}")
        positive = ["epochs", "batch_size", "seq_length", "embedding_dim", "rnn_units", "num_layers",
                    "checkpoint_every", "max_to_keep", "log_every", "shuffle_buffer", "steps_per_loop"]
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CharRNNError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise CharRNNError(f"--max_steps must be at least 1, got {self.max_steps} (--max_steps=off or None for "
                               "no limit)")
        if self.sample_every is not None and self.sample_every < 1:
            raise CharRNNError(f"--sample_every must be at least 1, got {self.sample_every} (--sample_every=off "
                               f"or None for no samples)")
        if not 0 <= self.sample_chars <= 100_000:
            raise CharRNNError(f"--sample_chars must be between 0 and 100000, got {self.sample_chars}")
        if not MIN_TEMPERATURE <= self.sample_temperature <= MAX_TEMPERATURE:
            raise CharRNNError(f"--sample_temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, "
                               f"got {self.sample_temperature}")
        for name in ("eval_every", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CharRNNError(f"--{name} must be at least 1, got {getattr(self, name)} (--{name}=off or None "
                                   f"to disable)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise CharRNNError(f"--time_budget must be positive, got {self.time_budget} (--time_budget=off or None "
                               "for no limit)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise CharRNNError(f"--grad_clip must be positive, got {self.grad_clip} (--grad_clip=off or None for "
                               "no clipping)")
        if not 0 <= self.dropout < 1:
            raise CharRNNError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.val_fraction < 1:
            raise CharRNNError(f"--val_fraction must be in [0, 1), got {self.val_fraction} (0 disables validation)")
        if self.warmup_steps < 0:
            raise CharRNNError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.lr_decay <= 1:
            raise CharRNNError(f"--lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.weight_decay < 1:
            raise CharRNNError(f"--weight_decay must be in [0, 1), got {self.weight_decay}")
        if self.num_cpu_devices is not None and not 1 <= self.num_cpu_devices <= 256:
            raise CharRNNError(f"--num_cpu_devices must be between 1 and 256, got {self.num_cpu_devices}")

    def _check_together(self) -> None:
        """Settings that only make sense with others."""
        for name in ("eval_every", "patience"):
            if getattr(self, name) is not None and self.val_fraction == 0:
                raise CharRNNError(f"--{name} needs a validation split; set --val_fraction above 0")
        if self.devices is not None and self.strategy not in ("one_device", "mirrored"):
            raise CharRNNError("--devices applies to --strategy=one_device or mirrored; use --device otherwise")
        if not self.data.strip():
            raise CharRNNError("--data is empty; pass a text file or a registered corpus name")
        if not self.run_dir.strip():
            raise CharRNNError("--run_dir is empty; pass a directory for checkpoints and logs")

    @property
    def sample_interval(self) -> int | None:
        """Steps between the samples shown while training; None for none (--sample_every
        unset, or --sample_chars=0)."""
        return self.sample_every if self.sample_chars else None

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> TrainConfig:
        """The training settings of preset `name` (PRESETS), with `changes` on top: what
        `charrnn-train --preset=<name>` and flags give. Its sampling settings (SAMPLE_SETTINGS:
        charrnn-sample's) are not training's; any other key is refused."""
        if name not in PRESETS:
            raise CharRNNError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(PRESETS[name]) - known - SAMPLE_SETTINGS
        if unknown:
            raise CharRNNError(f"preset {name!r} sets {', '.join(sorted(unknown))}, which is neither a training nor a "
                               "sampling setting")
        return cls(**{**{k: v for k, v in PRESETS[name].items() if k in known}, **changes})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, payload: str) -> TrainConfig:
        """The settings a run's config.json holds (a CharRNNError for anything else)."""
        values = json_object(payload, "a JSON object of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        # A saved run has sizes: any left unset (a hand-written file) are the defaults.
        return cls(**{k: v for k, v in values.items() if k in known}).with_model_sizes(None)

    def mismatches(self, saved: TrainConfig) -> list[str]:
        """The resume-critical settings in which this config differs from `saved`. An unset
        init_from continues the run's own (a fine-tuned run continues without its source),
        and so do unset model sizes (the run's are taken)."""
        inherited = self.MODEL_FIELDS + ("init_from",)
        return [
            f"{name}={getattr(saved, name)!r} in the run, {getattr(self, name)!r} requested"
            for name in self.MODEL_FIELDS + self.DATA_FIELDS
            if getattr(self, name) != getattr(saved, name) and not (name in inherited and getattr(self, name) is None)
        ]

    def model_sizes(self) -> tuple[int, int, int, str]:
        """(embedding_dim, rnn_units, num_layers, cell), resolved (see with_model_sizes)."""
        e, h, n, cell = (getattr(self, name) for name in self.MODEL_FIELDS)
        if e is None or h is None or n is None or cell is None:
            raise ValueError("the model's sizes are not resolved yet (TrainConfig.with_model_sizes)")
        return e, h, n, cell

    def with_model_sizes(self, sizes: TrainConfig | None) -> TrainConfig:
        """This config with its unset model sizes taken from `sizes` (the run resumed, or the
        --init_from run), or MODEL_DEFAULTS (the case study's) when None."""
        return self.replace(**{name: getattr(sizes, name) if sizes is not None else MODEL_DEFAULTS[name]
                               for name in self.MODEL_FIELDS if getattr(self, name) is None})


# The model's sizes when they are left unset (the case study's), except where a run has
# sizes already: a resumed run keeps its own, a fine-tuned one takes its --init_from run's.
MODEL_DEFAULTS: dict[str, Any] = {"embedding_dim": 256, "rnn_units": 1024, "num_layers": 1, "cell": "lstm"}

# What a preset may set for charrnn-sample beside the training settings.
SAMPLE_SETTINGS = frozenset({"num_chars", "temperature"})
# Named sets of flag values; flags given explicitly on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The case study exactly: its corpus, 20 epochs, Embedding(256) -> LSTM(1024), seq 100,
    # batch 64; sampling 500 characters at temperature 0.5.
    "seed": {
        "data": "shakespeare", "epochs": 20, "embedding_dim": 256, "rnn_units": 1024, "num_layers": 1,
        "seq_length": 100, "batch_size": 64, "num_chars": 500, "temperature": 0.5,
    },
    # Best validation loss on tiny-shakespeare in 3 minutes of training on a 2-core CPU
    # (benchmarks/bench_quality.py; tuning runs in benchmarks/RESULTS.md), with a sample
    # every 100 steps so that a first look shows what the model writes. auto: bfloat16
    # on CPUs with AVX512_BF16 or AMX (where it was tuned), float32 elsewhere.
    "cpu_small": {
        "data": "tinyshakespeare", "val_fraction": 0.1, "time_budget": 180.0, "epochs": 1000,
        "embedding_dim": 64, "rnn_units": 384, "num_layers": 1, "batch_size": 64, "seq_length": 100,
        "learning_rate": 0.005, "grad_clip": 1.0, "carry_state": True, "eval_every": 250, "checkpoint_every": 1000,
        "steps_per_loop": 10, "log_every": 100, "sample_every": 100, "mixed_precision": "auto",
    },
    # The same in 10 minutes: two stacked LSTMs with dropout after each, and a learning
    # rate that decays each epoch (benchmarks/RESULTS.md, issue 16).
    "cpu_medium": {
        "data": "tinyshakespeare", "val_fraction": 0.1, "time_budget": 600.0, "epochs": 1000,
        "embedding_dim": 64, "rnn_units": 384, "num_layers": 2, "dropout": 0.3, "batch_size": 64, "seq_length": 100,
        "learning_rate": 0.004, "lr_schedule": "exponential", "lr_decay": 0.85, "grad_clip": 1.0,
        "carry_state": True, "eval_every": 250, "checkpoint_every": 1000, "steps_per_loop": 10, "log_every": 100,
        "sample_every": 250, "mixed_precision": "auto",
    },
    # The same on one modern GPU in 10 minutes (cuDNN LSTMs, float16 with loss scaling).
    "gpu": {
        "data": "tinyshakespeare", "val_fraction": 0.1, "time_budget": 600.0, "epochs": 1000,
        "embedding_dim": 256, "rnn_units": 1024, "num_layers": 2, "dropout": 0.25, "batch_size": 128,
        "seq_length": 200, "learning_rate": 0.002, "grad_clip": 1.0, "carry_state": True, "eval_every": 500,
        "checkpoint_every": 1000, "steps_per_loop": 50, "mixed_precision": "mixed_float16", "log_every": 200,
    },
}

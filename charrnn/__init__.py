"""charrnn: character-level text generation with recurrent networks, in pure TensorFlow.

    trainer = charrnn.Trainer(charrnn.TrainConfig(data="input.txt", run_dir="runs/x"))
    trainer.fit()
    print(charrnn.Sampler.from_checkpoint("runs/x").generate("ROMEO: "))

Names are imported on first use, so `import charrnn` (and a command-line tool's --help)
does not wait for TensorFlow; the first name that needs it starts TensorFlow without its
C++ start-up lines (CHARRNN_TF_LOGS=1 shows them; see charrnn/quiet.py). A program that
imports keras or tensorflow itself calls charrnn's `start_tensorflow()` first to keep them
quiet too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from charrnn import quiet

# Public name -> the module that defines it.
_EXPORTS = {
    "Callback": "callbacks",
    "PRESETS": "config", "TrainConfig": "config",
    "CORPORA": "corpus", "read_text": "corpus", "resolve_sources": "corpus",
    "Vocabulary": "vocab",
    "CharRNNError": "errors", "TryAgain": "errors",
    "export": "exporter", "export_tflite": "exporter",
    "EpochStats": "loop",
    "CharRNN": "model",
    "EXIT_PREEMPTED": "stopping", "Preempted": "stopping",
    "MAX_NUM_CHARS": "sampling", "SampleOptions": "sampling", "Sampler": "sampler",
    "Trainer": "trainer",
    "start_tensorflow": "quiet",
}
__all__ = sorted(_EXPORTS)
# Modules that do not import TensorFlow (tests/test_quiet.py checks each).
_WITHOUT_TENSORFLOW = {"callbacks", "config", "corpus", "errors", "loop", "quiet", "sampling", "vocab"}
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see
    from charrnn.callbacks import Callback
    from charrnn.config import PRESETS, TrainConfig
    from charrnn.corpus import CORPORA, read_text, resolve_sources
    from charrnn.errors import CharRNNError, TryAgain
    from charrnn.exporter import export, export_tflite
    from charrnn.loop import EpochStats
    from charrnn.model import CharRNN
    from charrnn.quiet import start_tensorflow
    from charrnn.sampler import Sampler
    from charrnn.sampling import MAX_NUM_CHARS, SampleOptions
    from charrnn.stopping import EXIT_PREEMPTED, Preempted
    from charrnn.trainer import Trainer
    from charrnn.vocab import Vocabulary


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
    if _EXPORTS[name] not in _WITHOUT_TENSORFLOW:
        quiet.start_tensorflow()
    value = getattr(importlib.import_module(f"charrnn.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

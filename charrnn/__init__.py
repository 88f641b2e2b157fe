"""charrnn: character-level text generation with recurrent networks, in pure TensorFlow.

    trainer = charrnn.Trainer(charrnn.TrainConfig(data="input.txt", run_dir="runs/x"))
    trainer.fit()
    print(charrnn.Sampler.from_checkpoint("runs/x").generate("ROMEO: "))

The package, by concern; a subpackage imports only from those listed before it:
    charrnn/*.py       what every part shares: the settings (config: training; sampling: a
                       sample's options), errors, logging, checks of input, storage
    charrnn.text       the text and its ids: corpora, downloads, the vocabulary, batches
    charrnn.nn         the model: CharRNN, its LSTM kernels, optimizer, devices and precision
    charrnn.run        a run directory: its files, lock, checkpoints and their records
    charrnn.generation sampling from a trained model, and exports (SavedModel, TFLite, web)
    charrnn.training   a training session: the trainer, its step, the loop and its observers
    charrnn.cli        the command-line tools
Modules moved into the subpackages keep their old paths too: charrnn's sampler module, say,
imports as charrnn.generation's and under its old name, as the same module.

Names are imported on first use, so `import charrnn` (and a command-line tool's --help)
does not wait for TensorFlow; the first name that needs it starts TensorFlow without its
C++ start-up lines (CHARRNN_TF_LOGS=1 shows them; see charrnn/quiet.py). A program that
imports keras or tensorflow itself calls charrnn's `start_tensorflow()` first to keep them
quiet too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from charrnn import quiet

# Public name -> the module that defines it.
_EXPORTS = {
    "Callback": "training.callbacks",
    "PRESETS": "config", "TrainConfig": "config",
    "CORPORA": "text.corpus", "read_text": "text.corpus", "resolve_sources": "text.corpus",
    "Vocabulary": "text.vocab",
    "CharRNNError": "errors", "TryAgain": "errors",
    "export": "generation.exporter", "export_tflite": "generation.exporter",
    "EpochStats": "training.loop",
    "CharRNN": "nn.model",
    "EXIT_PREEMPTED": "training.stopping", "Preempted": "training.stopping",
    "MAX_NUM_CHARS": "sampling", "SampleOptions": "sampling", "Sampler": "generation.sampler",
    "Trainer": "training.trainer",
    "start_tensorflow": "quiet",
}
__all__ = sorted(_EXPORTS)
# Modules that do not import TensorFlow (tests/test_quiet.py checks each).
_WITHOUT_TENSORFLOW = {"training.callbacks", "config", "text.corpus", "errors", "training.loop", "quiet", "sampling",
                       "text.vocab"}
# The subpackage of each module that was once charrnn.<name>: the old path imports the same module.
_MOVED = {
    **dict.fromkeys(["corpus", "download", "idcache", "data", "traindata", "vocab"], "text"),
    **dict.fromkeys(["model", "lstm", "optimizer", "devices"], "nn"),
    **dict.fromkeys(["rundir", "checkpoint", "records", "lock", "which", "trained", "preflight"], "run"),
    **dict.fromkeys(["sampler", "exporter", "exportfiles", "webexport"], "generation"),
    **dict.fromkeys(["trainer", "step", "loop", "fit", "resume", "cadence", "stopping", "callbacks", "console",
                     "metrics", "tensorboard", "keras_callbacks", "evaluator", "distribute", "watchdog"], "training"),
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `charrnn.<name>` of a moved module as the module at its new path (one module
    object under both names, so that what is patched through one is seen through the other)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        name = spec.name.partition(".")[2]
        module = importlib.import_module(f"{__name__}.{_MOVED[name]}.{name}")
        self._own_spec = module.__spec__  # which the import system replaces next
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # Imported at its new path already; its own spec goes back (importlib.reload reads it).
        module.__spec__ = self._own_spec


# First: a copy of an old module left on the path (a stale build) must not answer its name.
sys.meta_path.insert(0, _OldPaths())
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see
    from charrnn.config import PRESETS, TrainConfig
    from charrnn.errors import CharRNNError, TryAgain
    from charrnn.generation.exporter import export, export_tflite
    from charrnn.generation.sampler import Sampler
    from charrnn.nn.model import CharRNN
    from charrnn.quiet import start_tensorflow
    from charrnn.sampling import MAX_NUM_CHARS, SampleOptions
    from charrnn.text.corpus import CORPORA, read_text, resolve_sources
    from charrnn.text.vocab import Vocabulary
    from charrnn.training.callbacks import Callback
    from charrnn.training.loop import EpochStats
    from charrnn.training.stopping import EXIT_PREEMPTED, Preempted
    from charrnn.training.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # a module by its old name: the one at its new path
        return importlib.import_module(f"charrnn.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
    if _EXPORTS[name] not in _WITHOUT_TENSORFLOW:
        quiet.start_tensorflow()
    value = getattr(importlib.import_module(f"charrnn.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""charrnn: character-level text generation with recurrent networks, in pure TensorFlow.

    trainer = charrnn.Trainer(charrnn.TrainConfig(data="input.txt", run_dir="runs/x"))
    trainer.fit()
    print(charrnn.Sampler.from_checkpoint("runs/x").generate("ROMEO: "))
"""

from charrnn.config import PRESETS, TrainConfig
from charrnn.data import CORPORA, Vocabulary, read_text, resolve_corpus
from charrnn.errors import CharRNNError
from charrnn.exporter import export
from charrnn.model import CharRNN
from charrnn.preemption import EXIT_PREEMPTED, Preempted
from charrnn.sampler import MAX_NUM_CHARS, Sampler
from charrnn.trainer import EpochStats, Trainer

__all__ = [
    "CORPORA", "EXIT_PREEMPTED", "MAX_NUM_CHARS", "PRESETS", "CharRNN", "CharRNNError", "EpochStats", "Preempted",
    "Sampler", "TrainConfig", "Trainer", "Vocabulary", "export", "read_text", "resolve_corpus",
]
__version__ = "0.1.0"

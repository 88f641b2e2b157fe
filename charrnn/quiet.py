"""Starting TensorFlow without its C++ start-up lines (CUDA probing, cuInit errors on a
machine without a GPU, CPU features, oneDNN), as the tools and `import charrnn` do.

Those lines come before TF_CPP_MIN_LOG_LEVEL takes effect (a TF_CPP_MIN_LOG_LEVEL=2 of the
user's own, the usual advice for a quiet TensorFlow, lets them through), so they are
caught by pointing file descriptor 2 elsewhere while TensorFlow starts, and shown if the
start fails. After it, only TensorFlow's errors reach the console (TF_CPP_MIN_LOG_LEVEL=2,
or the user's higher level). To see them all: `--tf_logs` on a tool, or
CHARRNN_TF_LOGS=1, or TF_CPP_MIN_LOG_LEVEL=0.
"""

from __future__ import annotations

import os
import sys
import tempfile

LOGS_ENV = "CHARRNN_TF_LOGS"


def start_tensorflow(quiet: bool | None = None) -> None:
    """Imports TensorFlow and finds its devices, quietly unless `quiet` is False (None: unless
    the environment asks for its logs). Does nothing once TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        return
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if quiet is None:
        quiet = not os.environ.get(LOGS_ENV) and level != "0"
    if not quiet:
        import tensorflow as tf
        tf.config.list_physical_devices()
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = level if level in ("2", "3") else "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()  # CUDA is probed here, and says so
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)

"""`import charrnn` waits for nothing, and TensorFlow starts without its C++ lines unless asked."""

from __future__ import annotations

import os
import subprocess
import sys

import charrnn

_PROBE = """
import sys
import charrnn
for module in sorted(charrnn._WITHOUT_TENSORFLOW):
    __import__(f"charrnn.{module}")
assert "tensorflow" not in sys.modules, "a module listed as TensorFlow-free imports it"
charrnn.Trainer  # starts TensorFlow
assert "tensorflow" in sys.modules
"""


def _probe(probe: str = _PROBE, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CHARRNN_TF_LOGS")}
    return subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300)


def test_first_use_starts_tensorflow_without_its_startup_lines():
    result = _probe()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_charrnn_tf_logs_shows_them():
    result = _probe(CHARRNN_TF_LOGS="1")
    assert result.returncode == 0, result.stderr
    # On any machine TensorFlow names what it was built for or found (CPU features, CUDA).
    assert "cpu_feature_guard" in result.stderr or "cuda" in result.stderr.lower(), result.stderr


def test_every_export_is_listed_with_its_module():
    for name in charrnn.__all__:
        assert getattr(charrnn, name) is not None


def test_a_program_that_imports_keras_itself_starts_tensorflow_through_charrnn_first():
    """docs/api.md's advice: `charrnn.start_tensorflow()` before `import keras` keeps
    TensorFlow's start-up lines away, and the program's own keras is the one charrnn uses."""
    result = _probe("import charrnn\ncharrnn.start_tensorflow()\nimport keras\nimport tensorflow as tf\n"
                    "assert charrnn.Trainer and keras.layers.Dense(1)(tf.zeros([1, 2])).shape == (1, 1)\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

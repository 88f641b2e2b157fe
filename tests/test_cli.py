"""The command-line tools, run as users run them: in subprocesses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import TINY_FLAGS, run_cli

def test_train_then_sample_end_to_end(trained_run):
    assert json.loads((trained_run / "config.json").read_text())["max_steps"] == 3
    assert (trained_run / "vocab.json").exists() and (trained_run / "ckpt" / "checkpoint").exists()
    args = (f"--run_dir={trained_run}", "--prime=The ", "--num_chars=60", "--seed=4", "--device=/CPU:0")
    first, second = run_cli("sample", *args), run_cli("sample", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The ") and len(first.stdout.rstrip("\n")) >= 64


def test_sample_prints_numbered_parallel_samples(trained_run):
    proc = run_cli("sample", f"--run_dir={trained_run}", "--num_samples=3", "--num_chars=10", "--seed=1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- sample ") == 3


def test_console_scripts_are_installed():
    scripts = Path(sys.executable).parent
    for tool in ("charrnn-train", "charrnn-sample", "charrnn-eval", "charrnn-export"):
        assert (scripts / tool).exists(), f"{tool} not installed next to {sys.executable}"


def test_preset_values_yield_to_explicit_flags_and_flagfile_works(tmp_path, small_text):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--data={small_text}\n--run_dir={tmp_path / 'run'}\n--rnn_units=16\n")
    proc = run_cli("train", "--preset=seed", f"--flagfile={flagfile}", "--max_steps=1", "--device=/CPU:0")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(small_text) and config["rnn_units"] == 16  # explicit
    assert config["epochs"] == 20 and config["embedding_dim"] == 256 and config["seq_length"] == 100  # preset


def test_sample_options_on_the_command_line(trained_run):
    base = (f"--run_dir={trained_run}", "--prime=The ", "--num_chars=80")
    greedy = [run_cli("sample", *base, "--greedy", f"--seed={s}") for s in (1, 2)]
    assert greedy[0].returncode == 0, greedy[0].stderr
    assert greedy[0].stdout == greedy[1].stdout
    stopped = run_cli("sample", *base, "--seed=3", "--top_k=5", "--top_p=0.9", "--stop_at=o")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("The ") and "o" not in stopped.stdout[4:]





def test_tools_answer_help_with_their_own_flags_without_tensorflow():
    for tool in ("train", "sample", "eval", "export_cli"):  # flags are parsed before TensorFlow starts
        proc = subprocess.run([sys.executable, "-c", f"import sys, charrnn.{tool}; print('tensorflow' in sys.modules)"],
                              capture_output=True, text=True)
        assert proc.stdout.strip() == "False", proc.stderr
    expected = {
        "train": ["Model:", "--rnn_units (default: 1024)", "Validation:", "--eval_every (default: unset)",
                  "--carry_state (default: false)", "General:", "--preset (default: unset)", "--tf_logs"],
        "sample": ["charrnn options:", "--temperature (default: 0.5)", "Run to read:", "--run_dir (default: "
                   "'runs/charrnn')"],
        "eval": ["--split (default: 'all')", "--which (default: unset)"],
        "export_cli": ["--export_dir (default: unset)"],
    }
    for tool, lines in expected.items():
        proc = run_cli(tool, "--help")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        for line in lines:
            assert line in proc.stdout, f"{tool} --help lacks {line!r}:\n{proc.stdout}"
        assert "--xla_" not in proc.stdout and "--jax_" not in proc.stdout  # absl's and TensorFlow's are in --helpfull
    # A tool offers only the presets that set one of its flags: a training recipe changes
    # nothing in charrnn-sample, so it is refused there.
    refused = run_cli("sample", "--preset=cpu_small")
    assert refused.returncode == 2 and "value should be one of <seed>" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr  # one line, as every bad input


def _tensorflow_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"[IWE]\d{4} |WARNING: All log messages", line)]


def test_the_console_shows_charrnn_lines_only_unless_asked(tmp_path, small_text):
    run = tmp_path / "run"
    # seq_length 100: whole chunks of the fused LSTM's backward pass, where Grappler used to fail.
    args = [f"--data={small_text}", f"--run_dir={run}", "--max_steps=2", "--seq_length=100", *TINY_FLAGS[:3],
            "--device=/CPU:0"]
    quiet = run_cli("train", *args)
    assert quiet.returncode == 0 and _tensorflow_lines(quiet.stderr) == [], quiet.stderr
    sample = run_cli("sample", f"--run_dir={run}", "--num_chars=20", "--seed=1")
    assert sample.returncode == 0 and _tensorflow_lines(sample.stderr) == [], sample.stderr
    loud = run_cli("sample", f"--run_dir={run}", "--num_chars=20", "--seed=1", "--tf_logs")
    assert loud.stdout == sample.stdout and _tensorflow_lines(loud.stderr), loud.stderr
    own = run_cli("sample", f"--run_dir={run}", "--num_chars=20", "--seed=1", env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert _tensorflow_lines(own.stderr), own.stderr  # the user's own setting wins


def test_the_progress_line_fits_its_width_and_counts_the_run():
    from types import SimpleNamespace

    from charrnn.callbacks import ProgressLogger
    from charrnn.loop import Cadence

    def _Progress(total_steps, steps_per_epoch, log_every, start_step):  # noqa: N802 - reads as the class it was
        progress = ProgressLogger(verbose=2)
        progress.on_train_begin(SimpleNamespace(cadence=Cadence(steps_per_epoch, total_steps, log_every=log_every),
                                                position=lambda: (start_step, 0), restored_from=None))
        return progress

    progress = _Progress(total_steps=300, steps_per_epoch=100, log_every=50, start_step=0)
    full = progress.line(0, 37, 3.40213)
    assert full.startswith("epoch 1/3 step 37/300 12% loss 3.4021 ") and " ETA " in full and "elapsed" in full
    for width in (80, 50, 30, 12):
        line = progress.line(0, 37, 3.40213, width=width)
        assert len(line) < width and "step 37/300" in line[:width], (width, line)
    assert "ETA" in progress.line(0, 37, 3.4, width=50) and "%" in progress.line(0, 37, 3.4, width=50)
    # max_steps cuts the run inside its first epoch: one epoch, not the configured twenty.
    assert _Progress(3, 155, 50, 0).line(0, 1, 4.0).startswith("epoch 1/1 step 1/3 33%")


def test_the_live_progress_line_never_wraps_on_a_50_column_terminal(small_text, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.train", f"--data={small_text}",
                             f"--run_dir={tmp_path / 'run'}", "--max_steps=30", "--eval_every=10", *TINY_FLAGS],
                            stdout=child, stderr=subprocess.PIPE, env=env)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    pieces = re.split(r"[\r\n]", output.decode().replace("\x1b[K", ""))
    live = [p for p in pieces if "ETA" in p]
    assert live and all(len(p) < 50 for p in live), live
    assert any("step 30/30 100%" in p for p in live)

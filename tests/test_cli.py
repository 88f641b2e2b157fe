"""The command-line tools, run as users run them: in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn import Sampler
from conftest import TINY_FLAGS, assert_one_line_error, run_cli, sigint_as_usual, tensorflow_lines


def test_console_scripts_run_their_own_tool():
    """Each installed command is the tool it is named after (its --help, no TensorFlow needed)."""
    scripts = Path(sys.executable).parent
    for command, title in (("charrnn-train", "train a character-level LSTM"), ("charrnn-sample", "generate text"),
                           ("charrnn-eval", "the loss of a trained run"), ("charrnn-export", "write a training run")):
        proc = subprocess.run([str(scripts / command), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith(f"{command}: {title}"), (command, proc.stdout[:200])
        assert f"usage: {command} [--flag=value ...]" in proc.stdout


def test_sample_prints_what_the_sampler_generates_with_every_option(trained_run):
    options = dict(num_samples=3, top_k=5, top_p=0.9, stop_at="o", temperature=0.8, seed=3)
    proc = run_cli("sample", f"--run_dir={trained_run}", "--prime=The ", "--num_chars=80",
                   *[f"--{name}={value}" for name, value in options.items()])
    assert proc.returncode == 0, proc.stderr
    expected = Sampler.from_checkpoint(str(trained_run)).generate("The ", 80, **options)
    assert proc.stdout == "".join(f"--- sample {i} ---\n{text}\n" for i, text in enumerate(expected, 1))
    assert all("o" not in text[4:] for text in expected)


def test_preset_values_yield_to_explicit_flags_and_flagfile_works(tmp_path, small_text):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--data={small_text}\n--run_dir={tmp_path / 'run'}\n--rnn_units=16\n")
    proc = run_cli("train", "--preset=cpu_small", f"--flagfile={flagfile}", "--max_steps=1", "--device=/CPU:0",
                   "--batch_size=2", "--seq_length=20")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(small_text) and config["rnn_units"] == 16 and config["batch_size"] == 2  # explicit
    # The preset's, where each differs from the flag's default (embedding_dim 256, no carry_state, ...).
    assert config["embedding_dim"] == 64 and config["carry_state"] and config["learning_rate"] == 0.005
    assert config["time_budget"] == 180.0 and config["sample_every"] == 100 and config["steps_per_loop"] == 10


def test_every_setting_a_preset_turns_on_can_be_turned_back_off(tmp_path, small_text):
    """cpu_small sets a time budget, samples, evaluations and clipping: `off` (or `none`)
    unsets each from the command line, and --sample_chars=0 stops the samples alone."""
    tiny = [f"--data={small_text}", "--max_steps=1", "--device=/CPU:0", "--batch_size=2", "--seq_length=20",
            "--rnn_units=16", "--embedding_dim=8"]
    proc = run_cli("train", "--preset=cpu_small", f"--run_dir={tmp_path / 'off'}", *tiny, "--sample_every=off",
                   "--time_budget=none", "--eval_every=OFF", "--grad_clip=off")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "off" / "config.json").read_text())
    assert [config[k] for k in ("sample_every", "time_budget", "eval_every", "grad_clip")] == [None] * 4
    proc = run_cli("train", "--preset=cpu_small", f"--run_dir={tmp_path / 'quiet'}", *tiny, "--sample_chars=0")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "quiet" / "config.json").read_text())
    assert config["sample_chars"] == 0 and config["sample_every"] == 100
    refused = run_cli("train", f"--run_dir={tmp_path / 'r'}", *tiny, "--sample_every=0")
    assert_one_line_error(refused, "--sample_every must be at least 1, got 0 (--sample_every=off or None for no "
                                   "samples)")


def test_tools_answer_help_with_their_own_flags_without_tensorflow():
    for tool in ("train", "sample", "eval", "export"):  # flags are parsed before TensorFlow starts
        proc = subprocess.run([sys.executable, "-c", f"import sys, charrnn.cli.{tool}; print('tensorflow' "
                                                     f"in sys.modules)"],
                              capture_output=True, text=True)
        assert proc.stdout.strip() == "False", proc.stderr
    expected = {
        "train": ["Model:", "--rnn_units (default: unset)", "Validation:", "--eval_every (default: unset)",
                  "--carry_state (default: false)", "General:", "--preset (default: unset)", "--tf_logs"],
        "sample": ["charrnn-sample options:", "--temperature (default: 0.5)", "Run to read:", "--run_dir (default: "
                   "'runs/charrnn')"],
        "eval": ["--split (default: 'all')", "--which (default: unset)"],
        "export": ["--export_dir (default: unset)"],
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


def test_tensorflows_own_lines_show_only_when_asked(trained_run):
    """Hidden by default (test_docs checks the README's commands print none) and with the usual
    TF_CPP_MIN_LOG_LEVEL=2; --tf_logs or TF_CPP_MIN_LOG_LEVEL=0 shows them."""
    args = [f"--run_dir={trained_run}", "--num_chars=20", "--seed=1"]
    loud = run_cli("sample", *args, "--tf_logs")
    assert loud.returncode == 0 and tensorflow_lines(loud.stderr), loud.stderr
    assert loud.stdout == Sampler.from_checkpoint(str(trained_run)).generate("\n", 20, seed=1) + "\n"
    own = run_cli("sample", *args, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert own.stdout == loud.stdout and tensorflow_lines(own.stderr), own.stderr  # the user's own setting wins
    quiet = run_cli("sample", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert quiet.stdout == loud.stdout and quiet.stderr == "", quiet.stderr


def test_the_progress_line_fits_its_width_and_counts_the_run():
    from types import SimpleNamespace

    from charrnn.training.cadence import Cadence
    from charrnn.training.console import ProgressLogger

    def _Progress(total_steps, steps_per_epoch, log_every, start_step):  # noqa: N802 - reads as the class it was
        progress = ProgressLogger(verbose=2)
        progress.on_train_begin(SimpleNamespace(cadence=Cadence(steps_per_epoch, total_steps, log_every=log_every),
                                                position=lambda: (start_step, 0), restored_from=None,
                                                describe=lambda: "a run"))
        return progress

    progress = _Progress(total_steps=300, steps_per_epoch=100, log_every=50, start_step=0)
    full = progress.line(0, 37, 3.40213)
    assert full.startswith("epoch 1/3 step 37/300 12% loss 3.4021 ") and " ETA " in full and "elapsed" in full
    for width in (80, 50, 30, 12):
        line = progress.line(0, 37, 3.40213, width=width)
        assert len(line) < width and "step 37/300" in line[:width], (width, line)
    assert progress.line(0, 37, 3.40213, width=11) == ""  # never "step 37/30": no part is cut
    assert "ETA" in progress.line(0, 37, 3.4, width=50) and "%" in progress.line(0, 37, 3.4, width=50)
    # max_steps cuts the run inside its first epoch: one epoch, not the configured twenty.
    assert _Progress(3, 155, 50, 0).line(0, 1, 4.0).startswith("epoch 1/1 step 1/3 33%")


@pytest.mark.parametrize("columns", [10, 80])
def test_the_live_console_has_no_escape_sequence_and_no_cut_number(columns, monkeypatch, capsys):
    """No ESC[K (TERM=dumb prints it raw: spaces blank the line instead); a terminal too
    narrow for any part of the line gets whole lines every log_every steps, never a number
    cut short; an epoch a time budget ended early says so."""
    from types import SimpleNamespace

    from charrnn.training.cadence import Cadence
    from charrnn.training.console import ProgressLogger

    monkeypatch.setenv("COLUMNS", str(columns))
    cadence = Cadence(steps_per_epoch=30, total_steps=40, log_every=10, time_budget=60)
    progress = ProgressLogger(verbose=1)
    progress.on_train_begin(SimpleNamespace(cadence=cadence, position=lambda: (0, 0), restored_from=None,
                                            describe=lambda: "a run"))
    for step in range(1, 41):
        progress._last_draw = 0.0  # every chunk drawn
        progress.on_chunk_end(step, {"loss": 2.0, "steps_per_sec": 10.0})
        if step == 30:
            progress.on_epoch_end(1, {"loss": 2.0, "steps_per_sec": 10.0, "epoch_fraction": 1.0})
    progress.on_epoch_end(2, {"loss": 1.5, "steps_per_sec": 10.0, "epoch_fraction": 0.5})
    out = capsys.readouterr().out
    assert "\x1b" not in out
    shown = [piece.strip() for piece in re.split(r"[\r\n]", out) if piece.strip()]
    steps = [piece for piece in shown if piece.startswith("epoch") and " step " in piece and "loss" in piece]
    assert "epoch 2/2 (ended early: 10 of its 10 steps)" not in out  # 40 is the run's last step: complete
    if columns == 10:
        assert [s.split()[2:4] for s in steps if "steps/s" in s and "ETA" in s] == \
            [["step", "10/40"], ["step", "20/40"], ["step", "30/40"], ["step", "40/40"]], shown
    else:
        assert all(len(piece) < columns for piece in shown if "ETA" in piece), shown
    assert any(s.startswith("epoch 1/2 step 30 loss 2.0000") for s in shown), shown


def test_an_epoch_a_time_budget_ended_says_so(capsys):
    from types import SimpleNamespace

    from charrnn.training.cadence import Cadence
    from charrnn.training.console import ProgressLogger

    progress = ProgressLogger(verbose=2)
    progress.on_train_begin(SimpleNamespace(cadence=Cadence(steps_per_epoch=660, total_steps=6600, time_budget=60),
                                            position=lambda: (0, 0), restored_from=None, describe=lambda: "a run"))
    progress.on_chunk_end(430, {"loss": 2.0, "steps_per_sec": 10.0})
    progress.on_epoch_end(1, {"loss": 2.0, "steps_per_sec": 10.0, "epoch_fraction": 430 / 660})
    assert "epoch 1/~1 (ended early: 430 of its 660 steps) step 430 loss 2.0000" in capsys.readouterr().out


def test_the_live_progress_line_never_wraps_on_a_50_column_terminal(small_text, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli.train", f"--data={small_text}",
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


def test_ctrl_c_while_streaming_ends_quietly(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}", "--stream",
                             "--num_chars=1000000", "--seed=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=sigint_as_usual)
    assert proc.stdout.read(1)  # the sample has begun
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "Traceback" not in err.decode() and err.decode().strip().splitlines()[-1] == "charrnn-sample: interrupted"


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "charrnn.cli.train", b"--data=caf\xe9.txt",
                           f"--run_dir={tmp_path / 'run'}"], capture_output=True, timeout=300)
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                                      proc.stderr.decode()),
                          "(--data) 'caf\\xe9.txt' is not valid UTF-8 (at character 3)")
    assert not (tmp_path / "run").exists()


def test_a_training_run_whose_console_goes_away_trains_on(small_text, tmp_path):
    """`charrnn-train | head`: the reader closes the pipe early; the run trains to its end
    and checkpoints, quietly (no traceback), exit status 0."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli.train", f"--data={small_text}", f"--run_dir={run}",
                             "--max_steps=12", "--log_every=1", *TINY_FLAGS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline()  # the corpus line: the reader has read enough
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err, err[-2000:]
    assert (run / "ckpt" / "ckpt-12.index").exists()


def test_a_full_standard_output_is_one_line_for_sample_and_no_stop_for_train(trained_run, small_text, tmp_path):
    with open("/dev/full", "w") as full:
        sample = subprocess.run([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}",
                                 "--num_chars=20"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
        train = subprocess.run([sys.executable, "-m", "charrnn.cli.train", f"--data={small_text}",
                                f"--run_dir={tmp_path / 'run'}", "--max_steps=4", *TINY_FLAGS], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=300)
    assert_one_line_error(sample, "cannot write to standard output (No space left on device)")
    assert train.returncode == 0 and "Traceback" not in train.stderr, train.stderr
    assert "standard output failed (No space left on device); going on without it" in train.stderr
    assert (tmp_path / "run" / "ckpt" / "ckpt-4.index").exists()


def test_sample_into_a_pipe_closed_early_ends_quietly(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={trained_run}",
                             "--num_chars=20000", "--stream"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first character
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and err == "", err[-2000:]


def test_an_output_that_cannot_show_the_runs_characters_is_refused_before_sampling(tmp_path):
    """PYTHONIOENCODING=ascii and a run of Japanese text: sample refuses in one line (before
    TensorFlow); a training run shows its samples escaped, and trains on."""
    text = tmp_path / "jp.txt"
    text.write_text("東京は日本の首都です。大阪は西にあります。\n" * 60, encoding="utf-8")
    run = tmp_path / "run"
    train = run_cli("train", f"--data={text}", f"--run_dir={run}", "--max_steps=4", "--sample_every=2",
                    "--sample_chars=20", *TINY_FLAGS, env={"PYTHONIOENCODING": "ascii"})
    assert train.returncode == 0 and "Traceback" not in train.stderr, train.stderr
    assert "--- sample at step 2 ---" in train.stdout and "\\u" in train.stdout
    sample = run_cli("sample", f"--run_dir={run}", "--num_chars=20", env={"PYTHONIOENCODING": "ascii"})
    assert_one_line_error(sample, "standard output's encoding, ascii, cannot show")
    assert "PYTHONIOENCODING=utf-8" in sample.stderr


def test_an_integer_beyond_its_type_is_refused_not_wrapped(trained_run, small_text, tmp_path):
    """--top_k becomes an int32: 4294967297 would wrap to 1 (greedy text without a word), 2**64
    raised a ValueError; every integer setting has its range checked."""
    for value in (4294967297, 2**64):
        proc = run_cli("sample", f"--run_dir={trained_run}", "--num_chars=5", f"--top_k={value}")
        assert_one_line_error(proc, f"top_k must be between 0 and 2147483647 (0 keeps every character), got {value}")
    proc = run_cli("train", f"--data={small_text}", f"--run_dir={tmp_path / 'run'}",
                   "--shuffle_buffer=18446744073709551616",
                   *TINY_FLAGS)
    assert_one_line_error(proc, "--shuffle_buffer must be at most 2147483647")
    assert not (tmp_path / "run").exists()


def test_closed_standard_streams_lose_no_result_silently(trained_run, tmp_path, small_text):
    """Standard output closed: a tool whose output is its result refuses in one line on
    standard error (exit 2), training trains on; standard error closed: training still
    trains (exit 0), and a refusal still exits 2."""
    for tool, args in (("sample", [f"--run_dir={trained_run}", "--num_chars=5"]),
                       ("eval", [f"--run_dir={trained_run}"])):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", f"charrnn.cli.{tool}",
                               *args], capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, "standard output is closed, so what this tool prints would be lost")
    train = [f"--data={small_text}", "--max_steps=2", *TINY_FLAGS]
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "charrnn.cli.train",
                           f"--run_dir={tmp_path / 'a'}", *train], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "standard output is closed; going on without it" in proc.stderr, proc.stderr
    assert (tmp_path / "a" / "ckpt" / "checkpoint").exists()
    # PATH without this installation's bin/ (a .venv not activated): the command it names runs as printed.
    bin_dir = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if os.path.abspath(p) != bin_dir)
    proc = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "charrnn.cli.train",
                           f"--run_dir={tmp_path / 'b'}", *train], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path}, cwd=tmp_path)
    assert proc.returncode == 0 and "Done at step 2" in proc.stdout, proc.stdout
    sample = shlex.split(proc.stdout.split("Sample with: ")[1])
    assert sample[0] == os.path.relpath(os.path.join(bin_dir, "charrnn-sample"), tmp_path) or \
        sample[0] == os.path.join(bin_dir, "charrnn-sample"), sample
    assert sample[1:] == [f"--run_dir={tmp_path / 'b'}"] and os.access(tmp_path / sample[0], os.X_OK)
    refused = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "charrnn.cli.train",
                              "--learning_rate=inf"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2

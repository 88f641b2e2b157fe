"""The library reports through the `charrnn` logger (charrnn.log): what the tools show, a
program can silence or redirect; and CHARRNN_TRACEBACK shows what a one-line error hides."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from charrnn.training.metrics import MetricsLog


def _damaged_metrics(tmp_path):
    """A metrics file with an unreadable line in the middle, which MetricsLog drops with a warning."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 4.0}\n{torn\n{"step": 2, "loss": 3.5}\n', encoding="utf-8")
    return path


def test_the_library_warns_through_the_charrnn_logger_as_the_console_shows_it(tmp_path, capsys):
    # The console handler the tools install (conftest installs it too): the line a user reads.
    MetricsLog(str(_damaged_metrics(tmp_path)), resumed_step=10).on_train_end({})
    assert capsys.readouterr().err == f"charrnn: warning: dropped 1 unreadable line(s) of {tmp_path}/metrics.jsonl\n"

    # A program's own handler gets the record, with its level and logger name.
    logger = logging.getLogger("charrnn")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        MetricsLog(str(_damaged_metrics(tmp_path)), resumed_step=10).on_train_end({})
    finally:
        logger.removeHandler(handler)
    assert [(r.name, r.levelname, r.getMessage()) for r in records] == [
        ("charrnn", "WARNING", f"dropped 1 unreadable line(s) of {tmp_path}/metrics.jsonl")]
    capsys.readouterr()

    # ... and a program that silences the logger sees nothing on stderr.
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        MetricsLog(str(_damaged_metrics(tmp_path)), resumed_step=10).on_train_end({})
    finally:
        logger.setLevel(level)
    assert capsys.readouterr().err == ""


def test_the_console_prefixes_each_level_and_keeps_a_leading_newline(capsys):
    logger = logging.getLogger("charrnn")
    logger.info("downloading x")
    logger.warning("cannot check x")
    logger.info("\nSIGINT received")
    assert capsys.readouterr().err == ("charrnn: downloading x\ncharrnn: warning: cannot check x\n"
                                       "\ncharrnn: SIGINT received\n")


def test_charrnn_traceback_shows_the_cause_chain_a_one_line_error_hides(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"data": ', encoding="utf-8")  # torn: a JSON error under the refusal
    (run / "vocab.json").write_text('["a", "b"]', encoding="utf-8")
    tool = [sys.executable, "-m", "charrnn.cli.sample", f"--run_dir={run}"]
    plain = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    shown = subprocess.run(tool, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CHARRNN_TRACEBACK": "1"})
    assert shown.returncode == 2
    # The JSON decoder's error (raised `from None` under the refusal) and the refusal's own
    # traceback, then the same one line last.
    assert "json.decoder.JSONDecodeError: Expecting value" in shown.stderr
    assert "charrnn.errors.CharRNNError: " in shown.stderr
    assert shown.stderr.splitlines()[-1] == plain.stderr.strip()

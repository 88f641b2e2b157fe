"""The README and docs/ say what the code does: their commands run as written."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from charrnn import TrainConfig
from conftest import REPO, tensorflow_lines

# Appended to the README's training command (absl: the last value of a flag wins), so that
# the quick start runs in seconds. seq_length 100: whole chunks of the fused LSTM's backward
# pass, where Grappler used to fail with errors on the console.
TINY = ["--max_steps=3", "--embedding_dim=8", "--rnn_units=16", "--batch_size=4", "--seq_length=100",
        "--device=/CPU:0"]


def _quick_start() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Train, sample, evaluate, export", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_readme_quick_start_runs_as_written(corpus_cache, tmp_path):
    commands = _quick_start()
    assert [c[0] for c in commands] == ["charrnn-train", "charrnn-sample", "charrnn-eval", "charrnn-export"]
    scripts = Path(sys.executable).parent
    outputs = []
    for command in commands:
        args = command[1:] + (TINY if command[0] == "charrnn-train" else [])
        proc = subprocess.run([str(scripts / command[0]), *args], cwd=tmp_path, capture_output=True, text=True,
                              env=dict(os.environ), timeout=300)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        assert tensorflow_lines(proc.stderr) == [], proc.stderr  # the tools show charrnn's lines only
        outputs.append(proc.stdout)
    assert "Done at step 3" in outputs[0] and "logits (Dense)" in outputs[0] and "Total" in outputs[0]
    assert outputs[1].startswith("ROMEO: ")
    assert re.search(r"loss \d+\.\d+ nats/char", outputs[2])
    assert (tmp_path / "exports" / "shakespeare" / "1" / "saved_model.pb").exists()


def test_every_training_flag_is_documented():
    training = (REPO / "docs" / "training.md").read_text()
    assert [f.name for f in dataclasses.fields(TrainConfig) if f"`--{f.name}`" not in training] == []


def test_every_link_of_readme_and_docs_leads_somewhere():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
        for target in re.findall(r"\]\(([^)#]+)\)", prose):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_python_example_runs_as_written(corpus_cache, tmp_path, monkeypatch, capsys):
    """The "In Python" example, executed as written with a smaller model and fewer steps: it
    prints what charrnn-train prints, then the best loss and the sample."""
    import charrnn

    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## In Python", 1)[1], re.S).group(1)
    real = charrnn.TrainConfig.preset
    small = dict(embedding_dim=8, rnn_units=16, batch_size=4, seq_length=20, max_steps=20, eval_every=10,
                 val_fraction=0.01, device="/CPU:0")
    monkeypatch.setattr(charrnn.TrainConfig, "preset", staticmethod(lambda name, **kw: real(name, **kw, **small)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("Corpus tinyshakespeare: 1,115,394 characters (1 file), 65 distinct;"), lines[0]
    assert "logits (Dense)" in out and re.search(r"^epoch 1/1 step 20 loss \d", out, re.M), out
    best = re.search(r"^best validation loss (\d+\.\d{3}) nats/char$", out, re.M)
    assert best and 0 < float(best.group(1)) < 5, out
    assert out.split(best.group(0), 1)[1].lstrip("\n").startswith("ROMEO: "), out
    assert (tmp_path / "runs" / "mine" / "ckpt" / "checkpoint").exists()


def test_the_readme_callback_example_runs(corpus_cache, tmp_path, monkeypatch, capsys):
    """The "Watch a run" example, executed as written with a smaller model and fewer steps."""
    import charrnn

    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## Watch a run", 1)[1], re.S).group(1)
    real = charrnn.TrainConfig
    monkeypatch.setattr(charrnn, "TrainConfig", lambda **kw: real(**{**kw, "embedding_dim": 8, "rnn_units": 16,
                                                                       "batch_size": 4, "seq_length": 20,
                                                                       "max_steps": 20, "eval_every": 10,
                                                                       "val_fraction": 0.002, "device": "/CPU:0"}))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 10", "step 20"], lines
    assert all(re.fullmatch(r"step \d+: \d+\.\d{3} bits/char", line) for line in lines)
    assert (tmp_path / "runs" / "watch" / "ckpt" / "checkpoint").exists()


def test_the_readmes_table_names_every_module():
    section = (REPO / "README.md").read_text().split("## How the code is organised", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(?:charrnn/)?(\w+\.py|cli/)`", section))
    modules = {p.name for p in (REPO / "charrnn").glob("*.py") if p.name != "__init__.py"} | {"cli/"}
    assert modules - named == set()
    assert named - modules <= {p.name for p in (REPO / "charrnn" / "cli").glob("*.py")}  # no module that is gone

"""The README and docs/ say what the code does: their commands run as written."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from charrnn import TrainConfig
from conftest import REPO, shakespeare, tensorflow_lines

# Appended to every tool's command line (charrnn.cli.tool: $CHARRNN_EXTRA_FLAGS; each tool
# takes the ones it defines), so that the README's and docs' commands run in seconds.
# seq_length 100: whole chunks of the fused LSTM's backward pass, where Grappler used to
# fail with errors on the console.
TINY = ("--max_steps=3 --embedding_dim=8 --rnn_units=16 --batch_size=4 --seq_length=100 --device=/CPU:0 "
        "--num_chars=40 --eval_every=2 --checkpoint_every=2")
PAGES = ["README.md", "docs/training.md", "docs/sampling.md", "docs/export.md", "docs/distributed.md",
         "docs/faults.md", "docs/run-directory.md", "docs/benchmarks.md", "docs/api.md"]
# Commands a test cannot run, and why: each is named here, so a new command runs by default.
NOT_RUN = {
    "pip install .": "CI installs the project itself",
    "export TF_CONFIG=": "a cluster of hosts",
    "charrnn-train --strategy=multi_worker": "a cluster of hosts",
    "docker run": "a TensorFlow Serving container",
    "curl ": "a TensorFlow Serving container",
    "python -m http.server": "a server that runs until stopped (tests/test_web.py serves the web export)",
}


def _shell_commands() -> list[tuple[str, str]]:
    """(page, command) of every shell block of the README and docs/, in reading order,
    continuation lines joined."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", (REPO / page).read_text(), re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            text = ""
            for line in joined.splitlines():
                text = f"{text}\n{line}" if text else line
                try:
                    words = shlex.split(text, comments=True)
                except ValueError:  # a quote that spans lines: go on
                    continue
                if words:
                    commands.append((page, text.strip()))
                text = ""
    return commands


def test_the_readme_and_docs_commands_run_in_sequence_as_written(corpus_cache, tmp_path):
    """A reader's session: every shell command of the README, then of each docs/ page, run
    in one directory as written (with the reader's own texts, other.txt and my_letters/, in
    place), tiny through $CHARRNN_EXTRA_FLAGS. Each exits 0 and shows no TensorFlow line."""
    commands = _shell_commands()
    assert commands[:5] == [("README.md", "pip install ."),
                            *(("README.md", c) for c in [
                                "charrnn-train --preset=cpu_small --run_dir=runs/shakespeare",
                                'charrnn-sample --run_dir=runs/shakespeare --prime="ROMEO: " --num_chars=300 --seed=1',
                                "charrnn-eval --run_dir=runs/shakespeare --split=val",
                                "charrnn-export --run_dir=runs/shakespeare --export_dir=exports/shakespeare/1"])]
    (tmp_path / "other.txt").write_text(shakespeare(3000))
    (tmp_path / "my_letters").mkdir()
    (tmp_path / "my_letters" / "one.txt").write_text(shakespeare(5000)[::-1])
    (tmp_path / "docs").symlink_to(REPO / "docs")  # docs/examples/... as from a clone
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CHARRNN_EXTRA_FLAGS": TINY,
           # The web export's runtime from the npm mirror tests/web_setup.sh lays out, not the network.
           "CHARRNN_NPM_REGISTRY": (REPO / ".cache" / "web" / "registry").as_uri()}
    outputs, ran = {}, 0
    for page, command in commands:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, f"{page}: {command}: {proc.stderr[-2000:]}"
        assert tensorflow_lines(proc.stderr) == [], proc.stderr  # the tools show charrnn's lines only
        outputs[command] = proc.stdout
        ran += 1
    assert ran >= 11
    train, sample, evaluate = (outputs[c] for _, c in commands[1:4])
    assert "Done at step 3" in train and "logits (Dense)" in train and "Total" in train
    assert sample.startswith("ROMEO: ")
    assert re.search(r"loss \d+\.\d+ nats/char", evaluate)
    assert (tmp_path / "exports" / "shakespeare" / "1" / "saved_model.pb").exists()
    assert json.loads((tmp_path / "runs" / "letters" / "config.json").read_text())["origin"]["run"] == "runs/big"


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


def _readme_rows() -> dict[str, str]:
    """The README's layout table: each folder it names (`charrnn/text/`; `charrnn/*.py` for
    the package's own modules) -> what its row says it owns."""
    section = (REPO / "README.md").read_text().split("## How the code is organised", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `charrnn/([\w/]*?)(?:\*\.py)?` \| (.*) \|$", section, re.M))


def test_the_readmes_table_names_every_module():
    """Every module is named in the row of its folder, and every folder of the package has a row."""
    rows = _readme_rows()
    modules = [p.relative_to(REPO / "charrnn") for p in (REPO / "charrnn").rglob("*.py")
               if p.name != "__init__.py" and p.parent.name != "cli"]
    unnamed = [str(m) for m in modules if f"`{m.name}`" not in rows.get(f"{m.parent}/".removeprefix("./"), "")]
    assert unnamed == []
    folders = {f"{p.relative_to(REPO / 'charrnn')}/" for p in (REPO / "charrnn").iterdir()
               if (p / "__init__.py").exists()}
    assert set(rows) - {""} == folders


def _defined(path: Path) -> dict[str, set[str]]:
    """The names a module defines at its top level (imports included), each with the members
    of a class or function: methods, nested definitions, attributes set on `self`."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            names[node.name] |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                                 and isinstance(n.value, ast.Name) and n.value.id == "self"}
            names[node.name] |= {t.id for n in node.body if isinstance(n, ast.AnnAssign) for t in [n.target]
                                 if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in [node.target] if isinstance(node, ast.AnnAssign) else node.targets:
                names.update({n.id: set() for n in ast.walk(target) if isinstance(n, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(a.asname or a.name).split(".")[0]: set() for a in node.names})
    return names


def test_every_name_the_docs_and_docstrings_give_exists():
    """`charrnn.<module>.<name>[.<member>]` anywhere in the package, the README or docs/ names
    something defined there; a call a docstring shows (`name(...)`) is defined in the package;
    what a row of the README's layout table names in backticks is in that module."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in sorted((REPO / "charrnn").rglob("*.py"))}
    defined = {name: _defined(path) for name, path in modules.items()}
    exported = set(re.findall(r'"(\w+)": "[\w.]+"', (REPO / "charrnn" / "__init__.py").read_text()))
    members = set().union(*(set(d) | set().union(*d.values()) for d in defined.values()))
    wrong = []
    for page in [*modules.values(), REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for dotted in re.findall(r"\bcharrnn(?:\.[A-Za-z_]\w*)+", page.read_text()):
            parts = dotted.split(".")
            module = next(".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules)
            rest = parts[len(module.split(".")):]
            if module == "charrnn" and rest and rest[0] in exported:
                continue
            if rest and (rest[0] not in defined[module] or
                         len(rest) > 1 and defined[module][rest[0]] and rest[1] not in defined[module][rest[0]]):
                wrong.append(f"{page.name}: {dotted}")
        if page.suffix == ".py":
            for node in ast.walk(ast.parse(page.read_text())):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                    for call in re.findall(r"`([A-Za-z_]\w*)(?:\.\w+)*\(", ast.get_docstring(node) or ""):
                        if call not in members and call not in dir(builtins) and call not in ("trainer", "loaded"):
                            wrong.append(f"{page.name}: {call}(")
    for folder, owns in _readme_rows().items():
        source = "".join(p.read_text() for p in (REPO / "charrnn" / folder).glob("*.py"))
        wrong += [f"README.md: charrnn/{folder} owns {name}" for name in re.findall(r"`([A-Za-z_]\w*)(?:\(\))?`", owns)
                  if not re.search(rf"\b{name}\b", source)]
    assert wrong == []


def test_every_preset_is_spelled_out_in_the_training_docs():
    """docs/training.md's Presets table gives each preset's flags exactly as --help does."""
    from charrnn.cli.tool import preset_flags
    from charrnn.config import PRESETS

    training = (REPO / "docs" / "training.md").read_text()
    rows = dict(re.findall(r"^\| `--preset=(\w+)` \| [^|]+ \| `([^`]+)` \|$", training, re.M))
    assert rows == {name: preset_flags(name) for name in PRESETS}

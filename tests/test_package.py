"""The package as it would be published (a wheel with the code, its typing marker and
licence) and as it is laid out (subpackages by concern, imports only downward, the old
module paths kept)."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile

import charrnn
from conftest import REPO

# charrnn's layers, lowest first: a module imports only from its own layer and those below.
_LAYERS = ["charrnn", "charrnn.text", "charrnn.nn", "charrnn.run", "charrnn.generation", "charrnn.training",
           "charrnn.cli"]


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path):
    """Built from the tracked files alone (a build/ folder a checkout keeps would add what it
    held before): the package's modules, exactly, and its page's files."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("charrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.endswith(".py")) == sorted(n for n in tracked if n.startswith("charrnn/")
                                                                  and n.endswith(".py"))
    assert "charrnn/__init__.py" in names and "charrnn/py.typed" in names and "charrnn/training/trainer.py" in names
    assert "charrnn/generation/web/index.html" in names and "charrnn/generation/web/generator.js" in names  # the page
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    for requirement in ("tensorflow", "keras", "numpy", "absl-py"):
        assert f"Requires-Dist: {requirement}" in metadata
    assert "Classifier: Typing :: Typed" in metadata


def _layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return _LAYERS.index(package) if package in _LAYERS else 0


def test_every_import_inside_the_package_runs_down_its_layers():
    """Each subpackage imports only from itself and the layers listed before it (charrnn's
    docstring): no module of charrnn.text reads the model, none of charrnn.run a trainer.
    The package's face, charrnn/__init__.py, hands on names of every layer."""
    upward = []
    for path in sorted((REPO / "charrnn").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module == "charrnn":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charrnn"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "charrnn"]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("charrnn")]
            else:
                continue
            upward += [f"{module} -> {t}" for t in targets if _layer(t) > _layer(module)]
    assert upward == []


def test_each_subpackage_says_its_job_and_imports_nothing_itself():
    """Importing a subpackage costs nothing: charrnn.training.loop stays free of TensorFlow."""
    for name in _LAYERS[1:]:
        package = importlib.import_module(name)
        assert package.__doc__ and len(package.__doc__) > 80, name
        assert [line for line in (REPO / name.replace(".", "/") / "__init__.py").read_text().splitlines()
                if line.startswith(("import ", "from "))] == [], name


def test_a_moved_module_keeps_its_old_import_path():
    for name, package in charrnn._MOVED.items():
        module = importlib.import_module(f"charrnn.{package}.{name}")
        assert importlib.import_module(f"charrnn.{name}") is module, name
        assert getattr(charrnn, name) is module
        assert module.__spec__.name == module.__name__ == f"charrnn.{package}.{name}"  # importlib.reload works
    from charrnn.sampler import Sampler  # as code written before the move does
    from charrnn.trainer import Trainer
    assert Sampler is charrnn.Sampler and Trainer is charrnn.Trainer

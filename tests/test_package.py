"""The package as it would be published: a wheel with the code, its typing marker and licence."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_holds_the_package_and_nothing_else(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("charrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "charrnn/__init__.py" in names and "charrnn/py.typed" in names and "charrnn/trainer.py" in names
    assert "charrnn/web/index.html" in names and "charrnn/web/generator.js" in names  # the web export's page
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    for requirement in ("tensorflow", "keras", "numpy", "absl-py"):
        assert f"Requires-Dist: {requirement}" in metadata
    assert "Classifier: Typing :: Typed" in metadata

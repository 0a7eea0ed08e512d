"""The wheel installs kernels/ as fusedrnn.kernels, with its tuning tables, and nothing as a
top-level `kernels`."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "fusedrnn", "kernels"]  # what the build reads


def test_wheel_maps_kernels_into_the_package(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools (in the test extra)")
    # Built from a copy, so that a table can be added without touching the checkout: tables
    # are package data, which a wheel leaves out unless pyproject.toml lists it.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    tuned = src / "kernels" / "tuned"
    tuned.mkdir(exist_ok=True)
    (tuned / "synthetic-gpu.json").write_text('{"gpu": "Synthetic GPU", "dispatch": [], "configs": []}')
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, src],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("fusedrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("recurrence", "cell_math", "cells", "planner", "launch", "barrier", "aot"):
        assert f"fusedrnn/kernels/{module}.py" in names
    assert "fusedrnn/kernels/lstm_cell.py" in names
    assert "fusedrnn/kernels/reference.py" in names
    assert "fusedrnn/kernels/tuning.py" in names
    tables = {f"fusedrnn/kernels/tuned/{p.name}" for p in tuned.glob("*.json")}
    assert "fusedrnn/kernels/tuned/synthetic-gpu.json" in tables and tables <= set(names)
    assert not [n for n in names if n.startswith("kernels/")]


def test_installed_package_finds_its_kernels():
    import fusedrnn.kernels.recurrence
    import fusedrnn.kernels.reference

    assert Path(fusedrnn.kernels.reference.__file__).parent.name == "kernels"

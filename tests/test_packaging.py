"""The wheel installs kernels/ as fusedrnn.kernels, and nothing as a top-level `kernels`."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_kernels_into_the_package(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools (in the test extra)")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("fusedrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fusedrnn/kernels/lstm.py" in names
    assert "fusedrnn/kernels/lstm_cell.py" in names
    assert "fusedrnn/kernels/reference.py" in names
    assert not [n for n in names if n.startswith("kernels/")]


def test_installed_package_finds_its_kernels():
    import fusedrnn.kernels.lstm
    import fusedrnn.kernels.reference

    assert Path(fusedrnn.kernels.reference.__file__).parent.name == "kernels"

"""bench/bench_cpu.py's peak-memory measurement (``--cpu-memory``), on calls of known size."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_cpu_module", ROOT / "bench" / "bench_cpu.py")
bench_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cpu)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory reads /proc (Linux)")


def test_peak_memory_sees_what_a_call_allocates_and_frees():
    bench_cpu.fix_mmap_threshold()
    mib = 2**20

    def allocate(size_mib):
        def call():
            x = torch.empty(size_mib * mib, dtype=torch.uint8)
            x.fill_(1)  # touched: resident
            del x

        return call

    assert bench_cpu.peak_memory_mib(lambda: None) < 2
    for size in (32, 96):
        measured = [bench_cpu.peak_memory_mib(allocate(size)) for _ in range(2)]  # freed in between: each sees it
        assert all(size - 1 <= m <= size + 4 for m in measured), (size, measured)

"""Options of the benchmark suite (bench_lstm.py's docstring describes them)."""

import argparse
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The kernels run on CPU tensors only in the interpreter; set before they are imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).parent


def _part(value):
    """'K/N' with 1 <= K <= N -> (K, N)."""
    try:
        k, n = map(int, value.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {value!r}")
    return k, n


def pytest_addoption(parser):
    group = parser.getgroup("fusedrnn benchmarks")
    group.addoption(
        "--bench-grid", choices=["ci", "quick", "full", "proj", "rnn", "gru", "smoke"], default="quick" if torch.cuda.is_available() else "ci",
        help="which shapes, dtypes and providers (default: quick with CUDA, ci without)",
    )  # fmt: skip
    group.addoption("--bench-part", type=_part, metavar="K/N", help="run the K-th of N slices of the cases")
    group.addoption("--cpu-grid", choices=["ci", "measured", "long", "full"], default="ci",
                    help="bench_cpu.py's shapes (default: ci, untimed in the suite)")  # fmt: skip
    group.addoption("--cpu-cell", choices=["lstm", "rnn_tanh", "rnn_relu", "gru"], default=None,
                    help="bench_cpu.py's cell (default: every cell in the ci grid, the LSTM in the others)")  # fmt: skip
    group.addoption("--cpu-threads", type=int, default=1, help="torch.set_num_threads for bench_cpu.py (default 1)")
    group.addoption("--cpu-memory", action="store_true",
                    help="bench_cpu.py: also measure each call's peak resident memory (Linux, glibc)")  # fmt: skip
    group.addoption(
        "--bench-tf32", choices=["on", "off"], default=None,
        help="set torch.backends.cudnn.allow_tf32 and cuda.matmul.allow_tf32 (default: torch's defaults)",
    )  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """--bench-part: deal the cases (all parameters but the provider) round-robin over N parts,
    so that every provider of a case lands in the same part and the big shapes spread out."""
    part = config.getoption("bench_part")
    if part is None:
        return
    k, n = part
    case_index, keep, drop = {}, [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or BENCH_DIR not in item.path.parents:  # leave tests/ alone
            keep.append(item)
            continue
        case = (item.path, item.originalname, *(v for name, v in callspec.params.items() if name != "provider"))
        index = case_index.setdefault(case, len(case_index))
        (keep if index % n == k - 1 else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(autouse=True)
def tf32(request):
    """--bench-tf32 for the duration of a benchmark, restored after it."""
    setting = request.config.getoption("bench_tf32")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if setting is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = setting == "on"
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

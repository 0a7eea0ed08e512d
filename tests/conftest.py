"""Shared fixtures. Without CUDA the Triton kernels run under the interpreter on CPU."""

import os

import torch

if not torch.cuda.is_available():
    # Read when @triton.jit runs, i.e. when fusedrnn.kernels.recurrence is first imported: set it
    # before anything imports the kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from helpers import TEST_STRATEGIES  # noqa: E402

# Every @triton.jit module now, while TRITON_INTERPRET is what this process started with: a
# kernel module first imported inside a test that set it (`check`/`trace --device cpu` do,
# in-process) would stay interpreted for every later test, and on a CUDA machine the mix of
# interpreted kernels and compiled triton.language helpers failed every kernel launch
# ("Cannot call @triton.jit'd outside of the scope of a kernel", H200, 2026-12-04).
import fusedrnn.cell  # noqa: E402, F401
from fusedrnn.kernels import _helpers, lstm_cell, recurrence  # noqa: E402, F401


@pytest.fixture(autouse=True)
def triton_interpret_unchanged():
    """TRITON_INTERPRET as it was before the test (see the imports above)."""
    before = os.environ.get("TRITON_INTERPRET")
    yield
    if before is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = before


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element a kernel forgets to write fails."""
    monkeypatch.setattr(_helpers, "POISON_OUTPUTS", True)


@pytest.fixture(autouse=True)
def barrier_timeouts_raise_on_the_host(monkeypatch):
    """A persistent launch whose barrier times out raises a RuntimeError after about a second,
    instead of a device-side assert that would end the CUDA context of every later test in
    the process (kernels/barrier.py BARRIER_ERROR_CHECK)."""
    from fusedrnn.kernels import barrier

    monkeypatch.setattr(barrier, "BARRIER_ERROR_CHECK", "host")
    monkeypatch.setattr(barrier, "BARRIER_MAX_SPINS", 1 << 20)


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 comparisons are against float64 at 1e-5: no TF32 unless a test asks for it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(params=TEST_STRATEGIES)
def strategy(request):
    """Every launch strategy of the recurrence kernels, forced with launch_strategy, within
    planner limits lowered for small test shapes (kernels/planner.py override_limits).

    'per-step' shrinks the blocks so that small test shapes split H over several programs,
    run one launch per timestep, and chunk K. 'persistent' runs every step in one launch
    through the grid-barrier code, with batch blocks of 16 rows (B=17 spans two, each with its
    own barrier counter); its forward and backward hold their W_hh slices on chip (W_RESIDENT) in every dtype,
    'persistent-streamed' streams it with K chunked. Under the interpreter a persistent grid
    has one program per batch block (a barrier over more would wait for a program that runs
    later); on a GPU the unit blocks are the smallest, so several programs meet at each
    barrier. 'per-step' and 'persistent-streamed' split the backward's dh loop over K, in 2
    and 3 slices (dh_split_override), on any device."""
    from fusedrnn.kernels import planner

    name = request.param
    limits = {}
    if name == "per-step":
        limits.update(per_step_block_units=16, max_block_k=16)
    if name in ("per-step", "persistent-streamed"):
        # The backward's dh loop over K = 4H split into K slices, partial sums over 32 units
        # (wider than per-step's 16-unit dh blocks); unsplit it runs in one-launch.
        limits.update(dh_split_override=2 if name == "per-step" else 3, dh_split_block_p=32)
    if name.startswith("persistent"):
        held = () if name == "persistent-streamed" else (torch.float32, torch.float16, torch.bfloat16)
        # resident_alignment=1: odd test sizes hold their weights too
        limits.update(persistent_max_block_b=16, max_block_k=16, resident_weight_dtypes=held, resident_alignment=1)
    with planner.override_limits(**limits), planner.launch_strategy(name.removesuffix("-streamed")):
        yield name

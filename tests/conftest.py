"""Shared fixtures. Without CUDA the Triton kernels run under the interpreter on CPU."""

import os

import torch

if not torch.cuda.is_available():
    # Read when @triton.jit runs, i.e. when fusedrnn.kernels.lstm is first imported: set it
    # before anything imports the kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fusedrnn.kernels import _helpers  # noqa: E402


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element a kernel forgets to write fails."""
    monkeypatch.setattr(_helpers, "POISON_OUTPUTS", True)


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 comparisons are against float64 at 1e-5: no TF32 unless a test asks for it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(params=["one-launch", "per-step"])
def strategy(request, monkeypatch):
    """Both launch strategies of the kernels. 'per-step' shrinks the blocks so that small test
    shapes split H over several programs, run one launch per timestep, and chunk K."""
    if request.param == "per-step":
        from fusedrnn.kernels import lstm as lstm_kernels

        monkeypatch.setattr(lstm_kernels, "ONE_LAUNCH_MAX_H", 0)
        monkeypatch.setattr(lstm_kernels, "PER_STEP_BLOCK_H", 16)
        monkeypatch.setattr(lstm_kernels, "MAX_BLOCK_K", 16)
    return request.param

"""Builders shared by the test files: random LSTM problems and the backward through all outputs."""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"  # where the kernels run: natively, or interpreted on CPU
# the launch strategies the `strategy` fixture (conftest.py) forces, each within test limits
TEST_STRATEGIES = ["one-launch", "per-step", "persistent", "persistent-streamed"]


def NEEDS_CUDA(test):
    """Skipped without CUDA (the cuDNN comparisons), and marked `cuda`: a GPU run that cannot
    finish the whole suite takes these first (bench/run_tests_sharded.sh)."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (cuDNN comparison)")(test))


def random_problem(T, B, I, H, *, dtype=torch.float64, device="cpu", bias=True, batch_first=False, seed=0):
    """Inputs and weights of one LSTM layer, float64 on CPU unless asked; weights in torch's
    init range so the gates are neither saturated nor linear."""
    g = torch.Generator().manual_seed(seed)
    k = H**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), generator=g, dtype=torch.float64)
    tensors = {
        "input": x,
        "h0": torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5,
        "c0": torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5,
        "weight_ih": uniform(4 * H, I),
        "weight_hh": uniform(4 * H, H),
    }
    if bias:
        tensors["bias_ih"] = uniform(4 * H)
        tensors["bias_hh"] = uniform(4 * H)
    return {n: t.to(device=device, dtype=dtype).requires_grad_() for n, t in tensors.items()}


def cast(tensors, dtype=None, device=None):
    """Leaf copies of a problem in another dtype/device."""
    return {n: t.detach().to(device=device, dtype=dtype).requires_grad_() for n, t in tensors.items()}


def random_cotangents(output, h_n, c_n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (output, h_n, c_n)]


def backward_all(outputs, cotangents):
    """sum <output, cotangent> over output, h_n and c_n, backpropagated."""
    loss = sum((o * d.to(o.device, o.dtype)).sum() for o, d in zip(outputs, cotangents))
    loss.backward()


def grads(tensors):
    return {n: t.grad for n, t in tensors.items()}


# The CUDA comparisons' precisions: true fp32, TF32, bf16, fp16.
CUDA_DTYPES = pytest.mark.parametrize(
    "dtype, tf32",
    [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False)],
    ids=["fp32", "fp32-tf32", "bf16", "fp16"],
)

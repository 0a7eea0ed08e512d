"""Throughput of fusedrnn.LSTM against cuDNN (torch.nn.LSTM), with pytest-benchmark.

On CUDA: `python -m pytest bench --benchmark-enable --benchmark-json=OUT.json`. Each row
records tokens/s, time per step, GPU, dtype and versions in `extra_info`. cuDNN and fusedrnn
run in the same process on the same weights; both follow torch.backends.cudnn.allow_tf32
for float32 (torch's default: on), which the rows record.

On CPU (CI) the same file runs once per case on a tiny shape, with benchmarking disabled
(pyproject's addopts), so that it cannot rot: the reference path, the Triton kernels under
the interpreter and torch.nn.LSTM.
"""

import pytest
import torch

import fusedrnn

HAS_CUDA = torch.cuda.is_available()

if HAS_CUDA:
    PROVIDERS = ["fusedrnn-triton", "cudnn"]
    SHAPES = [(512, B, H, H) for B in (16, 64) for H in (256, 1024)]  # (T, B, I, H)
    DTYPES = [torch.float32, torch.bfloat16]
else:
    PROVIDERS = ["fusedrnn-reference", "fusedrnn-triton", "torch"]
    SHAPES = [(4, 2, 8, 16)]
    DTYPES = [torch.float32]


def make_module(provider, I, H, dtype, device):
    torch.manual_seed(0)
    if provider in ("cudnn", "torch"):
        return torch.nn.LSTM(I, H, device=device, dtype=dtype)
    backend = provider.removeprefix("fusedrnn-")
    return fusedrnn.LSTM(I, H, backend=backend, device=device, dtype=dtype)


def sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_lstm_throughput(benchmark, provider, mode, shape, dtype):
    T, B, I, H = shape
    device = "cuda" if HAS_CUDA else "cpu"
    module = make_module(provider, I, H, dtype, device)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=mode == "train")

    def forward():
        with torch.no_grad():
            module(x)
        sync()

    def train():
        y, (h_n, c_n) = module(x)
        (y.float().sum() + h_n.float().sum() + c_n.float().sum()).backward()
        sync()

    step = forward if mode == "forward" else train
    step()  # compile and warm up outside the timing
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=10, warmup_rounds=2, iterations=1)

    info = benchmark.extra_info
    info.update(
        provider=provider, mode=mode, T=T, B=B, I=I, H=H, dtype=str(dtype),
        device=torch.cuda.get_device_name() if HAS_CUDA else "cpu",
        torch=torch.__version__, fusedrnn=fusedrnn.__version__,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
    )  # fmt: skip
    if HAS_CUDA:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    if benchmark.stats is not None:  # None when benchmarking is disabled
        mean = benchmark.stats.stats.mean
        info["tokens_per_s"] = T * B / mean
        info["us_per_step"] = mean / T * 1e6

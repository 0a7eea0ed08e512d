"""Padding never reaches a gradient: with lengths=, whatever lies past a row's length (NaN,
inf, 1e38) changes no output and no gradient, on every backend.

torch's pack -> LSTM -> pad never reads the padding. fusedrnn's kernels and reference run
the padded batch and mask each row's steps past its length; a gradient such as
dW_ih = dG^T X, where dG is zero at the padding but X is not, would be 0 * NaN there.
The result with a poisoned padding must equal, bit for bit, the one with zeros in it.
"""

import pytest
import torch
from helpers import DEVICE, NEEDS_CUDA

import fusedrnn
from fusedrnn.testing import module_forward_backward

T, B, I, H = 5, 3, 4, 6
LENGTHS = torch.tensor([5, 2, 3])  # a full row, unsorted
FILLS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "1e38": 1e38}
LAYERS = {
    "stacked-bidirectional": dict(num_layers=2, bidirectional=True),
    "projection-batch-first": dict(proj_size=4, batch_first=True),
}


def run(backend, layers, fill, device="cpu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    module = fusedrnn.LSTM(I, H, backend=backend, **LAYERS[layers]).to(device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g)
    x[torch.arange(T)[:, None] >= LENGTHS[None, :]] = fill
    if module.batch_first:
        x = x.transpose(0, 1).contiguous()
    states = module.num_layers * (2 if module.bidirectional else 1)
    hx = (torch.randn(states, B, module.proj_size or H, generator=g), torch.randn(states, B, H, generator=g))
    y, (h_n, c_n) = module(x.to(device, dtype), tuple(t.to(device, dtype) for t in hx), lengths=LENGTHS)
    cotangents = [torch.randn(t.shape, generator=g) for t in (y, h_n, c_n)]
    cast = lambda t: t.to(device, dtype)  # noqa: E731
    return module_forward_backward(module, cast(x), tuple(map(cast, hx)), cotangents, lengths=LENGTHS)


@pytest.mark.parametrize("fill", list(FILLS))
@pytest.mark.parametrize("layers", list(LAYERS))
@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_padding_changes_no_output_and_no_gradient(backend, layers, fill):
    device = DEVICE if backend == "triton" else "cpu"
    clean = run(backend, layers, 0.0, device)
    poisoned = run(backend, layers, FILLS[fill], device)
    assert poisoned.keys() == clean.keys()
    for name in clean:
        assert torch.isfinite(poisoned[name]).all(), f"{name}: not finite"
        assert torch.equal(poisoned[name], clean[name]), name


@NEEDS_CUDA
@pytest.mark.parametrize("fill", ["nan", "inf"])
def test_kernels_agree_with_cudnn_pack_lstm_pad_on_poisoned_padding(fill):
    """On CUDA: torch's pack -> cuDNN LSTM -> pad never reads the padding; the kernels, which
    run it masked, give the same outputs and gradients within fp32 rounding."""
    layers = LAYERS["stacked-bidirectional"]
    ours = run("triton", "stacked-bidirectional", FILLS[fill], "cuda")
    torch.manual_seed(0)  # run()'s parameters
    same = fusedrnn.LSTM(I, H, **layers)
    cudnn = torch.nn.LSTM(I, H, **layers)
    cudnn.load_state_dict(same.state_dict())
    cudnn.cuda()
    g = torch.Generator().manual_seed(1)  # the inputs and cotangents of run()
    x = torch.randn(T, B, I, generator=g)
    x[torch.arange(T)[:, None] >= LENGTHS[None, :]] = FILLS[fill]
    hx = [torch.randn(4, B, H, generator=g).cuda().requires_grad_() for _ in range(2)]
    x = x.cuda().requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    y, (h_n, c_n) = cudnn(packed, tuple(hx))
    y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)[0]
    cotangents = [torch.randn(t.shape, generator=g).cuda() for t in (y, h_n, c_n)]
    sum((o * d).sum() for o, d in zip((y, h_n, c_n), cotangents)).backward()
    theirs = {"output": y, "h_n": h_n, "c_n": c_n, "grad input": x.grad, "grad h0": hx[0].grad, "grad c0": hx[1].grad}
    theirs.update({f"grad {n}": p.grad for n, p in cudnn.named_parameters()})
    assert theirs.keys() == ours.keys()
    for name, tensor in ours.items():
        assert torch.isfinite(tensor).all(), name
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")

"""The one recurrence kernel body running the GRU (kernels/cell_math.py gru_update,
gru_grads), launched directly (kernels/recurrence.py), against ``gru_reference`` in float64.

With x = Gx (W_ih the 3H identity, b_hn the only bias) the reference's gradient of x is the
input side's gate gradient: the kernels' d_gates in the r and z slots and d_gx_n in the n
slot. The recurrent side's n slot is r * da_n, which dW_hh, db_hh and dh_0 see (checked
through dh_0 here, the rest in tests/test_rnn.py). Every strategy (the ``strategy`` fixture),
odd sizes (H = 1, H not a multiple of any block, B over two 16-row blocks), reverse and
lengths; every kernel output starts as NaN (conftest).
"""

import pytest
import torch
from helpers import DEVICE

from fusedrnn.kernels.cells import GRU
from fusedrnn.kernels.recurrence import recurrence_bwd, recurrence_fwd
from fusedrnn.kernels.reference import gru_reference
from fusedrnn.testing import assert_close, assert_no_worse_than

CASES = [(5, 3, 20), (4, 17, 37), (3, 2, 1), (1, 1, 16)]  # (T, B, H)


def problem(T, B, H, seed=0):
    """Gx (T, B, 3H), h0, W_hh (3H, H), b_hn and the cotangents of out and h_n, float64."""
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, 3 * H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
    w_hh = (torch.rand(3 * H, H, generator=g, dtype=torch.float64) * 2 - 1) * H**-0.5
    b_hn = torch.randn(H, generator=g, dtype=torch.float64) * 0.5
    d_out = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    d_hn = torch.randn(B, H, generator=g, dtype=torch.float64)
    return gx, h0, w_hh, b_hn, d_out, d_hn


def reference(gx, h0, w_hh, b_hn, d_out, d_hn, reverse, lengths):
    """out, h_n, the gradient of <out, d_out> + <h_n, d_hn> with respect to Gx, and to h0."""
    gx, h0 = gx.clone().requires_grad_(), h0.clone().requires_grad_()
    H = h0.shape[-1]
    eye = torch.eye(3 * H, dtype=gx.dtype)
    b_ih, b_hh = gx.new_zeros(3 * H), torch.cat([gx.new_zeros(2 * H), b_hn])
    out, h_n = gru_reference(gx, h0, eye, w_hh, b_ih, b_hh, reverse=reverse, lengths=lengths)
    ((out * d_out).sum() + (h_n * d_hn).sum()).backward()
    return out.detach(), h_n.detach(), gx.grad, h0.grad


def kernels(gx, h0, w_hh, b_hn, d_out, d_hn, reverse, lengths, dtype=torch.float32):
    """The same through the kernels: out, h_n, the input side's gate gradients and dh0."""
    gates, h0, w_hh, b_hn = (t.to(DEVICE, dtype).contiguous() for t in (gx, h0, w_hh, b_hn))
    lengths_dev = lengths.to(DEVICE) if lengths is not None else None
    out, c, m, hn = recurrence_fwd(GRU, gates, w_hh, h0, lengths=lengths_dev, reverse=reverse, b_hn=b_hn)
    assert c is None and m is None and hn.shape == out.shape
    T, B, H = out.shape
    last = torch.full((B,), 0 if reverse else T - 1) if lengths is None else (lengths - 1 if not reverse else 0 * lengths)
    rows = torch.arange(B, device=DEVICE)
    h_n = out[last.to(DEVICE), rows]
    d_gates, d_carry, d_h, d_gx_n = recurrence_bwd(
        GRU, gates, None, None, w_hh, d_out.to(DEVICE, dtype), d_hn.to(DEVICE, dtype), None, lengths=lengths_dev,
        reverse=reverse, hn=hn, out=out, h0=h0,
    )  # fmt: skip
    assert d_h is None and d_carry.dtype == torch.float32
    first = (lengths - 1 if reverse else 0 * lengths) if lengths is not None else torch.full((B,), T - 1 if reverse else 0)
    d_h0 = d_gates[first.to(DEVICE), rows].float() @ w_hh.float() + d_carry  # as the autograd Function adds them
    d_gx = torch.cat([d_gates[..., : 2 * H], d_gx_n], dim=-1)
    return out, h_n, d_gx, d_h0


@pytest.mark.parametrize("case", CASES, ids=["T{}-B{}-H{}".format(*c) for c in CASES])
@pytest.mark.parametrize("variant", ["plain", "reverse-lengths", "lengths"])
def test_gru_matches_the_reference(variant, case, strategy):
    T, B, H = case
    gx, h0, w_hh, b_hn, d_out, d_hn = problem(T, B, H)
    reverse = variant == "reverse-lengths"
    lengths = None if variant == "plain" else torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    expected = reference(gx, h0, w_hh, b_hn, d_out, d_hn, reverse, lengths)
    actual = kernels(gx, h0, w_hh, b_hn, d_out, d_hn, reverse, lengths)
    for name, a, e in zip(("out", "h_n", "d_gx", "d_h0"), actual, expected):
        assert_close(a.cpu().double(), e, rel=1e-5, name=name)


def test_the_two_sides_of_the_n_slot_differ_and_the_check_tells_them_apart():
    """The check can fail: dh_0 from the input side's n slot (da_n, where the recurrent side
    has r * da_n, the mix-up the split exists to prevent) is caught."""
    T, B, H = 4, 3, 20
    gx, h0, w_hh, b_hn, d_out, d_hn = problem(T, B, H)
    expected = reference(gx, h0, w_hh, b_hn, d_out, d_hn, False, None)[3]
    gates, h0_, w_hh_, b_hn_ = (t.to(DEVICE, torch.float32).contiguous() for t in (gx, h0, w_hh, b_hn))
    out, _, _, hn = recurrence_fwd(GRU, gates, w_hh_, h0_, b_hn=b_hn_)
    d_gates, d_carry, _, d_gx_n = recurrence_bwd(GRU, gates, None, None, w_hh_, d_out.to(DEVICE, torch.float32),
                                                 d_hn.to(DEVICE, torch.float32), None, hn=hn, out=out, h0=h0_)  # fmt: skip
    right = d_gates[0] @ w_hh_ + d_carry
    mixed = torch.cat([d_gates[0, :, : 2 * H], d_gx_n[0]], dim=-1) @ w_hh_ + d_carry
    assert_close(right.cpu().double(), expected, rel=1e-5, name="d_h0")
    with pytest.raises(AssertionError, match="d_h0"):
        assert_close(mixed.cpu().double(), expected, rel=1e-5, name="d_h0")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gru_in_16_bits(dtype):
    """16-bit inputs: ours no worse than twice the 16-bit reference's error, against float64."""
    T, B, H = 4, 17, 37
    gx, h0, w_hh, b_hn, d_out, d_hn = problem(T, B, H, seed=1)
    exact = reference(gx, h0, w_hh, b_hn, d_out, d_hn, False, None)
    low = reference(*(t.to(dtype) for t in (gx, h0, w_hh, b_hn, d_out, d_hn)), False, None)
    ours = kernels(gx, h0, w_hh, b_hn, d_out, d_hn, False, None, dtype=dtype)
    eps = torch.finfo(dtype).eps
    # Triton 3.6's interpreter truncates fp32 to bf16 (tests/test_rnn.py says more).
    unit_roundoff = eps if dtype == torch.bfloat16 and DEVICE == "cpu" else eps / 2
    for name, a, b, e in zip(("out", "h_n", "d_gx", "d_h0"), ours, low, exact):
        assert_no_worse_than({name: a.cpu().double()}, {name: b.double()}, {name: e}, atol=unit_roundoff,
                             cap=2 * eps, baseline_name=f"gru: reference in {dtype}")  # fmt: skip

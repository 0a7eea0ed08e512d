"""The one recurrence kernel body running the RNN's cells (kernels/cell_math.py rnn_tanh,
rnn_relu), launched directly (kernels/recurrence.py), against ``rnn_reference`` in float64.

The kernels compute h_t from Gx_t (the input projection) and return the gradient of each
step's pre-activation; with x = Gx (W_ih the identity, no bias) the reference's gradient of x
is that same gradient. Every strategy (the ``strategy`` fixture), odd sizes, reverse and
lengths; every kernel output starts as NaN (conftest).
"""

import pytest
import torch
from helpers import DEVICE

from fusedrnn.kernels.cells import RNN_RELU, RNN_TANH
from fusedrnn.kernels.recurrence import recurrence_bwd, recurrence_fwd
from fusedrnn.kernels.reference import rnn_reference
from fusedrnn.testing import assert_close, assert_no_worse_than

CELLS = {"rnn_tanh": (RNN_TANH, "tanh"), "rnn_relu": (RNN_RELU, "relu")}
# (T, B, H): B spanning two 16-row blocks, H not a multiple of any block, H = 1
CASES = [(5, 3, 20), (4, 17, 37), (3, 2, 1), (1, 1, 16)]


def problem(T, B, H, seed=0):
    """Gx, h0, W_hh and the cotangents of out and h_n, float64 on CPU."""
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
    w_hh = (torch.rand(H, H, generator=g, dtype=torch.float64) * 2 - 1) * H**-0.5
    d_out = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    d_hn = torch.randn(B, H, generator=g, dtype=torch.float64)
    return gx, h0, w_hh, d_out, d_hn


def reference(gx, h0, w_hh, d_out, d_hn, nonlinearity, reverse, lengths):
    """out, h_n and the gradient of <out, d_out> + <h_n, d_hn> with respect to Gx."""
    gx = gx.clone().requires_grad_()
    eye = torch.eye(gx.shape[-1], dtype=gx.dtype)
    out, h_n = rnn_reference(gx, h0, eye, w_hh, nonlinearity=nonlinearity, reverse=reverse, lengths=lengths)
    ((out * d_out).sum() + (h_n * d_hn).sum()).backward()
    return out.detach(), h_n.detach(), gx.grad


def kernels(cell, gx, h0, w_hh, d_out, d_hn, reverse, lengths, dtype=torch.float32):
    """The same through the kernels, in ``dtype``: out, h_n (each row's state after its last
    step) and d_gates."""
    gates, h0, w_hh = (t.to(DEVICE, dtype).contiguous() for t in (gx, h0, w_hh))
    lengths_dev = lengths.to(DEVICE) if lengths is not None else None
    out, c, m, _ = recurrence_fwd(cell, gates, w_hh, h0, lengths=lengths_dev, reverse=reverse)
    assert c is None and m is None  # no c state, no projection
    T, B = out.shape[:2]
    last = torch.full((B,), 0 if reverse else T - 1) if lengths is None else (lengths - 1 if not reverse else 0 * lengths)
    h_n = out[last.to(DEVICE), torch.arange(B, device=DEVICE)]
    d_gates, d_c0, d_h, _ = recurrence_bwd(cell, gates, None, None, w_hh, d_out.to(DEVICE, dtype), d_hn.to(DEVICE, dtype),
                                        None, lengths=lengths_dev, reverse=reverse)  # fmt: skip
    assert d_c0 is None and d_h is None
    return out, h_n, d_gates


@pytest.mark.parametrize("case", CASES, ids=["T{}-B{}-H{}".format(*c) for c in CASES])
@pytest.mark.parametrize("variant", ["plain", "reverse-lengths", "lengths"])
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_rnn_cells_match_the_reference(cell_name, variant, case, strategy):
    cell, nonlinearity = CELLS[cell_name]
    T, B, H = case
    gx, h0, w_hh, d_out, d_hn = problem(T, B, H)
    reverse = variant == "reverse-lengths"
    lengths = None if variant == "plain" else torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    expected = reference(gx, h0, w_hh, d_out, d_hn, nonlinearity, reverse, lengths)
    actual = kernels(cell, gx, h0, w_hh, d_out, d_hn, reverse, lengths)
    for name, a, e in zip(("out", "h_n", "d_gates"), actual, expected):
        assert_close(a.cpu().double(), e, rel=1e-5, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_rnn_cells_in_16_bits(dtype, strategy):
    """16-bit inputs: the reference in the same dtype (h_t rounded each step as the kernels
    store it) and ours, both against float64: ours no worse than twice the reference's error.
    (relu's gradient jumps where a pre-activation rounds across 0: the same in both.)"""
    T, B, H = 4, 17, 37
    for cell_name, (cell, nonlinearity) in CELLS.items():
        gx, h0, w_hh, d_out, d_hn = problem(T, B, H, seed=1)
        exact = reference(gx, h0, w_hh, d_out, d_hn, nonlinearity, False, None)
        low = reference(*(t.to(dtype) for t in (gx, h0, w_hh, d_out, d_hn)), nonlinearity, False, None)
        ours = kernels(cell, gx, h0, w_hh, d_out, d_hn, False, None, dtype=dtype)
        eps = torch.finfo(dtype).eps
        for name, a, b, e in zip(("out", "h_n", "d_gates"), ours, low, exact):
            # relu's d_gates: a pre-activation that rounds across 0 flips its gradient between
            # 0 and dh, in the reference too (errors of a few percent): bound by the reference
            # alone there. The fp32 test checks those gradients to 1e-5.
            cap = None if (cell_name, name) == ("rnn_relu", "d_gates") else 2 * eps
            assert_no_worse_than({name: a.cpu().double()}, {name: b.double()}, {name: e}, atol=eps / 2, cap=cap,
                                 baseline_name=f"{cell_name}: reference in {dtype}")  # fmt: skip


def nonfinite_pattern_matches(cell, nonlinearity, gx, h0, w_hh, dtype):
    """Our fp32 outputs against the reference's in ``dtype``: the same NaNs, the same infs,
    the finite rest close."""
    eye = torch.eye(gx.shape[-1], dtype=dtype)
    expected, _ = rnn_reference(gx.to(dtype), h0.to(dtype), eye, w_hh.to(dtype), nonlinearity=nonlinearity)
    out, _, _, _ = recurrence_fwd(cell, *(t.to(DEVICE, torch.float32).contiguous() for t in (gx, w_hh, h0)))
    out = out.cpu().to(dtype)
    assert torch.equal(torch.isnan(out), torch.isnan(expected)), nonlinearity
    assert torch.equal(torch.isinf(out) & (out > 0), torch.isinf(expected) & (expected > 0)), nonlinearity
    assert torch.equal(torch.isinf(out) & (out < 0), torch.isinf(expected) & (expected < 0)), nonlinearity
    finite = torch.isfinite(expected)
    assert_close(out[finite].double(), expected[finite].double(), rel=1e-5, name=nonlinearity)
    return expected


def test_inf_and_nan_propagate_as_in_torch():
    """An inf and a NaN in h0 reach every unit of their rows through W_hh (positive here, so
    inf never meets -inf): relu keeps inf, tanh saturates it to 1, NaN stays NaN in both."""
    T, B, H = 3, 2, 16
    gx, h0, w_hh, _, _ = problem(T, B, H)
    w_hh = w_hh.abs()
    h0[0, 0], h0[1, 0] = float("inf"), float("nan")
    for cell, nonlinearity in CELLS.values():
        expected = nonfinite_pattern_matches(cell, nonlinearity, gx, h0, w_hh, torch.float64)
        assert torch.isnan(expected[:, 1]).all()
        assert torch.isinf(expected[:, 0]).all() == (nonlinearity == "relu")


def test_relu_with_large_weights_overflows_as_torch_does():
    """relu is unbounded: with large weights h grows every step until fp32 overflows to inf,
    and where inf meets -inf through W_hh it turns NaN, which then fills the row. Ours and the
    fp32 reference sum in different orders, so a value at the edge of overflow may spill one
    step apart: the steps must agree to within one, the finite steps before to rounding."""
    T, B, H = 40, 3, 16
    gx, h0, w_hh, _, _ = problem(T, B, H, seed=2)
    w_hh = w_hh * 50  # h grows ~x4 a step: inf, then NaN, from step 31
    eye = torch.eye(H)
    expected, _ = rnn_reference(gx.float(), h0.float(), eye, w_hh.float(), nonlinearity="relu")
    out, _, _, _ = recurrence_fwd(RNN_RELU, *(t.to(DEVICE, torch.float32).contiguous() for t in (gx, w_hh, h0)))
    out = out.cpu()

    def first_step(t, where):
        return next(step for step in range(T) if where(t[step]).any())

    for where in (torch.isinf, torch.isnan):
        assert abs(first_step(out, where) - first_step(expected, where)) <= 1, where.__name__
    first = min(first_step(out, torch.isinf), first_step(expected, torch.isinf))
    # the steps before: the same values, to the rounding that a growth of ~x4 a step amplifies
    assert_close(out[:first].double(), expected[:first].double(), rel=1e-3, name="relu before overflow")
    for t in (out, expected):  # NaN propagates: a row once NaN stays NaN in every unit
        nan_rows = torch.isnan(t).all(dim=-1)
        assert nan_rows[-1].all() and (nan_rows[:-1] <= nan_rows[1:]).all()


def test_a_cell_without_c_refuses_one():
    gx, h0, w_hh, _, _ = problem(2, 1, 16)
    with pytest.raises(ValueError, match="rnn_tanh cell carries no c state"):
        recurrence_fwd(RNN_TANH, gx.float(), w_hh.float(), h0.float(), h0.float())
    with pytest.raises(ValueError, match="rnn_tanh cell has no projection"):
        recurrence_fwd(RNN_TANH, gx.float(), w_hh.float(), h0.float(), w_hr=w_hh.float())

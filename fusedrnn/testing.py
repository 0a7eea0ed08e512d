"""Error measures shared by the tests and ``python -m fusedrnn check``."""

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence


@dataclass
class ErrorStats:
    mean_abs: float  # mean |actual - expected|
    max_abs: float  # max |actual - expected|
    rel: float  # RMS-relative: ||actual - expected|| / ||expected||
    worst_index: tuple  # where max_abs occurs
    nan_mismatch: int  # elements NaN in one tensor and not in the other


def error_stats(actual: torch.Tensor, expected: torch.Tensor) -> ErrorStats:
    """Compare in float64. NaN where both are NaN counts as equal; anywhere else it counts
    in ``nan_mismatch`` and makes every other measure infinite."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    nan_mismatch = int((nan_a != nan_e).sum())
    if nan_mismatch:
        where = tuple(torch.nonzero(nan_a != nan_e)[0].tolist())
        return ErrorStats(float("inf"), float("inf"), float("inf"), where, nan_mismatch)
    both = nan_a & nan_e
    a, e = a.masked_fill(both, 0.0), e.masked_fill(both, 0.0)
    # Equal infinities are equal; inf - inf would be NaN.
    diff = torch.where(a == e, torch.zeros_like(a), (a - e).abs())
    if diff.numel() == 0:
        return ErrorStats(0.0, 0.0, 0.0, (), 0)
    flat_worst = int(torch.argmax(torch.nan_to_num(diff, nan=float("inf"))))
    worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_worst), diff.shape))
    denom = float(torch.linalg.vector_norm(e.masked_fill(~torch.isfinite(e), 0.0)))
    num = float(torch.linalg.vector_norm(diff))
    rel = num / denom if denom > 0 else (0.0 if num == 0 else float("inf"))
    return ErrorStats(float(diff.mean()), float(diff.max()), rel, worst, 0)


def module_forward_backward(module, x, hx, cotangents, **forward_kwargs):
    """Run an LSTM or RNN module on leaf copies of x (a tensor or a PackedSequence) and hx (an
    LSTM's ``(h0, c0)``, an RNN's ``h0``, or None), backpropagate the cotangents of output (of
    its ``.data`` when packed), h_n (and c_n), and return {name: tensor}: the outputs and the
    gradients of the input, h0 (and c0) when given and every parameter, by parameter name."""
    packed = isinstance(x, PackedSequence)
    leaf = (x.data if packed else x).detach().clone().requires_grad_()
    x = x._replace(data=leaf) if packed else leaf
    if isinstance(hx, torch.Tensor):
        hx = hx.detach().clone().requires_grad_()
    elif hx is not None:
        hx = tuple(t.detach().clone().requires_grad_() for t in hx)
    module.zero_grad()
    y, final = module(x, hx, **forward_kwargs)
    y = y.data if packed else y
    one_state = isinstance(final, torch.Tensor)  # an RNN's h_n, not an LSTM's (h_n, c_n)
    finals = (final,) if one_state else tuple(final)
    loss = sum((o * d.to(o.device, o.dtype)).sum() for o, d in zip((y, *finals), cotangents))
    loss.backward()
    names = ("h_n",) if one_state else ("h_n", "c_n")
    result = {"output": y, **dict(zip(names, finals)), "grad input": leaf.grad}
    if hx is not None:
        result.update({"grad h0": hx.grad} if one_state else {"grad h0": hx[0].grad, "grad c0": hx[1].grad})
    result.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return result


def assert_close(actual, expected, *, rel, name="tensor"):
    """Assert RMS-relative error <= rel and the same NaN pattern; the message locates the worst element."""
    s = error_stats(actual, expected)
    if s.nan_mismatch:
        raise AssertionError(f"{name}: {s.nan_mismatch} NaN mismatches, first at {s.worst_index}")
    if not s.rel <= rel:
        a = actual.detach().flatten()[_flat_index(s.worst_index, actual.shape)]
        e = expected.detach().flatten()[_flat_index(s.worst_index, expected.shape)]
        raise AssertionError(
            f"{name}: relative error {s.rel:.3e} > {rel:.1e} "
            f"(mean abs {s.mean_abs:.3e}, max abs {s.max_abs:.3e} at {s.worst_index}: {float(a)} vs {float(e)})"
        )
    return s


def _flat_index(index, shape):
    flat = 0
    for i, n in zip(index, shape):
        flat = flat * n + i
    return flat


def no_worse_than_bound(baseline_err, *, atol, cap=None):
    """The three-way bound on err(actual vs exact), given err(baseline vs exact): twice the
    baseline's plus atol, and at most cap when given (so that a poor baseline cannot excuse a
    wrong gate). The tests and bench/gpu_smoke.py judge by it."""
    bound = 2 * baseline_err + atol
    return bound if cap is None else min(bound, cap)


def assert_no_worse_than(actual, baseline, exact, *, atol, cap=None, baseline_name="baseline"):
    """``no_worse_than_bound``, tensor by tensor over dicts keyed by name."""
    for name in exact:
        err = error_stats(actual[name], exact[name]).rel
        base = error_stats(baseline[name], exact[name]).rel
        bound = no_worse_than_bound(base, atol=atol, cap=cap)
        assert err <= bound, f"{name}: ours {err:.2e} > {bound:.2e} ({baseline_name} {base:.2e})"

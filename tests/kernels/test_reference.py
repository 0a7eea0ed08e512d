"""The reference path is the oracle of every other test: check it against torch.nn.LSTM."""

import pytest
import torch
from helpers import backward_all, cast, random_cotangents, random_problem

from fusedrnn.kernels.reference import lstm_reference
from fusedrnn.testing import assert_close

CASES = [(5, 3, 7, 20), (1, 1, 5, 37), (4, 17, 5, 37), (3, 2, 1, 1)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", [pytest.param(c, id="T{}-B{}-I{}-H{}".format(*c)) for c in CASES])
def test_reference_matches_torch_lstm_float64(case, bias):
    T, B, I, H = case
    ours = random_problem(T, B, I, H, bias=bias)
    theirs = cast(ours)
    lstm = torch.nn.LSTM(I, H, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if bias else 2]:
            getattr(lstm, name + "_l0").copy_(theirs[name])

    out = lstm_reference(ours["input"], ours["h0"], ours["c0"], *[ours[n] for n in list(ours)[3:]])
    y, (h_n, c_n) = lstm(theirs["input"], (theirs["h0"][None], theirs["c0"][None]))
    expected = (y, h_n[0], c_n[0])
    cotangents = random_cotangents(*expected)
    backward_all((out[0], *out[1]), cotangents)
    backward_all(expected, cotangents)

    for name, a, e in zip(("output", "h_n", "c_n"), (out[0], *out[1]), expected):
        assert_close(a, e, rel=1e-12, name=name)
    for name, t in ours.items():
        e = theirs[name].grad if name in ("input", "h0", "c0") else getattr(lstm, name + "_l0").grad
        assert_close(t.grad, e, rel=1e-12, name=f"grad {name}")

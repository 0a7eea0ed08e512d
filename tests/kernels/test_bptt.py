"""The hand-derived BPTT oracle (``lstm_reference_backward``, no autograd) gradient by gradient
against autograd on the reference, against the Triton kernels, and against torch.nn.LSTM for
stacks; plus mutations showing that the comparison catches a slip in the equations."""

import pytest
import torch
from helpers import DEVICE, random_cotangents

from fusedrnn import functional as F
from fusedrnn.kernels import reference
from fusedrnn.kernels.reference import (
    LSTMEquations,
    bptt_forward,
    lstm_layers_reference_backward,
    lstm_reference,
    lstm_reference_backward,
)
from fusedrnn.testing import assert_close, error_stats, module_forward_backward

# The oracle's gradient names, in the order of lstm_reference's arguments.
NAMES = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
# Two float64 computations of the same sums in different orders: a few ulps apart (~1e-16
# seen). 1e-12 leaves room for conditioning and still catches a 1e-7 perturbation of one weight.
EXACT_REL = 1e-12
KERNEL_REL = 1e-5  # fp32 kernels against float64, as in test_lstm.py
WITHOUT_PROJ = set(NAMES) - {"weight_hr"}  # every gradient of a problem without a projection


def lstm_problem(T, B, I, H, P=None, *, bias=True, hx=True, seed=0):
    """{name: float64 tensor or None} in NAMES order; weights in torch's init range."""
    g = torch.Generator().manual_seed(seed)
    k = H**-0.5
    P_ = P or H

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    def normal(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return {
        "x": normal(T, B, I),
        "h0": normal(B, P_, scale=0.5) if hx else None,
        "c0": normal(B, H, scale=0.5) if hx else None,
        "weight_ih": uniform(4 * H, I),
        "weight_hh": uniform(4 * H, P_),
        "bias_ih": uniform(4 * H) if bias else None,
        "bias_hh": uniform(4 * H) if bias else None,
        "weight_hr": uniform(P_, H) if P else None,
    }


def lengths_for(T, B, seed=0):
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    lengths[0], lengths[-1] = 1, T  # a length-1 row and a full one
    return lengths


def cotangents_for(problem, **kwargs):
    """Random cotangents of output, h_n and c_n, shaped by a forward run."""
    with torch.no_grad():
        output, (h_n, c_n) = lstm_reference(*problem.values(), **kwargs)
    return random_cotangents(output, h_n, c_n)


def backpropagate(outputs, cotangents):
    """sum <output, cotangent> over output, h_n and c_n, backpropagated; a None cotangent is zero."""
    sum((o * d.to(o.device, o.dtype)).sum() for o, d in zip(outputs, cotangents) if d is not None).backward()


def autograd_grads(problem, cotangents, **kwargs):
    """{name: gradient or None} of lstm_reference by autograd, float64."""
    leaves = {n: t.clone().requires_grad_() if t is not None else None for n, t in problem.items()}
    output, (h_n, c_n) = lstm_reference(*leaves.values(), **kwargs)
    backpropagate((output, h_n, c_n), cotangents)
    return {n: t.grad if t is not None else None for n, t in leaves.items()}


def oracle_grads(problem, cotangents, **kwargs):
    return lstm_reference_backward(*problem.values(), *cotangents, **kwargs)


def assert_grads_match(actual, expected, *, rel, what):
    """Parameter by parameter: the same names, None in the same places, each within rel."""
    assert set(actual) == set(expected) == set(NAMES)
    for name in NAMES:
        assert (actual[name] is None) == (expected[name] is None), f"{what}: {name} given in one only"
        if expected[name] is not None:
            assert_close(actual[name], expected[name], rel=rel, name=f"{what}: grad {name}")


def mismatched(actual, expected, *, rel):
    """The names whose gradients differ by more than rel."""
    return {n for n in NAMES if expected[n] is not None and not error_stats(actual[n], expected[n]).rel <= rel}


# ----------------------------------------------------------------------------------------
# Oracle against autograd, float64.

SHAPES = [(5, 3, 7, 20), (1, 1, 5, 37), (4, 17, 5, 37), (3, 2, 1, 1)]


@pytest.mark.parametrize("shape", [pytest.param(s, id="T{}-B{}-I{}-H{}".format(*s)) for s in SHAPES])
def test_oracle_matches_autograd_shapes(shape):
    problem = lstm_problem(*shape)
    cotangents = cotangents_for(problem)
    expected = autograd_grads(problem, cotangents)
    assert_grads_match(oracle_grads(problem, cotangents), expected, rel=EXACT_REL, what="oracle")


@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj", [None, 5], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_oracle_matches_autograd_options(bias, proj, reverse, varlen, hx):
    T, B = 6, 4
    problem = lstm_problem(T, B, 3, 7, proj, bias=bias, hx=hx)
    kwargs = dict(reverse=reverse, lengths=lengths_for(T, B) if varlen else None)
    cotangents = cotangents_for(problem, **kwargs)
    expected = autograd_grads(problem, cotangents, **kwargs)
    actual = oracle_grads(problem, cotangents, **kwargs)
    assert_grads_match(actual, expected, rel=EXACT_REL, what="oracle")
    if bias:  # one sum feeds both biases
        assert torch.equal(actual["bias_ih"], actual["bias_hh"])


def test_oracle_forward_is_the_reference_forward():
    """The forward the oracle differentiates is lstm_reference's, without autograd."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = lstm_problem(5, 4, 3, 7, 5).values()
    kwargs = dict(reverse=True, lengths=lengths_for(5, 4))
    output, (h_n, c_n), _ = bptt_forward(LSTMEquations(w_hh, b_hh, w_hr), x, (h0, c0), w_ih, b_ih, **kwargs)
    expected_output, (expected_h, expected_c) = lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, **kwargs)
    assert_close(output, expected_output, rel=EXACT_REL, name="output")
    assert_close(h_n, expected_h, rel=EXACT_REL, name="h_n")
    assert_close(c_n, expected_c, rel=EXACT_REL, name="c_n")


def test_oracle_needs_no_autograd():
    """Tensors that do not require grad, grad mode off, or fp32 leaves that do: same float64 answer
    and no graph built."""
    problem = lstm_problem(4, 3, 3, 7, 5)  # every input given
    cotangents = cotangents_for(problem)
    plain = oracle_grads(problem, cotangents)
    with torch.no_grad():
        no_grad = oracle_grads(problem, cotangents)
    leaves = {n: t.float().requires_grad_() for n, t in problem.items()}
    from_leaves = oracle_grads(leaves, cotangents)
    for name in NAMES:
        assert torch.equal(plain[name], no_grad[name]), name
        assert from_leaves[name].dtype == torch.float64 and not from_leaves[name].requires_grad, name
    assert all(t.grad is None for t in leaves.values())
    # fp32 inputs, float64 arithmetic: off by the inputs' rounding only.
    assert_grads_match(from_leaves, plain, rel=1e-5, what="fp32 inputs")


# ----------------------------------------------------------------------------------------
# Stacks: the oracle chained over layers and directions against torch.nn.LSTM, float64. The
# CUDA test in tests/test_modules.py uses it as its third oracle.


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_layers=2, bidirectional=True, proj_size=4), dict(num_layers=3, bias=False)],
    ids=["L1", "L2-bi-proj", "L3-nobias"],
)
def test_stack_oracle_matches_torch_lstm(kwargs):
    T, B, I, H = 5, 3, 4, 6
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, dtype=torch.float64, **kwargs)
    states = lstm.num_layers * (2 if lstm.bidirectional else 1)
    x = torch.randn(T, B, I, dtype=torch.float64)
    P = lstm.proj_size or H
    hx = (torch.randn(states, B, P, dtype=torch.float64), torch.randn(states, B, H, dtype=torch.float64))
    with torch.no_grad():
        output, (h_n, c_n) = lstm(x, hx)
    cotangents = random_cotangents(output, h_n, c_n)
    expected = module_forward_backward(lstm, x, hx, cotangents)
    oracle = lstm_layers_reference_backward(
        x, hx, lstm._flat_weights, *cotangents, num_layers=lstm.num_layers, bidirectional=lstm.bidirectional
    )
    assert_close(oracle["input"], expected["grad input"], rel=EXACT_REL, name="grad input")
    assert_close(oracle["h0"], expected["grad h0"], rel=EXACT_REL, name="grad h0")
    assert_close(oracle["c0"], expected["grad c0"], rel=EXACT_REL, name="grad c0")
    assert len(oracle["weights"]) == len(lstm._flat_weights_names)
    for name, grad in zip(lstm._flat_weights_names, oracle["weights"]):
        assert_close(grad, expected[f"grad {name}"], rel=EXACT_REL, name=f"grad {name}")


def test_stack_oracle_with_lengths_matches_autograd():
    """Per-row lengths through two bidirectional layers: functional.lstm_layers on the reference."""
    T, B, I, H, P = 5, 4, 3, 6, 4
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=torch.float64)
    weights = [w.detach().clone().requires_grad_() for w in lstm._flat_weights]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(4, B, n, dtype=torch.float64, requires_grad=True) for n in (P, H))
    lengths = lengths_for(T, B)
    output, (h_n, c_n) = F.lstm_layers(
        x, hx, weights, num_layers=2, bidirectional=True, lengths=lengths, backend="reference"
    )
    cotangents = random_cotangents(output, h_n, c_n)
    backpropagate((output, h_n, c_n), cotangents)
    oracle = lstm_layers_reference_backward(
        x, hx, weights, *cotangents, num_layers=2, bidirectional=True, lengths=lengths
    )
    assert_close(oracle["input"], x.grad, rel=EXACT_REL, name="grad input")
    assert_close(oracle["h0"], hx[0].grad, rel=EXACT_REL, name="grad h0")
    assert_close(oracle["c0"], hx[1].grad, rel=EXACT_REL, name="grad c0")
    for name, grad, w in zip(lstm._flat_weights_names, oracle["weights"], weights):
        assert_close(grad, w.grad, rel=EXACT_REL, name=f"grad {name}")


# ----------------------------------------------------------------------------------------
# The Triton kernels (interpreted on CPU) against the oracle and autograd: three answers.


def kernel_grads(problem, cotangents, **kwargs):
    """{name: gradient or None} of fusedrnn.functional.lstm(backend="triton") in float32."""
    leaves = {n: t.to(DEVICE, torch.float32).requires_grad_() if t is not None else None for n, t in problem.items()}
    hx = (leaves["h0"], leaves["c0"]) if leaves["h0"] is not None else None
    weights = [leaves[n] for n in NAMES[3:]]
    output, (h_n, c_n) = F.lstm(leaves["x"], hx, *weights, backend="triton", **kwargs)
    backpropagate((output, h_n, c_n), cotangents)
    return {n: t.grad if t is not None else None for n, t in leaves.items()}


# The interpreter is slow: two small problems, the second with the options the first lacks.
KERNEL_CASES = [
    pytest.param((5, 3, 7, 20), dict(), id="T5-B3-I7-H20"),
    pytest.param((4, 5, 5, 37), dict(P=11, hx=False, bias=False), id="T4-B5-I5-H37-P11-nohx-nobias"),
]


@pytest.mark.parametrize("shape, options", KERNEL_CASES)
@pytest.mark.parametrize("reverse, varlen", [(False, False), (True, True)], ids=["forward-full", "reverse-lengths"])
def test_kernels_match_oracle_and_autograd(shape, options, reverse, varlen, strategy):
    T, B = shape[:2]
    problem = lstm_problem(*shape, **options)
    kwargs = dict(reverse=reverse, lengths=lengths_for(T, B) if varlen else None)
    cotangents = cotangents_for(problem, **kwargs)
    oracle = oracle_grads(problem, cotangents, **kwargs)
    assert_grads_match(autograd_grads(problem, cotangents, **kwargs), oracle, rel=EXACT_REL, what="autograd")
    assert_grads_match(kernel_grads(problem, cotangents, **kwargs), oracle, rel=KERNEL_REL, what="triton fp32")


# ----------------------------------------------------------------------------------------
# The oracle can fail: slips in a copy of the equations, run through the same driver
# (lstm_reference_backward builds whatever reference.LSTMEquations names).


class SwappedInputAndForgetGrads(LSTMEquations):
    """Backward slip: dz_i and dz_f exchanged on their way to W_ih, b_ih and x."""

    def backward_step(self, d_state, d_output, cache):
        d_prev, d_z, step_grads = super().backward_step(d_state, d_output, cache)
        d_i, d_f, d_g, d_o = d_z.chunk(4, dim=-1)
        return d_prev, torch.cat([d_f, d_i, d_g, d_o], dim=-1), step_grads


class DroppedForgetGateInCarry(LSTMEquations):
    """Chain-rule slip: dc_{t-1} = dc instead of dc * f."""

    def backward_step(self, d_state, d_output, cache):
        (d_h, d_c), d_z, step_grads = super().backward_step(d_state, d_output, cache)
        f = cache[3]
        return (d_h, d_c / f), d_z, step_grads


@pytest.mark.parametrize(
    "mutant, must_fail",
    [
        (SwappedInputAndForgetGrads, {"x", "weight_ih", "bias_ih"}),  # exactly what it touches
        (DroppedForgetGateInCarry, WITHOUT_PROJ),  # c_{t-1} feeds every step before t
    ],
    ids=["swapped-i-f", "dropped-f-in-carry"],
)
def test_a_slip_in_the_equations_is_caught(mutant, must_fail, monkeypatch):
    problem = lstm_problem(5, 4, 3, 7)
    cotangents = cotangents_for(problem)
    expected = autograd_grads(problem, cotangents)
    monkeypatch.setattr(reference, "LSTMEquations", mutant)
    actual = oracle_grads(problem, cotangents)
    assert mismatched(actual, expected, rel=EXACT_REL) == must_fail
    with pytest.raises(AssertionError):
        assert_grads_match(actual, expected, rel=EXACT_REL, what="mutant")


def test_a_weight_perturbed_by_1e_7_is_caught():
    """The tolerance has teeth: one weight off by 1e-7 (relative) moves every gradient past it."""
    problem = lstm_problem(5, 4, 3, 7)
    cotangents = cotangents_for(problem)
    expected = autograd_grads(problem, cotangents)
    perturbed = dict(problem, weight_hh=problem["weight_hh"].clone())
    perturbed["weight_hh"][5, 2] *= 1 + 1e-7
    assert mismatched(oracle_grads(perturbed, cotangents), expected, rel=EXACT_REL) == WITHOUT_PROJ


# ----------------------------------------------------------------------------------------
# Seed 000 in miniature: per-gate weights drawn from randn, zero initial state, loss = sum of
# the final h, the hand-derived gradients compared with autograd gate by gate. Run with -s
# for the table.

GATES = "ifgo"  # torch's row order of the 4H dimension


def test_seed_000_miniature_table():
    T, B, I, H = 10, 1, 16, 16  # the notebook: 10, 1, 256, 256
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    W = {gate: randn(I, H) for gate in GATES}  # the notebook's x @ W_gate: (I, H)
    U = {gate: randn(H, H) for gate in GATES}
    b = {gate: randn(H) for gate in GATES}
    problem = {
        "x": randn(T, B, I),
        "h0": None,
        "c0": None,
        "weight_ih": torch.cat([W[gate].t() for gate in GATES]),  # torch stores W^T, gates stacked
        "weight_hh": torch.cat([U[gate].t() for gate in GATES]),
        "bias_ih": torch.cat([b[gate] for gate in GATES]),
        "bias_hh": torch.zeros(4 * H, dtype=torch.float64),  # the notebook has one bias per gate
        "weight_hr": None,
    }
    cotangents = (None, torch.ones(B, H, dtype=torch.float64), None)  # loss = h_T.sum()
    oracle = oracle_grads(problem, cotangents)
    expected = autograd_grads(problem, cotangents)
    kernels = kernel_grads(problem, cotangents)

    def per_gate(grads):
        """The notebook's names: W_i (I, H), U_i (H, H), b_i (H,), ..."""
        out = {}
        for k, gate in enumerate(GATES):
            rows = slice(k * H, (k + 1) * H)
            out[f"W_{gate}"] = grads["weight_ih"][rows].t()
            out[f"U_{gate}"] = grads["weight_hh"][rows].t()
            out[f"b_{gate}"] = grads["bias_ih"][rows]
        return out

    oracle, expected, kernels = per_gate(oracle), per_gate(expected), per_gate(kernels)
    # rel error: RMS-relative, ||a - b|| / ||b||, as everywhere in the tests.
    print(f"\n{'param':5} | {'oracle vs autograd, fp64':^27} | {'triton fp32 vs oracle':^27}")
    print(f"{'':5} | {'max abs diff':>13} {'rel error':>13} | {'max abs diff':>13} {'rel error':>13}")
    for name in sorted(oracle, key=lambda n: ("WUb".index(n[0]), GATES.index(n[-1]))):
        exact, fp32 = error_stats(oracle[name], expected[name]), error_stats(kernels[name], oracle[name])
        print(f"{name:5} | {exact.max_abs:13.2e} {exact.rel:13.2e} | {fp32.max_abs:13.2e} {fp32.rel:13.2e}")
        assert exact.rel <= EXACT_REL, name
        assert fp32.rel <= KERNEL_REL, name


RNN_LAYOUTS = [dict(), dict(num_layers=2, bidirectional=True), dict(bias=False, num_layers=2)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "gru"])
@pytest.mark.parametrize("kwargs", RNN_LAYOUTS, ids=["one-layer", "stacked-bidirectional", "no-bias"])
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
def test_rnn_stack_oracle_matches_torch_rnn(kwargs, nonlinearity, varlen):
    """rnn_layers_reference_backward (RNNEquations) against autograd through torch.nn.RNN in
    float64, gradient by gradient (lengths: torch on the packed batch); "gru":
    gru_layers_reference_backward (GRUEquations) against torch.nn.GRU."""
    torch.manual_seed(0)
    if nonlinearity == "gru":
        rnn = torch.nn.GRU(5, 6, dtype=torch.float64, **kwargs)
    else:
        rnn = torch.nn.RNN(5, 6, nonlinearity=nonlinearity, dtype=torch.float64, **kwargs)
    T, B = 4, 3
    states = rnn.num_layers * (2 if rnn.bidirectional else 1)
    x = torch.randn(T, B, 5, dtype=torch.float64)
    h0 = torch.randn(states, B, 6, dtype=torch.float64)
    lengths = torch.tensor([4, 1, 3]) if varlen else None
    inputs = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if varlen else x
    with torch.no_grad():
        y, h_n = rnn(inputs, h0)
    y = y.data if varlen else y
    cotangents = [torch.randn_like(y), torch.randn_like(h_n)]
    want = module_forward_backward(rnn, inputs, h0, cotangents)
    d_output = cotangents[0]
    if varlen:
        d_output, _ = torch.nn.utils.rnn.pad_packed_sequence(inputs._replace(data=d_output))
    layout = dict(num_layers=rnn.num_layers, bidirectional=rnn.bidirectional, lengths=lengths)
    if nonlinearity == "gru":
        got = reference.gru_layers_reference_backward(x, h0, rnn._flat_weights, d_output, cotangents[1], **layout)
    else:
        got = reference.rnn_layers_reference_backward(
            x, h0, rnn._flat_weights, d_output, cotangents[1], nonlinearity=nonlinearity, **layout
        )
    grad_input = got["input"]
    if varlen:
        grad_input = torch.nn.utils.rnn.pack_padded_sequence(grad_input, lengths, enforce_sorted=False).data
    assert_close(grad_input, want["grad input"], rel=EXACT_REL, name="grad input")
    assert_close(got["h0"], want["grad h0"], rel=EXACT_REL, name="grad h0")
    for name, g in zip(rnn._flat_weights_names, got["weights"]):
        assert_close(g, want[f"grad {name}"], rel=EXACT_REL, name=name)

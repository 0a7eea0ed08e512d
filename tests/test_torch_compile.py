"""torch.compile: a model around fusedrnn.LSTM compiles as one graph (fullgraph=True) and
matches eager, outputs and every gradient, on both backends.

The Triton launches are the custom ops ``torch.ops.fusedrnn.recurrence_fwd`` / ``recurrence_bwd``
(opaque to the compiler, with fake implementations); Dynamo traces the autograd Function
around them. Most tests compile with ``backend="aot_eager"``: Dynamo, AOTAutograd and the
fake tensors, as inductor sees them, without inductor's C++ build. test_inductor_matches_eager
runs the default inductor: seconds per model on CPU, and its reference-path case is opt-in.
"""


import pytest
import torch
from helpers import DEVICE
from torch import nn

import fusedrnn

BACKENDS = ["reference", "triton"]
T, B, I, H, P = 3, 3, 5, 6, 3
LENGTHS = [3, 1, 2]  # unsorted, a length-1 row and a full one (cut to the sequence length)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles new modules: no cached graphs, no recompile limit across tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Model(nn.Module):
    """Linear -> LSTM -> Linear; returns the head's output and the LSTM's h_n and c_n."""

    def __init__(self, lstm):
        super().__init__()
        self.inp = nn.Linear(I, lstm.input_size)
        self.lstm = lstm
        directions = 2 if lstm.bidirectional else 1
        self.head = nn.Linear(directions * (lstm.proj_size or lstm.hidden_size), 2)

    def forward(self, x, hx=None, lengths=None):
        y, (h_n, c_n) = self.lstm(self.inp(x), hx, lengths=lengths)
        return self.head(y), h_n, c_n


# Two models per backend keep the file fast (each compile takes seconds): a plain one, and
# one with every option that changes the traced code.
CASES = {
    "plain": dict(lstm=dict(), hx=False, lengths=False),
    "proj-hx-lengths-batch-first": dict(lstm=dict(proj_size=P, batch_first=True), hx=True, lengths=True),
}


def make_case(backend, case, *, num_layers=2, bidirectional=True, steps=T, seed=0):
    """The model and its inputs for one entry of CASES."""
    spec = CASES[case]
    torch.manual_seed(seed)
    lstm = fusedrnn.LSTM(4, H, num_layers=num_layers, bidirectional=bidirectional, backend=backend, **spec["lstm"])
    model = Model(lstm).to(DEVICE)
    batch_first = spec["lstm"].get("batch_first", False)
    x = torch.randn((B, steps, I) if batch_first else (steps, B, I), device=DEVICE)
    hx = None
    if spec["hx"]:
        states = num_layers * (2 if bidirectional else 1)
        hx = (torch.randn(states, B, P, device=DEVICE), torch.randn(states, B, H, device=DEVICE))
    lengths = torch.tensor([min(n, steps) for n in LENGTHS]) if spec["lengths"] else None
    return model, x, hx, lengths


def forward_backward(model, x, hx, lengths):
    """Outputs and the gradients of the input, the states and every parameter, by name."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(t.detach().clone().requires_grad_() for t in hx) if hx is not None else None
    model.zero_grad()
    y, h_n, c_n = model(x, hx, lengths)
    # A nonlinear loss, so that every output's cotangent depends on the values.
    (y.square().sum() + (h_n * c_n[..., : h_n.shape[-1]]).sum() + c_n.sum()).backward()
    result = {"y": y, "h_n": h_n, "c_n": c_n, "grad x": x.grad}
    if hx is not None:
        result.update({"grad h0": hx[0].grad, "grad c0": hx[1].grad})
    plain = getattr(model, "_orig_mod", model)  # the names without torch.compile's prefix
    result.update({f"grad {n}": p.grad for n, p in plain.named_parameters()})
    return result


def assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] is not None, name
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_matches_eager(backend, case):
    model, x, hx, lengths = make_case(backend, case)
    expected = forward_backward(model, x, hx, lengths)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_same(forward_backward(compiled, x, hx, lengths), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's own
def test_inductor_matches_eager(backend):
    """The default inductor backend, on the smallest model. On CPU inductor builds C++ for the
    graph: about 5 s for the Triton path, whose ops stay opaque, and 15 s for the reference
    path, whose unrolled time loop it compiles in full."""
    model, x, hx, lengths = make_case(backend, "proj-hx-lengths-batch-first", num_layers=1, bidirectional=False, steps=2)
    expected = forward_backward(model, x, hx, lengths)
    compiled = torch.compile(model, fullgraph=True)
    # Inductor fuses and reorders the pointwise work around the GEMMs: fp32 rounding only.
    actual = forward_backward(compiled, x, hx, lengths)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_sequence_length_stays_dynamic():
    """A new T recompiles once (automatic dynamic shapes), then no more: nothing on the Triton
    path specializes the graph to a sequence length, lengths= included."""
    model, _, _, _ = make_case("triton", "proj-hx-lengths-batch-first", num_layers=1, bidirectional=False)
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=count)
    for steps in (2, 3, 5):
        x = torch.randn(B, steps, I, device=DEVICE)
        compiled(x, None, torch.tensor([steps, 1, 2]))
    assert len(frames) == 2


def test_compiled_checks_lengths_at_run_time():
    """Reading CPU lengths on the host would break the graph: the compiled graph asserts
    their range itself, as a RuntimeError when it runs (eager raises ValueError)."""
    model, x, _, lengths = make_case("reference", "proj-hx-lengths-batch-first", num_layers=1, bidirectional=False)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(x, None, lengths)
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        compiled(x, None, torch.tensor([T + 1, 1, 2]))


def test_torch_nn_lstm_does_not_compile_as_one_graph():
    """Why fusedrnn.LSTM derives from nn.RNNBase: Dynamo refuses nn.LSTM instances (a graph
    break, so fullgraph=True raises) unless torch._dynamo.config.allow_rnn is set."""
    model = Model(nn.LSTM(4, H, num_layers=2, bidirectional=True))
    with pytest.raises(torch._dynamo.exc.Unsupported, match="LSTM"):
        torch.compile(model, fullgraph=True, backend="eager")(torch.randn(T, B, I))


@pytest.mark.parametrize(
    "batch_first, proj, lengths, reverse",
    [(False, False, None, False), (True, True, [3, 1], True), (True, True, None, False)],
    ids=["plain", "batch-first-proj-lengths-reverse", "batch-first-T1"],
)
def test_custom_ops_pass_opcheck(batch_first, proj, lengths, reverse):
    """Schemas, fake implementations (shapes, dtypes and strides equal to the real ones) and
    AOT dispatch of the three ops. T=1 batch-first is the odd stride case of the output layout."""
    from fusedrnn import autograd  # noqa: F401  (registers the ops)

    steps = 1 if batch_first and lengths is None else 3
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: (torch.rand(*shape, generator=g) - 0.5).to(DEVICE)  # noqa: E731
    width = P if proj else H
    x = rand(*((2, steps, I) if batch_first else (steps, 2, I)))
    w_hr = rand(P, H) if proj else None
    lengths = torch.tensor(lengths, device=DEVICE) if lengths is not None else None
    w_hh, c0 = rand(4 * H, width), rand(2, H)
    fwd_args = ("lstm", x, rand(4 * H, I), rand(4 * H), w_hh, rand(2, width), c0, w_hr, lengths, batch_first,
                reverse, None)  # fmt: skip
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_fwd.default, fwd_args)
    out, gates, c, _, _ = torch.ops.fusedrnn.recurrence_fwd(*fwd_args)
    bwd_args = ("lstm", gates, c, c0, w_hh, rand(*out.shape), rand(2, width), rand(2, H), w_hr, lengths, batch_first,
                reverse, None, None, None)  # fmt: skip
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd.default, bwd_args)
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd_.default, ("lstm", gates.clone(), *bwd_args[2:]))


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru"])
def test_custom_ops_pass_opcheck_for_a_cell_without_c(cell):
    """The same ops for the RNN's and the GRU's cells: no c0, c or d_cn (None in, an empty
    tensor out); the GRU's b_hn, hn, out and h0 in, its hn and d_gx_n out."""
    from fusedrnn import autograd  # noqa: F401  (registers the ops)

    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: (torch.rand(*shape, generator=g) - 0.5).to(DEVICE)  # noqa: E731
    T, B, I, H = 3, 2, 5, 6
    G = 3 if cell == "gru" else 1
    lengths = torch.tensor([3, 1], device=DEVICE)
    w_hh, h0 = rand(G * H, H), rand(B, H)
    b_hn = rand(H) if cell == "gru" else None
    fwd_args = (cell, rand(B, T, I), rand(G * H, I), rand(G * H), w_hh, h0, None, None, lengths, True, True, b_hn)
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_fwd.default, fwd_args)
    out, gates, c, m, hn = torch.ops.fusedrnn.recurrence_fwd(*fwd_args)
    assert c.numel() == 0 and m.numel() == 0 and (hn.numel() > 0) == (cell == "gru")
    extra = (hn, out, h0) if cell == "gru" else (None, None, None)
    bwd_args = (cell, gates, None, None, w_hh, rand(*out.shape), rand(B, H), None, None, lengths, True, True, *extra)
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd.default, bwd_args)
    inplace = (cell, gates.clone(), *bwd_args[2:12], hn.clone() if cell == "gru" else None, *bwd_args[13:])
    torch.library.opcheck(torch.ops.fusedrnn.recurrence_bwd_.default, inplace)


def test_autocast_check_under_compilation_does_not_ask_torch_for_availability(monkeypatch):
    """torch 2.11's Dynamo refuses to trace torch.amp.is_autocast_available (every compile test
    failed there): under compilation the check must not call it, and still answer False for a
    device type without autocast, where torch.is_autocast_enabled would raise."""
    from fusedrnn import functional

    def refused(device_type):
        raise AssertionError("is_autocast_available called under compilation")

    monkeypatch.setattr(torch.amp, "is_autocast_available", refused)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert functional.autocast_enabled("cpu") is False
    assert functional.autocast_enabled("meta") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert functional.autocast_enabled("cpu") is True

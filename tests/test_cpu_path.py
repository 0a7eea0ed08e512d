"""backend="auto" on CPU: torch's own LSTM (aten, what torch.nn.LSTM runs), and everything that
worked there on the reference path still working.

The CPU path calls the op torch.nn.LSTM calls, so its results are torch's bit for bit: these
tests compare with torch.equal, not a tolerance. Under torch.compile the reference runs
instead (Dynamo refuses aten's RNN ops), and backend="reference" stays the oracle. Speed is
measured in bench/bench_cpu.py, never here.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import functional as F
from fusedrnn.testing import module_forward_backward

CONFIGS = {
    "plain": dict(),
    "stacked-bidirectional": dict(num_layers=2, bidirectional=True),
    "projection-batch-first": dict(proj_size=3, batch_first=True),
    "no-bias-stacked-projection": dict(num_layers=2, proj_size=4, bias=False),
}
T, B, I, H = 5, 3, 4, 7


def pair(dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    theirs = torch.nn.LSTM(I, H, dtype=dtype, **kwargs)
    ours = fusedrnn.LSTM(I, H, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def inputs(module, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, I) if module.batch_first else (T, B, I), generator=g).to(dtype)
    states = module.num_layers * (2 if module.bidirectional else 1)
    hx = (torch.randn(states, B, module.proj_size or H, generator=g).to(dtype),
          torch.randn(states, B, H, generator=g).to(dtype))  # fmt: skip
    y, (h_n, c_n) = module(x, hx)
    cotangents = [torch.randn(t.shape, generator=g).to(dtype) for t in (y, h_n, c_n)]
    return x, hx, cotangents


def assert_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_auto_on_cpu_is_torch_s_lstm_bit_for_bit(config, dtype):
    ours, theirs = pair(dtype, **CONFIGS[config])
    x, hx, cotangents = inputs(theirs, dtype)
    for state in (hx, None):
        assert_equal(module_forward_backward(ours, x, state, cotangents),
                     module_forward_backward(theirs, x, state, cotangents))  # fmt: skip


def test_plain_calls_skip_torch_s_python_forward_and_the_rest_take_it(monkeypatch):
    """A batched tensor with no state or a pair of the expected shapes calls the op directly
    (torch's checks would pass; skipping them saves 6% of a T = 16, B = 1 call); any other
    form goes through torch.nn.LSTM.forward for its errors and input handling."""
    ours, theirs = pair(proj_size=3)
    x, hx, _ = inputs(theirs, torch.float32)
    expected = {"none": theirs(x), "pair": theirs(x, hx), "list": theirs(x, list(hx))}

    def refuse(*args, **kwargs):
        raise AssertionError("torch.nn.LSTM.forward called")

    monkeypatch.setattr(torch.nn.LSTM, "forward", refuse)
    for name, state in (("none", None), ("pair", hx), ("list", list(hx))):
        y, (h_n, c_n) = ours(x, state)
        want_y, (want_h, want_c) = expected[name]
        assert torch.equal(y, want_y) and torch.equal(h_n, want_h) and torch.equal(c_n, want_c), name
    swapped = {name: torch.zeros_like(p) for name, p in ours.named_parameters()}  # functional_call's weights
    assert not torch.func.functional_call(ours, swapped, (x,))[0].any()
    others = [(x[:, 0], None), (x, (hx[0][:, :1], hx[1])), (x.double(), None), (x[..., :2], None)]
    for other_input, state in others:  # unbatched, a wrong state, a wrong dtype, a wrong size
        with pytest.raises(AssertionError, match="forward called"):
            ours(other_input, state)


def test_packed_input_and_lengths_are_torch_s_pack_lstm_pad():
    ours, theirs = pair(num_layers=2, bidirectional=True)
    x, hx, (dy, dh, dc) = inputs(theirs, torch.float32)
    lengths = torch.tensor([2, 5, 1])  # unsorted
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    d_packed = pack_padded_sequence(dy, lengths, enforce_sorted=False).data
    expected = module_forward_backward(theirs, packed, hx, (d_packed, dh, dc))
    assert_equal(module_forward_backward(ours, packed, hx, (d_packed, dh, dc)), expected)
    # lengths= on the padded batch is torch's pack -> LSTM -> pad: the same gradients
    got = module_forward_backward(ours, x, hx, (dy, dh, dc), lengths=lengths)
    for name in ("output", "grad input"):  # zero past each length
        expected[name], _ = pad_packed_sequence(packed._replace(data=expected[name]), total_length=T)
    assert_equal(got, expected)


def test_dropout_masks_are_torch_s_under_one_seed():
    ours, theirs = pair(num_layers=3, dropout=0.5)
    x, hx, cotangents = inputs(theirs, torch.float32)
    ours.train(), theirs.train()
    torch.manual_seed(7)
    expected = module_forward_backward(theirs, x, hx, cotangents)
    torch.manual_seed(7)
    assert_equal(module_forward_backward(ours, x, hx, cotangents), expected)


def test_backward_in_eval_mode_and_bitwise_repeat():
    ours, theirs = pair(num_layers=2, dropout=0.3)
    ours.eval(), theirs.eval()
    x, hx, cotangents = inputs(theirs, torch.float32)
    first = module_forward_backward(ours, x, hx, cotangents)
    assert_equal(first, module_forward_backward(theirs, x, hx, cotangents))
    assert_equal(module_forward_backward(ours, x, hx, cotangents), first)


def test_double_backward():
    ours, theirs = pair(torch.float64, num_layers=2, bidirectional=True)
    x, hx, _ = inputs(theirs, torch.float64)
    results = []
    for module in (ours, theirs):
        leaf = x.clone().requires_grad_()
        y, _ = module(leaf, hx)
        (g,) = torch.autograd.grad(y.square().sum(), leaf, create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), list(module.parameters())))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_autocast_bf16_is_torch_s_where_torch_s_runs():
    """Under CPU autocast: torch.nn.LSTM's results bit for bit, or, on a CPU where torch's
    raises for want of oneDNN's bf16 LSTM (AVX2 only), what the layers give with lengths=:
    torch's op on bf16 copies with autocast off, the gradients cast back to fp32."""
    ours, theirs = pair(num_layers=2)
    x, hx, cotangents = inputs(theirs, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module_forward_backward(ours, x, hx, cotangents)
        torch_fails = F.torch_lstm_fails_under_cpu_autocast(torch.float32, torch.float32)
        if not torch_fails:
            expected = module_forward_backward(theirs, x, hx, cotangents)
        else:
            with pytest.raises(RuntimeError, match="primitive descriptor"):
                theirs(x, hx)  # the probe's answer is torch's
    if torch_fails:
        bf16 = lambda t: t.to(torch.bfloat16)  # noqa: E731
        expected = module_forward_backward(theirs.to(torch.bfloat16), bf16(x), tuple(map(bf16, hx)), cotangents)
        expected = {name: t if name in ("output", "h_n", "c_n") else t.float() for name, t in expected.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):  # unbatched: the same path
            y, _ = ours(x[:, 0], tuple(state[:, 0] for state in hx))
        assert torch.equal(y, got["output"][:, 0])
    assert got["output"].dtype == expected["output"].dtype
    assert_equal(got, expected)


def test_lengths_under_autocast_run_torch_s_op_on_the_packed_batch():
    """lengths= under CPU autocast: torch's op on the packed batch, in the autocast dtype (the
    stack driver once passed the cell's name where the autocast wrapper looked for a tensor)."""
    ours, theirs = pair(num_layers=2)
    x = torch.randn(5, 3, ours.input_size)
    lengths = torch.tensor([5, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h_n, c_n) = ours(x, lengths=lengths)
    assert y.dtype == h_n.dtype == torch.bfloat16
    with torch.no_grad():
        packed = pack_padded_sequence(x.bfloat16(), lengths, enforce_sorted=False)
        want, (h_want, _) = theirs.to(torch.bfloat16)(packed)  # the same weights, in the autocast dtype
    torch.testing.assert_close(y, pad_packed_sequence(want, total_length=5)[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h_n, h_want, rtol=2e-2, atol=2e-2)


def test_functional_layer_and_reverse_match_the_reference():
    """fusedrnn.functional.lstm on CPU: torch's op, the reverse direction on the flipped
    sequence; reverse with lengths stays on the reference."""
    ours, _ = pair(dtype=torch.float64)
    x, hx, _ = inputs(ours, torch.float64)
    w = [ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0]
    state = (hx[0][0], hx[1][0])
    for reverse, lengths in [(False, None), (True, None), (False, torch.tensor([2, 5, 1])), (True, torch.tensor([2, 5, 1]))]:
        kwargs = dict(reverse=reverse, lengths=lengths)
        got = F.lstm(x, state, *w, **kwargs)
        want = F.lstm(x, state, *w, backend="reference", **kwargs)
        for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lstm_cell_on_cpu_is_torch_s_cell():
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(I, H)
    ours = fusedrnn.LSTMCell(I, H)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(B, I)
    hx = (torch.randn(B, H), torch.randn(B, H))
    for state in (hx, None):
        got, want = ours(x, state), theirs(x, state)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_compiled_auto_on_cpu_runs_the_reference_as_one_graph():
    torch._dynamo.reset()
    ours, _ = pair(num_layers=2, bidirectional=True)
    x, hx, cotangents = inputs(ours, torch.float32)
    eager = module_forward_backward(ours, x, hx, cotangents)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    got = {name.replace("_orig_mod.", ""): t for name, t in module_forward_backward(compiled, x, hx, cotangents).items()}
    torch._dynamo.reset()
    assert got.keys() == eager.keys()
    for name in eager:  # the reference traced, against torch's op: fp32 rounding apart
        torch.testing.assert_close(got[name], eager[name], rtol=1e-5, atol=1e-6)


def test_the_reference_backward_is_linear_in_t():
    """The reference's autograd graph takes each step's input projection by one unbind, not by
    indexing: an index's backward writes into a zero (T, B, 4H) tensor per step, a backward
    quadratic in T (T = 1000 -> 4000 took 20x as long)."""
    ours, _ = pair()
    ours.backend = "reference"
    y, _ = ours(torch.randn(T, B, I, requires_grad=True))
    seen, stack, kinds = set(), [y.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kinds.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert kinds.count("UnbindBackward0") == 1
    assert "SelectBackward0" not in kinds

"""fusedrnn.RNN against torch.nn.RNN, and fusedrnn.GRU against torch.nn.GRU (the layers whose
one state is h): constructor, parameters, init, state_dict, repr, errors, every input form,
outputs and every gradient, on each backend; the compiled module; their cells; and the
three-way comparison with cuDNN on CUDA. A test's ``variant`` is "tanh" or "relu" (the RNN's
nonlinearity) or "gru".

The big cross product runs on the reference path (float64, fast); the kernels (interpreted on
CPU) run a smaller one in every launch strategy (the ``strategy`` fixture).
"""

import functools
import itertools

import pytest
import torch
from helpers import CUDA_DTYPES, DEVICE, NEEDS_CUDA
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from fusedrnn._double_backward import DOUBLE_BACKWARD_ERROR
from fusedrnn.testing import assert_close, assert_no_worse_than

I, H = 5, 7


VARIANTS = ["tanh", "relu", "gru"]


def classes(variant, cell=False):
    """(torch's class, fusedrnn's class, their extra constructor arguments) of a variant."""
    if variant == "gru":
        return (nn.GRUCell, fusedrnn.GRUCell, {}) if cell else (nn.GRU, fusedrnn.GRU, {})
    return ((nn.RNNCell, fusedrnn.RNNCell) if cell else (nn.RNN, fusedrnn.RNN)) + (dict(nonlinearity=variant),)


def pair(variant="tanh", backend="reference", dtype=torch.float64, device="cpu", **kwargs):
    """torch's module and fusedrnn's (nn.RNN of nonlinearity ``variant``, or nn.GRU) with the
    same weights: torch's float64 init under one seed, whatever the dtype (a float32 init
    draws other numbers), so every pair of a test holds the same values."""
    torch_class, our_class, extra = classes(variant)
    kwargs = {**extra, **kwargs}
    torch.manual_seed(0)
    init = torch_class(I, H, dtype=torch.float64, **kwargs).state_dict()
    theirs = torch_class(I, H, dtype=dtype, device=device, **kwargs)
    ours = our_class(I, H, backend=backend, dtype=dtype, device=device, **kwargs)
    theirs.load_state_dict(init)
    ours.load_state_dict(init)
    return theirs, ours


def run(module, x, hx, **kwargs):
    """Outputs and the gradients of x, hx and every parameter, by name, for a fixed nonlinear loss."""
    packed = not isinstance(x, torch.Tensor)
    leaf = (x.data if packed else x).detach().clone().requires_grad_()
    x = x._replace(data=leaf) if packed else leaf
    hx = hx.detach().clone().requires_grad_() if hx is not None else None
    module.zero_grad()
    y, h_n = module(x, hx, **kwargs) if kwargs else module(x, hx)
    data = y.data if packed else y
    (data.square().sum() + (h_n * h_n.detach().sin()).sum()).backward()
    result = {"output": data, "h_n": h_n, "grad input": leaf.grad}
    if hx is not None:
        result["grad hx"] = hx.grad
    result.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return result


def assert_all_close(actual, expected, rel):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] is not None, name
        assert_close(actual[name].double().cpu(), expected[name].double().cpu(), rel=rel, name=name)


LAYOUTS = list(itertools.product([1, 2], [False, True], [True, False], [False, True], VARIANTS, [False, True]))


@pytest.mark.parametrize(
    "num_layers, bidirectional, bias, batch_first, variant, hx", LAYOUTS,
    ids=[f"L{n}-{'bi' if b else 'uni'}-{'bias' if bb else 'nobias'}-{'bf' if bf else 'tm'}-{nl}-{'hx' if h else 'nohx'}"
         for n, b, bb, bf, nl, h in LAYOUTS],
)  # fmt: skip
def test_reference_matches_torch_over_the_cross_product(num_layers, bidirectional, bias, batch_first, variant, hx):
    """Batched, unbatched and packed (unsorted) input, float64: outputs and every gradient."""
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    theirs, ours = pair(variant, **kwargs)
    states = num_layers * (2 if bidirectional else 1)
    g = torch.Generator().manual_seed(1)
    T, B = 4, 3
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    h0 = torch.randn(states, B, H, generator=g, dtype=torch.float64) if hx else None
    assert_all_close(run(ours, x, h0), run(theirs, x, h0), rel=1e-12)
    x1 = torch.randn(T, I, generator=g, dtype=torch.float64)  # unbatched
    assert_all_close(run(ours, x1, h0[:, 0] if hx else None), run(theirs, x1, h0[:, 0] if hx else None), rel=1e-12)
    if not batch_first:
        seqs = [torch.randn(n, I, generator=g, dtype=torch.float64) for n in (2, 4, 1)]
        packed = pack_sequence(seqs, enforce_sorted=False)
        assert_all_close(run(ours, packed, h0), run(theirs, packed, h0), rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_packing(variant, batch_first):
    """``lengths=`` with padded input gives what torch gives for the packed batch, padded again."""
    theirs, ours = pair(variant, num_layers=2, bidirectional=True, batch_first=batch_first)
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([2, 4, 1])
    x = torch.randn((3, 4, I) if batch_first else (4, 3, I), generator=g, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    y_ref, h_ref = theirs(packed)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_ref, batch_first=batch_first, total_length=4)
    y, h_n = ours(x, lengths=lengths)
    assert_close(y, y_ref, rel=1e-12, name="output")
    assert_close(h_n, h_ref, rel=1e-12, name="h_n")


KERNEL_CASES = [
    dict(num_layers=2, bidirectional=True),
    dict(batch_first=True, bias=False),
]


# relu differs from tanh in its activation only (tests/kernels/test_recurrence_rnn.py runs both
# cells in every strategy): one layout for it here.
KERNEL_VARIANTS = [(v, c) for v in VARIANTS for c in range(len(KERNEL_CASES)) if (v, c) != ("relu", 0)]


@pytest.mark.parametrize("variant, case", [(v, KERNEL_CASES[c]) for v, c in KERNEL_VARIANTS],
                         ids=[f"{v}-{['stacked-bidirectional', 'batch-first-no-bias'][c]}" for v, c in KERNEL_VARIANTS])
def test_kernels_match_the_float64_reference(case, variant, strategy):
    """fp32 kernels in every strategy, batched with h0, packed unsorted, and lengths, against
    the reference in float64 at 1e-5: outputs and every gradient."""
    _, oracle = pair(variant, **case)
    _, ours = pair(variant, backend="triton", dtype=torch.float32, device=DEVICE, **case)
    states = case.get("num_layers", 1) * (2 if case.get("bidirectional") else 1)
    g = torch.Generator().manual_seed(3)
    batch_first = case.get("batch_first", False)
    T, B = 4, 17  # two batch blocks of 16
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    h0 = torch.randn(states, B, H, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)

    def both(x, h0, **kwargs):
        expected = run(oracle, x, h0, **kwargs)
        dev = (lambda t: t.to(DEVICE, torch.float32) if t is not None else None)
        actual = run(ours, dev(x), dev(h0), **kwargs)
        assert_all_close(actual, expected, rel=1e-5)

    both(x, h0)
    both(x, None, lengths=lengths)
    if not batch_first:
        seqs = [torch.randn(n, I, generator=g, dtype=torch.float64) for n in (2, 4, 1)]
        expected = run(oracle, pack_sequence(seqs, enforce_sorted=False), h0[:, :3])
        packed32 = pack_sequence([s.to(DEVICE, torch.float32) for s in seqs], enforce_sorted=False)
        actual = run(ours, packed32, h0[:, :3].to(DEVICE, torch.float32))
        assert_all_close(actual, expected, rel=1e-5)


@pytest.mark.parametrize("variant", ["tanh", "gru"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernels_in_16_bits_are_no_worse_than_the_reference_in_16_bits(dtype, variant):
    """Against float64: ours no worse than twice the reference's error in the same dtype."""
    _, exact = pair(variant, num_layers=2)
    _, ours = pair(variant, backend="triton", dtype=dtype, device=DEVICE, num_layers=2)
    _, same = pair(variant, dtype=dtype, num_layers=2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 17, I, generator=g, dtype=torch.float64)
    results = [run(m, x.to(d, t), None) for m, d, t in ((exact, "cpu", torch.float64), (ours, DEVICE, dtype),
                                                        (same, "cpu", dtype))]  # fmt: skip
    exact_r, ours_r, same_r = ([{k: v.double().cpu() for k, v in r.items()} for r in results])
    eps = torch.finfo(dtype).eps
    # Triton 3.6's interpreter casts fp32 to bf16 by truncation (its cast_impl passes no
    # rounding mode), where a GPU rounds to nearest: its unit roundoff is eps, not eps / 2.
    unit_roundoff = eps if dtype == torch.bfloat16 and DEVICE == "cpu" else eps / 2
    if variant == "gru" and dtype == torch.bfloat16 and DEVICE == "cpu":
        # The GRU stores more 16-bit tiles per step (r, z, Gx_n) and truncation's error is
        # biased: its dW_hh came to 1.85 eps there (the tanh RNN's 4x the reference's too;
        # fp16, which the interpreter rounds, stays within 1.3x of the reference). The cap,
        # 2 eps, still holds: a wrong gate is off by orders of magnitude more.
        unit_roundoff = 2 * eps
    assert_no_worse_than(ours_r, same_r, exact_r, atol=unit_roundoff, cap=2 * eps,
                         baseline_name=f"reference in {dtype}")  # fmt: skip


@pytest.mark.parametrize("variant", ["relu", "gru"])
def test_backward_in_eval_mode_and_bitwise_repeatable_gradients(variant):
    """cuDNN refuses an RNN backward in eval mode; the kernels do not. Two runs give the same
    bits (no atomics)."""
    _, ours = pair(variant, backend="triton", dtype=torch.float32, device=DEVICE, num_layers=2, bidirectional=True)
    ours.eval()
    x = torch.randn(3, 17, I, device=DEVICE)
    first, second = run(ours, x, None), run(ours, x, None)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_double_backward_on_the_reference_path_and_a_clear_error_on_the_kernels():
    for variant in VARIANTS:
        theirs, ours = pair(variant)
        x = torch.randn(3, 2, I, dtype=torch.float64, requires_grad=True)
        (g_ours,) = torch.autograd.grad(ours(x)[0].square().sum(), x, create_graph=True)
        (g_theirs,) = torch.autograd.grad(theirs(x)[0].square().sum(), x, create_graph=True)
        (gg_ours,) = torch.autograd.grad(g_ours.sum(), x)
        (gg_theirs,) = torch.autograd.grad(g_theirs.sum(), x)
        assert_close(gg_ours, gg_theirs, rel=1e-10, name=f"{variant} double backward")
    _, kernels = pair("tanh", backend="triton", dtype=torch.float32, device=DEVICE)
    x32 = x.detach().float().to(DEVICE).requires_grad_()
    (g,) = torch.autograd.grad(kernels(x32)[0].square().sum(), x32, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(g.sum(), x32)
    assert "double backward" in DOUBLE_BACKWARD_ERROR


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_the_op_follows_mode_as_torch_s_not_an_edited_nonlinearity(backend):
    """torch.nn.RNN.forward picks tanh or relu by ``mode``, set once by the constructor."""
    torch.manual_seed(0)
    theirs = nn.RNN(I, H)
    ours = fusedrnn.RNN(I, H, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    theirs.nonlinearity = ours.nonlinearity = "relu"
    x = torch.randn(4, 2, I)
    assert (theirs(x)[0] < 0).any()  # still tanh
    assert_close(ours(x)[0], theirs(x)[0], rel=1e-6, name="output")


def test_constructor_init_state_dict_and_repr_are_torch_s():
    for args, kwargs in [((I, H), {}), ((I, H, 2, "relu", False, True, 0.5, True), {}),
                         ((I, H), dict(nonlinearity="relu", num_layers=3, bidirectional=True))]:  # fmt: skip
        torch.manual_seed(5)
        theirs = nn.RNN(*args, **kwargs)
        torch.manual_seed(5)
        ours = fusedrnn.RNN(*args, **kwargs)
        assert repr(ours) == repr(theirs) and ours.nonlinearity == theirs.nonlinearity and ours.mode == theirs.mode
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name  # the same init under one seed
    assert repr(fusedrnn.RNN(I, H, backend="triton")) == "RNN(5, 7, backend='triton')"
    for args in [(I, H), (I, H, 2, False, True, 0.5, True)]:
        torch.manual_seed(5)
        theirs = nn.GRU(*args)
        torch.manual_seed(5)
        ours = fusedrnn.GRU(*args)
        assert repr(ours) == repr(theirs) and ours.mode == theirs.mode == "GRU"
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert repr(fusedrnn.GRU(I, H, backend="reference")) == "GRU(5, 7, backend='reference')"


def error_of(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001: the point is to compare whatever is raised
        return type(err), str(err)
    return None


@pytest.mark.parametrize("variant", ["tanh", "gru"])
@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_errors_are_torch_s(backend, variant):
    """The same exception type and message as torch.nn.RNN (nn.GRU) for bad arguments and input."""
    device = DEVICE if backend == "triton" else "cpu"
    theirs, ours = pair(variant, backend, torch.float32, device, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 2, I, device=device)
    bad_calls = [
        lambda m: m(torch.randn(3, 2, I + 1, device=device)),  # input size
        lambda m: m(x, torch.randn(2, 3, H, device=device)),  # hidden size
        lambda m: m(x, torch.randn(2, 2, device=device)),  # batched input, 2-D hx
        lambda m: m(x[:, 0], torch.randn(2, 1, 2, H, device=device)),  # unbatched input, 4-D hx
        lambda m: m(torch.randn(3, device=device)),  # 1-D input
    ]
    for call in bad_calls:
        assert error_of(lambda: call(ours)) == error_of(lambda: call(theirs)) != None  # noqa: E711
    for make in (lambda: nn.RNN(I, H, nonlinearity="gelu"), lambda: nn.RNN(I, H, proj_size=2)):
        kind, message = error_of(make)
        ours_kind, ours_message = error_of(lambda: (fusedrnn.RNN(I, H, nonlinearity="gelu") if "gelu" in message
                                                    else fusedrnn.RNN(I, H, proj_size=2)))  # fmt: skip
        assert (ours_kind, ours_message) == (kind, message)
    assert error_of(lambda: fusedrnn.GRU(I, H, proj_size=2)) == error_of(lambda: nn.GRU(I, H, proj_size=2)) != None  # noqa: E711


@pytest.mark.parametrize("variant", VARIANTS)
def test_auto_on_cpu_is_torch_s_own_op(variant):
    """On CPU under "auto", torch's forward itself: the same bits, not our Function; the
    functional form (one layer, reversed too, and with lengths) runs torch's op as well."""
    theirs, ours = pair(variant, backend="auto", dtype=torch.float32, num_layers=2)
    x = torch.randn(5, 3, I, requires_grad=True)
    y, h_n = ours(x)
    assert "RecurrenceFunction" not in type(y.grad_fn).__name__
    y_ref, h_ref = theirs(x)
    assert torch.equal(y, y_ref) and torch.equal(h_n, h_ref)
    _, exact = pair(variant, num_layers=2)
    lengths = torch.tensor([5, 2, 4])
    for kwargs in (dict(), dict(reverse=True), dict(lengths=lengths), dict(reverse=True, lengths=lengths)):
        layer = fusedrnn.functional.gru if variant == "gru" else functools.partial(fusedrnn.functional.rnn,
                                                                                   nonlinearity=variant)  # fmt: skip
        weights = [w for w in ours._flat_weights[:4]]
        y, h_n = layer(x, None, *weights, backend="auto", **kwargs)
        y_ref, h_ref = layer(x.double(), None, *(w.double() for w in weights), backend="reference", **kwargs)
        assert_close(y.double(), y_ref, rel=1e-5, name=f"{kwargs} output")
        assert_close(h_n.double(), h_ref, rel=1e-5, name=f"{kwargs} h_n")


@pytest.mark.parametrize("variant", ["tanh", "gru"])
def test_compiled_module_matches_eager_with_one_graph_and_t_dynamic(variant):
    """torch.compile(fullgraph=True) on the kernel path: one graph, the same results, and a
    new sequence length recompiles once (automatic dynamic shapes), then no more."""
    torch._dynamo.reset()
    _, ours = pair(variant, backend="triton", dtype=torch.float32, device=DEVICE, num_layers=2, bidirectional=True)
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(ours, fullgraph=True, backend=count)
    for steps in (2, 3, 5):
        x = torch.randn(steps, 3, I, device=DEVICE)
        torch.testing.assert_close(compiled(x)[0], ours(x)[0], rtol=1e-6, atol=1e-6)
    assert len(frames) == 2
    torch._dynamo.reset()


@NEEDS_CUDA
@CUDA_DTYPES
@pytest.mark.parametrize("variant", VARIANTS)
def test_three_way_against_cudnn(variant, dtype, tf32, monkeypatch):
    """On CUDA: ours and cuDNN's nn.RNN (nn.GRU), both against the float64 reference; ours no
    worse than twice cuDNN's error (plus rounding), output and every gradient. H = 7 is not a
    multiple of 4, where cuDNN's GRU backward failed (pytorch issue 54307)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    eps = torch.finfo(dtype).eps if dtype != torch.float32 or not tf32 else 2**-10
    shape, kwargs = (6, 8), dict(num_layers=2, bidirectional=True)
    # relu's derivative jumps at 0: a pre-activation within rounding of 0 may land on one side
    # in ours and on the other in cuDNN, and that unit's gradient then differs by its whole
    # size. On an H200 (2026-12-04, fp16) two of four draws failed so on grad input (ours
    # 2.5e-2 against cuDNN's 6.7e-4, one unit at z = 2e-4 whose stored 16-bit Gx rounds below
    # 0); the interpreter reproduces it. With about 1e-3 of rounding (16-bit, TF32) relu is
    # compared on data away from the kink: the first draw whose every pre-activation is
    # further than 4 eps of the size of its terms from 0, on one short layer (a deep stack has
    # a unit near 0 in nearly every draw; tanh and the GRU cover the stacks).
    near_kink = variant == "relu" and (dtype != torch.float32 or tf32)
    if near_kink:
        shape, kwargs = (3, 4), dict(num_layers=1, bidirectional=False)
    _, exact = pair(variant, **kwargs)
    cudnn, ours = pair(variant, backend="triton", dtype=dtype, device="cuda", **kwargs)
    for _ in range(1000):
        x = torch.randn(*shape, I, dtype=torch.float64)
        if not near_kink or relu_margins(exact, x)[0].min() > 4 * eps:
            break
    else:
        pytest.fail("no draw of 1000 kept every relu pre-activation off the kink")
    want = run(exact, x, None)
    got_ours = {k: v.double().cpu() for k, v in run(ours, x.to("cuda", dtype), None).items()}
    got_cudnn = {k: v.double().cpu() for k, v in run(cudnn, x.to("cuda", dtype), None).items()}
    assert_no_worse_than(got_ours, got_cudnn, want, atol=eps, baseline_name="cuDNN")


def relu_margins(module, x):
    """|z| / s for every pre-activation z of a float64 relu nn.RNN (any layers, directions) on
    x (T, B, I): z = x W_ih^T + b_ih + h W_hh^T + b_hh, and s the same sum of its terms'
    magnitudes, the scale of z's rounding error in a lower precision; and the output."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    T, B, _ = x.shape
    layer_in, margins = x, []
    for layer in range(module.num_layers):
        outputs = []
        for reverse in (False, True)[: 2 if module.bidirectional else 1]:
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            w_ih, w_hh, b_ih, b_hh = (params[n + suffix] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            h, hs = x.new_zeros(B, w_hh.shape[1]), [None] * T
            for t in reversed(range(T)) if reverse else range(T):
                z = layer_in[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
                size = layer_in[t].abs() @ w_ih.abs().T + b_ih.abs() + h.abs() @ w_hh.abs().T + b_hh.abs()
                margins.append((z.abs() / size).flatten())
                h = hs[t] = torch.relu(z)
            outputs.append(torch.stack(hs))
        layer_in = torch.cat(outputs, dim=-1)
    return torch.cat(margins), layer_in


def test_relu_margins_find_the_unit_near_the_kink():
    """The H200's failing fp16 draw (above): its layer 0, step 0, row 0, unit 1 has z = 2e-4,
    the smallest margin of the stack; the module's own output agrees with the loop's."""
    kwargs = dict(num_layers=2, bidirectional=True)
    _, exact = pair("relu", **kwargs)
    torch.manual_seed(0)
    nn.RNN(I, H, dtype=torch.float64, nonlinearity="relu", **kwargs)  # as pair() leaves the generator on CUDA
    x = torch.randn(6, 8, I, dtype=torch.float64)
    margins, output = relu_margins(exact, x)
    torch.testing.assert_close(output, exact(x)[0], rtol=1e-12, atol=1e-12)
    assert margins.numel() == 2 * 2 * 6 * 8 * H
    assert margins.argmin() == 1 and margins.min() < 4 * torch.finfo(torch.float16).eps


# ------------------------------------------------------------------------------ RNNCell


def cell_pair(variant="tanh", backend="reference", dtype=torch.float64, device="cpu", bias=True):
    torch_class, our_class, extra = classes(variant, cell=True)
    torch.manual_seed(0)
    init = torch_class(I, H, bias, dtype=torch.float64, **extra).state_dict()
    theirs = torch_class(I, H, bias, dtype=dtype, device=device, **extra)
    ours = our_class(I, H, bias, backend=backend, dtype=dtype, device=device, **extra)
    theirs.load_state_dict(init)
    ours.load_state_dict(init)
    return theirs, ours


def cell_run(module, x, h):
    x = x.detach().clone().requires_grad_()
    h = h.detach().clone().requires_grad_() if h is not None else None
    module.zero_grad()
    out = module(x, h)
    (out.square().sum() + out.sin().sum()).backward()
    result = {"h'": out, "grad input": x.grad, **({"grad hx": h.grad} if h is not None else {})}
    result.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return result


CELL_CASES = [(b, v) for b in ("auto", "reference", "triton") for v in VARIANTS]


@pytest.mark.parametrize("backend, variant", CELL_CASES, ids=[f"{b}-{v}" for b, v in CELL_CASES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_rnn_cell_matches_torch(backend, variant, bias):
    """Batched with and without hx, and unbatched: h' and every gradient (the kernels in fp32
    against float64 at 1e-5, the other backends in float64 to rounding)."""
    kernels = backend == "triton"
    dtype, device = (torch.float32, DEVICE) if kernels else (torch.float64, "cpu")
    exact, _ = cell_pair(variant, bias=bias)
    _, ours = cell_pair(variant, backend, dtype, device, bias)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(17, I, generator=g, dtype=torch.float64)
    h = torch.randn(17, H, generator=g, dtype=torch.float64)
    rel = 1e-5 if kernels else 1e-12
    for args in ((x, h), (x, None), (x[0], h[0])):
        on = [a.to(device, dtype) if a is not None else None for a in args]
        assert_all_close(cell_run(ours, *on), cell_run(exact, *args), rel=rel)


@pytest.mark.parametrize("variant", ["relu", "gru"])
def test_rnn_cell_constructor_repr_errors_and_convert_are_torch_s(variant):
    torch_class, our_class, extra = classes(variant, cell=True)
    torch.manual_seed(1)
    theirs = torch_class(I, H, False, **extra)
    torch.manual_seed(1)
    ours = our_class(I, H, False, **extra)
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    for backend in ("auto", "reference"):
        torch_cell, mine = cell_pair(variant, backend, torch.float32)
        for call in (lambda m: m(torch.randn(3, I + 1)), lambda m: m(torch.randn(3, I), torch.randn(2, H)),
                     lambda m: m(torch.randn(3, I), torch.randn(3, H + 1)), lambda m: m(torch.randn(2, 3, I)),
                     lambda m: m(torch.randn(3, I), torch.randn(1, 3, H))):  # fmt: skip
            assert error_of(lambda: call(mine)) == error_of(lambda: call(torch_cell)) != None, backend  # noqa: E711
    if variant == "gru":
        return  # convert: tests/test_convert.py
    odd, torch_odd = fusedrnn.RNNCell(I, H, nonlinearity="gelu", backend="reference"), nn.RNNCell(I, H, nonlinearity="gelu")
    assert error_of(lambda: odd(torch.randn(2, I))) == error_of(lambda: torch_odd(torch.randn(2, I)))
    model = nn.Sequential(nn.RNNCell(I, H, nonlinearity="relu"))
    params = list(model.parameters())
    fusedrnn.convert(model)
    assert type(model[0]) is fusedrnn.RNNCell and model[0].nonlinearity == "relu"
    fusedrnn.revert(model)
    assert type(model[0]) is nn.RNNCell and all(a is b for a, b in zip(params, model.parameters()))


def test_rnn_cell_kernel_step_follows_the_matmul_tf32_switch_as_torch_s_cell(monkeypatch):
    """torch.nn.RNNCell runs cuBLAS GEMMs (matmul switch, default off), not cuDNN (its switch,
    default on, which fusedrnn.RNN follows as torch.nn.RNN does): the kernels' step is planned
    under the matmul switch, and cuDNN's switch is as it was afterwards. (The conftest fixture
    ieee_fp32 restores both switches.)"""
    from fusedrnn.kernels import planner

    seen = []
    real = planner.plans

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.allow_tf32)  # what the plan (and its cache key) reads
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "plans", spy)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    _, cell = cell_pair("tanh", "triton", torch.float32, DEVICE)
    cell(torch.randn(3, I, device=DEVICE))
    assert seen == [False] and torch.backends.cudnn.allow_tf32
    seen.clear()
    _, layer = pair("tanh", "triton", torch.float32, DEVICE)
    layer(torch.randn(2, 3, I, device=DEVICE))
    assert seen == [True]  # the layer: cuDNN's switch, as torch.nn.RNN


def test_a_cell_spec_the_function_does_not_implement_is_refused(monkeypatch):
    """The autograd Function honours the CellSpec: a cell with an unfolded bias (the GRU's
    b_hn) must not silently run as if it were folded."""
    import dataclasses

    from fusedrnn import autograd
    from fusedrnn.kernels import cells

    gru_like = dataclasses.replace(cells.RNN_TANH, folded_biases=("b_ih",))
    monkeypatch.setitem(cells.CELLS, "rnn_tanh", gru_like)
    _, ours = pair("tanh", "triton", torch.float32, DEVICE)
    with pytest.raises(NotImplementedError, match="does not implement the rnn_tanh cell"):
        ours(torch.randn(2, 3, I, device=DEVICE))
    assert autograd.CELLS is cells.CELLS


@pytest.mark.parametrize("variant", ["tanh", "gru"])
def test_rnn_cell_dtype_mismatch_and_bad_weights_are_runtime_errors_as_in_torch(variant):
    theirs, cell = cell_pair(variant, "reference", torch.float32)
    with pytest.raises(RuntimeError, match="does not match weight dtype"):
        cell(torch.randn(2, I, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="hidden0 dtype"):
        cell(torch.randn(2, I), torch.randn(2, H, dtype=torch.float64))
    # the functional step with a weight of the wrong shape: a RuntimeError, as torch's op raises
    step = fusedrnn.cell.gru_cell if variant == "gru" else fusedrnn.cell.rnn_cell
    op = torch._VF.gru_cell if variant == "gru" else torch._VF.rnn_tanh_cell
    x, h = torch.randn(2, I), torch.randn(2, H)
    w_ih, w_hh, b_ih, b_hh = theirs.weight_ih.detach(), theirs.weight_hh.detach(), theirs.bias_ih, theirs.bias_hh
    for bad in ((w_ih, w_hh[:-1], b_ih, b_hh), (w_ih[:-1], w_hh, b_ih, b_hh), (w_ih, w_hh, b_ih[:-1], b_hh)):
        with pytest.raises(RuntimeError):
            op(x, h, *bad)
        with pytest.raises(RuntimeError, match="must have shape"):
            step(x, h, *bad, backend="reference")


@pytest.mark.parametrize("backend, variant", [("reference", "relu"), ("triton", "relu"), ("reference", "gru"),
                                              ("triton", "gru")])
def test_compiled_module_with_h0_and_lengths_matches_eager_outputs_and_gradients(backend, variant):
    """aot_eager (Dynamo, AOTAutograd, the ops' fake implementations): h0, lengths and
    batch_first through a 2-layer bidirectional relu RNN (a GRU), outputs and every gradient."""
    torch._dynamo.reset()
    device = DEVICE if backend == "triton" else "cpu"
    _, ours = pair(variant, backend, torch.float32, device, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 4, I, device=device)
    h0 = torch.randn(4, 3, H, device=device)
    lengths = torch.tensor([4, 1, 2])
    expected = run(ours, x, h0, lengths=lengths)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    actual = run(compiled, x, h0, lengths=lengths)
    actual = {k.replace("_orig_mod.", ""): v for k, v in actual.items()}
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["tanh", "gru"])
@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_autocast_layers_and_cells(variant, backend):
    """Under autocast (bf16): on CPU "auto" is torch's forward and cell op, the same bits;
    the reference and the kernels cast every floating argument to the autocast dtype, as
    fusedrnn.LSTM does, so results come out in it, close to torch's in float32; a bf16 input
    to a cell with float32 weights runs, as in torch."""
    device = DEVICE if backend == "triton" else "cpu"
    theirs, ours = pair(variant, backend, torch.float32, device, num_layers=2)
    torch_cell, our_cell = cell_pair(variant, backend, torch.float32, device)
    x = torch.randn(4, 3, I, device=device)
    with torch.autocast(device.split(":")[0] if isinstance(device, str) else device.type, dtype=torch.bfloat16):
        y, h_n = ours(x)
        y_lengths, _ = ours(x, lengths=torch.tensor([4, 2, 3]))  # CPU "auto": torch's op on the packed batch
        h_cell = our_cell(x[0])
        h_cell16 = our_cell(x[0].bfloat16())
        y_ref, h_ref = theirs(x)
        h_cell_ref = torch_cell(x[0])
    # lengths= follows fusedrnn's autocast rule (the autocast dtype), on CPU too, where torch's
    # own GRU op stays in float32 (and its LSTM on packed input)
    assert y_lengths.dtype == torch.bfloat16
    if backend == "auto" and device == "cpu":
        assert torch.equal(y, y_ref) and torch.equal(h_n, h_ref) and torch.equal(h_cell, h_cell_ref)
        return
    assert y.dtype == h_n.dtype == h_cell.dtype == h_cell16.dtype == torch.bfloat16
    exact_y, exact_h = theirs(x)
    for name, got, want in (("output", y, exact_y), ("h_n", h_n, exact_h), ("cell", h_cell, torch_cell(x[0]))):
        assert_close(got.double().cpu(), want.detach().double().cpu(), rel=2e-2, name=name)

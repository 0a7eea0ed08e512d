"""fusedrnn.LSTMCell against torch.nn.LSTMCell with a shared state_dict.

On CPU: the reference backend and the Triton kernel under the interpreter, in fp32, against
torch's cell in float64. With CUDA: the kernel in fp16/bf16 against torch's CUDA cell, both
judged against a float64 reference (err(ours) <= 2 * err(torch) + atol).
"""

import pytest
import torch
from functorch.compile import make_boxed_func
from helpers import CUDA_DTYPES, DEVICE, NEEDS_CUDA
from torch._dynamo.backends.common import aot_autograd

from fusedrnn.cell import LSTMCell, lstm_cell
from fusedrnn.kernels import _helpers
from fusedrnn.kernels.launch import kernels_interpreted
from fusedrnn.testing import assert_close, assert_no_worse_than

BACKENDS = ["reference", "triton"]


def make_pair(I, H, *, backend, dtype=torch.float32, device=DEVICE, bias=True, seed=0):
    torch.manual_seed(seed)
    theirs = torch.nn.LSTMCell(I, H, bias=bias, dtype=torch.float64)
    ours = LSTMCell(I, H, bias=bias, backend=backend, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    return ours.to(device, dtype), theirs


def random_steps(T, B, I, H, *, seed=1, unbatched=False):
    """T inputs, (h0, c0) and cotangents of every h_t and of c_T, in float64."""
    g = torch.Generator().manual_seed(seed)
    lead = () if unbatched else (B,)
    xs = [torch.randn(*lead, I, generator=g, dtype=torch.float64) for _ in range(T)]
    hx = tuple(torch.randn(*lead, H, generator=g, dtype=torch.float64) for _ in range(2))
    cotangents = [torch.randn(*lead, H, generator=g, dtype=torch.float64) for _ in range(T + 1)]
    return xs, hx, cotangents


def run(cell, xs, hx, cotangents, *, dtype=torch.float64, device="cpu"):
    leaf = lambda t: t.detach().to(device, dtype).requires_grad_()  # noqa: E731
    xs = [leaf(x) for x in xs]
    hx = tuple(map(leaf, hx)) if hx is not None else None
    cell.zero_grad()
    hs, state = [], hx
    for x in xs:
        state = cell(x, state)
        hs.append(state[0])
    loss = sum((o * d.to(device, o.dtype)).sum() for o, d in zip([*hs, state[1]], cotangents))
    loss.backward()
    result = {f"h{t + 1}": h for t, h in enumerate(hs)}
    result["c_T"] = state[1]
    result.update({f"grad x{t + 1}": x.grad for t, x in enumerate(xs)})
    if hx is not None:
        result.update({"grad h0": hx[0].grad, "grad c0": hx[1].grad})
    result.update({f"grad {n}": p.grad for n, p in cell.named_parameters()})
    return result


def compare_with_torch(ours, theirs, xs, hx, cotangents, *, rel, dtype=torch.float32, device=DEVICE):
    expected = run(theirs, xs, hx, cotangents)
    actual = run(ours, xs, hx, cotangents, dtype=dtype, device=device)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].dtype == dtype, name
        assert_close(actual[name], expected[name], rel=rel, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch_fp32(backend, hx, bias):
    B, I, H = 5, 9, 23
    ours, theirs = make_pair(I, H, backend=backend, bias=bias)
    xs, state, cotangents = random_steps(1, B, I, H)
    compare_with_torch(ours, theirs, xs, state if hx else None, cotangents, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
def test_unbatched_and_batch_of_one(backend, hx):
    ours, theirs = make_pair(3, 11, backend=backend)
    for unbatched in (True, False):
        xs, state, cotangents = random_steps(1, 1, 3, 11, unbatched=unbatched)
        compare_with_torch(ours, theirs, xs, state if hx else None, cotangents, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrolled_steps(backend):
    """Four steps in a Python loop: gradients flow through h and c across steps."""
    B, I, H = 3, 5, 20
    ours, theirs = make_pair(I, H, backend=backend)
    xs, state, cotangents = random_steps(4, B, I, H)
    compare_with_torch(ours, theirs, xs, state, cotangents, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("used", ["h", "c"])
def test_only_one_output_used(backend, used):
    """The other output's gradient is None (not materialized) on the kernel path."""
    ours, theirs = make_pair(4, 16, backend=backend)
    x = torch.randn(3, 4, dtype=torch.float64)
    grads = []
    for cell, dtype, device in ((theirs, torch.float64, "cpu"), (ours, torch.float32, DEVICE)):
        leaf = x.to(device, dtype).detach().requires_grad_()
        h, c = cell(leaf)
        ((h if used == "h" else c) ** 2).sum().backward()
        grads.append([leaf.grad, *(p.grad for p in cell.parameters())])
    for name, a, e in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], *reversed(grads)):
        assert_close(a, e, rel=1e-5, name=name)


def test_float64_reference_matches_torch():
    ours, theirs = make_pair(9, 23, backend="auto", dtype=torch.float64, device="cpu")
    xs, state, cotangents = random_steps(2, 5, 9, 23)
    compare_with_torch(ours, theirs, xs, state, cotangents, rel=1e-12, dtype=torch.float64, device="cpu")


def test_poisoned_outputs_do_not_leak():
    """Kernel outputs start as NaN (conftest): a batch and hidden size spanning several
    programs in both dimensions must come out finite and equal to torch's."""
    assert torch.isnan(_helpers.empty_output(2, dtype=torch.float32, device=DEVICE)).all()
    ours, theirs = make_pair(7, 40, backend="triton")  # BLOCK_H = 32: two unit blocks
    xs, state, cotangents = random_steps(1, 17, 7, 40)
    compare_with_torch(ours, theirs, xs, state, cotangents, rel=1e-5)


# ----------------------------------------------------------------------------------------
# Errors: the same exception types as torch.nn.LSTMCell.

B_, I_, H_ = 5, 9, 23
BAD_INPUTS = {
    "input-3d": lambda: (torch.randn(2, B_, I_), None),
    "input-0d": lambda: (torch.tensor(1.0), None),
    "input-size": lambda: (torch.randn(B_, I_ - 1), None),
    "input-size-unbatched": lambda: (torch.randn(I_ + 1), None),
    "h-batch": lambda: (torch.randn(B_, I_), (torch.randn(B_ - 1, H_), torch.randn(B_, H_))),
    "c-batch": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_), torch.randn(B_ - 1, H_))),
    "h-hidden": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_ - 1), torch.randn(B_, H_))),
    "c-hidden": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_), torch.randn(B_, H_ + 1))),
    "h-3d": lambda: (torch.randn(B_, I_), (torch.randn(1, B_, H_), torch.randn(B_, H_))),
    "hx-1d-batched": lambda: (torch.randn(B_, I_), (torch.randn(H_), torch.randn(H_))),
    "hx-2d-unbatched": lambda: (torch.randn(I_), (torch.randn(1, H_), torch.randn(1, H_))),
    "hx-tensor": lambda: (torch.randn(B_, I_), torch.randn(B_, H_)),
    "hx-three": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_),) * 3),
    "hx-one": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_),)),
    "input-dtype": lambda: (torch.randn(B_, I_, dtype=torch.float64), None),
    "input-dtype-hx": lambda: (torch.randn(B_, I_, dtype=torch.float64), (torch.randn(B_, H_),) * 2),
    "h-dtype": lambda: (torch.randn(B_, I_), (torch.randn(B_, H_, dtype=torch.float64), torch.randn(B_, H_))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_like_torch(case, backend):
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(I_, H_)
    ours = LSTMCell(I_, H_, backend=backend)
    x, hx = BAD_INPUTS[case]()
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(Exception) as actual:
        ours(x, hx)
    assert actual.type is expected.type, f"torch: {expected.value!r}; ours: {actual.value!r}"


def test_bad_backend_and_arguments():
    with pytest.raises(ValueError):
        LSTMCell(3, 4, backend="cudnn")
    cell = LSTMCell(3, 4)
    with pytest.raises(ValueError):
        lstm_cell(torch.randn(2, 3), None, cell.weight_ih, cell.weight_hh, backend="fast")
    with pytest.raises(ValueError):
        lstm_cell(torch.randn(2, 3), None, cell.weight_ih, cell.weight_hh, cell.bias_ih)
    with pytest.raises(RuntimeError):
        lstm_cell(torch.randn(2, 3), None, cell.weight_ih, cell.weight_ih)


# ----------------------------------------------------------------------------------------
# dtypes: a cell state of another dtype, autocast, torch.compile.


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_state_of_another_dtype_promotes_like_torch(backend):
    """torch's CPU cell runs the cell update in c's dtype: h', c' take promote(x, c)."""
    ours, theirs = make_pair(4, 16, backend=backend)  # theirs on the CPU, ours on DEVICE
    theirs.float()
    x, h = torch.randn(3, 4), torch.randn(3, 16)
    for c_dtype in (torch.bfloat16, torch.float64):
        c = torch.randn(3, 16, dtype=c_dtype)
        expected = theirs(x, (h, c))
        if backend == "triton" and c_dtype == torch.float64:
            with pytest.raises(TypeError):
                ours(x.to(DEVICE), (h.to(DEVICE), c.to(DEVICE)))
            continue
        actual = ours(x.to(DEVICE), (h.to(DEVICE), c.to(DEVICE)))
        for name, a, e in zip(("h'", "c'"), actual, expected):
            assert a.dtype == e.dtype, name
            assert_close(a, e, rel=1e-5, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
def test_cpu_autocast_like_torch(backend, hx):
    """Under CPU bf16 autocast torch's cell runs its GEMMs in bf16 and returns the states'
    dtype (fp32 here). Same dtypes as torch's, gradients included, and no less accurate
    against float64 (twice torch's error plus one bf16 unit roundoff). CPU tensors on any
    machine; the kernels take them only under the interpreter (conftest: without CUDA)."""
    if backend == "triton" and not kernels_interpreted():
        pytest.skip("CPU autocast: the Triton kernels take CPU tensors only under the interpreter (TRITON_INTERPRET=1)")
    ours, theirs = make_pair(9, 23, backend=backend, device="cpu")
    theirs32 = torch.nn.LSTMCell(9, 23)
    theirs32.load_state_dict(theirs.state_dict())
    xs, state, cotangents = random_steps(2, 5, 9, 23)
    state = state if hx else None
    exact = run(theirs, xs, state, cotangents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_torch = run(theirs32, xs, state, cotangents, dtype=torch.float32)
        got_ours = run(ours, xs, state, cotangents, dtype=torch.float32)
    assert got_ours.keys() == got_torch.keys()
    assert all(got_ours[name].dtype == got_torch[name].dtype for name in exact)
    assert_no_worse_than(got_ours, got_torch, exact, atol=2**-9, baseline_name="torch")
    # bf16 input with fp32 weights: autocast reconciles them, as for torch.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = xs[0].bfloat16()  # on CPU, as ours
        assert ours(x)[0].dtype == theirs32(xs[0].bfloat16())[0].dtype == torch.bfloat16


def compile_and_compare(backend):
    """A function of three cell steps compiled with fullgraph=True: the same outputs and
    gradients as eager. AOTAutograd with eager compilers (no Inductor C++ build, which the
    tests cannot afford) traces Dynamo, fake tensors and the backward; returns the forward
    and backward graphs as text."""
    ours, _ = make_pair(9, 23, backend=backend)
    xs, state, cotangents = random_steps(2, 5, 9, 23)
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    def three_steps(x1, x2, h, c):
        h, c = ours(x1, (h, c))
        h2, c2 = ours(x2)
        return ours(x2, (h + h2, c * c2))

    backend = aot_autograd(fw_compiler=keep_graph, bw_compiler=keep_graph)
    compiled = torch.compile(three_steps, fullgraph=True, backend=backend)
    results = []
    for fn in (three_steps, compiled):
        leaves = [t.to(DEVICE, torch.float32).requires_grad_() for t in (*xs, *state)]
        ours.zero_grad()
        h, c = fn(*leaves)
        ((h * cotangents[0].float().to(DEVICE)).sum() + (c * cotangents[1].float().to(DEVICE)).sum()).backward()
        results.append([h, c, *(t.grad for t in leaves), *(p.grad for p in ours.parameters())])
    for i, (a, e) in enumerate(zip(*results)):
        assert_close(a, e, rel=1e-6, name=f"tensor {i}")
    assert len(graphs) == 2, "one forward and one backward graph"
    return graphs


def test_torch_compile_fullgraph_reference():
    assert not any("fusedrnn" in g for g in compile_and_compare("reference"))


def test_torch_compile_fullgraph_triton():
    """The kernel path compiles through the custom ops fusedrnn::lstm_cell_fwd/_bwd."""
    forward, backward = compile_and_compare("triton")
    assert forward.count("fusedrnn.lstm_cell_fwd") == 3 and "lstm_cell_bwd" not in forward
    assert backward.count("fusedrnn.lstm_cell_bwd") == 3


# ----------------------------------------------------------------------------------------
# Module plumbing.


def test_state_dict_parameters_and_repr_are_torch_s():
    theirs = torch.nn.LSTMCell(5, 7, bias=False)
    ours = LSTMCell(5, 7, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert all(p.abs().max() <= 7**-0.5 for p in LSTMCell(5, 7).parameters())
    assert repr(LSTMCell(5, 7, bias=False)) == repr(theirs) == "LSTMCell(5, 7, bias=False)"
    assert repr(LSTMCell(5, 7, backend="triton")) == "LSTMCell(5, 7, backend='triton')"
    assert isinstance(ours, torch.nn.LSTMCell)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_hidden_size_is_reported_before_a_dtype_mismatch(backend):
    """PyTorch's own test_modules error samples: a float64 input with a wrong hidden size
    reports the size, as torch checks sizes before the dtypes meet."""
    x = torch.randn(B_, I_, dtype=torch.float64)
    hx = (torch.randn(B_, H_ + 1, dtype=torch.float64),) * 2
    for cell in (torch.nn.LSTMCell(I_, H_), LSTMCell(I_, H_, backend=backend)):
        with pytest.raises(RuntimeError, match="hidden_size"):
            cell(x, hx)


def test_auto_runs_torch_s_cell_on_cpu_and_bias_grads_are_distinct():
    cell = LSTMCell(3, 16)
    h, _ = cell(torch.randn(2, 3, requires_grad=True))
    assert "LSTMCellFunction" not in type(h.grad_fn).__name__  # torch's op (tests/test_cpu_path.py)
    cell = LSTMCell(3, 16, backend="triton", device=DEVICE)
    h, _ = cell(torch.randn(2, 3, device=DEVICE))
    assert "LSTMCellFunction" in type(h.grad_fn).__name__
    grad_ih, grad_hh = torch.autograd.grad(h.sum(), [cell.bias_ih, cell.bias_hh])
    assert torch.equal(grad_ih, grad_hh) and grad_ih is not grad_hh


# ----------------------------------------------------------------------------------------
# CUDA: the kernel against torch's CUDA cell (its fused kernel, no cuDNN), both judged
# against float64.


@NEEDS_CUDA
@CUDA_DTYPES
@pytest.mark.parametrize(
    "shape", [(3, 16, 32, 64), (4, 5, 20, 300), (2, 130, 70, 1030)], ids=lambda s: "T{}-B{}-I{}-H{}".format(*s)
)
def test_kernel_no_worse_than_torch_cuda_cell(dtype, tf32, shape):
    """fp32: TF32 on or off for both, by torch.backends.cuda.matmul.allow_tf32 (torch's cell
    runs cuBLAS GEMMs, not cuDNN)."""
    T, B, I, H = shape
    torch.backends.cuda.matmul.allow_tf32 = tf32  # restored by the ieee_fp32 fixture
    ours, reference = make_pair(I, H, backend="triton", dtype=dtype, device="cuda")
    theirs = torch.nn.LSTMCell(I, H).to("cuda", dtype)
    theirs.load_state_dict(reference.state_dict())
    xs, state, cotangents = random_steps(T, B, I, H)
    exact = run(reference, xs, state, cotangents)
    got_ours = run(ours, xs, state, cotangents, dtype=dtype, device="cuda")
    got_torch = run(theirs, xs, state, cotangents, dtype=dtype, device="cuda")
    atol = 1e-6 if dtype == torch.float32 and not tf32 else torch.finfo(dtype).eps / 2
    assert all(got_ours[name].dtype == got_torch[name].dtype for name in exact)
    assert_no_worse_than(got_ours, got_torch, exact, atol=atol, baseline_name="torch")


@NEEDS_CUDA
def test_cuda_autocast_like_torch():
    """On CUDA lstm_cell is on autocast's lower-precision list: outputs in the autocast dtype."""
    ours, reference = make_pair(20, 64, backend="auto", device="cuda")
    theirs = torch.nn.LSTMCell(20, 64).cuda()
    theirs.load_state_dict(reference.state_dict())
    x, h, c = torch.randn(8, 20, device="cuda"), torch.randn(8, 64, device="cuda"), torch.randn(8, 64, device="cuda")
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            for hx in ((h, c), None):
                expected, actual = theirs(x, hx), ours(x, hx)
                for a, e in zip(actual, expected):
                    assert a.dtype == e.dtype == dtype
                    assert_close(a, e, rel=4 * torch.finfo(dtype).eps)

"""fusedrnn.LSTM against torch.nn.LSTM with a shared state_dict.

On CPU: the reference backend and the Triton kernels under the interpreter, compared with
torch's CPU LSTM. With CUDA: the kernels compared with cuDNN, both judged against a float64
reference (err(ours) <= 2 * err(cuDNN) + atol), whose gradients the hand-derived BPTT oracle
confirms.
"""

import pytest
import torch
from helpers import CUDA_DTYPES, DEVICE, NEEDS_CUDA, random_cotangents

import fusedrnn
from fusedrnn.kernels.reference import lstm_layers_reference_backward
from fusedrnn.testing import assert_close, assert_no_worse_than, module_forward_backward

BACKENDS = ["reference", "triton"]


def make_pair(I, H, *, backend, dtype=torch.float32, device="cpu", seed=0, **kwargs):
    torch.manual_seed(seed)
    theirs = torch.nn.LSTM(I, H, dtype=torch.float64, **kwargs)
    ours = fusedrnn.LSTM(I, H, backend=backend, dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours.to(device, dtype), theirs


def compare_with_torch(ours, theirs, x, hx, *, rel, device="cpu", dtype=torch.float32):
    """Both modules on the same input and cotangents; every tensor compared by name."""
    with torch.no_grad():
        y, (h_n, c_n) = theirs(x, hx)
    cotangents = random_cotangents(y, h_n, c_n)
    expected = module_forward_backward(theirs, x, hx, cotangents)
    cast = lambda t: t.to(device, dtype)  # noqa: E731
    actual = module_forward_backward(ours, cast(x), tuple(map(cast, hx)) if hx else None, cotangents)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert_close(actual[name], expected[name], rel=rel, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch_lstm_fp32(backend, batch_first, hx, bias):
    T, B, I, H = 6, 5, 9, 23  # sizes the kernel tests do not use
    ours, theirs = make_pair(I, H, backend=backend, device=DEVICE, batch_first=batch_first, bias=bias)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    state = (torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)) if hx else None
    compare_with_torch(ours, theirs, x, state, rel=1e-5, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_unbatched_input(backend, batch_first):
    T, I, H = 4, 3, 11
    ours, theirs = make_pair(I, H, backend=backend, device=DEVICE, batch_first=batch_first)
    x = torch.randn(T, I, dtype=torch.float64)
    state = (torch.randn(1, H, dtype=torch.float64), torch.randn(1, H, dtype=torch.float64))
    compare_with_torch(ours, theirs, x, state, rel=1e-5, device=DEVICE)
    compare_with_torch(ours, theirs, x, None, rel=1e-5, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_in_eval_mode(backend):
    """cuDNN refuses RNN backward in eval mode; fusedrnn does not."""
    ours, theirs = make_pair(4, 8, backend=backend, device=DEVICE)
    ours.eval()
    theirs.eval()
    compare_with_torch(ours, theirs, torch.randn(3, 2, 4, dtype=torch.float64), None, rel=1e-5, device=DEVICE)


def test_float64_module_on_auto_backend_matches_torch():
    ours, theirs = make_pair(4, 8, backend="auto", dtype=torch.float64)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    compare_with_torch(ours, theirs, x, None, rel=1e-12, dtype=torch.float64)


def test_state_dict_and_parameters_are_torch_s():
    theirs = torch.nn.LSTM(5, 7, bias=False)
    ours = fusedrnn.LSTM(5, 7, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    theirs2 = torch.nn.LSTM(5, 7, bias=False)
    theirs2.load_state_dict(ours.state_dict())
    for (n, a), (_, b) in zip(theirs.named_parameters(), theirs2.named_parameters()):
        assert torch.equal(a, b), n
    # torch's init: U(-1/sqrt(H), 1/sqrt(H))
    assert all(p.abs().max() <= 7**-0.5 for p in fusedrnn.LSTM(5, 7).parameters())
    assert repr(fusedrnn.LSTM(5, 7, batch_first=True)) == "LSTM(5, 7, batch_first=True)"
    assert "backend='reference'" in repr(fusedrnn.LSTM(5, 7, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_states_are_fresh_tensors_and_bias_grads_distinct(backend):
    """As with torch.nn.LSTM: h_n and c_n can be detached and reset in place, and the kernels'
    two bias gradients are two tensors (on the reference path autograd decides: b_ih + b_hh
    hands both the same gradient)."""
    lstm = fusedrnn.LSTM(4, 8, backend=backend, device=DEVICE)
    x = torch.randn(3, 2, 4, device=DEVICE)
    y, (h_n, c_n) = lstm(x)
    h_n.detach_()
    c_n.mul_(0.5)
    grad_ih, grad_hh = torch.autograd.grad(y.sum(), [lstm.bias_ih_l0, lstm.bias_hh_l0])
    assert torch.equal(grad_ih, grad_hh)
    if backend == "triton":
        assert grad_ih is not grad_hh
    y, (h_n, c_n) = lstm(x)
    with torch.no_grad():
        c_n[:, 0] = 0
    y.sum().backward()  # the saved tensors were not touched


def test_auto_backend_runs_torch_s_own_lstm_on_cpu():
    """Not the kernels (interpreted on CPU) and not the reference: torch's op (tests/test_cpu_path.py)."""
    lstm = fusedrnn.LSTM(3, 4)
    y, _ = lstm(torch.randn(2, 1, 3, requires_grad=True))
    assert "RecurrenceFunction" not in type(y.grad_fn).__name__
    ref = fusedrnn.LSTM(3, 4, backend="reference")
    y_ref, _ = ref(torch.randn(2, 1, 3, requires_grad=True))
    assert type(y.grad_fn) is not type(y_ref.grad_fn)


# ----------------------------------------------------------------------------------------
# CUDA: kernels against cuDNN, both judged against float64.


def bptt_oracle(module, x, hx, cotangents):
    """The float64 gradients of a time-major torch.nn.LSTM (no dropout) by hand-derived BPTT,
    keyed as module_forward_backward keys them."""
    grads = lstm_layers_reference_backward(
        x, hx, module._flat_weights, *cotangents, num_layers=module.num_layers, bidirectional=module.bidirectional
    )
    by_name = {"grad input": grads["input"], "grad h0": grads["h0"], "grad c0": grads["c0"]}
    by_name.update({f"grad {n}": g for n, g in zip(module._flat_weights_names, grads["weights"])})
    return by_name


@NEEDS_CUDA
@CUDA_DTYPES
@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((16, 8, 32, 64), {}),
        ((33, 5, 20, 300), {}),
        ((12, 6, 20, 80), dict(num_layers=2, bidirectional=True, proj_size=24)),  # one launch, 2 phases
        ((12, 6, 20, 200), dict(num_layers=2, bidirectional=True, proj_size=72)),  # per step
    ],
    ids=["T16-B8-I32-H64", "T33-B5-I20-H300", "L2-bi-H80-P24", "L2-bi-H200-P72"],
)
def test_kernels_no_worse_than_cudnn(dtype, tf32, shape, kwargs):
    T, B, I, H = shape
    torch.backends.cudnn.allow_tf32 = tf32  # restored by the ieee_fp32 fixture
    ours, reference = make_pair(I, H, backend="triton", dtype=dtype, device="cuda", **kwargs)
    cudnn = torch.nn.LSTM(I, H, **kwargs).to("cuda", dtype)
    cudnn.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    states = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    hx = (
        torch.randn(states, B, kwargs.get("proj_size") or H, dtype=torch.float64),
        torch.randn(states, B, H, dtype=torch.float64),
    )
    with torch.no_grad():
        cotangents = random_cotangents(*(lambda y, s: (y, *s))(*reference(x, hx)))
    cast = lambda t: t.to("cuda", dtype)  # noqa: E731
    exact = module_forward_backward(reference, x, hx, cotangents)
    got_ours = module_forward_backward(ours, cast(x), tuple(map(cast, hx)), cotangents)
    got_cudnn = module_forward_backward(cudnn, cast(x), tuple(map(cast, hx)), cotangents)
    # Third oracle: the float64 gradients both are judged by agree with hand-derived BPTT
    # (two float64 computations: ulps apart).
    for name, grad in bptt_oracle(reference, x, hx, cotangents).items():
        assert_close(exact[name], grad, rel=1e-12, name=f"{name}, autograd vs BPTT oracle")
    atol = 1e-6 if dtype == torch.float32 and not tf32 else torch.finfo(dtype).eps / 2
    assert_no_worse_than(got_ours, got_cudnn, exact, atol=atol, baseline_name="cuDNN")

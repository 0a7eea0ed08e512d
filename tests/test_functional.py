"""Bad input: fusedrnn raises what torch.nn.LSTM raises, on every backend; the functional
API and the backend switch reject what they cannot do with a clear message."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import DEVICE

import fusedrnn
from fusedrnn import functional as F

B, T, I, H = 2, 3, 4, 5


def x3(*shape, **kw):
    return torch.randn(*shape, **kw)


# Each case: a function (module) -> forward call that must fail, and what our message says.
BAD_INPUTS = {
    "input 4-D": (lambda m: m(x3(T, B, I, 1)), "2D or 3D"),
    "input 1-D": (lambda m: m(x3(I)), "2D or 3D"),
    "wrong input size": (lambda m: m(x3(T, B, I + 1)), "input_size"),
    "wrong h0 shape": (lambda m: m(x3(T, B, I), (x3(1, B + 1, H), x3(1, B, H))), r"hidden\[0\] size"),
    "wrong c0 shape": (lambda m: m(x3(T, B, I), (x3(1, B, H), x3(1, B, H + 1))), r"hidden\[1\] size"),
    "2-D hx with batched input": (lambda m: m(x3(T, B, I), (x3(B, H), x3(B, H))), "3-D"),
    "3-D hx with unbatched input": (lambda m: m(x3(T, I), (x3(1, 1, H), x3(1, 1, H))), "2-D"),
    "three hidden states": (lambda m: m(x3(T, B, I), (x3(1, B, H),) * 3), "two hidden states"),
    "hx a single tensor": (lambda m: m(x3(T, B, I), x3(1, B, H)), "index"),
    "input dtype differs from weights": (lambda m: m(x3(T, B, I, dtype=torch.float64)), "dtype"),
    "h0 dtype differs": (lambda m: m(x3(T, B, I), (x3(1, B, H, dtype=torch.float64), x3(1, B, H))), r"hidden\[0\] dtype"),
    "c0 dtype differs": (lambda m: m(x3(T, B, I), (x3(1, B, H), x3(1, B, H, dtype=torch.float64))), r"hidden\[1\] dtype"),
    "hidden on another device": (
        lambda m: m(x3(T, B, I), (x3(1, B, H, device="meta"), x3(1, B, H))),
        "Input and hidden tensors are not at the same device",
    ),
    "input on another device": (
        lambda m: m(x3(T, B, I, device="meta")),
        "Input and parameter tensors are not at the same device",
    ),
    "empty sequence": (lambda m: m(x3(0, B, I)), "sequence length"),
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_like_torch(case, backend):
    call, message = BAD_INPUTS[case]
    with pytest.raises(Exception) as theirs:
        call(torch.nn.LSTM(I, H))
    with pytest.raises(type(theirs.value), match=message):
        call(fusedrnn.LSTM(I, H, backend=backend))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_autocast_runs_in_the_autocast_dtype_like_torch(backend):
    """torch.nn.LSTM under autocast casts input, states and weights to the autocast dtype and
    returns that dtype (cuDNN on CUDA, oneDNN on CPU). Gradients reach the fp32 parameters."""
    lstm = fusedrnn.LSTM(I, H, num_layers=2, backend=backend, device=DEVICE)
    x = x3(T, B, I, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y, (h, c) = lstm(x)
    assert (y.dtype, h.dtype, c.dtype) == (torch.bfloat16,) * 3
    expected = fusedrnn.LSTM(I, H, num_layers=2, backend=backend, device=DEVICE)
    expected.load_state_dict(lstm.state_dict())
    y_bf16, _ = expected.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert torch.equal(y, y_bf16)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())


def test_autocast_leaves_float64_alone():
    lstm = fusedrnn.LSTM(I, H, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = lstm(x3(T, B, I, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_meta_device_gives_shapes_like_torch():
    ours = fusedrnn.LSTM(I, H, device="meta")(x3(T, B, I, device="meta"))
    theirs = torch.nn.LSTM(I, H, device="meta")(x3(T, B, I, device="meta"))
    assert [ours[0].shape, ours[1][0].shape, ours[1][1].shape] == [theirs[0].shape, theirs[1][0].shape, theirs[1][1].shape]


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        fusedrnn.LSTM(I, H, backend="cudnn")
    lstm = torch.nn.LSTM(I, H)
    with pytest.raises(ValueError, match="backend"):
        F.lstm(x3(T, B, I), None, *lstm.parameters(), backend="fast")


def test_functional_rejects_bad_weights():
    w_ih, w_hh, b_ih, b_hh = torch.nn.LSTM(I, H).parameters()
    with pytest.raises(RuntimeError, match="weight_hh"):
        F.lstm(x3(T, B, I), None, w_ih, w_hh[:, :-1], b_ih, b_hh)
    with pytest.raises(RuntimeError, match="weight_ih"):
        F.lstm(x3(T, B, I), None, w_ih[:-1], w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="bias_hh"):
        F.lstm(x3(T, B, I), None, w_ih, w_hh, b_ih, b_hh[:-1])
    with pytest.raises(ValueError, match="both"):
        F.lstm(x3(T, B, I), None, w_ih, w_hh, b_ih, None)
    with pytest.raises(ValueError, match="3-D"):
        F.lstm(x3(T, I), None, w_ih, w_hh, b_ih, b_hh)


def test_triton_backend_rejects_float64():
    lstm = fusedrnn.LSTM(I, H, backend="triton", dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        lstm(x3(T, B, I, dtype=torch.float64, device=DEVICE))


def test_empty_batch_gives_empty_outputs():
    ours, theirs = fusedrnn.LSTM(I, H, backend="triton"), torch.nn.LSTM(I, H)
    y, (h, c) = ours(x3(T, 0, I))
    y2, (h2, c2) = theirs(x3(T, 0, I))
    assert (y.shape, h.shape, c.shape) == (y2.shape, h2.shape, c2.shape)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter error")
def test_triton_backend_on_cpu_without_interpreter_says_how():
    code = (
        "import torch, fusedrnn\n"
        "try:\n"
        "    fusedrnn.LSTM(3, 4, backend='triton')(torch.randn(2, 1, 3))\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "TRITON_INTERPRET=1" in result.stdout, result.stdout + result.stderr

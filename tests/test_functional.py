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


@pytest.mark.parametrize(
    "kwargs, feature",
    [({"num_layers": 2}, "num_layers"), ({"bidirectional": True}, "bidirectional"), ({"proj_size": 2}, "proj_size")],
)
def test_unsupported_configurations_say_what_is_missing(kwargs, feature):
    with pytest.raises(NotImplementedError, match=feature):
        fusedrnn.LSTM(I, H, **kwargs)


def test_packed_sequence_is_not_supported_yet():
    packed = torch.nn.utils.rnn.pack_padded_sequence(x3(T, B, I), [3, 2])
    with pytest.raises(NotImplementedError, match="PackedSequence"):
        fusedrnn.LSTM(I, H)(packed)


def test_autocast_is_not_supported_yet():
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(NotImplementedError, match="autocast"):
        fusedrnn.LSTM(I, H)(x3(T, B, I))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(NotImplementedError, match="autocast"):
        F.lstm(x3(T, B, I), None, *torch.nn.LSTM(I, H).parameters(), backend="triton")


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

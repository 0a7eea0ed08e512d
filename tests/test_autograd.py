"""fusedrnn/autograd.py's host GEMMs: grad h0's product is IEEE fp32 even under TF32
(``mm_ieee``, bench/NOTES.md v1.13), eager and compiled, for every cell."""

import pytest
import torch
from helpers import DEVICE, HAS_CUDA

import fusedrnn
from fusedrnn import autograd

T, B, I, H = 3, 2, 4, 5


@pytest.fixture
def tf32_allowed():
    """What a user who turned TF32 on has set (``torch.set_float32_matmul_precision("high")``)."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision, torch.backends.cudnn.allow_tf32
    matmul.fp32_precision = "tf32"
    torch.backends.cudnn.allow_tf32 = True
    yield
    matmul.fp32_precision, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def mm_calls(monkeypatch):
    """Every torch.mm call (``mm_ieee``'s product; the other GEMMs use ``@``): the operands'
    shapes and cuBLAS's fp32 precision at the time."""
    calls, mm = [], torch.mm

    def recording(a, b, *args, **kwargs):
        calls.append((tuple(a.shape), tuple(b.shape), torch.backends.cuda.matmul.fp32_precision))
        return mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", recording)
    return calls


def test_mm_ieee_takes_its_product_in_ieee_and_restores_the_callers_setting(tf32_allowed, mm_calls):
    a, b = torch.randn(3, 8, device=DEVICE), torch.randn(8, 4, device=DEVICE)
    torch.testing.assert_close(torch.ops.fusedrnn.mm_ieee(a, b), a @ b, rtol=0, atol=0)
    assert mm_calls == [((3, 8), (8, 4), "ieee")]
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_mm_ieee_restores_the_setting_when_the_product_fails(tf32_allowed):
    with pytest.raises(RuntimeError):
        autograd.mm_ieee(torch.randn(3, 8), torch.randn(7, 4))
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_mm_ieee_from_two_threads_leaves_the_callers_setting(tf32_allowed, monkeypatch):
    """Each device's backward runs in its own thread. Interleaved, two unguarded
    save/set/restore sequences leave IEEE set for good: here the two products meet, and the
    second in (which saved the first's IEEE) restores last."""
    import threading
    import time

    mm, meeting = torch.mm, threading.Barrier(2, timeout=0.5)

    def meet(a, b):
        try:
            if meeting.wait() == 1:
                time.sleep(0.05)
        except threading.BrokenBarrierError:  # serialized (the lock): nobody to meet
            pass
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", meet)
    a, b = torch.randn(3, 8), torch.randn(8, 4)
    threads = [threading.Thread(target=autograd.mm_ieee, args=(a, b)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_mm_ieee_passes_opcheck():
    torch.library.opcheck(torch.ops.fusedrnn.mm_ieee.default, (torch.randn(3, 8), torch.randn(8, 4)))


LAYERS = {"lstm": (fusedrnn.LSTM, {}, 4), "rnn_tanh": (fusedrnn.RNN, {}, 1), "gru": (fusedrnn.GRU, {}, 3)}


def grad_h0_products(cell, compiled=False, dtype=torch.float32):
    """Run a 2-layer bidirectional ``cell`` forward and backward on the triton backend, h0
    given; return the cell's gate count."""
    layer, kwargs, gates = LAYERS[cell]
    torch.manual_seed(0)
    module = layer(I, H, num_layers=2, bidirectional=True, backend="triton", device=DEVICE, dtype=dtype, **kwargs)
    x = torch.randn(T, B, I, device=DEVICE, dtype=dtype)
    h0 = torch.randn(4, B, H, device=DEVICE, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(4, B, H, device=DEVICE, dtype=dtype)) if cell == "lstm" else h0
    run = torch.compile(module, fullgraph=True, backend="aot_eager") if compiled else module
    y, _ = run(x, hx)
    y.sum().backward()
    assert h0.grad is not None
    return gates


@pytest.mark.parametrize("cell", list(LAYERS))
def test_grad_h0_product_is_ieee_under_tf32_for_every_cell(cell, tf32_allowed, mm_calls):
    """One (B, G*H) x (G*H, H) product per layer and direction, each with TF32 off, and the
    user's setting back afterwards. Fails if dh0 goes back to a plain ``@`` (no torch.mm)."""
    gates = grad_h0_products(cell)
    assert mm_calls == [((B, gates * H), (gates * H, H), "ieee")] * 4
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_grad_h0_product_stays_ieee_in_a_compiled_backward(tf32_allowed, mm_calls):
    """torch.compile traces the backward once; the op keeps the product IEEE when the compiled
    graph runs (a setting flipped inside the traced code would have been read at trace time)."""
    torch._dynamo.reset()
    try:
        gates = grad_h0_products("lstm", compiled=True)
    finally:
        torch._dynamo.reset()
    # The compiled graph runs its other GEMMs through torch.mm too, under the user's setting.
    dh0_shapes = ((B, gates * H), (gates * H, H))
    assert [call for call in mm_calls if call[:2] == dh0_shapes] == [(*dh0_shapes, "ieee")] * 4
    assert any(precision == "tf32" for *_, precision in mm_calls)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device: TF32 exists only there")
def test_mm_ieee_is_fp32_accurate_where_tf32_is_allowed(tf32_allowed):
    """On the GPU: under TF32 a plain product is off by TF32's rounding (about 1e-3 relative:
    the check that TF32 is really on), mm_ieee by fp32's (under 1e-5)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(64, 512, device="cuda", generator=g)
    b = torch.randn(512, 128, device="cuda", generator=g)
    exact = a.double() @ b.double()

    def rel(t):
        return float((t.double() - exact).norm() / exact.norm())

    assert rel(a @ b) > 1e-4, "TF32 is not on for a plain product: this test checks nothing"
    assert rel(torch.ops.fusedrnn.mm_ieee(a, b)) < 1e-5

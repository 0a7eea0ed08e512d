"""Device helpers shared by the Triton kernels, and the host helpers of their launchers."""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """tanh to about an ulp in fp32 (libdevice tanh does not exist in the interpreter).

    (1 - e) / (1 + e) with e = exp(-2|x|) saturates cleanly (e -> 0, no inf/inf = NaN) but
    cancels near zero, where small cell states live; below |x| = 1/4 the Taylor series to
    x^9 takes over (its first omitted term is below 1e-8 relative there). 2*sigmoid(2x) - 1
    had the same cancellation: a 1e-7 absolute floor, 1e-5 relative for |x| ~ 0.01.
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(ax < 0.25, series, tl.where(x < 0, -t, t))


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was defined under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}

# Tests set this to True to fill every kernel output with NaN before launch, so an element a
# kernel forgets to write cannot pass by holding a plausible value.
POISON_OUTPUTS = False


def empty_output(*shape, dtype, device) -> torch.Tensor:
    """Allocate a tensor that a kernel will fully overwrite. The one place outputs come from."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out

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
    # 2*sigmoid(2x) - 1 saturates cleanly to +-1; (1 - e^-2x) / (1 + e^-2x) turns into
    # inf/inf = NaN for x <= -50, and libdevice tanh does not exist in the interpreter.
    return 2.0 * sigmoid(2.0 * x) - 1.0


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

"""Device helpers shared by the Triton kernels (activations; a step's gate tiles, loaded,
stored and multiplied, for any gate count), and the host helpers of their launchers. A cell's
own math is in ``kernels/cell_math.py``."""

from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .aot import log_compiles_from_environment

# Every kernel module imports this one: a process started with FUSEDRNN_COMPILE_LOG logs each
# build from its first launch on (kernels/aot.py).
log_compiles_from_environment()


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


@triton.jit
def mask_while(mask, condition):
    """``mask`` where the scalar ``condition`` holds, else all off: ``mask & condition`` as a
    select, because Triton 3.9's interpreter broadcasts a scalar comparison to int32 data and
    then refuses the result as a load mask (compiled, both are one predicate)."""
    return tl.where(condition, mask, False)


@triton.jit
def load_gate_tiles(p_g, H, mask, GATES: tl.constexpr):
    """The GATES (rows, units) tiles at p_g, p_g + H, ... (a step's gates, in the cell's gate
    order), in fp32, as a tuple."""
    tiles = ()
    for gate in tl.static_range(GATES):
        tiles = tiles + (tl.load(p_g + gate * H, mask=mask, other=0.0).to(tl.float32),)
    return tiles


@triton.jit
def store_gate_tiles(p_g, H, tiles, mask, GATES: tl.constexpr):
    """Store the tuple of GATES (rows, units) tiles at p_g, p_g + H, ..., cast to p_g's
    element type."""
    ty = p_g.dtype.element_ty
    for gate in tl.static_range(GATES):
        tl.store(p_g + gate * H, tiles[gate].to(ty), mask=mask)


@triton.jit
def dot_operand(x, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """An activation (h, dG) as an operand of tl.dot: cast to DOT_DTYPE and, for a float32
    dot in TF32, rounded to the nearest TF32 value (ties away from zero, what cuBLAS's and
    cuDNN's cvt.rna give). Weights are rounded once per call on the host instead
    (``tf32_rounded``; ``weight_operand``).

    Why: the tensor cores read an fp32 operand's top 19 bits, and Triton 3.6 passes fp32
    operands to them unrounded, so a TF32 tl.dot truncates. On an H200 (2026-12-04) that left
    the kernels' fp32-TF32 errors at 2 to 3 times cuDNN's and cuBLAS's, most in the backward's
    dh chain (bench/NOTES.md, v1.9). Rounded here, the hardware's truncation is exact; under the
    interpreter, which multiplies in fp32, the dot then models TF32's rounding. NaN is kept
    (the bit arithmetic would wrap some NaNs to zero); a finite value that rounds past the
    largest float becomes inf, as cvt.rna gives."""
    x = x.to(DOT_DTYPE)
    if DOT_DTYPE == tl.float32 and INPUT_PRECISION == "tf32":
        bits = x.to(tl.int32, bitcast=True)
        # Only NaN patterns can carry past the sign bit: no overflow check (TRITON_DEBUG would
        # assert on them); 13 low mantissa bits cleared.
        rounded = tl.add(bits, 0x1000, sanitize_overflow=False) & -0x2000
        # NaN told from the bits, not by x != x, which kept the float alive beside them (an
        # 8 B spill in an sm_90 build, bench/NOTES.md v1.9).
        x = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, bits, rounded).to(tl.float32, bitcast=True)
    return x


@triton.jit
def weight_operand(w, DOT_DTYPE: tl.constexpr):
    """A weight (W_hh, W_hr) as an operand of tl.dot: cast only. In TF32 the recurrence's
    launchers pass weights already rounded (``tf32_rounded``): rounded here, every streamed W tile went
    through registers between its load and its dot, and the fp32 per-step rows ran 1.5 to
    1.7 times slower on an H200 (bench/NOTES.md v1.11)."""
    return w.to(DOT_DTYPE)


def tf32_rounded(t):
    """A float32 tensor rounded to the nearest TF32 value, as ``dot_operand`` rounds (the
    same bit arithmetic: add 2^12, clear the 13 low mantissa bits; NaN kept)."""
    bits = t.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & -0x2000  # int32 wraps for NaN patterns only, as on the device
    return torch.where((bits & 0x7FFFFFFF) > 0x7F800000, bits, rounded).view(torch.float32)


@triton.jit
def load_weight_tiles(p_w, gate_rows, mask_w, DOT_DTYPE: tl.constexpr, GATES: tl.constexpr):
    """Every gate's tile of W at p_w, gate_rows elements apart, as dot operands (a tuple):
    the weights a program holds across the steps (W_RESIDENT)."""
    tiles = ()
    for gate in tl.static_range(GATES):
        w = tl.load(p_w + gate * gate_rows, mask=mask_w, other=0.0)
        tiles = tiles + (weight_operand(w, DOT_DTYPE),)
    return tiles


@triton.jit
def zero_gate_tiles(BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, GATES: tl.constexpr):
    """GATES fp32 accumulators of (BLOCK_B, BLOCK_U), zero, as a tuple."""
    tiles = ()
    for _ in tl.static_range(GATES):
        tiles = tiles + (tl.zeros((BLOCK_B, BLOCK_U), dtype=tl.float32),)
    return tiles


@triton.jit
def gates_matmul(acc, p_a, mask_a, p_w, stride_w, mask_u, H, K, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr, GATES: tl.constexpr, W_ROUNDED: tl.constexpr):  # fmt: skip
    """acc[gate] += A @ W[gate*H + units, :K]^T for every gate (acc: a tuple of GATES fp32
    tiles). p_a: (rows, BLOCK_K) pointers to A's first K chunk, element k of a row at +k
    (2-D, so that a caller choosing each row's source selects whole tiles, which stay aligned:
    ``recurrence._h_prev_tiles``); p_w: pointers to the rows of W
    of the first gate's units (element k at +k). A's chunk is loaded once for every gate; each
    gate's W tile is loaded just before its dot, so one is live at a time. W_ROUNDED: W comes
    rounded for the dot from the launcher (the recurrence, which reads W every step), else it
    is rounded here like A (the one-step cell kernel, which reads W once a launch: a host
    pass over W would cost more than the kernel's own read)."""
    offs_k = tl.arange(0, BLOCK_K)
    gate_rows = tl.cast(H, tl.int64) * stride_w
    for k0 in range(0, K, BLOCK_K):
        offs_kk = k0 + offs_k
        mask_k = offs_kk < K
        # A may be h_{t-1}, written by other programs of a persistent launch: visible through
        # the barrier's acquire; .cg keeps it out of L1, where it is never reused.
        b_a = tl.load(p_a + k0, mask=mask_a[:, None] & mask_k[None, :], other=0.0, cache_modifier=".cg")
        b_a = dot_operand(b_a, DOT_DTYPE, INPUT_PRECISION)
        # W tile transposed to (BLOCK_K, units): element [k, u] = W[gate*H + u, k].
        p_wk = p_w[None, :] + offs_kk[:, None]
        mask_w = mask_k[:, None] & mask_u[None, :]
        summed = ()
        for gate in tl.static_range(GATES):
            b_w = tl.load(p_wk + gate * gate_rows, mask=mask_w, other=0.0)
            if W_ROUNDED:
                b_w = weight_operand(b_w, DOT_DTYPE)
            else:
                b_w = dot_operand(b_w, DOT_DTYPE, INPUT_PRECISION)
            summed = summed + (acc[gate] + tl.dot(b_a, b_w, input_precision=INPUT_PRECISION),)
        acc = summed
    return acc


MIN_DOT = 16  # tl.dot needs every dimension >= 16 on the GPU (the interpreter does not check)


def cdiv(a, b):
    """ceil(a / b) for ints. triton.cdiv and triton.next_power_of_2 are JIT functions: a host
    call costs about 2 us each, and planning made dozens a launch (bench/NOTES.md, host time)."""
    return -(-a // b)


def padded(n, cap=None):
    """n rounded up to a power of two, at least MIN_DOT (and at most ``cap``, a power of two)."""
    block = max(MIN_DOT, 1 << (n - 1).bit_length())
    return block if cap is None else min(cap, block)


def launch_context(like):
    """Triton launches on the current CUDA device and stream: make that the tensors' device."""
    return torch.cuda.device(like.device) if like.is_cuda else nullcontext()


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was defined under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return isinstance(kernel, InterpretedFunction)


TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}



def check_kernel_dtype(dtype):
    """The Triton kernels' dtype rule, with the one error message every launcher raises."""
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"fusedrnn's Triton kernels support float32, float16 and bfloat16, got {dtype}")


# Tests set this to True to fill every kernel output with NaN before launch, so an element a
# kernel forgets to write cannot pass by holding a plausible value.
POISON_OUTPUTS = False


def empty_output(*shape, dtype, device) -> torch.Tensor:
    """Allocate a tensor that a kernel will fully overwrite. The one place outputs come from."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out

"""Fused Triton kernels of one LSTM cell step (``torch.nn.LSTMCell``) and their launchers.

Forward, one launch: ``gates = x W_ih^T + h W_hh^T + b_ih + b_hh``, the activations and the
cell update ``c' = f*c + i*g``, ``h' = o*tanh(c')``. Program ``(pid_b, pid_h)`` owns
``BLOCK_B`` batch rows and ``BLOCK_H`` hidden units and computes all four gates of its units
(rows ``gate*H + units`` of both weights, PyTorch's gate order i, f, g, o), so the cell update
needs nothing from other programs. Both products run over K in chunks, accumulated in fp32.

Backward, one elementwise launch: the gradient of the pre-activation gates and of ``c`` from
the saved pre-activations. The GEMMs around it (``dx = dG W_ih``, ``dh = dG W_hh``,
``dW_ih = dG^T x``, ``dW_hh = dG^T h``, ``db = sum dG``) are cuBLAS, in the autograd Function
(``fusedrnn.cell``).

Dtypes. ``x``, ``h`` and the weights share one dtype; ``c`` may have another (torch promotes:
``h'`` and ``c'`` take ``promote(x, c)``). The pre-activations are saved in fp32.
"""

import torch
import triton
import triton.language as tl

from ._helpers import (
    MIN_DOT,
    TRITON_DTYPES,
    cdiv,
    check_kernel_dtype,
    empty_output,
    gates_matmul,
    is_interpreted,
    launch_context,
    padded,
    store_gate_tiles,
    zero_gate_tiles,
)
from .cell_math import cell_grads, cell_update, load_activations

# Block sizes. Tests lower them to get several programs and K chunks on small shapes.
BLOCK_H = 32
MAX_BLOCK_B = 64  # wider batch blocks re-read the weight tiles less often
MAX_BLOCK_K = 64  # 16-bit operands; fp32 takes half (twice the bytes per W tile)


@triton.jit
def _bias(p_b_ih, p_b_hh, offs_u, mask_u):
    """(b_ih + b_hh)[units] in fp32, as a (1, units) row."""
    b_ih = tl.load(p_b_ih + offs_u, mask=mask_u, other=0.0).to(tl.float32)
    b_hh = tl.load(p_b_hh + offs_u, mask=mask_u, other=0.0).to(tl.float32)
    return (b_ih + b_hh)[None, :]


@triton.jit(do_not_specialize=["B"])
def _lstm_cell_fwd_kernel(
    p_x,  # (B, I), rows contiguous
    p_h,  # (B, H), rows contiguous (HAS_STATE)
    p_c,  # (B, H) (HAS_STATE)
    p_w_ih,  # (4H, I)
    p_w_hh,  # (4H, H)
    p_b_ih,  # (4H,) (HAS_BIAS)
    p_b_hh,  # (4H,) (HAS_BIAS)
    p_h_out,  # (B, H) contiguous: h'
    p_c_out,  # (B, H) contiguous: c'
    p_gates,  # (B, 4H) fp32 contiguous: pre-activation gates (i, f, g, o), for the backward
    B,
    I,
    H,
    stride_xb,
    stride_hb,
    stride_cb,
    stride_ch,
    stride_w_ih,
    stride_w_hh,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_KI: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    HAS_STATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask_bh = mask_b[:, None] & mask_h[None, :]
    rows_b = offs_b.to(tl.int64)
    units = offs_h.to(tl.int64)

    acc = zero_gate_tiles(BLOCK_B, BLOCK_H, 4)
    if HAS_BIAS:
        biased = ()
        for gate in tl.static_range(4):
            biased = biased + (acc[gate] + _bias(p_b_ih + gate * H, p_b_hh + gate * H, offs_h, mask_h),)
        acc = biased
    p_x_tile = (p_x + rows_b * stride_xb)[:, None] + tl.arange(0, BLOCK_KI)[None, :]
    acc = gates_matmul(
        acc, p_x_tile, mask_b, p_w_ih + units * stride_w_ih, stride_w_ih, mask_h, H, I, BLOCK_KI,
        DOT_DTYPE, INPUT_PRECISION, 4, False,
    )  # fmt: skip
    if HAS_STATE:
        p_h_tile = (p_h + rows_b * stride_hb)[:, None] + tl.arange(0, BLOCK_KH)[None, :]
        acc = gates_matmul(
            acc, p_h_tile, mask_b, p_w_hh + units * stride_w_hh, stride_w_hh, mask_h, H, H, BLOCK_KH,
            DOT_DTYPE, INPUT_PRECISION, 4, False,
        )  # fmt: skip
        p_c_tile = p_c + rows_b[:, None] * stride_cb + units[None, :] * stride_ch
        c = tl.load(p_c_tile, mask=mask_bh, other=0.0).to(tl.float32)
    else:
        c = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)

    h_new, c_new = cell_update(acc, c, "lstm")

    offs_out = rows_b[:, None] * H + units[None, :]
    tl.store(p_h_out + offs_out, h_new.to(p_h_out.dtype.element_ty), mask=mask_bh)
    tl.store(p_c_out + offs_out, c_new.to(p_c_out.dtype.element_ty), mask=mask_bh)
    # Pre-activations, not activations: 1 - f and 1 - tanh(g)^2 lose their bits when f or
    # tanh(g) is near 1; recomputed from x they are accurate (see kernels/recurrence.py).
    store_gate_tiles(p_gates + rows_b[:, None] * (4 * H) + units[None, :], H, acc, mask_bh, 4)


@triton.jit(do_not_specialize=["B"])
def _lstm_cell_bwd_kernel(
    p_gates,  # (B, 4H) fp32 contiguous: pre-activations from the forward
    p_c,  # (B, H): c given to the forward (HAS_STATE)
    p_dh,  # (B, H), any strides (may be expanded): gradient of h' (HAS_DH)
    p_dc,  # (B, H), any strides: gradient of c' (HAS_DC)
    p_dgates,  # (B, 4H) contiguous: gradient of the pre-activations
    p_dc_prev,  # (B, H) contiguous: gradient of c
    B,
    H,
    stride_cb,
    stride_ch,
    stride_dhb,
    stride_dhh,
    stride_dcb,
    stride_dch,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_STATE: tl.constexpr,
    HAS_DH: tl.constexpr,
    HAS_DC: tl.constexpr,
):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_bh = (offs_b < B)[:, None] & (offs_h < H)[None, :]
    rows_b = offs_b.to(tl.int64)
    units = offs_h.to(tl.int64)

    acts = load_activations(p_gates + rows_b[:, None] * (4 * H) + units[None, :], H, mask_bh, "lstm", 4)
    if HAS_STATE:
        c = tl.load(p_c + rows_b[:, None] * stride_cb + units[None, :] * stride_ch, mask=mask_bh, other=0.0)
        c = c.to(tl.float32)
    else:
        c = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    # c' recomputed exactly as the forward computed it (same fp32 operations).
    c_new = acts[1] * c + acts[0] * acts[2]

    dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if HAS_DC:
        p_dc_tile = p_dc + rows_b[:, None] * stride_dcb + units[None, :] * stride_dch
        dc += tl.load(p_dc_tile, mask=mask_bh, other=0.0).to(tl.float32)
    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if HAS_DH:
        p_dh_tile = p_dh + rows_b[:, None] * stride_dhb + units[None, :] * stride_dhh
        dh += tl.load(p_dh_tile, mask=mask_bh, other=0.0).to(tl.float32)
    d_pre, dc_prev = cell_grads(acts, c, c_new, dh, dc, "lstm")
    store_gate_tiles(p_dgates + rows_b[:, None] * (4 * H) + units[None, :], H, d_pre, mask_bh, 4)
    p_dcp = p_dc_prev + rows_b[:, None] * H + units[None, :]
    tl.store(p_dcp, dc_prev.to(p_dc_prev.dtype.element_ty), mask=mask_bh)


# ----------------------------------------------------------------------------------------
# Host launchers: check, allocate, pick blocks and grid, launch. No autograd here.


def kernel_config(B, I, H, dtype, interpreted=False):
    """Constexprs and launch options of the forward kernel for x of shape (B, I), hidden size
    H and dtype."""
    check_kernel_dtype(dtype)
    max_block_k = MAX_BLOCK_K if dtype.itemsize == 2 else max(MIN_DOT, MAX_BLOCK_K // 2)
    config = dict(
        BLOCK_B=padded(B, MAX_BLOCK_B),
        BLOCK_H=padded(H, BLOCK_H),
        BLOCK_KI=padded(I, max_block_k),
        BLOCK_KH=padded(H, max_block_k),
        # The interpreter computes 16-bit dots wrongly (bf16 is stored as uint16): fp32 there.
        DOT_DTYPE=tl.float32 if interpreted else TRITON_DTYPES[dtype],
        # fp32 follows cuBLAS's switch (default: off), not cuDNN's as kernels/recurrence.py does:
        # torch.nn.LSTMCell never runs cuDNN, its two GEMMs are cuBLAS (so are our backward's).
        # For 16-bit operands the setting has no effect.
        INPUT_PRECISION="tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee",
        num_warps=4,
        num_stages=2,
    )
    for name in ("BLOCK_B", "BLOCK_H", "BLOCK_KI", "BLOCK_KH"):
        value = config[name]
        assert value >= MIN_DOT and value & (value - 1) == 0, f"{name}={value}: a power of two >= 16"
    return config


def _rows(t):
    """t with a contiguous last dimension (what the kernels' row pointers assume)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_tensor(t, name, shape, dtypes, device):
    if t.dim() != len(shape) or tuple(t.shape) != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(t.shape)}")
    if t.dtype not in dtypes or t.device != device:
        raise ValueError(f"expected {name} in {' or '.join(map(str, dtypes))} on {device}, got {t.dtype} on {t.device}")


def lstm_cell_fwd(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM cell step.

    x: (B, I); h, c: (B, H), or both None for zeros; w_ih: (4H, I), w_hh: (4H, H);
    b_ih, b_hh: (4H,) each, or both None. x, h, the weights and biases share one dtype
    (float32, float16 or bfloat16); c may have another.
    Returns ``h'`` and ``c'`` (B, H) in ``promote(x.dtype, c.dtype)``, and the pre-activation
    gates (B, 4H) in fp32, which ``lstm_cell_bwd`` needs.
    """
    if x.dim() != 2 or w_hh.dim() != 2:
        raise ValueError(f"expected x (B, I) and w_hh (4H, H), got {tuple(x.shape)} and {tuple(w_hh.shape)}")
    (B, I), H = x.shape, w_hh.shape[1]
    dtype, device = x.dtype, x.device
    for t in (x, c):
        if t is not None:
            check_kernel_dtype(t.dtype)
    _check_tensor(w_hh, "w_hh", (4 * H, H), [dtype], device)
    _check_tensor(w_ih, "w_ih", (4 * H, I), [dtype], device)
    if (b_ih is None) != (b_hh is None) or (h is None) != (c is None):
        raise ValueError("b_ih and b_hh, and h and c, must both be given or both be None")
    for name, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None:
            _check_tensor(t, name, (4 * H,), [dtype], device)
    has_state, has_bias = h is not None, b_ih is not None
    if has_state:
        _check_tensor(h, "h", (B, H), [dtype], device)
        _check_tensor(c, "c", (B, H), list(TRITON_DTYPES), device)
    out_dtype = torch.promote_types(dtype, c.dtype) if has_state else dtype
    h_out = empty_output(B, H, dtype=out_dtype, device=device)
    c_out = empty_output(B, H, dtype=out_dtype, device=device)
    gates = empty_output(B, 4 * H, dtype=torch.float32, device=device)
    if B == 0 or H == 0:
        return h_out, c_out, gates

    config = kernel_config(B, I, H, dtype, is_interpreted(_lstm_cell_fwd_kernel))
    x, w_ih, w_hh = _rows(x), w_ih.contiguous(), w_hh.contiguous()
    h = _rows(h) if has_state else x  # unused pointers without a state or bias
    c = c if has_state else x
    b_ih, b_hh = (b_ih.contiguous(), b_hh.contiguous()) if has_bias else (w_ih, w_ih)
    grid = (cdiv(B, config["BLOCK_B"]), cdiv(H, config["BLOCK_H"]))
    with launch_context(x):
        _lstm_cell_fwd_kernel[grid](
            x, h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out, gates, B, I, H,
            x.stride(0), h.stride(0), c.stride(0), c.stride(-1), w_ih.stride(0), w_hh.stride(0),
            HAS_STATE=has_state, HAS_BIAS=has_bias, **config,
        )  # fmt: skip
    return h_out, c_out, gates


def lstm_cell_bwd(gates, c, d_h, d_c, dtype):
    """Backward of one cell step through the activations and the cell update.

    gates: (B, 4H) fp32 pre-activations from ``lstm_cell_fwd``; c: (B, H), the cell state
    given to it (None for zeros). d_h, d_c: (B, H) gradients of h' and c' in any strides
    (expanded ones too), or None for zero. dtype: the dtype of the returned gate gradients
    (the weights', for the GEMMs that follow).
    Returns ``d_gates`` (B, 4H) in ``dtype`` and ``d_c_prev`` (B, H), the gradient of c, in c's
    dtype (``dtype`` without c).
    """
    if gates.dim() != 2 or gates.shape[1] % 4 or gates.dtype != torch.float32 or not gates.is_contiguous():
        raise ValueError(f"expected contiguous fp32 gates (B, 4H), got {gates.dtype} {tuple(gates.shape)}")
    B, H = gates.shape[0], gates.shape[1] // 4
    device = gates.device
    check_kernel_dtype(dtype)
    for name, t in (("c", c), ("d_h", d_h), ("d_c", d_c)):
        if t is not None:
            _check_tensor(t, name, (B, H), list(TRITON_DTYPES), device)
    d_gates = empty_output(B, 4 * H, dtype=dtype, device=device)
    d_c_prev = empty_output(B, H, dtype=c.dtype if c is not None else dtype, device=device)
    if B == 0 or H == 0:
        return d_gates, d_c_prev
    block_b, block_h = padded(B, MAX_BLOCK_B), padded(H, BLOCK_H)
    grid = (cdiv(B, block_b), cdiv(H, block_h))
    unused = gates  # pointer for an absent tensor (never read)
    c_, d_h_, d_c_ = (t if t is not None else unused for t in (c, d_h, d_c))
    with launch_context(gates):
        _lstm_cell_bwd_kernel[grid](
            gates, c_, d_h_, d_c_, d_gates, d_c_prev, B, H,
            c_.stride(0), c_.stride(1), d_h_.stride(0), d_h_.stride(1), d_c_.stride(0), d_c_.stride(1),
            BLOCK_B=block_b, BLOCK_H=block_h,
            HAS_STATE=c is not None, HAS_DH=d_h is not None, HAS_DC=d_c is not None,
            num_warps=4,
        )  # fmt: skip
    return d_gates, d_c_prev

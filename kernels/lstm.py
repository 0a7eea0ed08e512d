"""Fused Triton kernels of the LSTM recurrence, forward and backward, and their launchers.

Only the recurrence lives here; the work that does not depend on the previous step is left
to cuBLAS in the autograd Function (``fusedrnn.autograd``): the input projection
``Gx = X @ W_ih^T + b`` for all timesteps before the loop, and the weight, bias and input
gradients as batched GEMMs after it.

Layout and naming. Gate order is PyTorch's (i, f, g, o): rows ``g*H : (g+1)*H`` of
``W_hh (4H, H)`` belong to gate ``g``. Sequence tensors are time-major views ``(T, B, *)``
with arbitrary strides along T and B (so ``batch_first`` costs no copy); their last
dimension is contiguous. ``c`` is kept in fp32 whatever the input dtype, as are all
accumulators.

Work split. Program ``(pid_b, pid_h)`` owns batch rows ``BLOCK_B`` and hidden units
``BLOCK_H`` and computes all four gates of those units, so the cell update needs nothing
from other programs. Step ``t`` does need all of ``h_{t-1}``, written by every program with
the same batch rows. The kernels therefore take a runtime range ``[t_start, t_end)``:

- one program owns all H units (``BLOCK_H >= H``): one launch runs every step, a CTA-wide
  barrier between steps makes ``h_t`` visible to the program's own threads;
- otherwise: one launch per step (the kernel boundary is the grid-wide barrier).

A persistent variant with a grid barrier reuses the same step loop.
"""

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from ._helpers import TRITON_DTYPES, empty_output, is_interpreted, sigmoid, tanh

# Up to this padded hidden size one program holds all units of its batch rows and one launch
# runs every step; above it the launchers use blocks of PER_STEP_BLOCK_H units, one launch
# per step. Tests lower both to exercise the per-step path on small shapes.
ONE_LAUNCH_MAX_H = 128
PER_STEP_BLOCK_H = 64
BLOCK_B = 16
MAX_BLOCK_K = 64  # the recurrent product runs over K = H in chunks of at most this
MIN_DOT = 16  # tl.dot needs every dimension >= 16 on the GPU (the interpreter does not check)


@triton.jit
def _program_tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's batch rows and hidden units, their masks, and the offsets of its
    (rows, units) tile in a contiguous (B, H) plane."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    rows_b = offs_b.to(tl.int64)
    offs_c = rows_b[:, None] * H + offs_h[None, :]
    return offs_h, tl.arange(0, BLOCK_K), mask_b, mask_h, mask_b[:, None] & mask_h[None, :], rows_b, offs_c


@triton.jit(do_not_specialize=["t_start", "t_end", "B", "H"])
def _lstm_fwd_kernel(
    p_gates,  # (T, B, 4H) view: Gx on entry, pre-activation gates (i, f, g, o) on exit
    p_w_hh,  # (4H, H)
    p_h0,  # (B, H)
    p_c0,  # (B, H)
    p_out,  # (T, B, H) view: h_t
    p_c,  # (T, B, H) fp32, contiguous: c_t, saved for the backward
    t_start,
    t_end,
    B,
    H,
    stride_gt,
    stride_gb,
    stride_ot,
    stride_ob,
    stride_w,
    stride_h0b,
    stride_c0b,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    offs_h, offs_k, mask_b, mask_h, mask_bh, rows_b, offs_c = _program_tile(B, H, BLOCK_B, BLOCK_H, BLOCK_K)
    stride_ct = B.to(tl.int64) * H  # one (B, H) plane of p_c

    # The cell state of the program's own units stays in registers across its steps.
    if t_start == 0:
        c = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
        c = c.to(tl.float32)
    else:
        c = tl.load(p_c + (t_start - 1) * stride_ct + offs_c, mask=mask_bh, other=0.0)

    for t in range(t_start, t_end):
        t64 = tl.cast(t, tl.int64)
        p_g = p_gates + t64 * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
        acc_i = tl.load(p_g, mask=mask_bh, other=0.0).to(tl.float32)
        acc_f = tl.load(p_g + H, mask=mask_bh, other=0.0).to(tl.float32)
        acc_g = tl.load(p_g + 2 * H, mask=mask_bh, other=0.0).to(tl.float32)
        acc_o = tl.load(p_g + 3 * H, mask=mask_bh, other=0.0).to(tl.float32)

        if t == 0:
            p_hprev = p_h0 + rows_b * stride_h0b
        else:
            p_hprev = p_out + (t64 - 1) * stride_ot + rows_b * stride_ob
        # gates += h_{t-1} @ W_hh[gate rows of the own units]^T, chunked over K = H.
        for k0 in range(0, H, BLOCK_K):
            offs_kk = k0 + offs_k
            mask_k = offs_kk < H
            b_h = tl.load(p_hprev[:, None] + offs_kk[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
            b_h = b_h.to(DOT_DTYPE)
            # W tile transposed to (BLOCK_K, BLOCK_H): element [k, u] = W_hh[gate*H + u, k].
            p_w = p_w_hh + offs_h[None, :].to(tl.int64) * stride_w + offs_kk[:, None]
            mask_w = mask_k[:, None] & mask_h[None, :]
            gate_rows = H.to(tl.int64) * stride_w
            b_w = tl.load(p_w, mask=mask_w, other=0.0).to(DOT_DTYPE)
            acc_i += tl.dot(b_h, b_w, input_precision=INPUT_PRECISION)
            b_w = tl.load(p_w + gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
            acc_f += tl.dot(b_h, b_w, input_precision=INPUT_PRECISION)
            b_w = tl.load(p_w + 2 * gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
            acc_g += tl.dot(b_h, b_w, input_precision=INPUT_PRECISION)
            b_w = tl.load(p_w + 3 * gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
            acc_o += tl.dot(b_h, b_w, input_precision=INPUT_PRECISION)

        gate_i = sigmoid(acc_i)
        gate_f = sigmoid(acc_f)
        gate_g = tanh(acc_g)
        gate_o = sigmoid(acc_o)
        c = gate_f * c + gate_i * gate_g
        h = gate_o * tanh(c)

        # Save the pre-activations for the backward, over the program's own Gx tile (already
        # read). Not the activations: in 16 bits, f = 0.99 leaves 1 - f with two bits, while
        # sigmoid(-x) recomputed in fp32 from a 16-bit x is accurate.
        gates_ty = p_gates.dtype.element_ty
        tl.store(p_g, acc_i.to(gates_ty), mask=mask_bh)
        tl.store(p_g + H, acc_f.to(gates_ty), mask=mask_bh)
        tl.store(p_g + 2 * H, acc_g.to(gates_ty), mask=mask_bh)
        tl.store(p_g + 3 * H, acc_o.to(gates_ty), mask=mask_bh)
        tl.store(p_c + t64 * stride_ct + offs_c, c, mask=mask_bh)
        p_h = p_out + t64 * stride_ot + rows_b[:, None] * stride_ob + offs_h[None, :]
        tl.store(p_h, h.to(p_out.dtype.element_ty), mask=mask_bh)
        # h_t must be visible to all threads of the program before step t+1 reads it.
        tl.debug_barrier()


@triton.jit(do_not_specialize=["t_start", "t_end", "T", "B", "H"])
def _lstm_bwd_kernel(
    p_gates,  # (T, B, 4H) view: pre-activation gates (i, f, g, o) from the forward
    p_c,  # (T, B, H) fp32, contiguous: c_t from the forward
    p_c0,  # (B, H)
    p_w_hh,  # (4H, H)
    p_dy,  # (T, B, H) view, any strides (may be expanded): gradient of the output
    p_dhn,  # (B, H): gradient of h_n
    p_dgates,  # (T, B, 4H) view: gradient of the pre-activations
    p_dc,  # (B, H) fp32: dc carried into the launch (dc_n or the last launch's), and out of it
    t_start,
    t_end,
    T,
    B,
    H,
    stride_gt,
    stride_gb,
    stride_dgt,
    stride_dgb,
    stride_dyt,
    stride_dyb,
    stride_dyh,
    stride_dhnb,
    stride_c0b,
    stride_w,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    offs_h, offs_k, mask_b, mask_h, mask_bh, rows_b, offs_c = _program_tile(B, H, BLOCK_B, BLOCK_H, BLOCK_K)
    stride_ct = B.to(tl.int64) * H  # one (B, H) plane of p_c

    dc = tl.load(p_dc + offs_c, mask=mask_bh, other=0.0)
    # Steps run backwards: t = t_end - 1, ..., t_start.
    for s in range(t_start, t_end):
        t64 = tl.cast(t_end - 1 - (s - t_start), tl.int64)
        dh = tl.load(
            p_dy + t64 * stride_dyt + rows_b[:, None] * stride_dyb + offs_h[None, :].to(tl.int64) * stride_dyh,
            mask=mask_bh,
            other=0.0,
        ).to(tl.float32)
        if t64 == T - 1:
            p_dhn_tile = p_dhn + rows_b[:, None] * stride_dhnb + offs_h[None, :]
            dh += tl.load(p_dhn_tile, mask=mask_bh, other=0.0).to(tl.float32)
        else:
            # dh_t += dG_{t+1} @ W_hh[:, own units], chunked over K = 4H, one gate at a time.
            p_dg_next = p_dgates + (t64 + 1) * stride_dgt + rows_b * stride_dgb
            for gate in tl.static_range(4):
                for k0 in range(0, H, BLOCK_K):
                    offs_kk = k0 + offs_k
                    mask_k = offs_kk < H
                    b_dg = tl.load(
                        p_dg_next[:, None] + gate * H + offs_kk[None, :],
                        mask=mask_b[:, None] & mask_k[None, :],
                        other=0.0,
                    ).to(DOT_DTYPE)
                    p_w = p_w_hh + (gate * H + offs_kk[:, None]).to(tl.int64) * stride_w + offs_h[None, :]
                    b_w = tl.load(p_w, mask=mask_k[:, None] & mask_h[None, :], other=0.0).to(DOT_DTYPE)
                    dh += tl.dot(b_dg, b_w, input_precision=INPUT_PRECISION)

        p_g = p_gates + t64 * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
        gate_i = sigmoid(tl.load(p_g, mask=mask_bh, other=0.0).to(tl.float32))
        gate_f = sigmoid(tl.load(p_g + H, mask=mask_bh, other=0.0).to(tl.float32))
        gate_g = tanh(tl.load(p_g + 2 * H, mask=mask_bh, other=0.0).to(tl.float32))
        gate_o = sigmoid(tl.load(p_g + 3 * H, mask=mask_bh, other=0.0).to(tl.float32))
        c = tl.load(p_c + t64 * stride_ct + offs_c, mask=mask_bh, other=0.0)
        # Load in each branch: c0 has the input dtype, p_c is fp32, and the two branches of a
        # compiled `if` must yield one type.
        if t64 == 0:
            c_prev = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
            c_prev = c_prev.to(tl.float32)
        else:
            c_prev = tl.load(p_c + (t64 - 1) * stride_ct + offs_c, mask=mask_bh, other=0.0)

        tanh_c = tanh(c)
        dc += dh * gate_o * (1.0 - tanh_c * tanh_c)
        d_i = dc * gate_g * gate_i * (1.0 - gate_i)
        d_f = dc * c_prev * gate_f * (1.0 - gate_f)
        d_g = dc * gate_i * (1.0 - gate_g * gate_g)
        d_o = dh * tanh_c * gate_o * (1.0 - gate_o)
        dc = dc * gate_f

        p_dg = p_dgates + t64 * stride_dgt + rows_b[:, None] * stride_dgb + offs_h[None, :]
        dgates_ty = p_dgates.dtype.element_ty
        tl.store(p_dg, d_i.to(dgates_ty), mask=mask_bh)
        tl.store(p_dg + H, d_f.to(dgates_ty), mask=mask_bh)
        tl.store(p_dg + 2 * H, d_g.to(dgates_ty), mask=mask_bh)
        tl.store(p_dg + 3 * H, d_o.to(dgates_ty), mask=mask_bh)
        # dG_t must be visible to all threads of the program before step t-1 reads it.
        tl.debug_barrier()

    tl.store(p_dc + offs_c, dc, mask=mask_bh)


# ----------------------------------------------------------------------------------------
# Host launchers: check, allocate, pick blocks and grid, launch. No autograd here.


def kernel_config(H, dtype, interpreted=False):
    """Constexprs and launch options of both kernels for hidden size H and input dtype, and
    whether one launch may run every step (one program spans all H units)."""
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"fusedrnn's Triton kernels support float32, float16 and bfloat16, got {dtype}")
    padded_h = max(MIN_DOT, triton.next_power_of_2(H))
    block_h = padded_h if padded_h <= ONE_LAUNCH_MAX_H else PER_STEP_BLOCK_H
    # fp32 tiles take twice the bytes: halve K so that the pipelined W tiles fit in shared
    # memory (fp32, BLOCK_H=128, BLOCK_K=64, 3 stages needs 264 KiB; sm_90 has 227 KiB).
    max_block_k = MAX_BLOCK_K if dtype.itemsize == 2 else max(MIN_DOT, MAX_BLOCK_K // 2)
    block_k = min(max_block_k, padded_h)
    for value in (BLOCK_B, block_h, block_k):
        assert value >= MIN_DOT and value & (value - 1) == 0, "blocks: powers of two >= 16"
    # The interpreter computes 16-bit dots wrongly (bf16 is stored as uint16): dot in fp32 there.
    dot_dtype = tl.float32 if interpreted else TRITON_DTYPES[dtype]
    # fp32 recurrent dots follow cuDNN's switch, as torch.nn.LSTM on CUDA does. For 16-bit
    # operands the precision setting has no effect: pass Triton's default.
    ieee = dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    config = dict(
        BLOCK_B=BLOCK_B,
        BLOCK_H=block_h,
        BLOCK_K=block_k,
        DOT_DTYPE=dot_dtype,
        INPUT_PRECISION="ieee" if ieee else "tf32",
        num_warps=4,
        num_stages=2,
    )
    return config, block_h >= H


def _time_major_like(ref, last_dim, dtype):
    """An output with the batch/time layout of the time-major view ``ref``."""
    T, B = ref.shape[:2]
    if ref.stride(0) < ref.stride(1):  # batch-major storage, i.e. batch_first
        return empty_output(B, T, last_dim, dtype=dtype, device=ref.device).transpose(0, 1)
    return empty_output(T, B, last_dim, dtype=dtype, device=ref.device)


def _check_common(gates, w_hh, *states):
    if gates.dim() != 3 or gates.stride(2) != 1:
        raise ValueError("gates must be a (T, B, 4H) view with a contiguous last dimension")
    H = w_hh.shape[1]
    if w_hh.shape != (4 * H, H) or gates.shape[2] != 4 * H:
        raise ValueError(f"expected W_hh (4H, H) and gates (T, B, 4H), got {tuple(w_hh.shape)}, {tuple(gates.shape)}")
    # The kernels read h0/c0 and W_hh with the gates' element type (a compiled `if` picks
    # between pointers to h0 and to the output, which must have one type).
    for t in (w_hh, *states):
        if t.dtype != gates.dtype or t.device != gates.device:
            raise ValueError(f"expected {gates.dtype} on {gates.device}, got {t.dtype} on {t.device}")
    return gates.shape[0], gates.shape[1], H


def _run_steps(launch, T, one_launch, like, reverse=False):
    """All T steps in one launch, or one launch per step (in reverse for the backward). Triton
    launches on the current CUDA device and stream: make that the tensors' device."""
    with torch.cuda.device(like.device) if like.is_cuda else nullcontext():
        if one_launch:
            launch(0, T)
        else:
            for t in reversed(range(T)) if reverse else range(T):
                launch(t, t + 1)


def lstm_fwd(gates, w_hh, h0, c0):
    """Run the forward recurrence.

    gates: (T, B, 4H) time-major view holding Gx = x W_ih^T + b; overwritten in place with
        the pre-activation gates (i, f, g, o), which the backward needs.
    w_hh: (4H, H). h0, c0: (B, H), any float dtype (zeros when the caller has none).
    Returns ``out`` (T, B, H) in the gates' dtype and layout, and ``c`` (T, B, H) fp32.
    """
    T, B, H = _check_common(gates, w_hh, h0, c0)
    w_hh, h0, c0 = w_hh.contiguous(), h0.contiguous(), c0.contiguous()
    out = _time_major_like(gates, H, gates.dtype)
    c = empty_output(T, B, H, dtype=torch.float32, device=gates.device)
    config, one_launch = kernel_config(H, gates.dtype, is_interpreted(_lstm_fwd_kernel))
    grid = (triton.cdiv(B, config["BLOCK_B"]), triton.cdiv(H, config["BLOCK_H"]))

    def launch(t_start, t_end):
        _lstm_fwd_kernel[grid](
            gates, w_hh, h0, c0, out, c, t_start, t_end, B, H,
            gates.stride(0), gates.stride(1), out.stride(0), out.stride(1),
            w_hh.stride(0), h0.stride(0), c0.stride(0),
            **config,
        )  # fmt: skip

    _run_steps(launch, T, one_launch, gates)
    return out, c


def lstm_bwd(gates, c, c0, w_hh, d_out, d_hn, d_cn):
    """Run the backward recurrence.

    gates, c: as returned/overwritten by ``lstm_fwd``. c0: (B, H). d_out: (T, B, H) view of
    any strides; d_hn, d_cn: (B, H).
    Returns ``d_gates`` (T, B, 4H), the gradient of the pre-activations in the gates' dtype
    and layout, and ``d_c0`` (B, H) fp32. Everything else is a GEMM of ``d_gates``.
    """
    T, B, H = _check_common(gates, w_hh, c0)
    w_hh, c0, d_hn = w_hh.contiguous(), c0.contiguous(), d_hn.contiguous()
    d_gates = _time_major_like(gates, 4 * H, gates.dtype)
    d_c = d_cn.to(torch.float32, copy=True).contiguous()  # carried dc, updated in place
    config, one_launch = kernel_config(H, gates.dtype, is_interpreted(_lstm_bwd_kernel))
    grid = (triton.cdiv(B, config["BLOCK_B"]), triton.cdiv(H, config["BLOCK_H"]))

    def launch(t_start, t_end):
        _lstm_bwd_kernel[grid](
            gates, c, c0, w_hh, d_out, d_hn, d_gates, d_c, t_start, t_end, T, B, H,
            gates.stride(0), gates.stride(1), d_gates.stride(0), d_gates.stride(1),
            d_out.stride(0), d_out.stride(1), d_out.stride(2),
            d_hn.stride(0), c0.stride(0), w_hh.stride(0),
            **config,
        )  # fmt: skip

    _run_steps(launch, T, one_launch, gates, reverse=True)
    return d_gates, d_c

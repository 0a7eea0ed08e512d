"""Fused Triton kernels of a recurrence, forward and backward, for every cell, and their
launchers: one kernel body each, the cell's math selected by the ``CELL`` constexpr
(``kernels/cell_math.py``), its gate count by ``GATES``, its c state by ``HAS_C``.

Only the recurrence lives here; the work that does not depend on the previous step is left
to cuBLAS in the autograd Function (``fusedrnn.autograd``): the input projection
``Gx = X @ W_ih^T + b`` for all timesteps before the loop, and the weight, bias and input
gradients as batched GEMMs after it.

Layout and naming. Gate order is PyTorch's (the LSTM's i, f, g, o): rows ``g*H : (g+1)*H``
of ``W_hh (G*H, P)`` belong to gate ``g`` of the cell's G. ``P`` is the size of ``h``: ``H``,
or ``proj_size`` for an LSTMP layer (``h_t = W_hr m_t`` with ``m_t = o_t * tanh(c_t)``,
``W_hr (P, H)``). Sequence tensors are time-major views ``(T, B, *)`` with arbitrary strides
along T and B (so ``batch_first`` costs no copy); their last dimension is contiguous. The
LSTM's ``c`` is kept in fp32 whatever the input dtype, as are all accumulators.

Steps and time. Step ``s`` runs time ``t = s``, or ``t = T-1-s`` for the reverse direction
(``REVERSE``). With per-row ``lengths`` (``VARLEN``) row ``b`` takes part in the steps with
``t < lengths[b]`` only: elsewhere its state passes through unchanged, its output and its
gate gradients are zero. That is packed-sequence semantics in either direction, with no
sorting and no work moved to Python.

Work split. A step has up to two phases, each split over programs ``(pid_b, pid_u)`` that own
``BLOCK_B`` batch rows and a block of units:

- forward ``cell``: every gate of ``BLOCK_H`` cell units and their cell update; it needs
  all of ``h_{t-1}``. Without a projection it writes ``h_t``; with one it writes ``m_t``.
- forward ``proj`` (LSTMP only): ``h_t`` for ``BLOCK_P`` units, from all of ``m_t``.
- backward ``dh``: ``dh_t`` for ``BLOCK_P`` units, from all of ``dG_{t+1}``; where the plan
  splits its K = G*H loop (``DH_SPLIT``), from the partial sums of a phase before it,
  ``dh_partial``, whose items are (``BLOCK_PS`` units, K slice).
- backward ``cell``: the gate gradients of ``BLOCK_H`` units, from all of ``dh_t`` (LSTMP:
  through ``W_hr``; otherwise the phase runs fused with ``dh`` on the same units).

A phase needs what other programs wrote in the one before. The kernels take a runtime step
range ``[s_start, s_end)`` and the phases to run (constexprs), so the launchers can:

- "one-launch": one program per batch block owns every unit (H and P fit one block): one
  launch runs all steps and all phases, a CTA-wide barrier between phases makes each visible;
- "persistent": one cooperative launch runs all steps and phases over every program of the
  grid, with a grid barrier per batch block (``GRID_SYNC``) between phases;
- "per-step": one launch per step and phase (the kernel boundary is the grid-wide barrier);
  a call that repeats an earlier one's launches replays them from a CUDA graph
  (``step_graphs.py``).

Which strategy and blocks a call gets is ``kernels/planner.py``'s; the launches, by argument
name, are ``kernels/launch.py``'s; the grid barrier is ``kernels/barrier.py``'s.
"""

import torch
import triton
import triton.language as tl

from . import launch, planner
from ._helpers import (
    dot_operand,
    empty_output,
    gates_matmul,
    load_gate_tiles,
    load_weight_tiles,
    mask_while,
    store_gate_tiles,
    tf32_rounded,
    weight_operand,
)
from .barrier import report_timeout, sync_step
from .cell_math import activations, cell_grads, cell_update, gru_grads, gru_update, load_activations


@triton.jit
def _program_tile(B, H, P, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's batch rows (int64) and their mask, its blocks of cell units (of H) and
    of projected units (of P) with their masks, and the offsets of its (rows, cell units)
    tile in a contiguous (B, H) plane."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    rows_b = offs_b.to(tl.int64)
    offs_c = rows_b[:, None] * H + offs_h[None, :]
    return rows_b, offs_b < B, offs_h, offs_h < H, offs_p, offs_p < P, offs_c


@triton.jit
def _step_time(s, T, REVERSE: tl.constexpr):
    """Time index of step s (int64), and of the step before it in the recurrence."""
    s64 = tl.cast(s, tl.int64)
    if REVERSE:
        return T - 1 - s64, T - s64
    return s64, s64 - 1


@triton.jit
def _matmul_acc(acc, p_a, stride_ak, mask_a, p_b, stride_bk, mask_b, K, BLOCK_K: tl.constexpr,
                DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc += A @ B over k < K in chunks of BLOCK_K, A an activation, B a weight (W_hh, W_hr:
    in TF32 already rounded by the launcher). A's rows and B's columns are given as pointer
    vectors p_a (rows) and p_b (columns) with masks; element k of a row/column lies k * stride
    away."""
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        offs_kk = k0 + offs_k
        mask_k = offs_kk < K
        # A is what other programs wrote this launch. The barrier's acquire makes it visible;
        # .cg (where Triton honours it) also keeps it out of L1, where it is never reused.
        b_a = tl.load(p_a[:, None] + offs_kk[None, :].to(tl.int64) * stride_ak,
                      mask=mask_a[:, None] & mask_k[None, :], other=0.0, cache_modifier=".cg")
        b_b = tl.load(p_b[None, :] + offs_kk[:, None].to(tl.int64) * stride_bk,
                      mask=mask_k[:, None] & mask_b[None, :], other=0.0)
        b_a = dot_operand(b_a, DOT_DTYPE, INPUT_PRECISION)
        acc += tl.dot(b_a, weight_operand(b_b, DOT_DTYPE), input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _dh_partials(p_dg_rows, mask_b, p_w_hh, stride_w, p_part_rows, stride_part, H, P, BLOCK_B: tl.constexpr,
                 BLOCK_PS: tl.constexpr, BLOCK_K: tl.constexpr, DH_SPLIT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr, GATES: tl.constexpr):  # fmt: skip
    """The backward's dh_t = dG_{t+1} @ W_hh (K = GATES * H) split into DH_SPLIT slices of K, each a
    partial sum over (BLOCK_B rows, BLOCK_PS units) stored in its own (B, P) plane of p_part:
    more programs share a step's K loop, each reads a slice of dG's rows rather than all of
    them. The items (unit block, K slice) go round the programs of the batch block: one each
    in a per-step launch, which has as many programs; in a persistent one, as many as the
    planner allowed (bench/NOTES.md v1.5). p_dg_rows, p_part_rows: the rows' pointers."""
    n_ps = tl.cdiv(P, BLOCK_PS)
    k_slice = tl.cdiv(tl.cdiv(GATES * H, DH_SPLIT), BLOCK_K) * BLOCK_K  # whole chunks; the last slice may be short
    for item in range(tl.program_id(1), n_ps * DH_SPLIT, tl.num_programs(1)):
        piece = item // n_ps
        offs_ps = (item % n_ps) * BLOCK_PS + tl.arange(0, BLOCK_PS)
        mask_ps = offs_ps < P
        k_lo = piece * k_slice
        k_lo64 = tl.cast(k_lo, tl.int64)
        part = tl.zeros((BLOCK_B, BLOCK_PS), dtype=tl.float32)
        part = _matmul_acc(
            part, p_dg_rows + k_lo64, 1, mask_b, p_w_hh + k_lo64 * stride_w + offs_ps, stride_w, mask_ps,
            tl.minimum(GATES * H - k_lo, k_slice), BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
        )  # fmt: skip
        p_out = p_part_rows[:, None] + piece * stride_part + offs_ps[None, :]
        tl.store(p_out, part, mask=mask_b[:, None] & mask_ps[None, :])


@triton.jit
def _dy_tile(s, T, p_dy, stride_dyt, stride_dyb, stride_dyh, rows_b, mask_b, offs_p, mask_p, length,
             VARLEN: tl.constexpr, REVERSE: tl.constexpr):  # fmt: skip
    """The backward's dy tile of step s over the program's P units, in dy's dtype: zero where
    the row is inactive, and everywhere where mask_b is off (a prefetch past the last step)."""
    t, _ = _step_time(s, T, REVERSE)
    active = mask_b
    if VARLEN:
        active = active & (t < length)
    p_dy_t = p_dy + t * stride_dyt + rows_b[:, None] * stride_dyb + offs_p[None, :].to(tl.int64) * stride_dyh
    return tl.load(p_dy_t, mask=active[:, None] & mask_p[None, :], other=0.0)


@triton.jit
def _h_prev_tiles(s, t_prev, p_h0, stride_h0b, p_out, stride_ot, stride_ob, rows_b, offs_cols, length,
                  VARLEN: tl.constexpr):  # fmt: skip
    """(rows, cols) pointers to h_{t-1} of step s, columns offs_cols: h0 at a row's first step,
    and (reverse, VARLEN) where the row's previous step was inactive (its state is still h0
    there, while its output reads zero); else out[t_prev]. The select is made on the 2-D
    pointers, not on the two vectors of row pointers: from Triton 3.8 on, such a select loses
    the pointers' alignment, and the load is then not vectorised (one 2-byte load and a 64-bit
    address an element; sm_90 persistent forward 176 -> 255 registers and spills, NOTES v1.17)."""
    from_h0 = s == 0
    if VARLEN:
        from_h0 = from_h0 | (t_prev >= length)[:, None]
    p_from_h0 = (p_h0 + rows_b * stride_h0b)[:, None] + offs_cols[None, :]
    p_from_out = (p_out + t_prev * stride_ot + rows_b * stride_ob)[:, None] + offs_cols[None, :]
    return tl.where(from_h0, p_from_h0, p_from_out)


@triton.jit
def _cell_tiles(s, T, p_gates, stride_gt, stride_gb, p_c, stride_ct, p_c0, stride_c0b, p_hn, p_out, stride_ot,
                stride_ob, p_h0, stride_h0b, rows_b, mask_b, offs_h, mask_h, offs_c, H, length, BLOCK_B: tl.constexpr,
                BLOCK_H: tl.constexpr, VARLEN: tl.constexpr, REVERSE: tl.constexpr, CELL: tl.constexpr,
                GATES: tl.constexpr, HAS_C: tl.constexpr, ACTIVATE: tl.constexpr):  # fmt: skip
    """What the backward's cell phase of step s reads of the forward, over the program's own
    (rows, units) tile: the gates' pre-activations (a tuple, in the gates' dtype; with
    ACTIVATE, each gate's ``gate_activation`` in fp32, computed as it loads), c_t and c_{t-1}
    (HAS_C, fp32), the GRU's hn and h_{t-1} (fp32); zero tiles where a cell has none. Nothing
    here is written by another program during the backward, so the tiles can be loaded a step
    early (PREFETCH_OWN_TILES, without ACTIVATE: an activation would wait for its load before
    the barrier); with mask_b off (past the last step) nothing is read."""
    t, t_prev = _step_time(s, T, REVERSE)
    mask_bh = mask_b[:, None] & mask_h[None, :]
    p_g = p_gates + t * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
    if ACTIVATE:
        pre = load_activations(p_g, H, mask_bh, CELL, GATES)
    else:
        pre = ()
        for gate in tl.static_range(GATES):
            pre = pre + (tl.load(p_g + gate * H, mask=mask_bh, other=0.0),)
    c = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)  # placeholders where the cell has none
    c_prev = c
    hn = c
    h_prev = c
    if CELL == "gru":
        hn = tl.load(p_hn + t * stride_ct + offs_c, mask=mask_bh, other=0.0).to(tl.float32)
        # h_{t-1}, as the forward read it
        p_hprev = _h_prev_tiles(s, t_prev, p_h0, stride_h0b, p_out, stride_ot, stride_ob, rows_b, offs_h, length,
                                VARLEN)  # fmt: skip
        h_prev = tl.load(p_hprev, mask=mask_bh, other=0.0).to(tl.float32)
    elif HAS_C:
        c = tl.load(p_c + t * stride_ct + offs_c, mask=mask_bh, other=0.0)
        # c_{t-1}: c0 at the first step; the forward stored c at every step, carried through
        # inactive ones, so elsewhere it is the stored c of the step before. Load in each
        # branch: c0 has the input dtype, p_c is fp32, and the two branches of a compiled `if`
        # must yield one type.
        if s == 0:
            c_prev = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
            c_prev = c_prev.to(tl.float32)
        else:
            c_prev = tl.load(p_c + t_prev * stride_ct + offs_c, mask=mask_bh, other=0.0)
    return pre, c, c_prev, hn, h_prev


# B, H and P stay specialised (divisible by 16 or not): that vectorises the masked loads,
# and a model has few sizes. The step range and T change per call: never specialised.
@triton.jit(do_not_specialize=["s_start", "s_end", "T", "max_spins"])
def _recurrence_fwd_kernel(
    p_gates,  # (T, B, GATES*H) view: Gx on entry, the gates' pre-activations on exit
    p_w_hh,  # (GATES*H, P)
    p_w_hr,  # (P, H) projection (HAS_PROJ)
    p_h0,  # (B, P)
    p_c0,  # (B, H) (HAS_C)
    p_lengths,  # (B,) int (VARLEN)
    p_out,  # (T, B, P) view: h_t
    p_m,  # (T, B, H) contiguous: m_t = o_t * tanh(c_t) (HAS_PROJ), saved for the backward
    p_c,  # (T, B, H) fp32, contiguous: c_t, saved for the backward (HAS_C)
    p_hn,  # (T, B, H) fp32, contiguous (gru): W_hn h_{t-1} + b_hn, saved for the backward
    p_b_hn,  # (H,) (gru): b_hn, the bias that does not fold into Gx
    p_sync,  # (num_programs(0) + 1,) int32 zeros (GRID_SYNC): a barrier counter per batch block, an error word
    s_start,
    s_end,
    T,
    B,
    H,
    P,
    stride_gt,
    stride_gb,
    stride_ot,
    stride_ob,
    stride_w,
    stride_hr,
    stride_h0b,
    stride_c0b,
    max_spins,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GRID_SYNC: tl.constexpr,
    W_RESIDENT: tl.constexpr,
    DO_CELL: tl.constexpr,
    DO_PROJ: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    VARLEN: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    CELL: tl.constexpr,
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    PREFETCH_GX: tl.constexpr,
):
    rows_b, mask_b, offs_h, mask_h, offs_p, mask_p, offs_c = _program_tile(B, H, P, BLOCK_B, BLOCK_H, BLOCK_P)
    mask_bh = mask_b[:, None] & mask_h[None, :]
    # tl.cast, not B.to: a launch makes an integer argument equal to 1 a constexpr (Triton's
    # specialisation), and the constant 1 has no .to. The interpreter does not specialise.
    stride_ct = tl.cast(B, tl.int64) * H  # one (B, H) plane of p_c
    if VARLEN:
        length = tl.load(p_lengths + rows_b, mask=mask_b, other=0)
    else:
        length = 0  # unused

    if DO_CELL and HAS_C:
        # The cell state of the program's own units stays in registers across its steps.
        # Every step stores c (carried through a row's inactive steps), so a launch that
        # starts later reads the step before it.
        if s_start == 0:
            c = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
            c = c.to(tl.float32)
        else:
            _, t_prev = _step_time(s_start, T, REVERSE)
            c = tl.load(p_c + t_prev * stride_ct + offs_c, mask=mask_bh, other=0.0)
    else:
        c = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)  # a placeholder: no c, or no cell phase
    if DO_CELL and CELL == "gru":
        b_hn = tl.load(p_b_hn + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        # The GRU's z * h reads h_{t-1} on the program's own units: the h it wrote last step,
        # kept in registers as c is (reloading it each step from memory took the sm_90 build
        # from 144 registers to 255 and 880 B of spills). A launch that starts later reads it
        # as the step's h_{t-1} would be read: h0 where the row has not started, else out.
        _, t_start_prev = _step_time(s_start, T, REVERSE)
        p_h_start = _h_prev_tiles(s_start, t_start_prev, p_h0, stride_h0b, p_out, stride_ot, stride_ob, rows_b,
                                  offs_h, length, VARLEN)  # fmt: skip
        h_own = tl.load(p_h_start, mask=mask_bh, other=0.0).to(tl.float32)

    if W_RESIDENT:
        # The program's slice of W_hh, loaded once: a (K, BLOCK_H) tile per gate over the whole
        # (padded) K = BLOCK_K. Loop-invariant dot operands stay in shared memory across the
        # steps (sm_90 TTGIR: local_alloc before the loop), so no step re-reads W from L2.
        offs_kw = tl.arange(0, BLOCK_K)
        mask_kw = offs_kw < P
        p_w = p_w_hh + offs_h[None, :].to(tl.int64) * stride_w + offs_kw[:, None]
        mask_w = mask_kw[:, None] & mask_h[None, :]
        w_held = load_weight_tiles(p_w, tl.cast(H, tl.int64) * stride_w, mask_w, DOT_DTYPE, GATES)

    if PREFETCH_GX and DO_CELL:
        t_first, _ = _step_time(s_start, T, REVERSE)
        gx_next = load_gate_tiles(p_gates + t_first * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :], H,
                                  mask_bh, GATES)  # fmt: skip
    n_synced, spins_left = 0, max_spins
    for s in range(s_start, s_end):
        t, t_prev = _step_time(s, T, REVERSE)
        if VARLEN:
            active = mask_b & (t < length)
        else:
            active = mask_b
        if DO_CELL:
            p_g = p_gates + t * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
            if PREFETCH_GX:
                acc = gx_next  # loaded during the last step's barrier
            else:
                acc = load_gate_tiles(p_g, H, mask_bh, GATES)  # Gx[t], each gate's accumulator
            if CELL == "gru":
                # Gx_n stays apart: the reset gate multiplies W_hn h + b_hn, not Gx_n.
                gx_n = acc[2]
                acc = (acc[0], acc[1], tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32))
            # (rows, BLOCK_K) pointers to h_{t-1}'s first K chunk (with W held: all of it)
            p_hprev = _h_prev_tiles(s, t_prev, p_h0, stride_h0b, p_out, stride_ot, stride_ob, rows_b,
                                    tl.arange(0, BLOCK_K), length, VARLEN)  # fmt: skip
            if W_RESIDENT:
                # All of h_{t-1} (other programs wrote it: from L2, .cg) against the held W.
                b_h = tl.load(p_hprev, mask=mask_b[:, None] & mask_kw[None, :], other=0.0, cache_modifier=".cg")
                b_h = dot_operand(b_h, DOT_DTYPE, INPUT_PRECISION)
                summed = ()
                if PREFETCH_GX:
                    # Every product first, then Gx, by fma(product, 1, Gx): a plain sum Triton
                    # folds into each dot as its accumulator, and the prefetched tile's layout
                    # conversion (a bar.sync) then lands between the products, across which
                    # all of h's fragments stayed live (sm_90: 169 -> 255 registers, 1 KB of
                    # spills). The fma adds exactly what the sum would.
                    for gate in tl.static_range(GATES):
                        summed = summed + (tl.dot(b_h, w_held[gate], input_precision=INPUT_PRECISION),)
                    added = ()
                    for gate in tl.static_range(GATES):
                        added = added + (tl.fma(summed[gate], 1.0, acc[gate]),)
                    summed = added
                else:
                    for gate in tl.static_range(GATES):
                        summed = summed + (acc[gate] + tl.dot(b_h, w_held[gate], input_precision=INPUT_PRECISION),)
                acc = summed
            else:
                acc = gates_matmul(
                    acc, p_hprev, mask_b, p_w_hh + offs_h.to(tl.int64) * stride_w, stride_w, mask_h, H, P, BLOCK_K,
                    DOT_DTYPE, INPUT_PRECISION, GATES, True,
                )  # fmt: skip

            if CELL == "gru":
                h, hn = gru_update(acc, gx_n, b_hn, h_own)
                # rounded as out stores it, so that the next step's z * h reads what it would
                # read from out; an inactive row's state passes through
                h_stored = h.to(p_out.dtype.element_ty).to(tl.float32)
                if VARLEN:
                    h_own = tl.where(active[:, None], h_stored, h_own)
                else:
                    h_own = h_stored
                c_new = c
            else:
                h, c_new = cell_update(acc, c, CELL)
            if VARLEN:
                if HAS_C:
                    c = tl.where(active[:, None], c_new, c)
                h = tl.where(active[:, None], h, 0.0)
            else:
                c = c_new

            # Save the pre-activations for the backward, over the program's own Gx tile
            # (already read). Not the activations: in 16 bits, f = 0.99 leaves 1 - f with two
            # bits, while sigmoid(-x) recomputed in fp32 from a 16-bit x is accurate.
            if CELL == "gru":  # r's and z's pre-activations, Gx_n; and hn apart
                store_gate_tiles(p_g, H, (acc[0], acc[1], gx_n), mask_bh, GATES)
                tl.store(p_hn + t * stride_ct + offs_c, hn.to(p_hn.dtype.element_ty), mask=mask_bh)
            else:
                store_gate_tiles(p_g, H, acc, mask_bh, GATES)
            if HAS_C:
                tl.store(p_c + t * stride_ct + offs_c, c, mask=mask_bh)
            if HAS_PROJ:
                tl.store(p_m + t * stride_ct + offs_c, h.to(p_m.dtype.element_ty), mask=mask_bh)
            else:
                p_h = p_out + t * stride_ot + rows_b[:, None] * stride_ob + offs_h[None, :]
                tl.store(p_h, h.to(p_out.dtype.element_ty), mask=mask_bh)
        if DO_CELL and DO_PROJ:  # m_t of all units before the projection reads it
            n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
        if DO_PROJ:
            # h_t = m_t @ W_hr^T for the program's P units (zero where m is, i.e. inactive rows).
            acc_h = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
            acc_h = _matmul_acc(
                acc_h, p_m + t * stride_ct + rows_b * H, 1, mask_b,
                p_w_hr + offs_p.to(tl.int64) * stride_hr, 1, mask_p, H, BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
            )  # fmt: skip
            p_h = p_out + t * stride_ot + rows_b[:, None] * stride_ob + offs_p[None, :]
            tl.store(p_h, acc_h.to(p_out.dtype.element_ty), mask=mask_b[:, None] & mask_p[None, :])
        if PREFETCH_GX and DO_CELL:
            # The next step's Gx tile, issued before the barrier so that its round trip overlaps
            # the barrier's: the program's own tile, written before the launch, so no other
            # program's store is awaited. Loaded at the next step, each gate's load waited for
            # a layout conversion (bar.sync) before the next was issued: four round trips a
            # step (sm_90 PTX, bench/NOTES.md v1.14). Masked off after the last step.
            t_next, _ = _step_time(s + 1, T, REVERSE)
            p_g_next = p_gates + t_next * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
            gx_next = load_gate_tiles(p_g_next, H, mask_while(mask_bh, s + 1 < s_end), GATES)
        # h_t must be visible before step t+1 reads it.
        n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
    report_timeout(p_sync, spins_left, GRID_SYNC)


@triton.jit(do_not_specialize=["s_start", "s_end", "T", "max_spins"])
def _recurrence_bwd_kernel(
    p_gates,  # (T, B, GATES*H) view: the gates' pre-activations from the forward
    p_c,  # (T, B, H) fp32, contiguous: c_t from the forward (HAS_C)
    p_c0,  # (B, H) (HAS_C)
    p_w_hh,  # (GATES*H, P)
    p_w_hr,  # (P, H) (HAS_PROJ)
    p_lengths,  # (B,) int (VARLEN)
    p_dy,  # (T, B, P) view, any strides (may be expanded): gradient of the output
    p_dhn,  # (B, P): gradient of h_n
    p_dh,  # (T, B, P) contiguous (HAS_PROJ): dh_t, from the dh phase to the cell phase
    p_dh_part,  # (DH_SPLIT, B, P) fp32 contiguous (DH_SPLIT > 1): dG_{t+1} @ W_hh, one K slice each
    p_dgates,  # (T, B, GATES*H) view: gradient of the pre-activations (gru: the recurrent side's)
    p_dc,  # (B, H) fp32 (HAS_C, gru): dc (gru: dh * z) carried into the launch (dc_n or the last launch's), and out of it
    p_hn,  # (T, B, H) fp32, contiguous (gru): W_hn h + b_hn from the forward
    p_dgx_n,  # (T, B, H) fp32, contiguous (gru; may be p_hn): the input side's gradient of the n slot
    p_out,  # (T, B, P) view (gru): the forward's output, h_{t-1} of the step after
    p_h0,  # (B, P) (gru)
    p_sync,  # (num_programs(0) + 1,) int32 zeros (GRID_SYNC): a barrier counter per batch block, an error word
    s_start,
    s_end,
    T,
    B,
    H,
    P,
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
    stride_hr,
    stride_ot,
    stride_ob,
    stride_h0b,
    max_spins,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GRID_SYNC: tl.constexpr,
    W_RESIDENT: tl.constexpr,
    DH_SPLIT: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    DO_DH_PARTIAL: tl.constexpr,
    DO_DH: tl.constexpr,
    DO_CELL: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    VARLEN: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    CELL: tl.constexpr,
    GATES: tl.constexpr,
    HAS_C: tl.constexpr,
    PREFETCH_OWN_TILES: tl.constexpr,
):
    rows_b, mask_b, offs_h, mask_h, offs_p, mask_p, offs_c = _program_tile(B, H, P, BLOCK_B, BLOCK_H, BLOCK_P)
    mask_bh = mask_b[:, None] & mask_h[None, :]
    mask_bp = mask_b[:, None] & mask_p[None, :]
    stride_ct = tl.cast(B, tl.int64) * H  # one (B, H) plane of p_c (tl.cast: see the forward)
    stride_dht = tl.cast(B, tl.int64) * P  # one (B, P) plane of p_dh, and of p_dh_part
    if VARLEN:
        length = tl.load(p_lengths + rows_b, mask=mask_b, other=0)
    else:
        length = 0  # unused
    if DO_CELL and (HAS_C or CELL == "gru"):
        dc = tl.load(p_dc + offs_c, mask=mask_bh, other=0.0)
    else:
        dc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)  # a placeholder: no c, or no cell phase
    if W_RESIDENT:
        # BLOCK_K is sized from P by the planner (W_RESIDENT): the dots below need K = H.
        tl.static_assert(not HAS_PROJ, "held weights in the backward need P == H (no projection)")
        # The program's columns of W_hh, loaded once as one (K, BLOCK_P) tile per gate over the
        # whole (padded) K = BLOCK_K >= H: dh_t = sum over gates of dG_{t+1, gate} @ W_gate.
        # A dot of K = H per gate rather than one of K = GATES * H, whose dG tile would not fit
        # on chip.
        offs_kw = tl.arange(0, BLOCK_K)
        mask_kw = offs_kw < H
        p_w = p_w_hh + offs_kw[:, None].to(tl.int64) * stride_w + offs_p[None, :]
        mask_w = mask_kw[:, None] & mask_p[None, :]
        w_held = load_weight_tiles(p_w, tl.cast(H, tl.int64) * stride_w, mask_w, DOT_DTYPE, GATES)

    if PREFETCH_OWN_TILES:
        # The first step's own tiles; each step then loads the next one's before its barrier.
        if DO_DH:
            dy_next = _dy_tile(s_end - 1, T, p_dy, stride_dyt, stride_dyb, stride_dyh, rows_b, mask_b, offs_p, mask_p,
                               length, VARLEN, REVERSE)  # fmt: skip
        if DO_CELL:
            own_next = _cell_tiles(
                s_end - 1, T, p_gates, stride_gt, stride_gb, p_c, stride_ct, p_c0, stride_c0b, p_hn, p_out, stride_ot,
                stride_ob, p_h0, stride_h0b, rows_b, mask_b, offs_h, mask_h, offs_c, H, length, BLOCK_B, BLOCK_H,
                VARLEN, REVERSE, CELL, GATES, HAS_C, False,
            )  # fmt: skip
    # Steps run backwards: s = s_end - 1, ..., s_start.
    n_synced, spins_left = 0, max_spins
    for s_up in range(s_start, s_end):
        s = s_end - 1 - (s_up - s_start)
        t, t_prev = _step_time(s, T, REVERSE)
        t_next = 2 * t - t_prev  # time of step s + 1
        if VARLEN:
            active = mask_b & (t < length)
        else:
            active = mask_b
        if DO_DH_PARTIAL:
            if s != T - 1:  # no dG_{t+1} at the last step
                _dh_partials(
                    p_dgates + t_next * stride_dgt + rows_b * stride_dgb, mask_b, p_w_hh, stride_w,
                    p_dh_part + rows_b * P, stride_dht, H, P, BLOCK_B, BLOCK_PS, BLOCK_K, DH_SPLIT, DOT_DTYPE,
                    INPUT_PRECISION, GATES,
                )  # fmt: skip
        if DO_DH_PARTIAL and DO_DH:  # every K slice's partial sum before dh adds them
            n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
        if DO_DH:
            # dh_t over the program's P units: dy_t (none where the row is inactive), dh_n
            # at the row's last step, and dG_{t+1} @ W_hh over K = GATES * H otherwise.
            if PREFETCH_OWN_TILES:
                dy = dy_next
            else:
                dy = _dy_tile(s, T, p_dy, stride_dyt, stride_dyb, stride_dyh, rows_b, mask_b, offs_p, mask_p, length,
                              VARLEN, REVERSE)  # fmt: skip
            dh = dy.to(tl.float32)
            p_dhn_tile = p_dhn + rows_b[:, None] * stride_dhnb + offs_p[None, :]
            if s == T - 1:
                dh += tl.load(p_dhn_tile, mask=mask_bp, other=0.0).to(tl.float32)
            else:
                # Inactive rows of step s + 1 stored zero gradients: nothing flows from there.
                p_dg_next = p_dgates + t_next * stride_dgt + rows_b * stride_dgb
                if W_RESIDENT:
                    # Each gate's dG_{t+1} (other programs wrote it: from L2, .cg) against its
                    # held tile.
                    p_dgk = p_dg_next[:, None] + offs_kw[None, :]
                    mask_dgk = mask_b[:, None] & mask_kw[None, :]
                    for gate in tl.static_range(GATES):
                        b_dg = tl.load(p_dgk + gate * H, mask=mask_dgk, other=0.0, cache_modifier=".cg")
                        b_dg = dot_operand(b_dg, DOT_DTYPE, INPUT_PRECISION)
                        dh += tl.dot(b_dg, w_held[gate], input_precision=INPUT_PRECISION)
                elif DH_SPLIT > 1:
                    # The K slices' partial sums (the phase before), added in slice order: the
                    # same sum on every run, where atomics would not be.
                    p_part = p_dh_part + rows_b[:, None] * P + offs_p[None, :]
                    for piece in tl.static_range(DH_SPLIT):
                        dh += tl.load(p_part + piece * stride_dht, mask=mask_bp, other=0.0, cache_modifier=".cg")
                else:
                    dh = _matmul_acc(
                        dh, p_dg_next, 1, mask_b, p_w_hh + offs_p, stride_w, mask_p, GATES * H, BLOCK_K, DOT_DTYPE,
                        INPUT_PRECISION,
                    )  # fmt: skip
                if VARLEN and not REVERSE:
                    last = active & (t == length - 1)
                    dh += tl.load(p_dhn_tile, mask=last[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
            if HAS_PROJ:
                tl.store(p_dh + t * stride_dht + rows_b[:, None] * P + offs_p[None, :], dh, mask=mask_bp)
        if DO_DH and DO_CELL and HAS_PROJ:  # dh_t of all P units before dm reads it
            n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
        if DO_CELL:
            if HAS_PROJ:
                # dm_t = dh_t @ W_hr for the program's cell units.
                dm = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
                dm = _matmul_acc(
                    dm, p_dh + t * stride_dht + rows_b * P, 1, mask_b,
                    p_w_hr + offs_h, stride_hr, mask_h, P, BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
                )  # fmt: skip
            else:
                dm = dh  # same units: BLOCK_P == BLOCK_H and P == H

            if PREFETCH_OWN_TILES:
                pre, c, c_prev, hn, h_prev = own_next
                acts = activations(pre, CELL, GATES)
            else:
                acts, c, c_prev, hn, h_prev = _cell_tiles(
                    s, T, p_gates, stride_gt, stride_gb, p_c, stride_ct, p_c0, stride_c0b, p_hn, p_out, stride_ot,
                    stride_ob, p_h0, stride_h0b, rows_b, mask_b, offs_h, mask_h, offs_c, H, length, BLOCK_B, BLOCK_H,
                    VARLEN, REVERSE, CELL, GATES, HAS_C, True,
                )  # fmt: skip
            if CELL == "gru":
                d_pre, d_gx_n, dc_prev = gru_grads(acts, hn, h_prev, dm, dc)
            elif HAS_C:
                d_pre, dc_prev = cell_grads(acts, c_prev, c, dm, dc, CELL)
            else:
                d_pre, dc_prev = cell_grads(acts, dc, dc, dm, dc, CELL)  # placeholders for c: ignored
            if VARLEN:
                # An inactive step passes dc through and has no gate gradients.
                keep = active[:, None]
                dc = tl.where(keep, dc_prev, dc)
                kept = ()
                for gate in tl.static_range(GATES):
                    kept = kept + (tl.where(keep, d_pre[gate], 0.0),)
                d_pre = kept
                if CELL == "gru":
                    d_gx_n = tl.where(keep, d_gx_n, 0.0)
            else:
                dc = dc_prev

            p_dg = p_dgates + t * stride_dgt + rows_b[:, None] * stride_dgb + offs_h[None, :]
            store_gate_tiles(p_dg, H, d_pre, mask_bh, GATES)
            if CELL == "gru":
                tl.store(p_dgx_n + t * stride_ct + offs_c, d_gx_n.to(p_dgx_n.dtype.element_ty), mask=mask_bh)
        if PREFETCH_OWN_TILES:
            # The next step's own tiles, issued before the barrier so that their round trips
            # overlap its wait (bench/NOTES.md v1.15): none of them is written by another
            # program. Masked off past the launch's last step.
            more = mask_while(mask_b, s - 1 >= s_start)
            if DO_DH:
                dy_next = _dy_tile(s - 1, T, p_dy, stride_dyt, stride_dyb, stride_dyh, rows_b, more, offs_p, mask_p,
                                   length, VARLEN, REVERSE)  # fmt: skip
            if DO_CELL:
                own_next = _cell_tiles(
                    s - 1, T, p_gates, stride_gt, stride_gb, p_c, stride_ct, p_c0, stride_c0b, p_hn, p_out,
                    stride_ot, stride_ob, p_h0, stride_h0b, rows_b, more, offs_h, mask_h, offs_c, H, length, BLOCK_B,
                    BLOCK_H, VARLEN, REVERSE, CELL, GATES, HAS_C, False,
                )  # fmt: skip
        # dG_t must be visible before step t-1 reads it.
        n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
    report_timeout(p_sync, spins_left, GRID_SYNC)

    if DO_CELL and (HAS_C or CELL == "gru"):
        tl.store(p_dc + offs_c, dc, mask=mask_bh)



# ----------------------------------------------------------------------------------------
# Host launchers: check, allocate, plan (kernels/planner.py), launch (kernels/launch.py).
# No autograd.

def _time_major_like(ref, last_dim, dtype):
    """An output with the batch/time layout of the time-major view ``ref``."""
    T, B = ref.shape[:2]
    if ref.stride(0) < ref.stride(1):  # batch-major storage, i.e. batch_first
        return empty_output(B, T, last_dim, dtype=dtype, device=ref.device).transpose(0, 1)
    return empty_output(T, B, last_dim, dtype=dtype, device=ref.device)


def forward_outputs(cell, gates, H, P, has_proj):
    """What ``recurrence_fwd`` allocates for the (T, B, gates * H) view ``gates``: out, c (or
    None: a cell without it), m (or None) and the GRU's hn (else None). Also the shapes and
    strides of the fake (torch.compile) version of the forward op."""
    T, B = gates.shape[:2]
    out = _time_major_like(gates, P, gates.dtype)
    c = empty_output(T, B, H, dtype=torch.float32, device=gates.device) if _has_c(cell) else None
    m = empty_output(T, B, H, dtype=gates.dtype, device=gates.device) if has_proj else None
    # fp32, as the LSTM's c: the backward recomputes n = tanh(Gx_n + r * hn) and scales by hn
    hn = empty_output(T, B, H, dtype=torch.float32, device=gates.device) if _saves_hn(cell) else None
    return out, c, m, hn


def backward_outputs(cell, gates, d_cn, P, has_proj, d_gates_into_gates=False, hn=None):
    """What ``recurrence_bwd`` allocates: d_gates (or, ``d_gates_into_gates``, ``gates``
    itself), the carried fp32 gradient (the LSTM's dc: d_cn's copy, updated in place; the
    GRU's dh * z: zeros; None for another cell), d_h (or None), and the GRU's input-side n
    slot d_gx_n (``hn`` itself with ``d_gates_into_gates``; else None). Also the fake
    version of the backward op."""
    T, B = gates.shape[:2]
    H = gates.shape[2] // cell.gates
    d_gates = gates if d_gates_into_gates else _time_major_like(gates, gates.shape[2], gates.dtype)
    d_c = d_cn.to(torch.float32, copy=True).contiguous() if _has_c(cell) else None
    d_gx_n = None
    if _saves_hn(cell):
        d_c = torch.zeros(B, H, dtype=torch.float32, device=gates.device)
        d_gx_n = hn if d_gates_into_gates else empty_output(T, B, H, dtype=torch.float32, device=gates.device)
    d_h = empty_output(T, B, P, dtype=torch.float32, device=gates.device) if has_proj else None
    return d_gates, d_c, d_h, d_gx_n


def _has_c(cell):
    return "c" in cell.states


def _saves_hn(cell):
    """The GRU: a tile beyond its gates saved per step (W_hn h + b_hn), and split gate grads."""
    return cell.saved_tiles > cell.gates


def cell_constexprs(cell):
    """The kernels' constexprs that say which cell they run (``kernels/cell_math.py``)."""
    return dict(CELL=cell.name, GATES=cell.gates, HAS_C=_has_c(cell))


def _check_common(cell, gates, w_hh, w_hr, lengths, h_states, c_states):
    """Shapes and dtypes the kernels rely on; returns T, B, H, P."""
    G = cell.gates
    if gates.dim() != 3 or gates.stride(2) != 1:
        raise ValueError(f"gates must be a (T, B, {G}H) view with a contiguous last dimension")
    T, B = gates.shape[:2]
    H, P = w_hh.shape[0] // G, w_hh.shape[1]
    if w_hh.dim() != 2 or w_hh.shape[0] != G * H or gates.shape[2] != G * H:
        raise ValueError(
            f"expected W_hh ({G}H, P) and gates (T, B, {G}H), got {tuple(w_hh.shape)}, {tuple(gates.shape)}"
        )
    if w_hr is not None and not cell.projection:
        raise ValueError(f"the {cell.name} cell has no projection")
    if w_hr is None and P != H:
        raise ValueError(f"W_hh of shape {tuple(w_hh.shape)} needs a projection W_hr ({P}, {H})")
    if w_hr is not None and tuple(w_hr.shape) != (P, H):
        raise ValueError(f"expected W_hr ({P}, {H}), got {tuple(w_hr.shape)}")
    if any(t is None for t in (*h_states, *c_states)):
        raise ValueError(f"the {cell.name} cell carries the states {cell.states}: each needs a tensor")
    for t in h_states:
        if tuple(t.shape) != (B, P):
            raise ValueError(f"expected a ({B}, {P}) state, got {tuple(t.shape)}")
    for t in c_states:
        if tuple(t.shape) != (B, H):
            raise ValueError(f"expected a ({B}, {H}) state, got {tuple(t.shape)}")
    # The kernels read h0/c0 and the weights with the gates' element type (a compiled `if`
    # picks between pointers to h0 and to the output, which must have one type).
    for t in (w_hh, *([w_hr] if w_hr is not None else []), *h_states, *c_states):
        if t.dtype != gates.dtype or t.device != gates.device:
            raise ValueError(f"expected {gates.dtype} on {gates.device}, got {t.dtype} on {t.device}")
    if lengths is not None:
        if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64) or lengths.device != gates.device:
            raise ValueError(f"lengths must be a ({B},) int32/int64 tensor on {gates.device}")
    return T, B, H, P


def _cell_states(cell, c):
    """The c states a launcher checks: [c] for a cell that carries c, else none, and c must be
    None then."""
    if _has_c(cell):
        return [c]
    if c is not None:
        raise ValueError(f"the {cell.name} cell carries no c state, got one")
    return []


def dot_weights(config, w_hh, w_hr):
    """The weight pointers of a launch (p_w_hh, p_w_hr): as given, or for float32 dots in
    TF32 rounded to TF32 here, once per call, so that the kernels' streamed W tiles go from
    memory to the tensor cores untouched (kernels/_helpers.py weight_operand). Without a
    projection w_hr is w_hh (an unused pointer): rounded once."""
    if config["INPUT_PRECISION"] != "tf32" or w_hh.dtype != torch.float32:
        return {}
    rounded_hh = tf32_rounded(w_hh)
    return dict(p_w_hh=rounded_hh, p_w_hr=rounded_hh if w_hr is w_hh else tf32_rounded(w_hr))


def recurrence_fwd(cell, gates, w_hh, h0, c0=None, *, w_hr=None, lengths=None, reverse=False, b_hn=None):
    """Run the forward recurrence of ``cell`` (a ``kernels/cells.py`` CellSpec).

    gates: (T, B, G*H) time-major view (G = cell.gates) holding Gx = x W_ih^T + the folded
        biases; overwritten in place with the gates' pre-activations, which the backward needs.
    w_hh: (G*H, P). h0: (B, P), and for a cell with c c0: (B, H) (else None), in the gates'
        dtype (zeros when the caller has none).
    w_hr: (P, H) projection (cells with ``projection``), or None (then P = H). lengths: (B,)
        int tensor on the gates' device, or None; every length in [1, T]. reverse: run
        t = T-1, ..., 0. b_hn: the GRU's (H,) bias inside the step, or None for zeros.
    Returns ``out`` (T, B, P) in the gates' dtype and layout (zero at inactive steps), ``c``
    (T, B, H) fp32 (None without c), ``m`` (T, B, H), the LSTMP's ``o * tanh(c)`` in the
    gates' dtype, for a projection (else None), and the GRU's ``hn`` (T, B, H) = W_hn h + b_hn
    (else None). The GRU's gates are left holding the r and z pre-activations and Gx_n.
    """
    c_states = _cell_states(cell, c0)
    T, B, H, P = _check_common(cell, gates, w_hh, w_hr, lengths, [h0], c_states)
    has_proj = w_hr is not None
    w_hh, h0 = w_hh.contiguous(), h0.contiguous()
    c0 = c0.contiguous() if c_states else None
    # Without a projection W_hh stands in for W_hr, never read: the launch specialises on
    # its dtype, as on the other pointers' (and the resource tables were built so).
    w_hr = w_hr.contiguous() if has_proj else w_hh
    out, c, m, hn = forward_outputs(cell, gates, H, P, has_proj)
    if hn is not None and b_hn is None:
        b_hn = gates.new_zeros(H)
    arguments = dict(
        p_gates=gates, p_w_hh=w_hh, p_w_hr=w_hr, p_h0=h0, p_c0=c0, p_lengths=lengths, p_out=out, p_m=m, p_c=c,
        p_hn=hn, p_b_hn=b_hn.contiguous() if hn is not None else None,
        T=T, B=B, H=H, P=P, stride_gt=gates.stride(0), stride_gb=gates.stride(1), stride_ot=out.stride(0),
        stride_ob=out.stride(1), stride_w=w_hh.stride(0), stride_hr=w_hr.stride(0), stride_h0b=h0.stride(0),
        stride_c0b=c0.stride(0) if c0 is not None else 0,
    )  # fmt: skip
    constexprs = dict(REVERSE=reverse, VARLEN=lengths is not None, **cell_constexprs(cell))

    def run(strategy, config):
        phases = planner.kernel_phases(has_proj, backward=False)
        launch.run_recurrence(_recurrence_fwd_kernel, strategy, config, phases, (T, B, H, P),
                              {**arguments, **dot_weights(config, w_hh, w_hr)}, constexprs, gates,
                              unused=c if c is not None else out)  # fmt: skip

    kernel = _recurrence_fwd_kernel
    plans = planner.plans(cell, B, H, P if has_proj else None, gates.dtype, gates.device, kernel, False)
    planner.run_plans(plans, run)
    return out, c, m, hn


def recurrence_bwd(cell, gates, c, c0, w_hh, d_out, d_hn, d_cn, *, w_hr=None, lengths=None, reverse=False,
                   d_gates_into_gates=False, hn=None, out=None, h0=None):  # fmt: skip
    """Run the backward recurrence of ``cell``.

    gates, c: as returned/overwritten by ``recurrence_fwd``; c0, w_hh, w_hr, lengths,
    reverse: as given to it. d_out: (T, B, P) view of any strides; d_hn: (B, P), and for a
    cell with c d_cn: (B, H) (c, c0 and d_cn are None for a cell without c).
    The GRU's also: ``hn`` from the forward, its ``out`` (h_{t-1} of each step) and h0.
    Returns ``d_gates`` (T, B, G*H), the gradient of the pre-activations in the gates' dtype
    and layout (zero at inactive steps; the GRU's: the recurrent side's, r * da_n in the n
    slot), ``d_c0`` (B, H) fp32 (the GRU's: the gradient that reached h0 through z * h; None
    without), for a projection ``d_h`` (T, B, P) fp32, the gradient of each ``h_t`` (else
    None), and the GRU's ``d_gx_n`` (T, B, H), the input side's n slot (written over ``hn``
    with ``d_gates_into_gates``; else None). Everything else is a GEMM of these.

    ``d_gates_into_gates``: write d_gates over ``gates`` (and return it), saving a
    (T, B, G*H) buffer, the largest of the backward, when the caller needs the gates no more.
    Safe because a program reads the gates of its own (step, rows, units) tile before it
    writes that tile's gradient, and what other programs read at step t is d_gates of step
    t + 1.
    """
    c_states = _cell_states(cell, c0)
    _cell_states(cell, d_cn)
    T, B, H, P = _check_common(cell, gates, w_hh, w_hr, lengths, [d_hn], c_states + ([d_cn] if c_states else []))
    w_hh, d_hn = w_hh.contiguous(), d_hn.contiguous()
    c0 = c0.contiguous() if c_states else None
    has_proj = w_hr is not None
    w_hr = w_hr.contiguous() if has_proj else w_hh  # unused pointer without a projection
    if _saves_hn(cell):
        if hn is None or out is None or h0 is None:
            raise ValueError(f"the {cell.name} cell's backward needs the forward's hn, out and h0")
        if hn.shape != (T, B, H) or hn.dtype != torch.float32 or not hn.is_contiguous() or hn.device != gates.device:
            raise ValueError(f"expected hn as the forward returned it: ({T}, {B}, {H}) fp32, contiguous")
        if out.shape != (T, B, P) or out.stride(2) != 1 or tuple(h0.shape) != (B, P):
            raise ValueError(f"expected the forward's out ({T}, {B}, {P}) and h0 ({B}, {P})")
        for t in (out, h0):  # read through one pointer type (a compiled `if` picks between them)
            if t.dtype != gates.dtype or t.device != gates.device:
                raise ValueError(f"expected out and h0 in {gates.dtype} on {gates.device}, got {t.dtype} on {t.device}")
        h0 = h0.contiguous()
    d_gates, d_c, d_h, d_gx_n = backward_outputs(cell, gates, d_cn, P, has_proj, d_gates_into_gates, hn)
    arguments = dict(
        p_gates=gates, p_c=c, p_c0=c0, p_w_hh=w_hh, p_w_hr=w_hr, p_lengths=lengths, p_dy=d_out, p_dhn=d_hn,
        p_dh=d_h, p_dgates=d_gates, p_dc=d_c, p_hn=hn, p_dgx_n=d_gx_n, p_out=out, p_h0=h0,
        stride_ot=out.stride(0) if out is not None else 0, stride_ob=out.stride(1) if out is not None else 0,
        stride_h0b=h0.stride(0) if h0 is not None else 0, T=T, B=B, H=H, P=P, stride_gt=gates.stride(0),
        stride_gb=gates.stride(1), stride_dgt=d_gates.stride(0), stride_dgb=d_gates.stride(1),
        stride_dyt=d_out.stride(0), stride_dyb=d_out.stride(1), stride_dyh=d_out.stride(2),
        stride_dhnb=d_hn.stride(0), stride_c0b=c0.stride(0) if c0 is not None else 0, stride_w=w_hh.stride(0),
        stride_hr=w_hr.stride(0),
    )  # fmt: skip
    constexprs = dict(REVERSE=reverse, VARLEN=lengths is not None, **cell_constexprs(cell))
    unused = d_c if d_c is not None else d_gates

    def run(strategy, config):
        split = config["DH_SPLIT"]
        # One step's partial sums: the next step writes them only after this one's barrier.
        dh_part = empty_output(split, B, P, dtype=torch.float32, device=gates.device) if split > 1 else None
        phases = planner.kernel_phases(has_proj, backward=True, dh_split=split)
        launch.run_recurrence(_recurrence_bwd_kernel, strategy, config, phases, (T, B, H, P),
                              {**arguments, **dot_weights(config, w_hh, w_hr), "p_dh_part": dh_part}, constexprs,
                              gates, unused=unused, backward=True)  # fmt: skip

    kernel = _recurrence_bwd_kernel
    plans = planner.plans(cell, B, H, P if has_proj else None, gates.dtype, gates.device, kernel, True)
    planner.run_plans(plans, run)
    return d_gates, d_c, d_h, d_gx_n

"""Fused Triton kernels of the LSTM recurrence, forward and backward, and their launchers.

Only the recurrence lives here; the work that does not depend on the previous step is left
to cuBLAS in the autograd Function (``fusedrnn.autograd``): the input projection
``Gx = X @ W_ih^T + b`` for all timesteps before the loop, and the weight, bias and input
gradients as batched GEMMs after it.

Layout and naming. Gate order is PyTorch's (i, f, g, o): rows ``g*H : (g+1)*H`` of
``W_hh (4H, P)`` belong to gate ``g``. ``P`` is the size of ``h``: ``H``, or ``proj_size``
for an LSTMP layer (``h_t = W_hr m_t`` with ``m_t = o_t * tanh(c_t)``, ``W_hr (P, H)``).
Sequence tensors are time-major views ``(T, B, *)`` with arbitrary strides along T and B (so
``batch_first`` costs no copy); their last dimension is contiguous. ``c`` is kept in fp32
whatever the input dtype, as are all accumulators.

Steps and time. Step ``s`` runs time ``t = s``, or ``t = T-1-s`` for the reverse direction
(``REVERSE``). With per-row ``lengths`` (``VARLEN``) row ``b`` takes part in the steps with
``t < lengths[b]`` only: elsewhere its state passes through unchanged, its output and its
gate gradients are zero. That is packed-sequence semantics in either direction, with no
sorting and no work moved to Python.

Work split. A step has up to two phases, each split over programs ``(pid_b, pid_u)`` that own
``BLOCK_B`` batch rows and a block of units:

- forward ``cell``: all four gates of ``BLOCK_H`` cell units and their cell update; it needs
  all of ``h_{t-1}``. Without a projection it writes ``h_t``; with one it writes ``m_t``.
- forward ``proj`` (LSTMP only): ``h_t`` for ``BLOCK_P`` units, from all of ``m_t``.
- backward ``dh``: ``dh_t`` for ``BLOCK_P`` units, from all of ``dG_{t+1}``; where the plan
  splits its K = 4H loop (``DH_SPLIT``), from the partial sums of a phase before it,
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
"""

from contextlib import contextmanager, nullcontext

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from . import step_graphs, tuning
from ._helpers import (
    TRITON_DTYPES,
    cell_grads,
    cell_update,
    empty_output,
    gates_matmul,
    grid_barrier,
    is_interpreted,
    load_activations,
    store_gates,
    tanh,
)

# Launch strategies (see launch_strategy). "one-launch": up to this padded hidden (and
# projection) size one program holds all units of its batch rows and one launch runs every
# step. "per-step": blocks of PER_STEP_BLOCK_H units, one launch per step and phase.
# "persistent": one launch, the units split over up to an SM's worth of programs per batch
# block, blocks of at most PERSISTENT_MAX_BLOCK_B rows and PERSISTENT_MAX_BLOCK_U units.
# Tests lower them to exercise every path on small shapes.
ONE_LAUNCH_MAX_H = 128
PER_STEP_BLOCK_H = 64
BLOCK_B = 16
PERSISTENT_MAX_BLOCK_B = 64
PERSISTENT_MAX_BLOCK_U = 128
# Register cap of a persistent backward build (ptxas .maxnreg). Left alone, ptxas capped 8-warp
# held-weights backward builds at 128 registers (two programs per SM) and spilled 8-12 B; a
# persistent grid plans one program per SM, so let them take up to 255. Not the forward: its
# builds do not spill uncapped, and with the cap ptxas scheduled one into 56 B of spills.
PERSISTENT_BACKWARD_MAX_REGISTERS = 255
# Register budget of a program, per thread, calibrated with ptxas on sm_90 builds specialised
# as launches are (bench/results/kernel-resources-sm90.md, bench/NOTES.md): the four fp32
# accumulators (a 64 x 64 tile over 8 warps, 64 values, spills in the backward; 32 do not),
# and the bytes of one K chunk of A and of the four W tiles (272 spilled in an fp32 backward).
MAX_ACCUMULATORS_PER_THREAD = 32
MAX_CHUNK_BYTES_PER_THREAD = 256
# Where a persistent forward program holds its W_hh slice in shared memory across the steps
# (W_RESIDENT): the input dtypes, batch blocks and padded K (= P) for which those builds do
# not spill and the slice with h's tile fits (192 KiB at 32 rows and K = 1024). Elsewhere
# (TF32 spills kilobytes, K = 2048 needs 320 KiB, H not a multiple of 16 spills) W streams
# from L2.
RESIDENT_WEIGHT_DTYPES = (torch.float16, torch.bfloat16)
RESIDENT_MAX_BLOCK_B = 32
RESIDENT_MAX_K = 1024
RESIDENT_ALIGNMENT = 16
# Polls of a grid barrier before it gives up and the launch reports an error: seconds on a
# GPU, where a barrier takes microseconds.
BARRIER_MAX_SPINS = 1 << 24
# How a launch whose barrier timed out fails (_check_barriers): "async", torch._assert_async,
# no host sync, but on CUDA a device-side assert that ends the process's CUDA context; or
# "host", a synchronisation, then a RuntimeError, and the context lives on: the test suite and
# bench/gpu_smoke.py (with a smaller BARRIER_MAX_SPINS), where one timeout must not fail every
# later test of the process.
BARRIER_ERROR_CHECK = "async"
MAX_BLOCK_K = 64  # the recurrent products run over K in chunks of at most this
# Pipelined K loops (bench/NOTES.md v1.4). Triton 3.6 on sm_90, num_stages = 2: the TTGIR
# waits for every copy (async_wait num = 0) before each chunk's dots, a full L2 round trip a
# chunk; num_stages = 3: one stage stays in flight (the forward's wait leaves its 5 copies,
# the backward's 2), so chunk k + 1 loads while chunk k multiplies. A program takes
# STREAMED_NUM_STAGES where that many stages of its buffers (A's chunk and the four W chunks
# each: the forward allocates one buffer per stage) fit in MAX_PIPELINE_SHARED_BYTES, which
# leaves room under sm_90's 227 KiB for the epilogue's layout conversions; else 2.
STREAMED_NUM_STAGES = 3
MAX_PIPELINE_SHARED_BYTES = 160 * 1024
MIN_DOT = 16  # tl.dot needs every dimension >= 16 on the GPU (the interpreter does not check)
# The backward's dh_t = dG_{t+1} @ W_hh runs over K = 4H: at H = 2048, 128 chunks of 64 in a
# row, every step, in each program, each of which reads all of dG's rows. Where the K loop is
# long and the dh phase's grid leaves SMs idle, the loop is split into DH_SPLIT slices of
# K, up to DH_SPLIT_MAX, each at least DH_SPLIT_MIN_CHUNKS chunks (shorter, and the extra
# launch or barrier costs more than the chunks saved): a phase of partial sums over
# (rows, DH_SPLIT_BLOCK_P units, K slice) items, added in slice order by the dh phase
# (_dh_partials, bench/NOTES.md v1.5). The interpreter, which has no SMs to count, does not
# split. Tests set DH_SPLIT_OVERRIDE: the split of every backward with a K loop, on any device.
DH_SPLIT_MAX = 8
DH_SPLIT_MIN_CHUNKS = 32
DH_SPLIT_BLOCK_P = 64
DH_SPLIT_OVERRIDE = None


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
def _sync_step(p_sync, n_synced, spins_left, GRID_SYNC: tl.constexpr):
    """Make the program's stores of a phase visible to the programs that read them next: to
    every program of its batch block through a grid barrier (GRID_SYNC: the persistent
    launch; counter p_sync[pid_b]), else to its own threads (one program owns every unit, or
    the launch ends with the phase). Returns the number of barriers passed and the spin
    budget left: zero once a barrier timed out, so that later ones do not wait again."""
    if GRID_SYNC:
        target = (n_synced + 1) * tl.num_programs(1)
        timed_out = grid_barrier(p_sync + tl.program_id(0), target, spins_left)
        spins_left = tl.where(timed_out, 0, spins_left)
    else:
        tl.debug_barrier()
    return n_synced + 1, spins_left


@triton.jit
def _report_timeout(p_sync, spins_left, GRID_SYNC: tl.constexpr):
    """Raise the launch's error word (p_sync[num_programs(0)]) if a barrier timed out."""
    if GRID_SYNC:
        if spins_left == 0:
            tl.store(p_sync + tl.num_programs(0), 1)


@triton.jit
def _load_gate_tiles(p_w, gate_rows, mask_w, DOT_DTYPE: tl.constexpr):
    """The four gates' (i, f, g, o) tiles of W_hh at p_w, gate_rows elements apart, as dot
    operands: a program's held weights (W_RESIDENT)."""
    w_i = tl.load(p_w, mask=mask_w, other=0.0).to(DOT_DTYPE)
    w_f = tl.load(p_w + gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
    w_g = tl.load(p_w + 2 * gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
    w_o = tl.load(p_w + 3 * gate_rows, mask=mask_w, other=0.0).to(DOT_DTYPE)
    return w_i, w_f, w_g, w_o


@triton.jit
def _matmul_acc(acc, p_a, stride_ak, mask_a, p_b, stride_bk, mask_b, K, BLOCK_K: tl.constexpr,
                DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc += A @ B over k < K in chunks of BLOCK_K. A's rows and B's columns are given as
    pointer vectors p_a (rows) and p_b (columns) with masks; element k of a row/column lies
    k * stride away."""
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
        acc += tl.dot(b_a.to(DOT_DTYPE), b_b.to(DOT_DTYPE), input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _dh_partials(p_dg_rows, mask_b, p_w_hh, stride_w, p_part_rows, stride_part, H, P, BLOCK_B: tl.constexpr,
                 BLOCK_PS: tl.constexpr, BLOCK_K: tl.constexpr, DH_SPLIT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr):  # fmt: skip
    """The backward's dh_t = dG_{t+1} @ W_hh (K = 4H) split into DH_SPLIT slices of K, each a
    partial sum over (BLOCK_B rows, BLOCK_PS units) stored in its own (B, P) plane of p_part:
    more programs share a step's K loop, each reads a slice of dG's rows rather than all of
    them. The items (unit block, K slice) go round the programs of the batch block: one each
    in a per-step launch, which has as many programs; in a persistent one, as many as the
    planner allowed (bench/NOTES.md v1.5). p_dg_rows, p_part_rows: the rows' pointers."""
    n_ps = tl.cdiv(P, BLOCK_PS)
    k_slice = tl.cdiv(tl.cdiv(4 * H, DH_SPLIT), BLOCK_K) * BLOCK_K  # whole chunks; the last slice may be short
    for item in range(tl.program_id(1), n_ps * DH_SPLIT, tl.num_programs(1)):
        piece = item // n_ps
        offs_ps = (item % n_ps) * BLOCK_PS + tl.arange(0, BLOCK_PS)
        mask_ps = offs_ps < P
        k_lo = piece * k_slice
        k_lo64 = tl.cast(k_lo, tl.int64)
        part = tl.zeros((BLOCK_B, BLOCK_PS), dtype=tl.float32)
        part = _matmul_acc(
            part, p_dg_rows + k_lo64, 1, mask_b, p_w_hh + k_lo64 * stride_w + offs_ps, stride_w, mask_ps,
            tl.minimum(4 * H - k_lo, k_slice), BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
        )  # fmt: skip
        p_out = p_part_rows[:, None] + piece * stride_part + offs_ps[None, :]
        tl.store(p_out, part, mask=mask_b[:, None] & mask_ps[None, :])


# B, H and P stay specialised (divisible by 16 or not): that vectorises the masked loads,
# and a model has few sizes. The step range and T change per call: never specialised.
@triton.jit(do_not_specialize=["s_start", "s_end", "T", "max_spins"])
def _lstm_fwd_kernel(
    p_gates,  # (T, B, 4H) view: Gx on entry, pre-activation gates (i, f, g, o) on exit
    p_w_hh,  # (4H, P)
    p_w_hr,  # (P, H) projection (HAS_PROJ)
    p_h0,  # (B, P)
    p_c0,  # (B, H)
    p_lengths,  # (B,) int (VARLEN)
    p_out,  # (T, B, P) view: h_t
    p_m,  # (T, B, H) contiguous: m_t = o_t * tanh(c_t) (HAS_PROJ), saved for the backward
    p_c,  # (T, B, H) fp32, contiguous: c_t, saved for the backward
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
):
    rows_b, mask_b, offs_h, mask_h, offs_p, mask_p, offs_c = _program_tile(B, H, P, BLOCK_B, BLOCK_H, BLOCK_P)
    mask_bh = mask_b[:, None] & mask_h[None, :]
    # tl.cast, not B.to: a launch makes an integer argument equal to 1 a constexpr (Triton's
    # specialisation), and the constant 1 has no .to. The interpreter does not specialise.
    stride_ct = tl.cast(B, tl.int64) * H  # one (B, H) plane of p_c
    if VARLEN:
        length = tl.load(p_lengths + rows_b, mask=mask_b, other=0)

    if DO_CELL:
        # The cell state of the program's own units stays in registers across its steps.
        # Every step stores c (carried through a row's inactive steps), so a launch that
        # starts later reads the step before it.
        if s_start == 0:
            c = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
            c = c.to(tl.float32)
        else:
            _, t_prev = _step_time(s_start, T, REVERSE)
            c = tl.load(p_c + t_prev * stride_ct + offs_c, mask=mask_bh, other=0.0)

    if W_RESIDENT:
        # The program's slice of W_hh, loaded once: a (K, BLOCK_H) tile per gate over the whole
        # (padded) K = BLOCK_K. Loop-invariant dot operands stay in shared memory across the
        # steps (sm_90 TTGIR: local_alloc before the loop), so no step re-reads W from L2.
        offs_kw = tl.arange(0, BLOCK_K)
        mask_kw = offs_kw < P
        p_w = p_w_hh + offs_h[None, :].to(tl.int64) * stride_w + offs_kw[:, None]
        mask_w = mask_kw[:, None] & mask_h[None, :]
        w_i, w_f, w_g, w_o = _load_gate_tiles(p_w, tl.cast(H, tl.int64) * stride_w, mask_w, DOT_DTYPE)

    n_synced, spins_left = 0, max_spins
    for s in range(s_start, s_end):
        t, t_prev = _step_time(s, T, REVERSE)
        if VARLEN:
            active = mask_b & (t < length)
        else:
            active = mask_b
        if DO_CELL:
            p_g = p_gates + t * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
            acc_i = tl.load(p_g, mask=mask_bh, other=0.0).to(tl.float32)
            acc_f = tl.load(p_g + H, mask=mask_bh, other=0.0).to(tl.float32)
            acc_g = tl.load(p_g + 2 * H, mask=mask_bh, other=0.0).to(tl.float32)
            acc_o = tl.load(p_g + 3 * H, mask=mask_bh, other=0.0).to(tl.float32)
            # h_{t-1} is h0 at the first step, and (reverse, VARLEN) for a row whose previous
            # step was inactive: its state is still h0 there, while its output reads zero.
            from_h0 = s == 0
            if VARLEN:
                from_h0 = from_h0 | (t_prev >= length)
            p_hprev = tl.where(from_h0, p_h0 + rows_b * stride_h0b, p_out + t_prev * stride_ot + rows_b * stride_ob)
            if W_RESIDENT:
                # All of h_{t-1} (other programs wrote it: from L2, .cg) against the held W.
                p_hk = p_hprev[:, None] + offs_kw[None, :]
                b_h = tl.load(p_hk, mask=mask_b[:, None] & mask_kw[None, :], other=0.0, cache_modifier=".cg")
                b_h = b_h.to(DOT_DTYPE)
                acc_i += tl.dot(b_h, w_i, input_precision=INPUT_PRECISION)
                acc_f += tl.dot(b_h, w_f, input_precision=INPUT_PRECISION)
                acc_g += tl.dot(b_h, w_g, input_precision=INPUT_PRECISION)
                acc_o += tl.dot(b_h, w_o, input_precision=INPUT_PRECISION)
            else:
                acc_i, acc_f, acc_g, acc_o = gates_matmul(
                    acc_i, acc_f, acc_g, acc_o, p_hprev, mask_b, p_w_hh + offs_h.to(tl.int64) * stride_w, stride_w,
                    mask_h, H, P, BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
                )  # fmt: skip

            h, c_new = cell_update(acc_i, acc_f, acc_g, acc_o, c)
            if VARLEN:
                c = tl.where(active[:, None], c_new, c)
                h = tl.where(active[:, None], h, 0.0)
            else:
                c = c_new

            # Save the pre-activations for the backward, over the program's own Gx tile
            # (already read). Not the activations: in 16 bits, f = 0.99 leaves 1 - f with two
            # bits, while sigmoid(-x) recomputed in fp32 from a 16-bit x is accurate.
            store_gates(p_g, H, acc_i, acc_f, acc_g, acc_o, mask_bh)
            tl.store(p_c + t * stride_ct + offs_c, c, mask=mask_bh)
            if HAS_PROJ:
                tl.store(p_m + t * stride_ct + offs_c, h.to(p_m.dtype.element_ty), mask=mask_bh)
            else:
                p_h = p_out + t * stride_ot + rows_b[:, None] * stride_ob + offs_h[None, :]
                tl.store(p_h, h.to(p_out.dtype.element_ty), mask=mask_bh)
        if DO_CELL and DO_PROJ:  # m_t of all units before the projection reads it
            n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
        if DO_PROJ:
            # h_t = m_t @ W_hr^T for the program's P units (zero where m is, i.e. inactive rows).
            acc_h = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
            acc_h = _matmul_acc(
                acc_h, p_m + t * stride_ct + rows_b * H, 1, mask_b,
                p_w_hr + offs_p.to(tl.int64) * stride_hr, 1, mask_p, H, BLOCK_K, DOT_DTYPE, INPUT_PRECISION,
            )  # fmt: skip
            p_h = p_out + t * stride_ot + rows_b[:, None] * stride_ob + offs_p[None, :]
            tl.store(p_h, acc_h.to(p_out.dtype.element_ty), mask=mask_b[:, None] & mask_p[None, :])
        # h_t must be visible before step t+1 reads it.
        n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
    _report_timeout(p_sync, spins_left, GRID_SYNC)


@triton.jit(do_not_specialize=["s_start", "s_end", "T", "max_spins"])
def _lstm_bwd_kernel(
    p_gates,  # (T, B, 4H) view: pre-activation gates (i, f, g, o) from the forward
    p_c,  # (T, B, H) fp32, contiguous: c_t from the forward
    p_c0,  # (B, H)
    p_w_hh,  # (4H, P)
    p_w_hr,  # (P, H) (HAS_PROJ)
    p_lengths,  # (B,) int (VARLEN)
    p_dy,  # (T, B, P) view, any strides (may be expanded): gradient of the output
    p_dhn,  # (B, P): gradient of h_n
    p_dh,  # (T, B, P) contiguous (HAS_PROJ): dh_t, from the dh phase to the cell phase
    p_dh_part,  # (DH_SPLIT, B, P) fp32 contiguous (DH_SPLIT > 1): dG_{t+1} @ W_hh, one K slice each
    p_dgates,  # (T, B, 4H) view: gradient of the pre-activations
    p_dc,  # (B, H) fp32: dc carried into the launch (dc_n or the last launch's), and out of it
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
):
    rows_b, mask_b, offs_h, mask_h, offs_p, mask_p, offs_c = _program_tile(B, H, P, BLOCK_B, BLOCK_H, BLOCK_P)
    mask_bh = mask_b[:, None] & mask_h[None, :]
    mask_bp = mask_b[:, None] & mask_p[None, :]
    stride_ct = tl.cast(B, tl.int64) * H  # one (B, H) plane of p_c (tl.cast: see the forward)
    stride_dht = tl.cast(B, tl.int64) * P  # one (B, P) plane of p_dh, and of p_dh_part
    if VARLEN:
        length = tl.load(p_lengths + rows_b, mask=mask_b, other=0)
    if DO_CELL:
        dc = tl.load(p_dc + offs_c, mask=mask_bh, other=0.0)
    if W_RESIDENT:
        # BLOCK_K is sized from P by _resident_weights: the dots below need K = H.
        tl.static_assert(not HAS_PROJ, "held weights in the backward need P == H (no projection)")
        # The program's columns of W_hh, loaded once as one (K, BLOCK_P) tile per gate over the
        # whole (padded) K = BLOCK_K >= H: dh_t = sum over gates of dG_{t+1, gate} @ W_gate.
        # Four dots of K = H rather than one of K = 4H, whose dG tile would not fit on chip.
        offs_kw = tl.arange(0, BLOCK_K)
        mask_kw = offs_kw < H
        p_w = p_w_hh + offs_kw[:, None].to(tl.int64) * stride_w + offs_p[None, :]
        mask_w = mask_kw[:, None] & mask_p[None, :]
        w_i, w_f, w_g, w_o = _load_gate_tiles(p_w, tl.cast(H, tl.int64) * stride_w, mask_w, DOT_DTYPE)

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
                    INPUT_PRECISION,
                )  # fmt: skip
        if DO_DH_PARTIAL and DO_DH:  # every K slice's partial sum before dh adds them
            n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
        if DO_DH:
            # dh_t over the program's P units: dy_t (none where the row is inactive), dh_n
            # at the row's last step, and dG_{t+1} @ W_hh over K = 4H otherwise.
            p_dy_t = p_dy + t * stride_dyt + rows_b[:, None] * stride_dyb + offs_p[None, :].to(tl.int64) * stride_dyh
            dh = tl.load(p_dy_t, mask=active[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
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
                    b_dg = tl.load(p_dgk, mask=mask_dgk, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                    dh += tl.dot(b_dg, w_i, input_precision=INPUT_PRECISION)
                    b_dg = tl.load(p_dgk + H, mask=mask_dgk, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                    dh += tl.dot(b_dg, w_f, input_precision=INPUT_PRECISION)
                    b_dg = tl.load(p_dgk + 2 * H, mask=mask_dgk, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                    dh += tl.dot(b_dg, w_g, input_precision=INPUT_PRECISION)
                    b_dg = tl.load(p_dgk + 3 * H, mask=mask_dgk, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                    dh += tl.dot(b_dg, w_o, input_precision=INPUT_PRECISION)
                elif DH_SPLIT > 1:
                    # The K slices' partial sums (the phase before), added in slice order: the
                    # same sum on every run, where atomics would not be.
                    p_part = p_dh_part + rows_b[:, None] * P + offs_p[None, :]
                    for piece in tl.static_range(DH_SPLIT):
                        dh += tl.load(p_part + piece * stride_dht, mask=mask_bp, other=0.0, cache_modifier=".cg")
                else:
                    dh = _matmul_acc(
                        dh, p_dg_next, 1, mask_b, p_w_hh + offs_p, stride_w, mask_p, 4 * H, BLOCK_K, DOT_DTYPE,
                        INPUT_PRECISION,
                    )  # fmt: skip
                if VARLEN and not REVERSE:
                    last = active & (t == length - 1)
                    dh += tl.load(p_dhn_tile, mask=last[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
            if HAS_PROJ:
                tl.store(p_dh + t * stride_dht + rows_b[:, None] * P + offs_p[None, :], dh, mask=mask_bp)
        if DO_DH and DO_CELL and HAS_PROJ:  # dh_t of all P units before dm reads it
            n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
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

            p_g = p_gates + t * stride_gt + rows_b[:, None] * stride_gb + offs_h[None, :]
            gate_i, gate_f, gate_g, gate_o = load_activations(p_g, H, mask_bh)
            c = tl.load(p_c + t * stride_ct + offs_c, mask=mask_bh, other=0.0)
            # c_{t-1}: c0 at the first step; the forward stored c at every step, carried
            # through inactive ones, so elsewhere it is the stored c of the step before. Load
            # in each branch: c0 has the input dtype, p_c is fp32, and the two branches of a
            # compiled `if` must yield one type.
            if s == 0:
                c_prev = tl.load(p_c0 + rows_b[:, None] * stride_c0b + offs_h[None, :], mask=mask_bh, other=0.0)
                c_prev = c_prev.to(tl.float32)
            else:
                c_prev = tl.load(p_c + t_prev * stride_ct + offs_c, mask=mask_bh, other=0.0)

            tanh_c = tanh(c)
            d_i, d_f, d_g, d_o, dc_t = cell_grads(gate_i, gate_f, gate_g, gate_o, c_prev, tanh_c, dm, dc)
            if VARLEN:
                # An inactive step passes dc through and has no gate gradients.
                keep = active[:, None]
                dc = tl.where(keep, dc_t * gate_f, dc)
                d_i = tl.where(keep, d_i, 0.0)
                d_f = tl.where(keep, d_f, 0.0)
                d_g = tl.where(keep, d_g, 0.0)
                d_o = tl.where(keep, d_o, 0.0)
            else:
                dc = dc_t * gate_f

            p_dg = p_dgates + t * stride_dgt + rows_b[:, None] * stride_dgb + offs_h[None, :]
            store_gates(p_dg, H, d_i, d_f, d_g, d_o, mask_bh)
        # dG_t must be visible before step t-1 reads it.
        n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, GRID_SYNC)
    _report_timeout(p_sync, spins_left, GRID_SYNC)

    if DO_CELL:
        tl.store(p_dc + offs_c, dc, mask=mask_bh)


@triton.jit(do_not_specialize=["T", "max_spins"])
def _barrier_floor_kernel(p_sync, T, max_spins):
    """The persistent forward's synchronisation alone: T grid barriers, no work. Its time per
    step is the floor of the persistent kernel's (bench/NOTES.md)."""
    n_synced, spins_left = 0, max_spins
    for _ in range(0, T):
        n_synced, spins_left = _sync_step(p_sync, n_synced, spins_left, True)
    _report_timeout(p_sync, spins_left, True)


# ----------------------------------------------------------------------------------------
# Host launchers: check, allocate, pick the strategy, blocks and grid, launch. No autograd.

STRATEGIES = ("auto", "one-launch", "persistent", "per-step")
_forced_strategy = "auto"
_last_strategy = None


class StrategyUnavailable(RuntimeError):
    """The launch strategy forced with ``launch_strategy`` cannot run this shape here."""


@contextmanager
def launch_strategy(name):
    """Force how the LSTM kernels launch inside the ``with`` block (benchmarks, tests):

    - ``"auto"`` (default): by shape, see ``choose_strategy``;
    - ``"one-launch"``: one program per batch block owns every unit, one launch for all steps
      (H and proj_size up to ``ONE_LAUNCH_MAX_H``);
    - ``"persistent"``: one cooperative launch for all steps, a grid barrier per step and
      phase; the grid must be resident at once (at most one program per SM is planned, the
      compiled kernel's occupancy is checked);
    - ``"per-step"``: one launch per step and phase.

    A launch that cannot run the forced strategy raises ``StrategyUnavailable``. The setting is
    process-wide, not per thread.
    """
    global _forced_strategy
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    saved, _forced_strategy = _forced_strategy, name
    try:
        yield
    finally:
        _forced_strategy = saved


def last_strategy():
    """The strategy of the latest ``lstm_fwd``/``lstm_bwd`` call (None before the first)."""
    return _last_strategy


def _cdiv(a, b):
    """ceil(a / b) for ints. triton.cdiv and triton.next_power_of_2 are JIT functions: a host
    call costs about 2 us each, and planning made dozens a launch (bench/NOTES.md, host time)."""
    return -(-a // b)


def _padded(n):
    """n rounded up to a power of two, at least MIN_DOT."""
    return max(MIN_DOT, 1 << (n - 1).bit_length())


def choose_strategy(H, P=None):
    """The ``"auto"`` strategy where this GPU's table (kernels/tuning.py) has no measurement
    near the shape (see ``_plan``). The persistent kernel has not been measured on a GPU yet
    (bench/NOTES.md), so the rule keeps to the strategies that have: one launch when one
    program spans every unit, else one launch per step."""
    units = max(_padded(H), _padded(P) if P is not None else 0)
    return "one-launch" if units <= ONE_LAUNCH_MAX_H else "per-step"


def _resident_limits(device, interpreted):
    """(programs in all, programs per batch block) a persistent grid may have, None for no
    limit. One program per SM is planned; the launch checks the compiled kernel's occupancy."""
    if interpreted:
        # The interpreter runs programs one after another: a barrier over two programs of a
        # batch block would wait for one that never runs.
        return None, 1
    return torch.cuda.get_device_properties(device).multi_processor_count, None


def _warps_and_k(block_b, block_u, max_block_k, itemsize, aligned, interpreted):
    """(num_warps, BLOCK_K): the fewest warps and then the widest K chunk within the register
    budget (MAX_ACCUMULATORS_PER_THREAD, MAX_CHUNK_BYTES_PER_THREAD), or None when none is.
    Sizes that are not multiples of 16 (not ``aligned``) get half the budget: their loads do
    not vectorise, and those builds spilled at the full one."""
    share = 1 if aligned else 2
    for num_warps in (4, 8):
        threads = 32 * num_warps
        if not interpreted and 4 * block_b * block_u * share > MAX_ACCUMULATORS_PER_THREAD * threads:
            continue
        block_k = max_block_k
        while block_k >= MIN_DOT:
            chunk_bytes = (block_b + 4 * block_u) * block_k * itemsize * share
            if interpreted or chunk_bytes <= MAX_CHUNK_BYTES_PER_THREAD * threads:
                return num_warps, block_k
            block_k //= 2
    return None


def _aligned(H, P):
    """Whether the sizes the kernels stride and mask by are multiples of 16 (a launch then
    specialises them, and its loads vectorise)."""
    return H % 16 == 0 and (P is None or P % 16 == 0)


def _persistent_blocks(B, H, P, max_block_k, itemsize, device, interpreted):
    """(BLOCK_B, BLOCK_U, num_warps, BLOCK_K) of a persistent grid: the smallest unit blocks
    (most programs share the per-step work and the weight slices) whose grid is resident, if
    their tiles fit in registers."""
    block_b = min(PERSISTENT_MAX_BLOCK_B, _padded(B))
    n_b = _cdiv(B, block_b)
    max_programs, max_group = _resident_limits(device, interpreted)
    block_u = MIN_DOT
    while True:
        block_h, block_p = _unit_blocks(H, P, block_u)
        n_u = max(_cdiv(H, block_h), _cdiv(P if P is not None else H, block_p))
        fits_group = max_group is None or n_u <= max_group
        if fits_group and (max_programs is None or n_b * n_u <= max_programs):
            units = max(block_h, block_p)
            tile = _warps_and_k(block_b, units, max_block_k, itemsize, _aligned(H, P), interpreted)
            if tile is None:
                raise StrategyUnavailable(
                    f"persistent: B={B}, H={H}, proj_size={P} fits the SMs only as {n_b}x{n_u} programs of "
                    f"{block_b} rows x {units} units, more than registers hold"
                )
            return block_b, block_u, *tile
        if block_u >= PERSISTENT_MAX_BLOCK_U:
            limit = f"{max_programs} SMs" if fits_group else f"{max_group} program per batch block (interpreter)"
            raise StrategyUnavailable(
                f"persistent: B={B}, H={H}, proj_size={P} needs {n_b} batch blocks x {n_u} unit blocks "
                f"of at most {PERSISTENT_MAX_BLOCK_U} units, more than {limit} hold at once"
            )
        block_u *= 2


def _per_step_blocks(B, H, P, max_block_k, itemsize, device, interpreted, backward=False):
    """(BLOCK_B, BLOCK_H, BLOCK_P) of the per-step launches. Every step each program of a
    phase reads its slice of the phase's weights and its rows of the phase's input from L2:
    over the grid n_b * |W| + n_u * B * K elements (K the input's width), so narrow batch
    blocks re-read the weights (16-row blocks at B = 512: 32 times a step). Of the tiles
    within the register budget, a phase takes the one that reads least among those whose
    grid has a program per SM, else the one with the most programs.

    Without a projection one phase (the backward's too: its dG rows, 4H wide, are not in
    the model). With one, two phases, each a launch over its own units: the heavier, which
    reads W_hh (4H x P), picks the batch block and its unit block; the other then picks its
    unit block for that batch block. Forward: the cell units (W_hh, h: K = P), then the
    projected units (W_hr, m: K = H). Backward: the projected units' dh (W_hh, dG: K = 4H),
    then the cell units' dm (W_hr, dh: K = P). Under the interpreter (no SMs): the fixed
    BLOCK_B x PER_STEP_BLOCK_H, which tests shrink to split small shapes."""
    sms, _ = _resident_limits(device, interpreted)
    if sms is None:
        return (BLOCK_B, *_unit_blocks(H, P, PER_STEP_BLOCK_H))

    def fits(block_b, units):
        return _warps_and_k(block_b, units, max_block_k, itemsize, _aligned(H, P), interpreted) is not None

    def plan_phase(units, weights, K, blocks_b, other_block_u=MIN_DOT):
        """(block_b, block_u) of one phase over ``units`` reading ``weights`` elements of W
        and rows K wide, by the rule above; None when no tile fits the register budget."""
        ranked = []
        for block_b in blocks_b:
            for block_u in (16, 32, 64):
                if block_u > min(PER_STEP_BLOCK_H, _padded(units)) or not fits(block_b, max(block_u, other_block_u)):
                    continue
                n_b, n_u = _cdiv(B, block_b), _cdiv(units, block_u)
                programs, reads = n_b * n_u, n_b * weights + n_u * B * K
                ranked.append(((programs < sms, -programs if programs < sms else reads, reads), (block_b, block_u)))
        return min(ranked, key=lambda ranked_tile: ranked_tile[0])[1] if ranked else None

    blocks_b = [block_b for block_b in (16, 32, 64, 128) if block_b <= _padded(B)]
    if P is None:
        block_b, block_h = plan_phase(H, 4 * H * H, H, blocks_b) or (BLOCK_B, MIN_DOT)
        return block_b, block_h, block_h
    # (units, weights, K) of the heavier phase, then of the other; which of them is P's
    heavy, light = ((P, 4 * H * P, 4 * H), (H, P * H, P)) if backward else ((H, 4 * H * P, P), (P, P * H, H))
    block_b, heavy_u = plan_phase(*heavy, blocks_b) or (BLOCK_B, MIN_DOT)
    light_u = (plan_phase(*light, [block_b], heavy_u) or (block_b, MIN_DOT))[1]
    return (block_b, light_u, heavy_u) if backward else (block_b, heavy_u, light_u)


def _unit_blocks(H, P, block_u):
    """(BLOCK_H, BLOCK_P) of programs that own up to block_u cell and projected units: no wider
    than the padded sizes; without a projection the backward's dh and cell phases share units."""
    block_h = min(_padded(H), block_u)
    return block_h, min(_padded(P), block_u) if P is not None else block_h


def kernel_config(B, H, dtype, strategy, *, P=None, backward=False, device=None, interpreted=False):
    """Constexprs and launch options of the forward (or ``backward``) kernel for ``strategy``
    (not "auto"), batch B, hidden size H, projection size P (None: no projection) and input
    dtype. Raises ``StrategyUnavailable`` when the strategy cannot run the shape (on
    ``device``)."""
    if dtype not in TRITON_DTYPES:
        raise TypeError(f"fusedrnn's Triton kernels support float32, float16 and bfloat16, got {dtype}")
    padded_h = _padded(H)
    padded_p = _padded(P) if P is not None else padded_h
    # fp32 tiles take twice the bytes: halve K so that the pipelined W tiles fit in shared
    # memory (fp32, BLOCK_H=128, BLOCK_K=64, 3 stages needs 264 KiB; sm_90 has 227 KiB).
    max_block_k = min(MAX_BLOCK_K if dtype.itemsize == 2 else max(MIN_DOT, MAX_BLOCK_K // 2), max(padded_h, padded_p))
    block_b = BLOCK_B
    if strategy == "one-launch":
        block_u = max(padded_h, padded_p)
        if block_u > ONE_LAUNCH_MAX_H:
            raise StrategyUnavailable(f"one-launch: H={H}, proj_size={P} exceed one program's {ONE_LAUNCH_MAX_H} units")
    elif strategy == "per-step":
        block_b, block_h, block_p = _per_step_blocks(B, H, P, max_block_k, dtype.itemsize, device, interpreted,
                                                     backward)  # fmt: skip
    elif strategy == "persistent":
        block_b, block_u, num_warps, block_k = _persistent_blocks(B, H, P, max_block_k, dtype.itemsize, device, interpreted)
    else:
        raise ValueError(f"no kernel config for strategy {strategy!r}")
    if strategy != "per-step":
        block_h, block_p = _unit_blocks(H, P, block_u)
    if strategy != "persistent":
        # The one program of "one-launch" (up to 128 units) may spill; it keeps its one launch.
        num_warps_and_k = _warps_and_k(block_b, max(block_h, block_p), max_block_k, dtype.itemsize,
                                       _aligned(H, P), interpreted)  # fmt: skip
        num_warps, block_k = num_warps_and_k or (8, MIN_DOT)
    for value in (block_b, block_h, block_p, block_k):
        assert value >= MIN_DOT and value & (value - 1) == 0, "blocks: powers of two >= 16"
    # The interpreter computes 16-bit dots wrongly (bf16 is stored as uint16): dot in fp32 there.
    dot_dtype = tl.float32 if interpreted else TRITON_DTYPES[dtype]
    # fp32 recurrent dots follow cuDNN's switch, as torch.nn.LSTM on CUDA does. For 16-bit
    # operands the precision setting has no effect: pass Triton's default.
    ieee = dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    config = dict(
        BLOCK_B=block_b,
        BLOCK_H=block_h,
        BLOCK_P=block_p,
        BLOCK_K=block_k,
        GRID_SYNC=strategy == "persistent",
        HAS_PROJ=P is not None,
        DOT_DTYPE=dot_dtype,
        INPUT_PRECISION="ieee" if ieee else "tf32",
        num_warps=num_warps,
        num_stages=_num_stages(block_b, max(block_h, block_p), block_k, dtype.itemsize, _aligned(H, P)),
    )
    if strategy == "persistent" and backward:
        config["maxnreg"] = PERSISTENT_BACKWARD_MAX_REGISTERS
    config.update(_resident_weights(config, strategy, P if P is not None else H, dtype))
    if backward:
        config.update(_dh_split(B, H, P, config, strategy, device, interpreted))
    # Block sizes measured faster on this GPU for this shape (kernels/tuning.py, made by
    # bench/tune.py) replace the register budget's. The row and unit blocks set the grid,
    # which the plan above checked: a table cannot change them. Under the interpreter only a
    # table installed with tuning.use_table applies (device None: no committed table).
    tuned = tuning.tuned_config("bwd" if backward else "fwd", strategy, B, H, P, dtype,
                                None if interpreted else device)  # fmt: skip
    if tuned:
        if config.get("W_RESIDENT"):
            tuned.pop("BLOCK_K", None)  # held weights are one dot over the whole padded K
            tuned.pop("DH_SPLIT", None)  # and their dh has no K loop to split
        if "BLOCK_K" in tuned:  # no K chunk wider than the padded operands
            tuned["BLOCK_K"] = max(MIN_DOT, min(tuned["BLOCK_K"], max(padded_h, padded_p)))
        config.update(tuned)
    return config


def _num_stages(block_b, block_u, block_k, itemsize, aligned):
    """num_stages of a streamed K loop: double-buffered where the buffers fit (see
    STREAMED_NUM_STAGES). The bound is the forward cell phase's stage, A's (block_b, block_k)
    chunk and four (block_k, block_u) W chunks; every other phase stages less. Not for sizes
    that are not multiples of 16: their unvectorised loads do not go asynchronous (bf16 builds
    at H = 100 keep one buffer) and the fp32 builds, which spill already, spilled more."""
    stage_bytes = (block_b + 4 * block_u) * block_k * itemsize
    fits = STREAMED_NUM_STAGES * stage_bytes <= MAX_PIPELINE_SHARED_BYTES
    return STREAMED_NUM_STAGES if aligned and fits else 2


def _dh_split(B, H, P, config, strategy, device, interpreted):
    """DH_SPLIT and BLOCK_PS of a backward config: in how many K slices the dh phase's loop
    over K = 4H runs (see DH_SPLIT_MAX), and the units of one partial-sum item. No split
    where one program owns every unit (one-launch) or holds its W_hh columns (W_RESIDENT: no
    K loop). Elsewhere the most slices, doubling, with DH_SPLIT_MIN_CHUNKS chunks each, whose
    items still get a program each: one wave of one program per SM for a per-step launch,
    the grid's programs for a persistent one."""
    P = P if P is not None else H
    block_b = config["BLOCK_B"]
    block_ps = min(DH_SPLIT_BLOCK_P, _padded(P))
    while block_ps > MIN_DOT and block_b * block_ps > MAX_ACCUMULATORS_PER_THREAD * 32 * config["num_warps"]:
        block_ps //= 2  # one (BLOCK_B, BLOCK_PS) fp32 accumulator within the register budget
    if strategy == "one-launch" or config["W_RESIDENT"]:
        return dict(DH_SPLIT=1, BLOCK_PS=block_ps)
    if DH_SPLIT_OVERRIDE is not None or interpreted:
        return dict(DH_SPLIT=DH_SPLIT_OVERRIDE or 1, BLOCK_PS=block_ps)
    items = _cdiv(B, block_b) * _cdiv(P, block_ps)  # of one slice
    if strategy == "persistent":
        programs = _cdiv(B, block_b) * _grid(config, strategy, B, H, P, cell_units=True)[1]
    else:
        programs, _ = _resident_limits(device, interpreted)
    chunks, split = _cdiv(4 * H, config["BLOCK_K"]), 1
    while 2 * split <= DH_SPLIT_MAX and chunks >= 2 * split * DH_SPLIT_MIN_CHUNKS and 2 * split * items <= programs:
        split *= 2
    return dict(DH_SPLIT=split, BLOCK_PS=block_ps)


def _resident_weights(config, strategy, P, dtype):
    """W_RESIDENT (with the whole padded K as BLOCK_K, and 8 warps, which spill less than 4):
    a persistent program without a projection holds its W_hh slice, in the forward and in the
    backward, where RESIDENT_WEIGHT_DTYPES, RESIDENT_MAX_BLOCK_B and RESIDENT_MAX_K allow, for
    sizes that are multiples of 16 (unvectorised whole-K loads spill). Without a projection
    K = P = H in both: the forward's slice is (H, BLOCK_H) per gate, the backward's
    (H, BLOCK_P)."""
    k = _padded(P)
    held = dtype in RESIDENT_WEIGHT_DTYPES and config["BLOCK_B"] <= RESIDENT_MAX_BLOCK_B and k <= RESIDENT_MAX_K
    held = held and P % RESIDENT_ALIGNMENT == 0
    if strategy != "persistent" or config["HAS_PROJ"] or not held:
        return dict(W_RESIDENT=False)
    return dict(W_RESIDENT=True, BLOCK_K=k, num_warps=8, num_stages=2)  # no K loop to pipeline


# Planning is pure host arithmetic, but it ran on every call (tens of microseconds, bench/NOTES.md
# "Host time per call"), so plans are kept. Everything a plan reads is in the key: the shape,
# dtype and device, the forced strategy, cuDNN's TF32 switch, the tuning tables' state, and the
# planner's limits above (tests lower them), so a kept plan is the plan that would be made.
_PLANNER_LIMITS = (
    "ONE_LAUNCH_MAX_H", "PER_STEP_BLOCK_H", "BLOCK_B", "PERSISTENT_MAX_BLOCK_B", "PERSISTENT_MAX_BLOCK_U",
    "PERSISTENT_BACKWARD_MAX_REGISTERS", "MAX_ACCUMULATORS_PER_THREAD", "MAX_CHUNK_BYTES_PER_THREAD",
    "RESIDENT_WEIGHT_DTYPES", "RESIDENT_MAX_BLOCK_B", "RESIDENT_MAX_K", "RESIDENT_ALIGNMENT", "MAX_BLOCK_K",
    "MIN_DOT", "STREAMED_NUM_STAGES", "MAX_PIPELINE_SHARED_BYTES", "DH_SPLIT_MAX", "DH_SPLIT_MIN_CHUNKS",
    "DH_SPLIT_BLOCK_P", "DH_SPLIT_OVERRIDE", "_resident_limits", "choose_strategy",
)  # fmt: skip
_plan_cache = {}
MAX_CACHED_PLANS = 4096  # distinct call shapes; beyond this the cache starts over


def _plans(B, H, P, dtype, device, kernel, backward):
    """The strategies to try, in order, each with its kernel config (kept per key, see above;
    the configs are shared: read them, do not change them): the forced one, or under "auto"
    the one this GPU's table measured fastest for the shape (kernels/tuning.py), then
    ``choose_strategy``'s rule. The measured one may still prove unavailable at the launch
    (the compiled kernel's occupancy, checked there): ``_run_plans`` then runs the rule's.

    The forward's table entries come from inference runs (forward only), the backward's from
    training runs (forward and backward under one strategy): the backward alone is not timed,
    so a training step may run its forward and backward under different strategies."""
    limits = tuple(globals()[name] for name in _PLANNER_LIMITS)
    key = (kernel, B, H, P, dtype, device, backward, _forced_strategy, torch.backends.cudnn.allow_tf32,
           tuning.state(), limits)  # fmt: skip
    plans = _plan_cache.get(key)
    if plans is None:
        if len(_plan_cache) >= MAX_CACHED_PLANS:
            _plan_cache.clear()
        plans = _plan_cache[key] = _make_plans(B, H, P, dtype, device, kernel, backward)
    return plans


def _make_plans(B, H, P, dtype, device, kernel, backward):
    """``_plans`` without the cache."""
    interpreted = is_interpreted(kernel)

    def plan(strategy):
        return strategy, kernel_config(B, H, dtype, strategy, P=P, backward=backward, device=device,
                                       interpreted=interpreted)  # fmt: skip

    if _forced_strategy != "auto":
        return [plan(_forced_strategy)]
    rule = choose_strategy(H, P)
    measured = tuning.measured_strategy("bwd" if backward else "fwd", B, H, P, dtype, None if interpreted else device)
    plans = []
    if measured is not None and measured != rule:
        try:
            plans.append(plan(measured))
        except StrategyUnavailable:
            pass  # measured at a neighbouring shape, where it fitted: the rule decides here
    return plans + [plan(rule)]


def _run_plans(plans, run):
    """``run(strategy, config)`` with the first plan that can run; ``last_strategy()`` says
    which. A persistent launch checks residency before it writes anything, so a plan refused
    there leaves the tensors as they were for the next one."""
    global _last_strategy
    for i, (strategy, config) in enumerate(plans):
        try:
            run(strategy, config)
        except StrategyUnavailable:
            if i == len(plans) - 1:
                raise
            continue
        _last_strategy = strategy
        return


def _time_major_like(ref, last_dim, dtype):
    """An output with the batch/time layout of the time-major view ``ref``."""
    T, B = ref.shape[:2]
    if ref.stride(0) < ref.stride(1):  # batch-major storage, i.e. batch_first
        return empty_output(B, T, last_dim, dtype=dtype, device=ref.device).transpose(0, 1)
    return empty_output(T, B, last_dim, dtype=dtype, device=ref.device)


def forward_outputs(gates, H, P, has_proj):
    """What ``lstm_fwd`` allocates for the (T, B, 4H) view ``gates``: out, c and m (or None).
    Also the shapes and strides of the fake (torch.compile) version of the forward op."""
    T, B = gates.shape[:2]
    out = _time_major_like(gates, P, gates.dtype)
    c = empty_output(T, B, H, dtype=torch.float32, device=gates.device)
    m = empty_output(T, B, H, dtype=gates.dtype, device=gates.device) if has_proj else None
    return out, c, m


def backward_outputs(gates, d_cn, P, has_proj, d_gates_into_gates=False):
    """What ``lstm_bwd`` allocates: d_gates (or, ``d_gates_into_gates``, ``gates`` itself),
    the carried fp32 dc (d_cn's copy, updated in place), d_h (or None). Also the fake version
    of the backward op."""
    T, B = gates.shape[:2]
    d_gates = gates if d_gates_into_gates else _time_major_like(gates, gates.shape[2], gates.dtype)
    d_c = d_cn.to(torch.float32, copy=True).contiguous()
    d_h = empty_output(T, B, P, dtype=torch.float32, device=gates.device) if has_proj else None
    return d_gates, d_c, d_h


def _check_common(gates, w_hh, w_hr, lengths, h_states, c_states):
    """Shapes and dtypes the kernels rely on; returns T, B, H, P."""
    if gates.dim() != 3 or gates.stride(2) != 1:
        raise ValueError("gates must be a (T, B, 4H) view with a contiguous last dimension")
    T, B = gates.shape[:2]
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * H or gates.shape[2] != 4 * H:
        raise ValueError(f"expected W_hh (4H, P) and gates (T, B, 4H), got {tuple(w_hh.shape)}, {tuple(gates.shape)}")
    if w_hr is None and P != H:
        raise ValueError(f"W_hh of shape {tuple(w_hh.shape)} needs a projection W_hr ({P}, {H})")
    if w_hr is not None and tuple(w_hr.shape) != (P, H):
        raise ValueError(f"expected W_hr ({P}, {H}), got {tuple(w_hr.shape)}")
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


def _launch_context(like):
    """Triton launches on the current CUDA device and stream: make that the tensors' device."""
    return torch.cuda.device(like.device) if like.is_cuda else nullcontext()


def kernel_phases(has_proj, backward, dh_split=1):
    """The phases of a step, in order, as the kernel's constexpr flags: one launch each on the
    per-step path; the one-launch path runs them all (with barriers) in one. A backward whose
    config splits dh's K loop (DH_SPLIT > 1) starts each step with the partial sums."""
    if backward:
        first = [dict(DO_DH_PARTIAL=True, DO_DH=False, DO_CELL=False)] if dh_split > 1 else []
        if has_proj:  # dm_t needs dh_t of every projected unit: a phase of its own
            phases = [dict(DO_DH=True, DO_CELL=False), dict(DO_DH=False, DO_CELL=True)]
        else:
            phases = [dict(DO_DH=True, DO_CELL=True)]  # dh and the cell gradients share their units
        return first + [dict(DO_DH_PARTIAL=False, **flags) for flags in phases]
    if has_proj:  # the projection needs m_t of every cell unit: a phase of its own
        return [dict(DO_CELL=True, DO_PROJ=False), dict(DO_CELL=False, DO_PROJ=True)]
    return [dict(DO_CELL=True, DO_PROJ=False)]


def all_phase_flags(phases):
    """The flags of a launch that runs every phase of a step (one-launch, persistent)."""
    return {name: any(flags[name] for flags in phases) for name in phases[0]}


def _run_steps(kernel, step_launch, sync, T, strategy, phases, like, backward=False):
    """Every step in the order of the recurrence (reversed for the backward): in one launch
    running all phases, or one launch per step and entry of ``phases`` (a list of constexpr
    flag dicts, each one phase's flags). ``step_launch(s_start, s_end, flags)`` gives the
    ``(grid, args, constexprs)`` of the launch of ``kernel`` for steps ``[s_start, s_end)``.
    Per-step launches go through the CUDA graph cache (kernels/step_graphs.py)."""

    def launch(s_start, s_end, flags):
        _launch(kernel, *step_launch(s_start, s_end, flags), sync)

    def launch_every_step():
        for s in reversed(range(T)) if backward else range(T):
            for flags in phases:
                launch(s, s + 1, flags)

    def sequence_key():
        # The launches of a sequence differ only in their step: the first step's stand for all.
        return T, backward, *(step_graphs.launch_key(kernel, *step_launch(0, 1, flags)) for flags in phases)

    with _launch_context(like):
        if strategy != "per-step":
            launch(0, T, all_phase_flags(phases))
        else:
            step_graphs.run(sequence_key, launch_every_step, like.device)


def _grid(config, strategy, B, H, P, cell_units, dh_partial=False):
    """(batch blocks, unit blocks). A persistent grid spans the wider of the cell and the
    projected units; a per-step launch the cell units (H) or the projected units (P) of its
    phase, or (``dh_partial``) a program per item of dh's split K loop."""
    n_b = _cdiv(B, config["BLOCK_B"])
    n_h, n_p = _cdiv(H, config["BLOCK_H"]), _cdiv(P, config["BLOCK_P"])
    if strategy == "one-launch":
        return n_b, 1
    if strategy == "persistent":
        return n_b, max(n_h, n_p)
    if dh_partial:
        return n_b, _cdiv(P, config["BLOCK_PS"]) * config["DH_SPLIT"]
    return n_b, n_h if cell_units else n_p


def _sync_buffer(strategy, B, config, like):
    """The persistent launch's barrier counters (one per batch block) and error word, zeroed."""
    if strategy != "persistent":
        return None
    return torch.zeros(_cdiv(B, config["BLOCK_B"]) + 1, dtype=torch.int32, device=like.device)


_residency = {}  # launch key -> None (resident) or why not: each compiled variant is checked once


def _launch(kernel, grid, args, config, sync):
    """Launch ``kernel[grid](*args, **config)``; a persistent one (``sync`` given)
    cooperatively, after checking that the grid is resident."""
    if sync is None:
        kernel[grid](*args, max_spins=0, **config)
        return
    interpreted = is_interpreted(kernel)
    if not interpreted:
        _check_resident(kernel, grid, args, config)
    try:
        kernel[grid](*args, max_spins=BARRIER_MAX_SPINS, launch_cooperative_grid=True, **config)
    except RuntimeError as err:
        # The driver refuses a cooperative grid it cannot hold at once (CUDA's "too many
        # blocks in cooperative launch") before anything runs: should the estimate above be
        # wrong, this is a refusal like its own, which the next plan can follow.
        if interpreted or "cooperative launch" not in str(err):
            raise
        why = f"persistent: the driver refused a cooperative grid of {grid[0]}x{grid[1]} programs ({err})"
        _residency[_residency_key(kernel, grid, args, config)] = why
        raise StrategyUnavailable(why) from err


def _residency_key(kernel, grid, args, config):
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    dtypes = tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
    return kernel.fn.__name__, device, grid, dtypes, tuple(sorted((k, str(v)) for k, v in config.items()))


def _check_resident(kernel, grid, args, config):
    """Raise StrategyUnavailable unless every program of ``grid`` fits on the device at once,
    by the compiled kernel's registers, shared memory and warps. The answer is kept per
    compiled variant and grid, refusals too: under "auto" a refused persistent plan falls
    back to the rule's on every call, and should cost no more than a lookup."""
    key = _residency_key(kernel, grid, args, config)
    if key not in _residency:
        _residency[key] = _why_not_resident(kernel, grid, args, config, key[1])
    if _residency[key] is not None:
        raise StrategyUnavailable(_residency[key])


def _why_not_resident(kernel, grid, args, config, device):
    compiled = kernel.warmup(*args, max_spins=BARRIER_MAX_SPINS, grid=grid, launch_cooperative_grid=True, **config)
    try:
        compiled._init_handles()  # loads the binary: fills n_regs
    except OutOfResources as err:  # e.g. held weights on a smaller GPU
        return f"persistent: {err}"
    props = torch.cuda.get_device_properties(device)
    num_warps, shared = compiled.metadata.num_warps, compiled.metadata.shared
    per_sm = programs_per_sm(compiled.n_regs, shared, num_warps, props.regs_per_multiprocessor,
                             props.shared_memory_per_multiprocessor, props.max_threads_per_multi_processor)  # fmt: skip
    if grid[0] * grid[1] > per_sm * props.multi_processor_count:
        return (
            f"persistent: a grid of {grid[0]}x{grid[1]} programs; {props.multi_processor_count} SMs hold "
            f"{per_sm} each ({compiled.n_regs} registers x {32 * num_warps} threads, {shared} B shared)"
        )
    return None


def programs_per_sm(n_regs, shared, num_warps, regs_per_sm, shared_per_sm, threads_per_sm):
    """Programs of a compiled kernel one SM holds at once, by its registers (allocated per warp
    in units of 256), shared memory (plus 1 KiB the driver reserves per block) and threads."""
    regs_per_warp = -(-n_regs * 32 // 256) * 256
    return min(
        threads_per_sm // (32 * num_warps),
        regs_per_sm // max(1, regs_per_warp * num_warps),
        shared_per_sm // (shared + 1024),
    )


def compile_spec(kernel, dtype_name, int_args):
    """``(signature, constants, attrs)`` for ``triton.compile(ASTSource(kernel, signature,
    {**constexprs, **constants}, attrs))``: ``kernel`` built ahead of time as a launch with
    ``dtype_name`` ("fp32", "bf16", "fp16") tensors and the integer arguments ``int_args``
    ({name: value}, the others generic) builds it (tests/kernels/test_compile.py,
    bench/kernel_resources.py). Tensors: the fp32 state and gradient buffers, int64 lengths,
    the int32 barrier counters; every pointer 16-byte aligned (torch's allocations are).
    Integers: 32-bit; one that is a multiple of 16 marked so (without it the masked loads do
    not vectorise, and the registers and spills are not the launch's), one equal to 1 the
    constant 1 (Triton specialises it so: a kernel must not call tensor methods on it)."""
    types = {"p_c": "*fp32", "p_dc": "*fp32", "p_dh": "*fp32", "p_dh_part": "*fp32", "p_lengths": "*i64",
             "p_sync": "*i32"}  # fmt: skip
    aligned = [["tt.divisibility", 16]]
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.startswith("p_"):
            signature[p.name] = types.get(p.name, "*" + dtype_name)
            attrs[(i,)] = aligned
        elif int_args.get(p.name) == 1:
            signature[p.name], constants[p.name] = "constexpr", 1
        else:
            signature[p.name] = "i32"
            if p.name in int_args and int_args[p.name] % 16 == 0:
                attrs[(i,)] = aligned
    return signature, constants, attrs


LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def split_launch_options(config):
    """A ``kernel_config`` split into the kernel's constexprs and the compiler's options (for
    ``triton.compile``, which takes them apart, unlike a launch)."""
    constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    return constexprs, {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}


_BARRIER_TIMEOUT = (
    "fusedrnn: a grid barrier of the persistent LSTM kernel timed out: not every program of the "
    "grid was resident, and the launch's results are garbage."
)


def _check_barriers(sync):
    """Fail if a grid barrier of the launch timed out, as BARRIER_ERROR_CHECK says. "async"
    (default) does not sync the host: on CUDA it is a device-side assert that surfaces at the
    next synchronisation and leaves the CUDA context unusable, which beats a hang and beats
    returning the garbage of an unsynchronised step. "host" reads the error word."""
    if sync is None:
        return
    if BARRIER_ERROR_CHECK == "host":
        if int(sync[-1]) != 0:
            raise RuntimeError(_BARRIER_TIMEOUT)
        return
    torch._assert_async(
        sync[-1] == 0,
        _BARRIER_TIMEOUT + " The CUDA context is lost: restart the process and use "
        "fusedrnn.kernels.lstm.launch_strategy('per-step').",
    )


def lstm_fwd(gates, w_hh, h0, c0, *, w_hr=None, lengths=None, reverse=False):
    """Run the forward recurrence.

    gates: (T, B, 4H) time-major view holding Gx = x W_ih^T + b; overwritten in place with
        the pre-activation gates (i, f, g, o), which the backward needs.
    w_hh: (4H, P). h0: (B, P), c0: (B, H), in the gates' dtype (zeros when the caller has none).
    w_hr: (P, H) projection, or None (then P = H). lengths: (B,) int tensor on the gates'
        device, or None; every length in [1, T]. reverse: run t = T-1, ..., 0.
    Returns ``out`` (T, B, P) in the gates' dtype and layout (zero at inactive steps), ``c``
    (T, B, H) fp32 and ``m`` (T, B, H), ``o * tanh(c)`` in the gates' dtype, for a
    projection (else None).
    """
    T, B, H, P = _check_common(gates, w_hh, w_hr, lengths, [h0], [c0])
    has_proj = w_hr is not None
    w_hh, h0, c0 = w_hh.contiguous(), h0.contiguous(), c0.contiguous()
    w_hr = w_hr.contiguous() if has_proj else w_hh  # unused pointer without a projection
    out, c, m = forward_outputs(gates, H, P, has_proj)
    plans = _plans(B, H, P if has_proj else None, gates.dtype, gates.device, _lstm_fwd_kernel, backward=False)

    def run(strategy, config):
        sync = _sync_buffer(strategy, B, config, gates)

        def step_launch(s_start, s_end, flags):
            args = (
                gates, w_hh, w_hr, h0, c0, lengths if lengths is not None else c, out,
                m if has_proj else c, c, sync if sync is not None else c, s_start, s_end, T, B, H, P,
                gates.stride(0), gates.stride(1), out.stride(0), out.stride(1),
                w_hh.stride(0), w_hr.stride(0), h0.stride(0), c0.stride(0),
            )  # fmt: skip
            grid = _grid(config, strategy, B, H, P, cell_units=flags["DO_CELL"])
            return grid, args, dict(**flags, REVERSE=reverse, VARLEN=lengths is not None, **config)

        phases = kernel_phases(has_proj, backward=False)
        _run_steps(_lstm_fwd_kernel, step_launch, sync, T, strategy, phases, gates)
        _check_barriers(sync)

    _run_plans(plans, run)
    return out, c, m


def lstm_bwd(gates, c, c0, w_hh, d_out, d_hn, d_cn, *, w_hr=None, lengths=None, reverse=False,
             d_gates_into_gates=False):  # fmt: skip
    """Run the backward recurrence.

    gates, c: as returned/overwritten by ``lstm_fwd``; c0, w_hh, w_hr, lengths, reverse: as
    given to it. d_out: (T, B, P) view of any strides; d_hn: (B, P), d_cn: (B, H).
    Returns ``d_gates`` (T, B, 4H), the gradient of the pre-activations in the gates' dtype
    and layout (zero at inactive steps), ``d_c0`` (B, H) fp32, and for a projection ``d_h``
    (T, B, P) fp32, the gradient of each ``h_t`` (else None). Everything else is a GEMM of
    these.

    ``d_gates_into_gates``: write d_gates over ``gates`` (and return it), saving a (T, B, 4H)
    buffer, the largest of the backward, when the caller needs the gates no more. Safe
    because a program reads the gates of its own (step, rows, units) tile before it writes
    that tile's gradient, and what other programs read at step t is d_gates of step t + 1.
    """
    T, B, H, P = _check_common(gates, w_hh, w_hr, lengths, [d_hn], [c0, d_cn])
    w_hh, c0, d_hn = w_hh.contiguous(), c0.contiguous(), d_hn.contiguous()
    has_proj = w_hr is not None
    w_hr = w_hr.contiguous() if has_proj else w_hh  # unused pointer without a projection
    d_gates, d_c, d_h = backward_outputs(gates, d_cn, P, has_proj, d_gates_into_gates)
    plans = _plans(B, H, P if has_proj else None, gates.dtype, gates.device, _lstm_bwd_kernel, backward=True)

    def run(strategy, config):
        sync = _sync_buffer(strategy, B, config, gates)
        split = config["DH_SPLIT"]
        # One step's partial sums: the next step writes them only after this one's barrier.
        dh_part = empty_output(split, B, P, dtype=torch.float32, device=gates.device) if split > 1 else d_c

        def step_launch(s_start, s_end, flags):
            args = (
                gates, c, c0, w_hh, w_hr, lengths if lengths is not None else c, d_out, d_hn,
                d_h if has_proj else d_c, dh_part, d_gates, d_c, sync if sync is not None else d_c, s_start, s_end,
                T, B, H, P,
                gates.stride(0), gates.stride(1), d_gates.stride(0), d_gates.stride(1),
                d_out.stride(0), d_out.stride(1), d_out.stride(2),
                d_hn.stride(0), c0.stride(0), w_hh.stride(0), w_hr.stride(0),
            )  # fmt: skip
            grid = _grid(config, strategy, B, H, P, cell_units=flags["DO_CELL"], dh_partial=flags["DO_DH_PARTIAL"])
            return grid, args, dict(**flags, REVERSE=reverse, VARLEN=lengths is not None, **config)

        phases = kernel_phases(has_proj, backward=True, dh_split=split)
        _run_steps(_lstm_bwd_kernel, step_launch, sync, T, strategy, phases, gates, backward=True)
        _check_barriers(sync)

    _run_plans(plans, run)
    return d_gates, d_c, d_h


def barrier_floor(T, B, H, dtype, device, P=None):
    """A callable that launches the barrier-only kernel once with the grid the persistent
    forward would use for (B, H, P, dtype): T steps of one grid barrier each. Raises
    StrategyUnavailable where the persistent kernel cannot run."""
    device = torch.device(device)
    config = kernel_config(B, H, dtype, "persistent", P=P, device=device,
                           interpreted=is_interpreted(_barrier_floor_kernel))  # fmt: skip
    grid = _grid(config, "persistent", B, H, P if P is not None else H, cell_units=True)
    like = torch.empty(0, device=device)

    def run():
        sync = _sync_buffer("persistent", B, config, like)
        with _launch_context(like):
            _launch(_barrier_floor_kernel, grid, (sync, T), {"num_warps": config["num_warps"]}, sync)
        _check_barriers(sync)

    return run

"""How a recurrence launches, for any cell (``kernels/cells.py``): the strategy (forced,
measured, or the fallback rule), the blocks, warps and stages of each strategy's programs,
their grid and phases, all within ``PlannerLimits``. Pure host arithmetic: nothing here
launches (``kernels/launch.py`` does) or knows a kernel's arguments.

Strategies (``kernels/recurrence.py`` describes what each does on the device):

- "one-launch": one program per batch block owns every unit, one launch for all steps;
- "persistent": one cooperative launch for all steps, a grid barrier per step and phase;
- "per-step": one launch per step and phase (replayed from CUDA graphs).

The limits are one object, ``LIMITS``; tests and the ahead-of-time tools replace it with
``override_limits`` (lower limits split small test shapes over several programs; a modelled
GPU's SM count plans as on that GPU without one). Plans are kept per key, and the limits
are part of the key, so a kept plan is the plan that would be made.
"""

import dataclasses
from contextlib import contextmanager
from typing import Optional

import torch
import triton.language as tl

from . import tuning
from ._helpers import MIN_DOT, TRITON_DTYPES, cdiv, check_kernel_dtype, is_interpreted, padded
from .cells import LSTM


@dataclasses.dataclass(frozen=True)
class PlannerLimits:
    """Every limit the planner plans within. Calibrated on sm_90 builds (bench/NOTES.md,
    bench/results/kernel-resources-sm90*.md); tests lower some to exercise every path on
    small shapes."""

    # "one-launch": up to this padded hidden (and projection) size one program holds every
    # unit of its batch rows.
    one_launch_max_units: int = 128
    # "per-step": unit blocks of at most this; under the interpreter exactly this, with
    # batch blocks of block_b rows.
    per_step_block_units: int = 64
    block_b: int = 16
    # "persistent": up to an SM's worth of programs per batch block, blocks of at most these.
    persistent_max_block_b: int = 64
    persistent_max_block_u: int = 128
    # Register cap of a persistent backward build (ptxas .maxnreg). Left alone, ptxas capped
    # 8-warp held-weights backward builds at 128 registers (two programs per SM) and spilled
    # 8-12 B; a persistent grid plans one program per SM, so let them take up to 255. Not the
    # forward: its builds do not spill uncapped, and with the cap ptxas scheduled one into
    # 56 B of spills.
    persistent_backward_max_registers: int = 255
    # Register budget of a program, per thread: the gates' fp32 accumulators (a 64 x 64 tile
    # of the LSTM's four over 8 warps, 64 values, spills in the backward; 32 do not), and the
    # bytes of one K chunk of A and of the gates' W tiles (272 spilled in an fp32 backward).
    max_accumulators_per_thread: int = 32
    max_chunk_bytes_per_thread: int = 256
    # Where a persistent program without a projection holds its W_hh slice in shared memory
    # across the steps (W_RESIDENT): the input dtypes, batch blocks and padded K (= P) for
    # which those builds do not spill and the slice with h's tile fits (192 KiB at 32 rows
    # and K = 1024), for sizes that are multiples of resident_alignment. Elsewhere (TF32
    # spills kilobytes, K = 2048 needs 320 KiB, H not a multiple of 16 spills) W streams.
    resident_weight_dtypes: tuple = (torch.float16, torch.bfloat16)
    resident_max_block_b: int = 32
    resident_max_k: int = 1024
    resident_alignment: int = 16
    # The recurrent products run over K in chunks of at most this (16-bit; fp32 half).
    max_block_k: int = 64
    # Pipelined K loops (bench/NOTES.md v1.4). Triton 3.6 on sm_90, num_stages = 2: the TTGIR
    # waits for every copy before each chunk's dots, a full L2 round trip a chunk;
    # num_stages = 3 keeps one stage in flight, so chunk k + 1 loads while chunk k
    # multiplies. A program takes streamed_num_stages where that many stages of its buffers
    # (A's chunk and the gates' W chunks) fit in max_pipeline_shared_bytes, which leaves room
    # under sm_90's 227 KiB for the epilogue's layout conversions; else 2.
    streamed_num_stages: int = 3
    max_pipeline_shared_bytes: int = 160 * 1024
    # The backward's dh_t = dG_{t+1} @ W_hh runs over K = gates * H: at H = 2048 and four
    # gates, 128 chunks of 64 in a row, every step, in each program. Where the K loop is long
    # and the dh phase's grid leaves SMs idle, the loop is split into DH_SPLIT slices of K, up
    # to dh_split_max, each at least dh_split_min_chunks chunks (shorter, and the extra launch
    # or barrier costs more than the chunks saved): a phase of partial sums over (rows,
    # dh_split_block_p units, K slice) items, added in slice order by the dh phase
    # (bench/NOTES.md v1.5). The interpreter, which has no SMs to count, does not split;
    # dh_split_override sets the split of every backward with a K loop, on any device.
    dh_split_max: int = 8
    dh_split_min_chunks: int = 32
    dh_split_block_p: int = 64
    dh_split_override: Optional[int] = None
    # Plan as on a GPU of this many SMs (one program each), on any device and under the
    # interpreter: the ahead-of-time resource tables and the tests of the planner's rules.
    modelled_sms: Optional[int] = None
    # The input precision of the backward's recurrent products in float32 under TF32 (the
    # forward's stay "tf32", as cuDNN's): "tf32", or "tf32x3" (each operand split into two
    # TF32 parts, three products: about fp32's precision). With "tf32" the gradients of h0
    # and c0 measured 1.4 to 2.2 times cuDNN's error on an H200, the rest 1.0 to 1.13
    # (bench/NOTES.md v1.9). "tf32x3" was measured there as the candidate fix and is not one
    # (grad h0 2.22x -> 2.06x, v1.10): kept for the next experiment on grad h0, not default.
    tf32_backward_precision: str = "tf32"
    # A persistent backward loads the next step's own tiles (dy, the pre-activations, c_t and
    # c_{t-1}) before a step's barrier (PREFETCH_OWN_TILES, bench/NOTES.md v1.15) in batch
    # blocks of at most this many rows. Held across the barrier they took 13 to 30 more
    # registers in the sm_90 builds, and fp32 at 64-row blocks spilled 108-164 B under the
    # 255 cap; a step there is bound by its products, not by the latency the prefetch hides.
    prefetch_own_tiles_max_block_b: int = 32


LIMITS = PlannerLimits()


@contextmanager
def override_limits(**changes):
    """Plan within ``LIMITS`` with ``changes`` (field=value) inside the ``with`` block."""
    global LIMITS
    saved, LIMITS = LIMITS, dataclasses.replace(LIMITS, **changes)
    try:
        yield LIMITS
    finally:
        LIMITS = saved


# What a plan runs; "auto" chooses among them. Defined with the tables that record them
# (kernels/tuning.py, which the planner reads and so cannot import it back).
STRATEGIES = tuning.STRATEGIES
_forced_strategy = "auto"
_last_strategy = None


class StrategyUnavailable(RuntimeError):
    """The launch strategy forced with ``launch_strategy`` cannot run this shape here."""


@contextmanager
def launch_strategy(name):
    """Force how the recurrence kernels launch inside the ``with`` block (benchmarks, tests):

    - ``"auto"`` (default): measured (kernels/tuning.py), else ``fallback_strategy``'s rule;
    - ``"one-launch"``: one program per batch block owns every unit, one launch for all steps
      (H and proj_size up to ``LIMITS.one_launch_max_units``);
    - ``"persistent"``: one cooperative launch for all steps, a grid barrier per step and
      phase; the grid must be resident at once (at most one program per SM is planned, the
      compiled kernel's occupancy is checked);
    - ``"per-step"``: one launch per step and phase.

    A launch that cannot run the forced strategy raises ``StrategyUnavailable``. The setting is
    process-wide, not per thread.
    """
    global _forced_strategy
    if name not in ("auto", *STRATEGIES):
        raise ValueError(f"strategy must be one of {('auto', *STRATEGIES)}, got {name!r}")
    saved, _forced_strategy = _forced_strategy, name
    try:
        yield
    finally:
        _forced_strategy = saved


def last_strategy():
    """The strategy of the latest recurrence launch (None before the first)."""
    return _last_strategy


def fallback_strategy(H, P=None):
    """The ``"auto"`` strategy where this GPU's table (kernels/tuning.py) has no measurement
    near the shape (see ``plans``). The persistent kernel has not been measured on a GPU yet
    (bench/NOTES.md), so the rule keeps to the strategies that have: one launch when one
    program spans every unit, else one launch per step."""
    units = max(padded(H), padded(P) if P is not None else 0)
    return "one-launch" if units <= LIMITS.one_launch_max_units else "per-step"


def resident_limits(device, interpreted):
    """(programs in all, programs per batch block) a persistent grid may have, None for no
    limit. One program per SM is planned; the launch checks the compiled kernel's occupancy."""
    if LIMITS.modelled_sms is not None:
        return LIMITS.modelled_sms, None
    if interpreted:
        # The interpreter runs programs one after another: a barrier over two programs of a
        # batch block would wait for one that never runs.
        return None, 1
    return torch.cuda.get_device_properties(device).multi_processor_count, None


def _warps_and_k(cell, block_b, block_u, max_block_k, itemsize, aligned, interpreted):
    """(num_warps, BLOCK_K): the fewest warps and then the widest K chunk within the register
    budget (one fp32 accumulator per gate, and a K chunk of A and of every gate's W tile), or
    None when none is. Sizes that are not multiples of 16 (not ``aligned``) get half the
    budget: their loads do not vectorise, and those builds spilled at the full one."""
    share = 1 if aligned else 2
    for num_warps in (4, 8):
        threads = 32 * num_warps
        if not interpreted and cell.gates * block_b * block_u * share > LIMITS.max_accumulators_per_thread * threads:
            continue
        block_k = max_block_k
        while block_k >= MIN_DOT:
            chunk_bytes = (block_b + cell.gates * block_u) * block_k * itemsize * share
            if interpreted or chunk_bytes <= LIMITS.max_chunk_bytes_per_thread * threads:
                return num_warps, block_k
            block_k //= 2
    return None


def _aligned(H, P):
    """Whether the sizes the kernels stride and mask by are multiples of 16 (a launch then
    specialises them, and its loads vectorise)."""
    return H % 16 == 0 and (P is None or P % 16 == 0)


def _persistent_blocks(cell, B, H, P, max_block_k, itemsize, device, interpreted):
    """(BLOCK_B, BLOCK_U, num_warps, BLOCK_K) of a persistent grid: the smallest unit blocks
    (most programs share the per-step work and the weight slices) whose grid is resident, if
    their tiles fit in registers."""
    block_b = min(LIMITS.persistent_max_block_b, padded(B))
    n_b = cdiv(B, block_b)
    max_programs, max_group = resident_limits(device, interpreted)
    block_u = MIN_DOT
    while True:
        block_h, block_p = _unit_blocks(H, P, block_u)
        n_u = max(cdiv(H, block_h), cdiv(P if P is not None else H, block_p))
        fits_group = max_group is None or n_u <= max_group
        if fits_group and (max_programs is None or n_b * n_u <= max_programs):
            units = max(block_h, block_p)
            tile = _warps_and_k(cell, block_b, units, max_block_k, itemsize, _aligned(H, P), interpreted)
            if tile is None:
                raise StrategyUnavailable(
                    f"persistent: B={B}, H={H}, proj_size={P} fits the SMs only as {n_b}x{n_u} programs of "
                    f"{block_b} rows x {units} units, more than registers hold"
                )
            return block_b, block_u, *tile
        if block_u >= LIMITS.persistent_max_block_u:
            limit = f"{max_programs} SMs" if fits_group else f"{max_group} program per batch block (interpreter)"
            raise StrategyUnavailable(
                f"persistent: B={B}, H={H}, proj_size={P} needs {n_b} batch blocks x {n_u} unit blocks "
                f"of at most {LIMITS.persistent_max_block_u} units, more than {limit} hold at once"
            )
        block_u *= 2


def per_step_blocks(cell, B, H, P, max_block_k, itemsize, device, interpreted, backward=False):
    """(BLOCK_B, BLOCK_H, BLOCK_P) of the per-step launches. Every step each program of a
    phase reads its slice of the phase's weights and its rows of the phase's input from L2:
    over the grid n_b * |W| + n_u * B * K elements (K the input's width), so narrow batch
    blocks re-read the weights (16-row blocks at B = 512: 32 times a step). Of the tiles
    within the register budget, a phase takes the one that reads least among those whose
    grid has a program per SM, else the one with the most programs.

    Without a projection one phase (the backward's too: its dG rows, gates * H wide, are not
    in the model). With one, two phases, each a launch over its own units: the heavier,
    which reads W_hh (gates * H x P), picks the batch block and its unit block; the other
    then picks its unit block for that batch block. Forward: the cell units (W_hh, h: K = P),
    then the projected units (W_hr, m: K = H). Backward: the projected units' dh (W_hh, dG:
    K = gates * H), then the cell units' dm (W_hr, dh: K = P). Under the interpreter (no
    SMs): the fixed block_b x per_step_block_units, which tests shrink to split small shapes."""
    sms, _ = resident_limits(device, interpreted)
    if sms is None:
        return (LIMITS.block_b, *_unit_blocks(H, P, LIMITS.per_step_block_units))
    gate_rows = cell.gates * H

    def fits(block_b, units):
        return _warps_and_k(cell, block_b, units, max_block_k, itemsize, _aligned(H, P), interpreted) is not None

    def plan_phase(units, weights, K, blocks_b, other_block_u=MIN_DOT):
        """(block_b, block_u) of one phase over ``units`` reading ``weights`` elements of W
        and rows K wide, by the rule above; None when no tile fits the register budget."""
        ranked = []
        for block_b in blocks_b:
            for block_u in (16, 32, 64):
                if block_u > min(LIMITS.per_step_block_units, padded(units)) or not fits(
                    block_b, max(block_u, other_block_u)
                ):
                    continue
                n_b, n_u = cdiv(B, block_b), cdiv(units, block_u)
                programs, reads = n_b * n_u, n_b * weights + n_u * B * K
                ranked.append(((programs < sms, -programs if programs < sms else reads, reads), (block_b, block_u)))
        return min(ranked, key=lambda ranked_tile: ranked_tile[0])[1] if ranked else None

    blocks_b = [block_b for block_b in (16, 32, 64, 128) if block_b <= padded(B)]
    if P is None:
        block_b, block_h = plan_phase(H, gate_rows * H, H, blocks_b) or (LIMITS.block_b, MIN_DOT)
        return block_b, block_h, block_h
    # (units, weights, K) of the heavier phase, then of the other; which of them is P's
    if backward:
        heavy, light = (P, gate_rows * P, gate_rows), (H, P * H, P)
    else:
        heavy, light = (H, gate_rows * P, P), (P, P * H, H)
    block_b, heavy_u = plan_phase(*heavy, blocks_b) or (LIMITS.block_b, MIN_DOT)
    light_u = (plan_phase(*light, [block_b], heavy_u) or (block_b, MIN_DOT))[1]
    return (block_b, light_u, heavy_u) if backward else (block_b, heavy_u, light_u)


def _unit_blocks(H, P, block_u):
    """(BLOCK_H, BLOCK_P) of programs that own up to block_u cell and projected units: no wider
    than the padded sizes; without a projection the backward's dh and cell phases share units."""
    block_h = min(padded(H), block_u)
    return block_h, min(padded(P), block_u) if P is not None else block_h


def kernel_config(B, H, dtype, strategy, *, cell=LSTM, P=None, backward=False, device=None, interpreted=False):
    """Constexprs and launch options of ``cell``'s forward (or ``backward``) kernel for
    ``strategy`` (not "auto"), batch B, hidden size H, projection size P (None: no
    projection) and input dtype. Raises ``StrategyUnavailable`` when the strategy cannot run
    the shape (on ``device``)."""
    check_kernel_dtype(dtype)
    padded_h = padded(H)
    padded_p = padded(P) if P is not None else padded_h
    # fp32 tiles take twice the bytes: halve K so that the pipelined W tiles fit in shared
    # memory (fp32, BLOCK_H=128, BLOCK_K=64, 3 stages needs 264 KiB; sm_90 has 227 KiB).
    widest_k = LIMITS.max_block_k if dtype.itemsize == 2 else max(MIN_DOT, LIMITS.max_block_k // 2)
    max_block_k = min(widest_k, max(padded_h, padded_p))
    block_b = LIMITS.block_b
    if strategy == "one-launch":
        block_u = max(padded_h, padded_p)
        if block_u > LIMITS.one_launch_max_units:
            raise StrategyUnavailable(
                f"one-launch: H={H}, proj_size={P} exceed one program's {LIMITS.one_launch_max_units} units"
            )
    elif strategy == "per-step":
        block_b, block_h, block_p = per_step_blocks(cell, B, H, P, max_block_k, dtype.itemsize, device, interpreted,
                                                    backward)  # fmt: skip
    elif strategy == "persistent":
        block_b, block_u, num_warps, block_k = _persistent_blocks(cell, B, H, P, max_block_k, dtype.itemsize, device,
                                                                  interpreted)  # fmt: skip
    else:
        raise ValueError(f"no kernel config for strategy {strategy!r}")
    if strategy != "per-step":
        block_h, block_p = _unit_blocks(H, P, block_u)
    if strategy != "persistent":
        # The one program of "one-launch" (up to 128 units) may spill; it keeps its one launch.
        num_warps_and_k = _warps_and_k(cell, block_b, max(block_h, block_p), max_block_k, dtype.itemsize,
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
        INPUT_PRECISION="ieee" if ieee else (LIMITS.tf32_backward_precision if backward and dtype == torch.float32
                                             else "tf32"),  # fmt: skip
        num_warps=num_warps,
        num_stages=_num_stages(cell, block_b, max(block_h, block_p), block_k, dtype.itemsize, _aligned(H, P)),
    )
    if strategy == "persistent" and backward:
        config["maxnreg"] = LIMITS.persistent_backward_max_registers
    # The next step's own tiles loaded before a step's barrier: the forward's Gx (bench/NOTES.md
    # v1.14), the backward's dy, pre-activations and c (v1.15, up to a batch block size). Where
    # a launch runs many steps with a grid barrier: not per-step (one step a launch), not
    # one-launch (one program, no grid barrier to hide behind; it spills already).
    if backward:
        config["PREFETCH_OWN_TILES"] = strategy == "persistent" and block_b <= LIMITS.prefetch_own_tiles_max_block_b
    else:
        config["PREFETCH_GX"] = strategy == "persistent"
    config.update(_resident_weights(config, strategy, P if P is not None else H, dtype))
    if backward:
        config.update(_dh_split(cell, B, H, P, config, strategy, device, interpreted))
    # Block sizes measured faster on this GPU for this shape (kernels/tuning.py, made by
    # bench/tune.py) replace the register budget's. The row and unit blocks set the grid,
    # which the plan above checked: a table cannot change them. Under the interpreter only a
    # table installed with tuning.use_table applies (device None: no committed table).
    tuned = tuning.tuned_config(cell.name, "bwd" if backward else "fwd", strategy, B, H, P, dtype,
                                None if interpreted else device)  # fmt: skip
    if tuned:
        if config.get("W_RESIDENT"):
            tuned.pop("BLOCK_K", None)  # held weights are one dot over the whole padded K
            tuned.pop("DH_SPLIT", None)  # and their dh has no K loop to split
        if "BLOCK_K" in tuned:  # no K chunk wider than the padded operands
            tuned["BLOCK_K"] = max(MIN_DOT, min(tuned["BLOCK_K"], max(padded_h, padded_p)))
        config.update(tuned)
    return config


def _num_stages(cell, block_b, block_u, block_k, itemsize, aligned):
    """num_stages of a streamed K loop: double-buffered where the buffers fit (see
    PlannerLimits.streamed_num_stages). The bound is the forward cell phase's stage, A's
    (block_b, block_k) chunk and every gate's (block_k, block_u) W chunk; every other phase
    stages less. Not for sizes that are not multiples of 16: their unvectorised loads do not
    go asynchronous (bf16 builds at H = 100 keep one buffer) and the fp32 builds, which spill
    already, spilled more."""
    stage_bytes = (block_b + cell.gates * block_u) * block_k * itemsize
    fits = LIMITS.streamed_num_stages * stage_bytes <= LIMITS.max_pipeline_shared_bytes
    return LIMITS.streamed_num_stages if aligned and fits else 2


def _dh_split(cell, B, H, P, config, strategy, device, interpreted):
    """DH_SPLIT and BLOCK_PS of a backward config: in how many K slices the dh phase's loop
    over K = gates * H runs (see PlannerLimits.dh_split_max), and the units of one
    partial-sum item. No split where one program owns every unit (one-launch) or holds its
    W_hh columns (W_RESIDENT: no K loop). Elsewhere the most slices, doubling, with
    dh_split_min_chunks chunks each, whose items still get a program each: one wave of one
    program per SM for a per-step launch, the grid's programs for a persistent one."""
    P = P if P is not None else H
    block_b = config["BLOCK_B"]
    block_ps = min(LIMITS.dh_split_block_p, padded(P))
    while block_ps > MIN_DOT and block_b * block_ps > LIMITS.max_accumulators_per_thread * 32 * config["num_warps"]:
        block_ps //= 2  # one (BLOCK_B, BLOCK_PS) fp32 accumulator within the register budget
    if strategy == "one-launch" or config["W_RESIDENT"]:
        return dict(DH_SPLIT=1, BLOCK_PS=block_ps)
    if LIMITS.dh_split_override is not None or interpreted:
        return dict(DH_SPLIT=LIMITS.dh_split_override or 1, BLOCK_PS=block_ps)
    items = cdiv(B, block_b) * cdiv(P, block_ps)  # of one slice
    if strategy == "persistent":
        programs = cdiv(B, block_b) * grid(config, strategy, B, H, P, cell_units=True)[1]
    else:
        programs, _ = resident_limits(device, interpreted)
    chunks, split = cdiv(cell.gates * H, config["BLOCK_K"]), 1
    while (2 * split <= LIMITS.dh_split_max and chunks >= 2 * split * LIMITS.dh_split_min_chunks
           and 2 * split * items <= programs):  # fmt: skip
        split *= 2
    return dict(DH_SPLIT=split, BLOCK_PS=block_ps)


def _resident_weights(config, strategy, P, dtype):
    """W_RESIDENT (with the whole padded K as BLOCK_K, and 8 warps, which spill less than 4):
    a persistent program without a projection holds its W_hh slice, in the forward and in the
    backward, where the limits' resident_* allow. Without a projection K = P = H in both: the
    forward's slice is (H, BLOCK_H) per gate, the backward's (H, BLOCK_P)."""
    k = padded(P)
    held = dtype in LIMITS.resident_weight_dtypes and config["BLOCK_B"] <= LIMITS.resident_max_block_b
    held = held and k <= LIMITS.resident_max_k and P % LIMITS.resident_alignment == 0
    if strategy != "persistent" or config["HAS_PROJ"] or not held:
        return dict(W_RESIDENT=False)
    return dict(W_RESIDENT=True, BLOCK_K=k, num_warps=8, num_stages=2)  # no K loop to pipeline


def kernel_phases(has_proj, backward, dh_split=1):
    """The phases of a step, in order, as the kernel's constexpr flags: one launch each on the
    per-step path; the one-launch and persistent paths run them all (with barriers) in one.
    A backward whose config splits dh's K loop (DH_SPLIT > 1) starts each step with the
    partial sums."""
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


def grid(config, strategy, B, H, P, cell_units, dh_partial=False):
    """(batch blocks, unit blocks). A persistent grid spans the wider of the cell and the
    projected units; a per-step launch the cell units (H) or the projected units (P) of its
    phase, or (``dh_partial``) a program per item of dh's split K loop."""
    n_b = cdiv(B, config["BLOCK_B"])
    n_h, n_p = cdiv(H, config["BLOCK_H"]), cdiv(P, config["BLOCK_P"])
    if strategy == "one-launch":
        return n_b, 1
    if strategy == "persistent":
        return n_b, max(n_h, n_p)
    if dh_partial:
        return n_b, cdiv(P, config["BLOCK_PS"]) * config["DH_SPLIT"]
    return n_b, n_h if cell_units else n_p


def phase_grid(config, strategy, B, H, P, flags):
    """``grid`` of the launch that runs the phases ``flags`` (a kernel_phases entry, or all)."""
    return grid(config, strategy, B, H, P, cell_units=flags["DO_CELL"], dh_partial=flags.get("DO_DH_PARTIAL", False))


# Planning is pure host arithmetic, but it ran on every call (tens of microseconds, bench/NOTES.md
# "Host time per call"), so plans are kept. Everything a plan reads is in the key: the cell,
# shape, dtype and device, the forced strategy, cuDNN's TF32 switch, the tuning tables' state
# and the limits.
_plan_cache = {}
MAX_CACHED_PLANS = 4096  # distinct call shapes; beyond this the cache starts over


def plans(cell, B, H, P, dtype, device, kernel, backward):
    """The strategies to try, in order, each with its kernel config (kept per key, see above;
    the configs are shared: read them, do not change them): the forced one, or under "auto"
    the one this GPU's table measured fastest for the shape (kernels/tuning.py), then
    ``fallback_strategy``'s rule. The measured one may still prove unavailable at the launch
    (the compiled kernel's occupancy, checked there): ``run_plans`` then runs the rule's.
    ``kernel``: the Triton kernel the plans are for (interpreted or not).

    The forward's table entries come from inference runs (forward only), the backward's from
    training runs (forward and backward under one strategy): the backward alone is not timed,
    so a training step may run its forward and backward under different strategies."""
    key = (cell, kernel, B, H, P, dtype, device, backward, _forced_strategy, torch.backends.cudnn.allow_tf32,
           tuning.state(), LIMITS)  # fmt: skip
    kept = _plan_cache.get(key)
    if kept is None:
        if len(_plan_cache) >= MAX_CACHED_PLANS:
            _plan_cache.clear()
        kept = _plan_cache[key] = _make_plans(cell, B, H, P, dtype, device, kernel, backward)
    return kept


def _make_plans(cell, B, H, P, dtype, device, kernel, backward):
    """``plans`` without the cache."""
    interpreted = is_interpreted(kernel)

    def plan(strategy):
        return strategy, kernel_config(B, H, dtype, strategy, cell=cell, P=P, backward=backward, device=device,
                                       interpreted=interpreted)  # fmt: skip

    if _forced_strategy != "auto":
        return [plan(_forced_strategy)]
    rule = fallback_strategy(H, P)
    measured = tuning.measured_strategy(cell.name, "bwd" if backward else "fwd", B, H, P, dtype,
                                        None if interpreted else device)  # fmt: skip
    found = []
    if measured is not None and measured != rule:
        try:
            found.append(plan(measured))
        except StrategyUnavailable:
            pass  # measured at a neighbouring shape, where it fitted: the rule decides here
    return found + [plan(rule)]


def run_plans(candidates, run):
    """``run(strategy, config)`` with the first plan that can run; ``last_strategy()`` says
    which. A persistent launch checks residency before it writes anything, so a plan refused
    there leaves the tensors as they were for the next one."""
    global _last_strategy
    for i, (strategy, config) in enumerate(candidates):
        try:
            run(strategy, config)
        except StrategyUnavailable:
            if i == len(candidates) - 1:
                raise
            continue
        _last_strategy = strategy
        return

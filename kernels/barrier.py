"""The grid barrier of the persistent launch, device and host side, for every cell.

Device: ``grid_barrier`` (a counting barrier over the programs of a batch block),
``sync_step`` (that barrier between two phases, or a CTA barrier where one program owns
every unit), ``report_timeout`` (the launch's error word). Host: the barrier counters
(``sync_buffer``), the check of the error word after a launch (``check_barriers``), and
the barrier-only kernel whose time per step is the persistent kernels' floor (launched
by ``kernels/launch.py barrier_floor``).
"""

import torch
import triton
import triton.language as tl

from ._helpers import cdiv

# Polls of a grid barrier before it gives up and the launch reports an error: seconds on a
# GPU, where a barrier takes microseconds.
BARRIER_MAX_SPINS = 1 << 24
# How a launch whose barrier timed out fails (check_barriers): "async", torch._assert_async,
# no host sync, but on CUDA a device-side assert that ends the process's CUDA context; or
# "host", a synchronisation, then a RuntimeError, and the context lives on: the test suite and
# bench/gpu_smoke.py (with a smaller BARRIER_MAX_SPINS), where one timeout must not fail every
# later test of the process.
BARRIER_ERROR_CHECK = "async"


@triton.jit
def grid_barrier(p_count, target, max_spins):
    """Wait until ``target`` arrivals have been counted at ``p_count`` (an int32 counter that
    starts at zero for the launch), counting this program's own; True when it gave up after
    ``max_spins`` polls instead.

    A counting barrier: the n-th barrier of a group of g programs waits for n * g arrivals,
    so the counter never needs a reset within a launch (int32 holds 2^31 arrivals). It only
    works when every program of the group is resident at once: the launcher checks the grid
    against the SMs and the occupancy, and launches cooperatively. The spin is bounded so that
    a non-resident program shows up as an error, not a hang.
    """
    tl.debug_barrier()  # every thread of the program has stored its share of the step
    # Release: the stores before the barrier are visible at GPU scope before the arrival is;
    # acquire: the last to arrive sees the stores of all the others.
    arrived = tl.atomic_add(p_count, 1, sem="acq_rel", scope="gpu") + 1
    spins = 0
    while (arrived < target) & (spins < max_spins):
        # Acquire: what the other programs stored before arriving is visible after this.
        arrived = tl.atomic_add(p_count, 0, sem="acquire", scope="gpu")
        spins += 1
    tl.debug_barrier()  # no thread reads the other programs' results before the wait is over
    return arrived < target


@triton.jit
def sync_step(p_sync, n_synced, spins_left, GRID_SYNC: tl.constexpr):
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
def report_timeout(p_sync, spins_left, GRID_SYNC: tl.constexpr):
    """Raise the launch's error word (p_sync[num_programs(0)]) if a barrier timed out."""
    if GRID_SYNC:
        if spins_left == 0:
            tl.store(p_sync + tl.num_programs(0), 1)


@triton.jit(do_not_specialize=["T", "max_spins"])
def barrier_floor_kernel(p_sync, T, max_spins):
    """The persistent forward's synchronisation alone: T grid barriers, no work. Its time per
    step is the floor of the persistent kernel's (bench/NOTES.md)."""
    n_synced, spins_left = 0, max_spins
    for _ in range(0, T):
        n_synced, spins_left = sync_step(p_sync, n_synced, spins_left, True)
    report_timeout(p_sync, spins_left, True)


def sync_buffer(strategy, B, config, like):
    """The persistent launch's barrier counters (one per batch block) and error word, zeroed;
    None for the other strategies."""
    if strategy != "persistent":
        return None
    return torch.zeros(cdiv(B, config["BLOCK_B"]) + 1, dtype=torch.int32, device=like.device)


_BARRIER_TIMEOUT = (
    "fusedrnn: a grid barrier of the persistent kernel timed out: not every program of the "
    "grid was resident, and the launch's results are garbage."
)
# The device-side assert's message: torch._assert_async refuses (on CUDA, even when the
# assertion holds) a message of 255 characters or more (tests/kernels/test_persistent.py).
_BARRIER_TIMEOUT_ASYNC = _BARRIER_TIMEOUT + " The CUDA context is lost: restart and use launch_strategy('per-step')."


def check_barriers(sync):
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
    torch._assert_async(sync[-1] == 0, _BARRIER_TIMEOUT_ASYNC)


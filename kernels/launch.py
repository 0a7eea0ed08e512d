"""Launching a recurrence kernel, for any cell: its arguments by name, the steps in the
strategy's launches (one, or one per step and phase through CUDA graphs), and the
persistent strategy's cooperative launch with its residency check.

What to launch (strategy, blocks, grid, phases) is ``kernels/planner.py``'s; the grid
barrier itself is ``kernels/barrier.py``'s.
"""

import inspect

import torch
import triton.language as tl
from triton.runtime.errors import OutOfResources

from . import barrier, planner, step_graphs
from ._helpers import is_interpreted, launch_context
from .planner import StrategyUnavailable

def kernels_interpreted():
    """Whether this process's Triton kernels run under the interpreter (TRITON_INTERPRET=1
    when they were defined): then they take CPU tensors, and only those."""
    return is_interpreted(barrier.grid_barrier)


_argument_names = {}  # kernel -> the names of its runtime parameters, in order


def runtime_parameters(kernel):
    """The names of ``kernel``'s parameters that are not constexprs, in order (``max_spins``,
    which every recurrence kernel takes last, included)."""
    names = _argument_names.get(kernel)
    if names is None:
        parameters = inspect.signature(kernel.fn).parameters.values()
        names = _argument_names[kernel] = [p.name for p in parameters if p.annotation is not tl.constexpr]
    return names


def kernel_args(kernel, arguments, unused):
    """The positional arguments of ``kernel`` (a @triton.jit function) from ``arguments``
    ({parameter name: value}), in the kernel's order, for every runtime parameter but
    ``max_spins`` (the launch's). A tensor given as None (absent: lengths, a projection's
    buffers, the barrier counters of a launch without barriers) is passed as ``unused``,
    which the kernel then never reads. A missing or unknown name raises TypeError."""
    names = runtime_parameters(kernel)[:-1]
    if len(arguments) != len(names) or not all(name in arguments for name in names):
        missing = sorted(set(names) - set(arguments))
        unknown = sorted(set(arguments) - set(names))
        raise TypeError(f"{kernel.fn.__name__}: missing arguments {missing}, unknown {unknown}")
    return tuple(unused if arguments[name] is None else arguments[name] for name in names)


def run_recurrence(kernel, strategy, config, phases, shape, arguments, constexprs, like, *, unused, backward=False):
    """Every step of one recurrence launch plan, in the order of the recurrence (reversed for
    the backward): one launch running all ``phases`` (one-launch, persistent), or one launch
    per step and phase (per-step, through the CUDA graph cache, kernels/step_graphs.py).

    ``shape``: (T, B, H, P). ``arguments``: the kernel's runtime arguments by name, without
    the step range and the barrier counters, which this adds (``kernel_args``).
    ``constexprs``: the call's own (direction, lengths), beside the config's and each phase's
    flags. Checks the barriers' error word after the launch."""
    T, B, H, P = shape
    sync = barrier.sync_buffer(strategy, B, config, like)
    # The arguments by name are checked and ordered once; a launch only sets its step range
    # (per-step: T launches a phase, where a few microseconds each would add up).
    template = list(kernel_args(kernel, {**arguments, "p_sync": sync, "s_start": 0, "s_end": 0}, unused))
    names = runtime_parameters(kernel)
    at_start, at_end = names.index("s_start"), names.index("s_end")

    def step_launch(s_start, s_end, flags):
        args = template.copy()
        args[at_start], args[at_end] = s_start, s_end
        return planner.phase_grid(config, strategy, B, H, P, flags), tuple(args), {**flags, **constexprs, **config}

    def launch_every_step():
        for s in reversed(range(T)) if backward else range(T):
            for flags in phases:
                launch(kernel, *step_launch(s, s + 1, flags), sync)

    def sequence_key():
        # The launches of a sequence differ only in their step: the first step's stand for all.
        return T, backward, *(step_graphs.launch_key(kernel, *step_launch(0, 1, flags)) for flags in phases)

    with launch_context(like):
        if strategy != "per-step":
            launch(kernel, *step_launch(0, T, planner.all_phase_flags(phases)), sync)
        else:
            step_graphs.run(sequence_key, launch_every_step, like.device)
    barrier.check_barriers(sync)


_residency = {}  # launch key -> None (resident) or why not: each compiled variant is checked once


def launch(kernel, grid, args, config, sync):
    """Launch ``kernel[grid](*args, **config)``; a persistent one (``sync`` given)
    cooperatively, after checking that the grid is resident."""
    if sync is None:
        kernel[grid](*args, max_spins=0, **config)
        return
    interpreted = is_interpreted(kernel)
    if not interpreted:
        _check_resident(kernel, grid, args, config)
    try:
        kernel[grid](*args, max_spins=barrier.BARRIER_MAX_SPINS, launch_cooperative_grid=True, **config)
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
    compiled = kernel.warmup(*args, max_spins=barrier.BARRIER_MAX_SPINS, grid=grid, launch_cooperative_grid=True,
                             **config)  # fmt: skip
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


def barrier_floor(T, B, H, dtype, device, P=None):
    """A callable that launches the barrier-only kernel once with the grid the persistent
    forward would use for (B, H, P, dtype): T steps of one grid barrier each. Raises
    StrategyUnavailable where the persistent kernel cannot run."""
    device = torch.device(device)
    interpreted = is_interpreted(barrier.barrier_floor_kernel)
    config = planner.kernel_config(B, H, dtype, "persistent", P=P, device=device, interpreted=interpreted)
    grid = planner.grid(config, "persistent", B, H, P if P is not None else H, cell_units=True)
    like = torch.empty(0, device=device)

    def run():
        sync = barrier.sync_buffer("persistent", B, config, like)
        with launch_context(like):
            launch(barrier.barrier_floor_kernel, grid, (sync, T), {"num_warps": config["num_warps"]}, sync)
        barrier.check_barriers(sync)

    return run

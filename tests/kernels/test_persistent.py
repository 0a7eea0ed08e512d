"""The persistent launch: its grid barrier, its bounded spin, and how its grid is planned.

The numerics of the persistent kernels are checked with every other strategy through the
``strategy`` fixture (tests/conftest.py). Under the interpreter a persistent grid has one
program per batch block, so several batch blocks (each with its own barrier counter) but no
wait on another program; on a GPU the same tests run with several programs per barrier.
"""

import contextlib

import pytest
import torch
from helpers import DEVICE

import fusedrnn
from triton.runtime.errors import OutOfResources

from fusedrnn.kernels import barrier, launch, planner
from fusedrnn.kernels.cells import LSTM


def sync_buffer(counters, error=0):
    return torch.tensor([*counters, error], dtype=torch.int32, device=DEVICE)


# Programs per barrier: one under the interpreter (it runs programs one after another), eight
# on a GPU, where they wait for each other.
GROUP = 8 if torch.cuda.is_available() else 1


@pytest.mark.parametrize("n_batch_blocks", [1, 3])
def test_barrier_counts_one_arrival_per_program_and_step(n_batch_blocks):
    sync = sync_buffer([0] * n_batch_blocks)
    barrier.barrier_floor_kernel[(n_batch_blocks, GROUP)](sync, 5, barrier.BARRIER_MAX_SPINS, launch_cooperative_grid=True)
    assert sync.tolist() == [5 * GROUP] * n_batch_blocks + [0]
    barrier.check_barriers(sync)  # no error raised


def test_barrier_that_never_fills_times_out_with_an_error_not_a_hang(monkeypatch):
    # One arrival short, as when a program of the grid is not resident: every barrier of the
    # launch waits in vain; the first gives up after max_spins polls, the later ones at once.
    sync = sync_buffer([-1])
    barrier.barrier_floor_kernel[(1, 1)](sync, 3, 4)
    assert sync.tolist() == [2, 1]  # three arrivals counted, error word raised
    # The tests read the error word on the host (conftest): a RuntimeError, the context intact.
    assert barrier.BARRIER_ERROR_CHECK == "host"
    with pytest.raises(RuntimeError, match="grid barrier of the persistent kernel timed out"):
        barrier.check_barriers(sync)
    if not sync.is_cuda:  # the default check: on CUDA a device-side assert, the end of this context
        monkeypatch.setattr(barrier, "BARRIER_ERROR_CHECK", "async")
        with pytest.raises(RuntimeError, match="grid barrier of the persistent kernel timed out"):
            barrier.check_barriers(sync)


def test_default_async_check_passes_a_barrier_that_filled(monkeypatch):
    # The default check, which the suite (host check, conftest) never takes otherwise: on
    # CUDA, torch._assert_async refused its first message (over 255 characters) even when the
    # assertion held, so every persistent launch outside the tests failed (H200, 2026-12-04).
    monkeypatch.setattr(barrier, "BARRIER_ERROR_CHECK", "async")
    sync = sync_buffer([5 * GROUP])
    barrier.check_barriers(sync)
    if sync.is_cuda:
        torch.cuda.synchronize()
    assert len(barrier._BARRIER_TIMEOUT_ASYNC) < 255


@pytest.fixture
def h100():
    """Plan persistent grids as on an H100 (132 SMs, one program each), on any machine."""
    with planner.override_limits(modelled_sms=132):
        yield


@pytest.mark.parametrize(
    "B, H, P, block_b, block_h, grid",
    [
        (1, 256, None, 16, 16, (1, 16)),  # the smallest blocks
        (16, 1024, None, 16, 16, (1, 64)),
        (32, 2048, None, 32, 16, (1, 128)),  # 128 programs of 16 units still fit
        (128, 1024, None, 64, 16, (2, 64)),  # wider batch blocks for a larger batch
        (512, 256, None, 64, 16, (8, 16)),
        (16, 300, 200, 16, 16, (1, 19)),  # cell and projected units share the programs
    ],
)  # fmt: skip
def test_persistent_plan_takes_the_smallest_resident_blocks(h100, B, H, P, block_b, block_h, grid):
    config = planner.kernel_config(B, H, torch.bfloat16, "persistent", P=P)
    assert (config["BLOCK_B"], config["BLOCK_H"], config["GRID_SYNC"]) == (block_b, block_h, True)
    assert planner.grid(config, "persistent", B, H, P if P is not None else H, cell_units=True) == grid


def test_persistent_plan_refuses_grids_larger_than_the_gpu(h100):
    with pytest.raises(planner.StrategyUnavailable, match="16 batch blocks x 16 unit blocks"):
        planner.kernel_config(1024, 2048, torch.bfloat16, "persistent")


def test_persistent_plan_refuses_tiles_that_would_spill(h100):
    # 8 x 16 programs would fit the SMs, but with 64 x 128 tiles: four 64 x 128 fp32
    # accumulators alone are 128 registers per thread of 8 warps.
    with pytest.raises(planner.StrategyUnavailable, match="8x16 programs of 64 rows x 128 units, more than registers hold"):
        planner.kernel_config(512, 2048, torch.bfloat16, "persistent")


@pytest.mark.parametrize(
    "B, H, P, dtype, held",
    [
        (8, 1024, None, torch.bfloat16, True),  # K = 1024: the slice is 128 KiB
        (1, 256, None, torch.float16, True),
        (8, 2048, None, torch.bfloat16, False),  # K too large
        (32, 1024, None, torch.bfloat16, True),  # 32 rows: 192 KiB of shared memory
        (128, 256, None, torch.bfloat16, False),  # a batch block of 64 rows
        (8, 256, None, torch.float32, False),  # TF32 operands spill
        (8, 256, 128, torch.bfloat16, False),  # projections stream W
        (8, 1000, None, torch.bfloat16, False),  # unvectorised whole-K loads spill
    ],
)  # fmt: skip
def test_persistent_kernels_hold_their_weights_where_they_fit(h100, B, H, P, dtype, held):
    for backward in (False, True):
        config = planner.kernel_config(B, H, dtype, "persistent", P=P, backward=backward)
        assert config["W_RESIDENT"] == held
        if held:  # dots over the whole padded K (= H: the forward's h, each gate's dG in the backward)
            assert config["BLOCK_K"] == max(16, 1 << (H - 1).bit_length())
        assert not planner.kernel_config(B, H, dtype, "per-step", P=P, backward=backward)["W_RESIDENT"]


@pytest.mark.parametrize(
    "B, H, dtype, blocks, grid",
    [
        (8, 1024, torch.bfloat16, (16, 16), (1, 64)),  # few rows: as many programs as the units allow
        (128, 1024, torch.bfloat16, (32, 16), (4, 64)),  # a program per SM, W_hh read 4 times a step
        (512, 1024, torch.bfloat16, (64, 32), (8, 32)),  # 16-row blocks would read W_hh 32 times
        (512, 2048, torch.float32, (64, 32), (8, 64)),
    ],
)  # fmt: skip
def test_per_step_tiles_read_the_weights_least_while_every_sm_has_a_program(h100, B, H, dtype, blocks, grid):
    config = planner.kernel_config(B, H, dtype, "per-step")
    assert (config["BLOCK_B"], config["BLOCK_H"]) == blocks
    assert planner.grid(config, "per-step", B, H, H, cell_units=True) == grid
    # Within the register budget: four fp32 accumulators of the tile, at most 32 per thread.
    assert LSTM.gates * config["BLOCK_B"] * config["BLOCK_H"] <= planner.LIMITS.max_accumulators_per_thread * 32 * config["num_warps"]


def test_per_step_tiles_under_the_interpreter_are_the_fixed_ones():
    config = planner.kernel_config(512, 1024, torch.bfloat16, "per-step", interpreted=True)
    assert (config["BLOCK_B"], config["BLOCK_H"]) == (planner.LIMITS.block_b, planner.LIMITS.per_step_block_units)


@pytest.mark.parametrize(
    "B, H, P, backward, blocks, grids",
    [
        (8, 1024, 256, False, (16, 16, 16), ((1, 64), (1, 16))),  # few rows: most programs in both phases
        (512, 1024, 128, False, (64, 32, 16), ((8, 32), (8, 8))),  # fixed 16 x 64 tiles: 32 reads of W a step
        (512, 2048, 1024, False, (64, 32, 32), ((8, 64), (8, 32))),
        # the backward's heavy phase is dh over the P units (W_hh, K = 4H): it picks BLOCK_B
        (512, 1024, 128, True, (16, 64, 16), ((32, 16), (32, 8))),  # 32 x 16 would leave SMs idle
        (512, 2048, 1024, True, (32, 64, 64), ((16, 32), (16, 16))),
    ],
)  # fmt: skip
def test_per_step_tiles_with_a_projection_plan_each_phase(h100, B, H, P, backward, blocks, grids):
    """The phase that reads W_hh (the forward's cell units, the backward's dh over the
    projected units) picks the batch block by the rule above; the other phase then its own
    unit block. Grids: (cell units, projected units)."""
    config = planner.kernel_config(B, H, torch.bfloat16, "per-step", P=P, backward=backward)
    assert (config["BLOCK_B"], config["BLOCK_H"], config["BLOCK_P"]) == blocks
    assert tuple(planner.grid(config, "per-step", B, H, P, cell_units=c) for c in (True, False)) == grids
    units = max(config["BLOCK_H"], config["BLOCK_P"])
    assert LSTM.gates * config["BLOCK_B"] * units <= planner.LIMITS.max_accumulators_per_thread * 32 * config["num_warps"]


def test_per_step_tiles_with_a_projection_under_the_interpreter_are_the_fixed_ones():
    config = planner.kernel_config(512, 1024, torch.bfloat16, "per-step", P=20, interpreted=True)
    assert (config["BLOCK_B"], config["BLOCK_H"], config["BLOCK_P"]) == (planner.LIMITS.block_b, planner.LIMITS.per_step_block_units, 32)


class FakeCompiled:
    """What _check_resident reads of a compiled kernel."""

    def __init__(self, n_regs, shared=0, num_warps=4, out_of_resources=False):
        self.n_regs, self.out_of_resources = n_regs, out_of_resources
        self.metadata = type("Metadata", (), dict(num_warps=num_warps, shared=shared))

    def _init_handles(self):
        if self.out_of_resources:
            raise OutOfResources(300000, 232448, "shared memory")


class FakeKernel:
    def __init__(self, compiled, launch_error=None):
        self.compiled, self.warmups = compiled, 0
        self.launch_error, self.launches = launch_error, 0
        self.fn = type("Fn", (), dict(__name__="fake_persistent_kernel"))

    def warmup(self, *args, **kwargs):
        self.warmups += 1
        return self.compiled

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            if self.launch_error is not None:
                raise self.launch_error

        return launch


@pytest.fixture
def fake_gpu(monkeypatch):
    """An H100's SM resources (132 SMs of 64K registers, 228 KiB shared, 2048 threads)."""
    props = type("Props", (), dict(multi_processor_count=132, regs_per_multiprocessor=65536,
                                   shared_memory_per_multiprocessor=233472, max_threads_per_multi_processor=2048))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(launch, "_residency", {})


@pytest.mark.parametrize(
    "compiled, grid, refusal",
    [
        (FakeCompiled(n_regs=255, num_warps=8), (2, 132), "a grid of 2x132 programs; 132 SMs hold 1 each"),
        (FakeCompiled(n_regs=128, num_warps=8), (2, 132), None),  # two programs per SM
        (FakeCompiled(n_regs=64, shared=200_000), (2, 132), "132 SMs hold 1 each"),  # shared memory
        (FakeCompiled(n_regs=64, out_of_resources=True), (1, 1), "persistent: out of resource: shared memory"),
    ],
    ids=["registers", "two-per-sm", "shared-memory", "out-of-resources"],
)  # fmt: skip
def test_residency_is_checked_once_per_variant_refusals_included(fake_gpu, compiled, grid, refusal):
    kernel, args = FakeKernel(compiled), (torch.zeros(1),)
    for _ in range(3):
        if refusal is None:
            launch._check_resident(kernel, grid, args, dict(BLOCK_B=16))
        else:
            with pytest.raises(planner.StrategyUnavailable, match=refusal):
                launch._check_resident(kernel, grid, args, dict(BLOCK_B=16))
    assert kernel.warmups == 1
    with contextlib.suppress(planner.StrategyUnavailable):  # another grid is another question
        launch._check_resident(kernel, (1, 2), args, dict(BLOCK_B=16))
    assert kernel.warmups == 2


def test_a_cooperative_grid_the_driver_refuses_is_a_refusal_the_next_plan_can_follow(fake_gpu):
    """Should the residency estimate pass a grid the driver will not hold at once, its launch
    error becomes StrategyUnavailable (which planner.run_plans falls back from), kept like the
    estimate's refusals; other launch errors stay what they are."""
    refused = RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
    kernel, args, sync = FakeKernel(FakeCompiled(n_regs=64), launch_error=refused), (torch.zeros(1),), torch.zeros(3)
    for _ in range(2):  # the second call is refused by the kept answer, without a launch
        with pytest.raises(planner.StrategyUnavailable, match="driver refused a cooperative grid of 2x132 programs"):
            launch.launch(kernel, (2, 132), args, dict(BLOCK_B=16), sync)
    assert kernel.launches == 1
    faulty = FakeKernel(FakeCompiled(n_regs=64), launch_error=RuntimeError("Triton Error [CUDA]: an illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access") as raised:
        launch.launch(faulty, (2, 132), args, dict(BLOCK_B=32), sync)
    assert raised.type is RuntimeError

"""The planner's kept plans, pipelined K loops and dh splits (kernels/planner.py).

A plan is kept per key; these tests change each thing a plan reads and check that the plan
follows, so that a kept plan is always the one that would be made afresh."""

import pytest
import torch
import triton
from helpers import DEVICE

from fusedrnn.kernels import planner, recurrence, tuning
from fusedrnn.kernels._helpers import MIN_DOT, cdiv, padded
from fusedrnn.kernels.cells import LSTM

# Where the kernels run, as the launches pass it: CPU tensors under the interpreter (no CUDA),
# else the GPU. A compiled kernel never plans for CPU tensors (they are refused before).
KERNEL_DEVICE = torch.device(DEVICE)


def plans(B=2, H=32, P=None, dtype=torch.float32, backward=False):
    return planner.plans(LSTM, B, H, P, dtype, KERNEL_DEVICE, recurrence._recurrence_bwd_kernel if backward else recurrence._recurrence_fwd_kernel, backward)


def test_a_repeated_call_reuses_its_plan_and_a_new_shape_gets_its_own():
    first = plans()
    assert plans() is first
    assert plans(B=3) is not first and plans(backward=True) is not first
    assert plans(dtype=torch.bfloat16) is not first


def test_kept_plans_follow_the_forced_strategy_tf32_limits_and_tables(monkeypatch):
    assert [s for s, _ in plans()] == ["one-launch"]
    with planner.launch_strategy("per-step"):
        assert [s for s, _ in plans()] == ["per-step"]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert plans()[0][1]["INPUT_PRECISION"] == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert plans()[0][1]["INPUT_PRECISION"] == "ieee"
    # One modelled SM: every grid fills the GPU, so the per-step rule takes the unit block that
    # reads least, the widest, on any device (a GPU's SM count, unmodelled, would take 16).
    with planner.launch_strategy("per-step"), planner.override_limits(modelled_sms=1):
        assert plans(H=64)[0][1]["BLOCK_H"] == 64
        with planner.override_limits(per_step_block_units=16):  # as the strategy fixture lowers it
            assert plans(H=64)[0][1]["BLOCK_H"] == 16
        assert plans(H=64)[0][1]["BLOCK_H"] == 64
    entry = dict(cell="lstm", kernel="fwd", strategy="one-launch", dtype="float32", B=2, H=32, P=None, config={"num_stages": 4})
    with tuning.use_table({"gpu": "any", "dispatch": [], "configs": [entry]}):
        assert plans()[0][1]["num_stages"] == 4
    assert plans()[0][1]["num_stages"] == planner.LIMITS.streamed_num_stages


def test_tf32_backward_precision_sets_only_the_float32_backward_under_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with planner.override_limits(tf32_backward_precision="tf32x3"):
        assert plans(backward=True)[0][1]["INPUT_PRECISION"] == "tf32x3"
        assert plans()[0][1]["INPUT_PRECISION"] == "tf32"  # the forward, as cuDNN's
        assert plans(dtype=torch.bfloat16, backward=True)[0][1]["INPUT_PRECISION"] == "tf32"
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        assert plans(backward=True)[0][1]["INPUT_PRECISION"] == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert plans(backward=True)[0][1]["INPUT_PRECISION"] == "tf32"


def test_a_forced_strategy_that_cannot_run_raises_every_time():
    with planner.launch_strategy("one-launch"):
        for _ in range(2):
            with pytest.raises(planner.StrategyUnavailable, match="exceed one program's"):
                plans(H=300)


@pytest.mark.usefixtures("an_h100")
@pytest.mark.parametrize(
    "B, H, dtype, strategy, forward, backward",
    [
        (8, 512, torch.bfloat16, "persistent", True, True),  # 16-row blocks, held weights
        (32, 2048, torch.float32, "persistent", True, True),  # 32-row blocks, W streamed
        (128, 1024, torch.float32, "persistent", True, False),  # 64-row blocks: the backward's spilled
        (8, 512, torch.bfloat16, "per-step", False, False),  # one step a launch: no barrier to hide behind
        (8, 128, torch.bfloat16, "one-launch", False, False),
    ],
)  # fmt: skip
def test_next_step_tiles_are_prefetched_in_persistent_launches(B, H, dtype, strategy, forward, backward):
    assert planner.kernel_config(B, H, dtype, strategy)["PREFETCH_GX"] is forward
    config = planner.kernel_config(B, H, dtype, strategy, backward=True)
    assert config["PREFETCH_OWN_TILES"] is backward
    assert "PREFETCH_GX" not in config and "PREFETCH_OWN_TILES" not in planner.kernel_config(B, H, dtype, strategy)
    if strategy == "persistent":  # the limit is on the batch block
        with planner.override_limits(prefetch_own_tiles_max_block_b=config["BLOCK_B"] // 2):
            assert planner.kernel_config(B, H, dtype, strategy, backward=True)["PREFETCH_OWN_TILES"] is False


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 100, 1024, 1025])
def test_host_integer_helpers_match_triton(n):
    assert padded(n) == max(MIN_DOT, triton.next_power_of_2(n))
    assert padded(n, 64) == min(64, max(MIN_DOT, triton.next_power_of_2(n)))
    assert cdiv(n, 16) == triton.cdiv(n, 16)


@pytest.fixture
def an_h100():
    """Plan as on an H100's 132 SMs, one program each, on any device."""
    with planner.override_limits(modelled_sms=132):
        yield


@pytest.mark.usefixtures("an_h100")
@pytest.mark.parametrize(
    "B, H, dtype, strategy, stages",
    [
        (8, 1024, torch.bfloat16, "per-step", 3),  # streamed K loop: two buffers
        (512, 2048, torch.float32, "per-step", 3),
        (128, 1024, torch.bfloat16, "persistent", 3),  # 64-row blocks: W streams from L2
        (8, 1024, torch.bfloat16, "persistent", 2),  # held weights: no K loop to pipeline
        (8, 128, torch.bfloat16, "one-launch", 3),  # 128 units in one program, K chunks of 32: 99 KiB
        (8, 128, torch.float32, "one-launch", 3),
        (8, 100, torch.float32, "one-launch", 2),  # unaligned: no asynchronous copies, more spills
        (100, 1000, torch.bfloat16, "per-step", 2),
    ],
)  # fmt: skip
def test_streamed_k_loops_are_double_buffered_where_they_fit(B, H, dtype, strategy, stages):
    config = planner.kernel_config(B, H, dtype, strategy)
    assert config["num_stages"] == stages
    units = max(config["BLOCK_H"], config["BLOCK_P"])
    stage_bytes = (config["BLOCK_B"] + LSTM.gates * units) * config["BLOCK_K"] * dtype.itemsize
    aligned = H % 16 == 0
    assert config.get("W_RESIDENT") or (aligned and stages * stage_bytes <= planner.LIMITS.max_pipeline_shared_bytes) == (stages == 3)


@pytest.mark.parametrize(
    "B, H, dtype, strategy, split",
    [
        (8, 2048, torch.bfloat16, "per-step", 4),  # 128 chunks of 64; 32 items a slice, 4 x 32 <= 132 SMs
        (32, 2048, torch.bfloat16, "per-step", 2),  # two batch blocks: 64 items a slice
        (8, 1024, torch.bfloat16, "per-step", 2),  # 64 chunks: two slices of 32
        (8, 512, torch.bfloat16, "per-step", 1),  # 32 chunks: too few to split
        (512, 1024, torch.bfloat16, "per-step", 1),  # 8 x 16 items of one slice: two would not fit a wave
        (8, 512, torch.float32, "per-step", 2),  # fp32 chunks of 32: 64 of them
        (32, 2048, torch.bfloat16, "persistent", 4),  # 128 programs, 32 items a slice
        (128, 1024, torch.bfloat16, "persistent", 2),  # 2 x 64 programs, 2 x 16 items a slice
        (8, 1024, torch.bfloat16, "persistent", 1),  # W_hh held on chip: no K loop
        (8, 100, torch.bfloat16, "one-launch", 1),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("an_h100")
def test_dh_loop_splits_where_it_is_long_and_the_sms_have_room(B, H, dtype, strategy, split):
    config = planner.kernel_config(B, H, dtype, strategy, backward=True)
    assert config["DH_SPLIT"] == split
    if split > 1:  # every item of the partial sums has a program, every slice its chunks
        items = cdiv(B, config["BLOCK_B"]) * cdiv(H, config["BLOCK_PS"]) * split
        grid = planner.grid(config, strategy, B, H, H, cell_units=True)
        assert items <= (132 if strategy == "per-step" else grid[0] * grid[1])
        assert cdiv(4 * H, config["BLOCK_K"]) >= split * planner.LIMITS.dh_split_min_chunks
        assert config["BLOCK_B"] * config["BLOCK_PS"] <= planner.LIMITS.max_accumulators_per_thread * 32 * config["num_warps"]
    assert "DH_SPLIT" not in planner.kernel_config(B, H, dtype, strategy)  # the forward has no dh


def test_dh_split_phases_and_grid():
    config = planner.kernel_config(20, 40, torch.float32, "per-step", backward=True, interpreted=True)
    assert config["DH_SPLIT"] == 1  # the interpreter does not split unless told to
    phases = planner.kernel_phases(True, backward=True, dh_split=3)
    assert [flags["DO_DH_PARTIAL"] for flags in phases] == [True, False, False]
    assert planner.all_phase_flags(planner.kernel_phases(False, backward=True, dh_split=3)) == dict(
        DO_DH_PARTIAL=True, DO_DH=True, DO_CELL=True)  # fmt: skip
    config = dict(config, DH_SPLIT=3, BLOCK_PS=32)
    assert planner.grid(config, "per-step", 20, 40, 40, cell_units=False, dh_partial=True) == (2, 2 * 3)

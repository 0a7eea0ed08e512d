"""kernels/launch.py's arguments by name and kernels/planner.py's limits object: the two
things every cell's launchers rely on to pass a kernel what it expects."""

import dataclasses
import os

import pytest
import torch

from fusedrnn.kernels import launch, planner, recurrence


def forward_arguments(T=3, B=2, H=16):
    """The forward kernel's arguments by name, as recurrence_fwd builds them (absent ones None)."""
    gates, w_hh, state = torch.zeros(T, B, 4 * H), torch.zeros(4 * H, H), torch.zeros(B, H)
    names = [name for name in launch.runtime_parameters(recurrence._recurrence_fwd_kernel) if name != "max_spins"]
    values = {name: index + 100 for index, name in enumerate(names)}  # a distinct int for each
    values.update(p_gates=gates, p_w_hh=w_hh, p_w_hr=w_hh, p_h0=state, p_c0=state, p_lengths=None, p_m=None,
                  p_sync=None)  # fmt: skip
    return names, values


def test_kernel_args_follow_the_kernel_s_order_whatever_the_dict_s():
    names, values = forward_arguments()
    unused = torch.zeros(1)
    shuffled = dict(reversed(list(values.items())))
    args = launch.kernel_args(recurrence._recurrence_fwd_kernel, shuffled, unused)
    assert len(args) == len(names)
    for name, arg in zip(names, args):
        expected = unused if values[name] is None else values[name]
        assert arg is expected, name
    assert names[:2] == ["p_gates", "p_w_hh"] and names[-1] == "stride_c0b"  # the signature's order


@pytest.mark.parametrize("change", ["missing", "unknown"])
def test_kernel_args_refuse_a_missing_or_unknown_name(change):
    _, values = forward_arguments()
    if change == "missing":
        del values["stride_ob"]
    else:
        values["stride_typo"] = 1
    with pytest.raises(TypeError, match=r"_recurrence_fwd_kernel: missing arguments \['stride_ob'\]" if change == "missing"
                       else r"unknown \['stride_typo'\]"):  # fmt: skip
        launch.kernel_args(recurrence._recurrence_fwd_kernel, values, torch.zeros(1))


def test_every_runtime_parameter_but_max_spins_is_named_by_the_launchers():
    """The forward and backward take max_spins last (the launch's), and the step range."""
    for kernel in (recurrence._recurrence_fwd_kernel, recurrence._recurrence_bwd_kernel):
        names = launch.runtime_parameters(kernel)
        assert names[-1] == "max_spins" and {"s_start", "s_end", "p_sync"} <= set(names)
        assert not {"BLOCK_B", "GRID_SYNC", "REVERSE", "DOT_DTYPE"} & set(names)  # constexprs are not


def test_kernels_interpreted_says_what_the_environment_said():
    assert launch.kernels_interpreted() == (os.environ.get("TRITON_INTERPRET") == "1")


def test_override_limits_changes_one_field_and_restores_the_rest():
    before = planner.LIMITS
    with planner.override_limits(per_step_block_units=16, modelled_sms=8) as limits:
        assert planner.LIMITS is limits
        assert (limits.per_step_block_units, limits.modelled_sms) == (16, 8)
        assert dataclasses.replace(limits, per_step_block_units=before.per_step_block_units,
                                   modelled_sms=before.modelled_sms) == before  # fmt: skip
    assert planner.LIMITS is before
    with pytest.raises(TypeError, match="per_step_block_h"):  # a misspelt limit is an error, not a no-op
        with planner.override_limits(per_step_block_h=16):
            pass
    with pytest.raises(dataclasses.FrozenInstanceError):
        planner.LIMITS.block_b = 32

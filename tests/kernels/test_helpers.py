"""The kernels' shared device helpers (kernels/_helpers.py) on their own."""

import math

import pytest
import torch
import triton
import triton.language as tl
from helpers import DEVICE

from fusedrnn.kernels import _helpers


@triton.jit
def _dot_operand_kernel(p_x, p_out, n, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        BLOCK: tl.constexpr):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(p_x + offs, mask=mask, other=0.0)
    tl.store(p_out + offs, _helpers.dot_operand(x, DOT_DTYPE, INPUT_PRECISION), mask=mask)


def dot_operand(x, input_precision):
    out = torch.full_like(x, 12345.0)
    _dot_operand_kernel[(triton.cdiv(x.numel(), 128),)](x, out, x.numel(), tl.float32, input_precision, 128)
    return out


def tf32_nearest(value):
    """The TF32 value nearest to a normal float (10 stored mantissa bits), ties away from zero,
    from its float64 mantissa: an oracle independent of the kernel's bit arithmetic."""
    if value == 0 or not math.isfinite(value):
        return value
    mantissa, exponent = math.frexp(abs(value))  # mantissa in [0.5, 1): 11 significant bits kept
    rounded = math.floor(mantissa * 2**11 + 0.5)
    return math.copysign(math.ldexp(rounded, exponent - 11), value)


def test_dot_operand_rounds_fp32_to_the_nearest_tf32_ties_away_from_zero():
    ulp = 2.0**-10  # a TF32 ulp at 1.0
    ties = [1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), 4 * (1 + ulp / 2)]  # exact halfway points: away from 0
    near = [1 + ulp / 2 - 2.0**-23, 1 + ulp / 2 + 2.0**-23, 1 + 0.3 * ulp, 1 + 0.7 * ulp]
    random = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(-20, 20, (1000,))
    values = torch.tensor(ties + near + [0.0, -0.0, 2.0**-120], dtype=torch.float32)
    values = torch.cat([values, random.float()])
    ours = dot_operand(values.to(DEVICE), "tf32").cpu()
    expected = torch.tensor([tf32_nearest(v) for v in values.tolist()], dtype=torch.float32)
    assert torch.equal(ours, expected)
    assert ours[:4].tolist() == [1 + ulp, 1 + 2 * ulp, -(1 + ulp), 4 * (1 + ulp)]
    assert ours[4:8].tolist() == [1.0, 1 + ulp, 1.0, 1 + ulp]
    assert torch.equal(ours[9].view(torch.int32), torch.tensor(-0.0).view(torch.int32))  # -0 keeps its sign


def test_dot_operand_keeps_inf_and_nan_and_rounds_past_the_largest_float_to_inf():
    largest = torch.finfo(torch.float32).max
    values = torch.tensor([math.inf, -math.inf, math.nan, -math.nan, largest, -largest], dtype=torch.float32)
    # NaNs with every mantissa bit set: plain bit arithmetic would carry them into the sign or zero.
    all_ones = torch.tensor([0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)
    ours = dot_operand(torch.cat([values, all_ones]).to(DEVICE), "tf32").cpu()
    assert ours[:2].tolist() == [math.inf, -math.inf]
    assert torch.isnan(ours[2:4]).all() and torch.isnan(ours[6:]).all()
    assert ours[4:6].tolist() == [math.inf, -math.inf]  # as cvt.rna.tf32.f32: no saturation


def test_weights_rounded_on_the_host_match_the_kernels_rounding_bit_for_bit():
    """tf32_rounded (the launchers round W_hh, W_hr and the cell's weights with it, once per
    call) gives dot_operand's bits: ties, random magnitudes, signed zeros, inf, NaN patterns
    with every mantissa bit set, values that round past the largest float."""
    ulp = 2.0**-10
    special = [1 + ulp / 2, -(1 + ulp / 2), 1 + 0.3 * ulp, 0.0, -0.0, math.inf, -math.inf, math.nan,
               torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max, 2.0**-140]
    values = torch.cat([
        torch.tensor(special, dtype=torch.float32),
        torch.tensor([0x7FFFFFFF, -1, 0x7F800001, 0x7FC00000], dtype=torch.int32).view(torch.float32),
        torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 10.0 ** torch.randint(-30, 30, (4096,)),
    ]).float()  # fmt: skip
    host = _helpers.tf32_rounded(values.to(DEVICE)).cpu()
    device = dot_operand(values.to(DEVICE), "tf32").cpu()
    assert torch.equal(host.view(torch.int32), device.view(torch.int32))
    assert not torch.equal(host.view(torch.int32), values.view(torch.int32))  # it did round


@triton.jit
def _dot_kernel(p_a, p_b, p_out, INPUT_PRECISION: tl.constexpr):
    offs = tl.arange(0, 16)
    tile = offs[:, None] * 16 + offs[None, :]
    a = _helpers.dot_operand(tl.load(p_a + tile), tl.float32, INPUT_PRECISION)
    b = _helpers.dot_operand(tl.load(p_b + tile), tl.float32, INPUT_PRECISION)
    tl.store(p_out + tile, tl.dot(a, b, input_precision=INPUT_PRECISION))


@pytest.mark.parametrize("input_precision, product", [("tf32", 1 + 2.0**-10), ("ieee", 1 + 0.75 * 2.0**-10)])
def test_a_tf32_dot_of_rounded_operands_is_exact(input_precision, product):
    """1 + 0.75 ulp(TF32) times ones, 16 terms: rounded first, every product is 1 + 1 ulp and the
    sum exact, on a GPU (whose tensor cores would truncate the operand to 1) and under the
    interpreter alike; IEEE keeps the operand."""
    a = torch.full((16, 16), 1 + 0.75 * 2.0**-10, device=DEVICE)
    out = torch.full_like(a, math.nan)
    _dot_kernel[(1,)](a, torch.ones_like(a), out, input_precision)
    assert torch.equal(out, torch.full_like(a, 16 * product))


@pytest.mark.parametrize("input_precision", ["ieee", "tf32x3"])
def test_dot_operand_leaves_fp32_alone_outside_tf32(input_precision):
    values = torch.randn(300, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    assert torch.equal(dot_operand(values, input_precision), values)


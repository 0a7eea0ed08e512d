"""Triton LSTM kernels (through their autograd Function) against the reference path.

Without CUDA these run under the Triton interpreter on CPU; with CUDA, natively. Every
kernel output starts as NaN (conftest), and both launch strategies are exercised.
"""

import contextlib

import pytest
import torch
from helpers import DEVICE, backward_all, cast, grads, random_cotangents, random_problem

from fusedrnn import functional as F
from fusedrnn.kernels import _helpers
from fusedrnn.testing import assert_close, assert_no_worse_than, error_stats

# Odd sizes on purpose: B=1, T=1, H and I not multiples of any block, B spanning two blocks,
# H=100 chunking K in the default blocks too.
CASES = [(5, 3, 7, 20), (1, 1, 5, 37), (4, 17, 5, 37), (3, 2, 1, 1), (6, 4, 16, 16), (3, 2, 5, 100)]
CASE_PARAMS = [pytest.param(c, id="T{}-B{}-I{}-H{}".format(*c)) for c in CASES]


def run(tensors, backend, batch_first=False):
    params = [tensors[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if n in tensors]
    hx = (tensors["h0"], tensors["c0"]) if "h0" in tensors else None
    output, (h_n, c_n) = F.lstm(tensors["input"], hx, *params, batch_first=batch_first, backend=backend)
    return output, h_n, c_n


def kernels_and_oracle(case, dtype, strategy, *, bias=True, batch_first=False, hx=True):
    """Run the kernels in `dtype` and the reference in float64 on the same problem, backpropagate
    the same random cotangents through output, h_n and c_n, and return both results."""
    oracle = random_problem(*case, bias=bias, batch_first=batch_first)
    if not hx:
        del oracle["h0"], oracle["c0"]
    ours = cast(oracle, dtype=dtype, device=DEVICE)
    expected = run(oracle, "reference", batch_first)
    actual = run(ours, "triton", batch_first)
    cotangents = random_cotangents(*expected)
    backward_all(expected, cotangents)
    backward_all(actual, cotangents)
    return (actual, grads(ours)), (expected, grads(oracle))


def by_name(outputs, gradients):
    """{name: tensor} of output, h_n, c_n and every gradient."""
    return {**dict(zip(("output", "h_n", "c_n"), outputs)), **{f"grad {n}": g for n, g in gradients.items()}}


def assert_all_close(actual, expected, rel):
    (outs, grads_a), (outs_e, grads_e) = actual, expected
    for name, a, e in zip(("output", "h_n", "c_n"), outs, outs_e):
        assert a.dtype == grads_a["input"].dtype
        assert_close(a, e, rel=rel, name=name)
    assert grads_a.keys() == grads_e.keys()
    for name in grads_e:
        assert_close(grads_a[name], grads_e[name], rel=rel, name=f"grad {name}")


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fp32_matches_reference(case, strategy):
    assert_all_close(*kernels_and_oracle(case, torch.float32, strategy), rel=1e-5)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fp32_layouts_and_options(bias, hx, batch_first, strategy):
    assert_all_close(
        *kernels_and_oracle((4, 5, 3, 20), torch.float32, strategy, bias=bias, batch_first=batch_first, hx=hx),
        rel=1e-5,
    )


# T=1 or B=1 makes the strides of a size-1 dimension ambiguous (batch_first or not).
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("case", [(1, 3, 4, 20), (4, 1, 4, 20)], ids=["T1", "B1"])
def test_fp32_degenerate_layouts(case, batch_first, strategy):
    assert_all_close(*kernels_and_oracle(case, torch.float32, strategy, batch_first=batch_first), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_close_to_reference_in_same_dtype(dtype, strategy):
    """16-bit storage with fp32 state, judged three ways against float64.

    The reference path in the same dtype rounds only gx and h_t; the kernels also store the
    pre-activations and dG in 16 bits (half the memory). Every tensor must stay within twice
    the reference's error plus one unit roundoff, and under an absolute cap so that a broken
    reference cannot excuse a wrong gate (which is off by O(1)). On CUDA the same kernels are
    judged against cuDNN.
    """
    case = (6, 3, 7, 20)
    (outs, grads_k), (outs_e, grads_e) = kernels_and_oracle(case, dtype, strategy)
    same_dtype = cast(random_problem(*case), dtype=dtype)
    outs_r = run(same_dtype, "reference")
    backward_all(outs_r, random_cotangents(*outs_e))
    grads_r = grads(same_dtype)
    unit_roundoff = torch.finfo(dtype).eps / 2
    cap = 2 * torch.finfo(dtype).eps  # bf16: 1.6e-2, fp16: 2.0e-3
    actual = by_name(outs, grads_k)
    assert all(t.dtype == dtype for t in actual.values())
    assert_no_worse_than(
        actual, by_name(outs_r, grads_r), by_name(outs_e, grads_e),
        atol=unit_roundoff, cap=cap, baseline_name=f"reference in {dtype}",
    )  # fmt: skip


def test_nan_and_inf_in_input_propagate_like_reference(strategy):
    oracle = random_problem(5, 3, 4, 20)
    with torch.no_grad():
        oracle["input"][2, 1, 0] = float("nan")
        oracle["input"][3, 0, 1] = float("inf")
    ours = cast(oracle, dtype=torch.float32, device=DEVICE)
    for name, a, e in zip(("output", "h_n", "c_n"), run(ours, "triton"), run(oracle, "reference")):
        assert_close(a, e, rel=1e-5, name=name)  # also compares the NaN pattern


def test_fp32_in_tf32_rounds_its_recurrent_dot_operands(strategy, monkeypatch):
    """With cuDNN's TF32 switch on, the recurrence kernels' fp32 dots take TF32 operands, on a
    GPU and (through _helpers.dot_operand) under the interpreter alike: an error of TF32's
    size, where IEEE fp32 stays near fp32's, and no larger (the recurrent dot is the only TF32
    part: the conftest keeps the input projection's cuBLAS GEMM in IEEE fp32). It shows that
    the switch reaches the kernels, not that every dot rounds (one unrounded dot among rounded
    ones would pass): the GPU's cuDNN comparisons (tests/test_modules.py) judge that."""
    errors = {}
    for tf32 in (False, True):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        actual, expected = (by_name(*r) for r in kernels_and_oracle((6, 3, 5, 40), torch.float32, strategy))
        errors[tf32] = {name: error_stats(actual[name], expected[name]).rel for name in expected}
    assert max(errors[False].values()) < 1e-5, errors[False]
    assert 1e-5 < max(errors[True].values()) < 3e-3, errors[True]


def test_fp32_in_tf32_multiplies_the_rounded_state_and_rounded_weights(strategy, monkeypatch):
    """One step's pre-activations, Gx + h0 W_hh^T, as the kernels write them over the gates:
    in TF32 those of h0 and W_hh both rounded to TF32 (h0 in the kernel, W_hh by the
    launcher, kernels/recurrence.py dot_weights) to fp32's precision, where unrounded
    operands are a TF32 ulp away: a launcher that passed W_hh unrounded would fail here."""
    from fusedrnn.kernels import recurrence
    from fusedrnn.kernels.cells import LSTM

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    g = torch.Generator().manual_seed(0)
    B, H = 3, 20
    gx, w_hh = torch.randn(1, B, 4 * H, generator=g), torch.randn(4 * H, H, generator=g) * 0.3
    h0, c0 = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    gates = gx.to(DEVICE, copy=True)  # overwritten with the pre-activations
    recurrence.recurrence_fwd(LSTM, gates, w_hh.to(DEVICE), h0.to(DEVICE), c0.to(DEVICE))
    rounded = gx[0].double() + _helpers.tf32_rounded(h0).double() @ _helpers.tf32_rounded(w_hh).double().t()
    only_h0_rounded = gx[0].double() + _helpers.tf32_rounded(h0).double() @ w_hh.double().t()
    assert (gates[0].cpu().double() - rounded).abs().max() < 1e-5
    assert (only_h0_rounded - rounded).abs().max() > 1e-4  # the two are told apart


def test_gradients_are_bitwise_reproducible(strategy):
    first, second = (kernels_and_oracle((5, 3, 7, 20), torch.float32, strategy)[0] for _ in range(2))
    for name in first[1]:
        assert torch.equal(first[1][name], second[1][name]), name


def test_poisoning_is_active():
    """The NaN poisoning this file relies on is really on."""
    assert torch.isnan(_helpers.empty_output(3, dtype=torch.float32, device=DEVICE)).all()


def test_backward_twice_with_retain_graph():
    tensors = cast(random_problem(3, 2, 4, 20), dtype=torch.float32, device=DEVICE)
    output, h_n, c_n = run(tensors, "triton")
    output.sum().backward(retain_graph=True)
    first = tensors["weight_hh"].grad.clone()
    output.sum().backward()
    assert_close(tensors["weight_hh"].grad, 2 * first, rel=1e-6, name="accumulated grad")


@pytest.fixture
def into_gates(monkeypatch):
    """Whether each backward of the kernels wrote dG over the saved gates, in call order."""
    from fusedrnn.kernels import recurrence

    calls = []
    real_bwd = recurrence.recurrence_bwd

    def spy(*args, **kwargs):
        calls.append(kwargs.get("d_gates_into_gates", False))
        return real_bwd(*args, **kwargs)

    monkeypatch.setattr(recurrence, "recurrence_bwd", spy)
    return calls


@pytest.mark.parametrize("case", [(5, 3, 7, 20, None), (4, 17, 5, 37, 11)], ids=["plain", "projection"])
def test_gates_take_their_own_gradient_only_when_the_graph_is_freed(case, strategy, into_gates):
    """A backward that keeps the graph (retain_graph) writes dG to a new buffer; one that frees
    it writes dG over the saved gates. Both give bitwise the same gradients: the second
    backward accumulates exactly twice the first."""
    T, B = case[:2]
    tensors = cast(extended_problem(*case, batch_first=True), dtype=torch.float32, device=DEVICE)
    output, h_n, c_n = run_extended(tensors, "triton", batch_first=True, reverse=True, lengths=lengths_for(T, B))
    # On the outputs' device (autograd casts a gradient's dtype, but not its device).
    cotangents = [d.to(o.device, o.dtype) for o, d in zip((output, h_n, c_n), random_cotangents(output, h_n, c_n))]
    torch.autograd.backward((output, h_n, c_n), cotangents, retain_graph=True)
    first = {name: t.grad.clone() for name, t in tensors.items()}
    torch.autograd.backward((output, h_n, c_n), cotangents)
    assert into_gates == [False, True]
    for name, t in tensors.items():
        assert torch.equal(t.grad, 2 * first[name]), name


def _offloading_hooks():
    """Saved-tensor hooks that hand autograd a copy of every saved tensor, as CPU offloading does."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


def _checkpointed(run_fn, use_reentrant):
    def wrapped(tensors):
        names = list(tensors)

        def body(*values):
            return run_fn(dict(zip(names, values)))

        return torch.utils.checkpoint.checkpoint(body, *tensors.values(), use_reentrant=use_reentrant)

    return wrapped


@pytest.mark.parametrize("how", ["checkpoint", "checkpoint-reentrant", "saved-tensor-hooks"])
def test_gates_taking_their_gradient_is_safe_under_checkpoint_and_saved_tensor_hooks(how, strategy, into_gates):
    """Activation checkpointing recomputes the gates inside the backward (the reentrant kind in
    a nested backward of its own), and offloading hooks hand the backward a copy: in each the
    backward still frees what it reads, writes dG over it, and the gradients are bitwise those
    of a plain run."""
    problem = random_problem(5, 3, 7, 20)

    def run_triton(tensors):
        return run(tensors, "triton")

    def gradients(run_fn, context):
        tensors = cast(problem, dtype=torch.float32, device=DEVICE)
        with context:
            outputs = run_fn(tensors)
        backward_all(outputs, random_cotangents(*outputs, seed=3))
        return grads(tensors)

    plain = gradients(run_triton, contextlib.nullcontext())
    if how == "saved-tensor-hooks":
        wrapped = gradients(run_triton, _offloading_hooks())
    else:
        wrapped = gradients(_checkpointed(run_triton, how == "checkpoint-reentrant"), contextlib.nullcontext())
    assert into_gates == [True, True]
    assert plain.keys() == wrapped.keys()
    for name in plain:
        assert torch.equal(wrapped[name], plain[name]), name


# ----------------------------------------------------------------------------------------
# Reverse direction, per-row lengths and the LSTMP projection (the kernels' REVERSE, VARLEN
# and HAS_PROJ paths), in both launch strategies. Per-step, P=11 and P=20 give one and two
# projection blocks, H=37 and 40 three cell blocks; K is chunked in both phases.

EXTENDED = [(5, 3, 7, 20, None), (4, 17, 5, 37, 11), (3, 2, 4, 40, 20)]


def extended_problem(T, B, I, H, P, *, batch_first, seed=0):
    problem = random_problem(T, B, I, H, batch_first=batch_first, seed=seed)
    if P is not None:
        g = torch.Generator().manual_seed(seed + 1)
        k = H**-0.5
        problem["weight_hh"] = ((torch.rand(4 * H, P, generator=g, dtype=torch.float64) * 2 - 1) * k).requires_grad_()
        problem["weight_hr"] = ((torch.rand(P, H, generator=g, dtype=torch.float64) * 2 - 1) * k).requires_grad_()
        problem["h0"] = (torch.randn(B, P, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    return problem


def run_extended(tensors, backend, **kwargs):
    params = [tensors.get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
    output, (h_n, c_n) = F.lstm(tensors["input"], (tensors["h0"], tensors["c0"]), *params, backend=backend, **kwargs)
    return output, h_n, c_n


def lengths_for(T, B, seed=0):
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    lengths[0], lengths[-1] = 1, T  # a length-1 row and a full one
    return lengths


@pytest.mark.parametrize("case", [pytest.param(c, id="T{}-B{}-I{}-H{}-P{}".format(*c)) for c in EXTENDED])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("varlen", [False, True], ids=["full", "lengths"])
def test_reverse_lengths_projection_match_reference(case, reverse, varlen, strategy):
    T, B = case[:2]
    batch_first = reverse and varlen  # one strided layout in the mix
    oracle = extended_problem(*case, batch_first=batch_first)
    ours = cast(oracle, dtype=torch.float32, device=DEVICE)
    lengths = lengths_for(T, B) if varlen else None
    kwargs = dict(reverse=reverse, lengths=lengths, batch_first=batch_first)
    expected = run_extended(oracle, "reference", **kwargs)
    actual = run_extended(ours, "triton", **kwargs)
    cotangents = random_cotangents(*expected)
    backward_all(expected, cotangents)
    backward_all(actual, cotangents)
    assert_all_close((actual, grads(ours)), (expected, grads(oracle)), rel=1e-5)
    if varlen:  # zero past each length, exactly
        out = actual[0].transpose(0, 1) if batch_first else actual[0]
        padding = torch.arange(T)[:, None] >= lengths[None, :]
        assert (out[padding.to(out.device)] == 0).all()


@pytest.mark.parametrize(
    "tiles", [(16, 16, 32), (32, 32, 16)], ids=["projection-tile-wider", "cell-tile-wider"]
)  # fmt: skip
def test_per_step_projection_tiles_of_their_own(tiles, monkeypatch):
    """The per-step planner sizes the cell and the projection units' tiles apart (on a GPU):
    either may be the wider one, over batch blocks wider than 16 rows."""
    from fusedrnn.kernels import planner

    monkeypatch.setattr(planner, "per_step_blocks", lambda *args: tiles)
    case = (3, 20, 4, 40, 36)  # two 32-unit or three 16-unit blocks of H and of P
    oracle = extended_problem(*case, batch_first=False)
    ours = cast(oracle, dtype=torch.float32, device=DEVICE)
    kwargs = dict(reverse=True, lengths=lengths_for(*case[:2]))
    with planner.launch_strategy("per-step"):
        actual = run_extended(ours, "triton", **kwargs)
        expected = run_extended(oracle, "reference", **kwargs)
        cotangents = random_cotangents(*expected)
        backward_all(expected, cotangents)
        backward_all(actual, cotangents)
    config = planner.kernel_config(20, 40, torch.float32, "per-step", P=36)
    assert (config["BLOCK_B"], config["BLOCK_H"], config["BLOCK_P"]) == tiles
    assert_all_close((actual, grads(ours)), (expected, grads(oracle)), rel=1e-5)


@pytest.mark.parametrize("case", [(4, 17, 3, 20, None), (4, 5, 3, 20, 11)], ids=["B17-H20", "B5-H20-P11"])
@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("how", ["per-step", "persistent"])
def test_dh_split_over_k_matches_reference_and_repeats_bitwise(how, split, case):
    """The backward's dh_t = dG_{t+1} @ W_hh over K = 4H = 80 in chunks of 16, split in K
    slices of whole chunks (kernels/planner.py, DH_SPLIT): unsplit, in two (48 + 32) and in four,
    whose last slice is empty (32 + 32 + 16 + 0); partial sums over 16-unit items, reverse,
    lengths, two batch blocks or a projection. The slices are added in a fixed order, so a
    second run gives the same bits."""
    from fusedrnn.kernels import planner, recurrence
    from fusedrnn.kernels.cells import LSTM

    T, B, _, H, P = case
    oracle = extended_problem(*case, batch_first=False)
    kwargs = dict(reverse=True, lengths=lengths_for(T, B))
    expected = run_extended(oracle, "reference", **kwargs)
    cotangents = random_cotangents(*expected)
    backward_all(expected, cotangents)
    runs = []
    limits = dict(max_block_k=16, per_step_block_units=16, persistent_max_block_b=16, resident_weight_dtypes=(),
                  dh_split_block_p=16, dh_split_override=split)  # fmt: skip
    with planner.override_limits(**limits), planner.launch_strategy(how):
        config = planner.plans(LSTM, B, H, P, torch.float32, torch.device(DEVICE), recurrence._recurrence_bwd_kernel, True)
        assert config[0][1]["DH_SPLIT"] == split
        for _ in range(2):
            ours = cast(oracle, dtype=torch.float32, device=DEVICE)
            actual = run_extended(ours, "triton", **kwargs)
            backward_all(actual, cotangents)
            runs.append(by_name(actual, grads(ours)))
    assert_all_close((actual, grads(ours)), (expected, grads(oracle)), rel=1e-5)
    for name, first in runs[0].items():
        assert torch.equal(first, runs[1][name]), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_projection_reverse_lengths(dtype, strategy):
    """The three-way bound of test_half_precision_close_to_reference_in_same_dtype on the
    REVERSE + VARLEN + HAS_PROJ path."""
    case = (6, 3, 7, 37, 11)
    kwargs = dict(reverse=True, lengths=lengths_for(6, 3))
    oracle = extended_problem(*case, batch_first=False)
    ours, same_dtype = cast(oracle, dtype=dtype, device=DEVICE), cast(oracle, dtype=dtype)
    outs_e = run_extended(oracle, "reference", **kwargs)
    cotangents = random_cotangents(*outs_e)
    results = []
    for tensors, backend in ((oracle, "reference"), (ours, "triton"), (same_dtype, "reference")):
        outs = run_extended(tensors, backend, **kwargs)
        backward_all(outs, cotangents)
        results.append((outs, grads(tensors)))
    (outs_e, grads_e), (outs_k, grads_k), (outs_r, grads_r) = results
    unit_roundoff, cap = torch.finfo(dtype).eps / 2, 2 * torch.finfo(dtype).eps
    assert_no_worse_than(
        by_name(outs_k, grads_k), by_name(outs_r, grads_r), by_name(outs_e, grads_e),
        atol=unit_roundoff, cap=cap, baseline_name=f"reference in {dtype}",
    )  # fmt: skip

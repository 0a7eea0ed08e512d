"""The LSTM cell launchers (fusedrnn.kernels.lstm_cell) against the float64 reference.

Without CUDA these run under the Triton interpreter on CPU. Every kernel output starts as NaN
(conftest). ``small_blocks`` shrinks the blocks so that small shapes span several programs in
both grid dimensions and several K chunks of both products.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import DEVICE

from fusedrnn.kernels import lstm_cell as K
from fusedrnn.kernels.reference import lstm_cell_reference, lstm_cell_update
from fusedrnn.testing import assert_close, error_stats

# (B, I, H): B=1, H=1, sizes not multiples of any block; (40, 37, 50) spans 3 x 4 programs
# and 3 + 4 K chunks with small blocks.
CASES = [(5, 9, 23), (1, 3, 1), (40, 37, 50), (16, 16, 16)]
CASE_PARAMS = [pytest.param(c, id="B{}-I{}-H{}".format(*c)) for c in CASES]


@pytest.fixture(params=["default-blocks", "small-blocks"])
def blocks(request, monkeypatch):
    if request.param == "small-blocks":
        monkeypatch.setattr(K, "BLOCK_H", 16)
        monkeypatch.setattr(K, "MAX_BLOCK_B", 16)
        monkeypatch.setattr(K, "MAX_BLOCK_K", 16)
    return request.param


def random_cell(B, I, H, *, seed=0, bias=True, state=True):
    """float64 x, h, c, w_ih, w_hh, b_ih, b_hh (None where absent); weights in torch's init range."""
    g = torch.Generator().manual_seed(seed)
    k = H**-0.5

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k

    x = torch.randn(B, I, generator=g, dtype=torch.float64)
    h, c = (torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2))
    w_ih, w_hh, b_ih, b_hh = uniform(4 * H, I), uniform(4 * H, H), uniform(4 * H), uniform(4 * H)
    return (x, h if state else None, c if state else None, w_ih, w_hh, b_ih if bias else None, b_hh if bias else None)


def to(tensors, dtype):
    return [t.to(DEVICE, dtype) if t is not None else None for t in tensors]


def exact_gates(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.t()
    if h is not None:
        gates = gates + h @ w_hh.t()
    return gates + (b_ih + b_hh) if b_ih is not None else gates


def check_fwd(case, bias=True, state=True):
    args = random_cell(*case, bias=bias, state=state)
    h_out, c_out, gates = K.lstm_cell_fwd(*to(args, torch.float32))
    x, h, c, *params = args
    zeros = torch.zeros(case[0], case[2], dtype=torch.float64)
    h_ref, c_ref = lstm_cell_reference(x, h if state else zeros, c if state else zeros, *params)
    assert h_out.dtype == c_out.dtype == torch.float32 and gates.dtype == torch.float32
    assert_close(h_out, h_ref, rel=1e-5, name="h'")
    assert_close(c_out, c_ref, rel=1e-5, name="c'")
    assert_close(gates, exact_gates(*args), rel=1e-5, name="gates")


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_fwd_fp32_matches_reference(case, blocks):
    check_fwd(case)


@pytest.mark.parametrize("state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fwd_fp32_options(bias, state, blocks):
    check_fwd((20, 17, 20), bias=bias, state=state)


def test_fwd_strided_inputs_and_mixed_state_dtype():
    """Row-strided x and h, a transposed c, and c in fp32 with bf16 x: h' and c' in fp32."""
    x, h, c, *params = random_cell(6, 9, 20)
    wide = lambda t: torch.cat([t, t], dim=1)[:, : t.shape[1]]  # noqa: E731  (row stride 2n)
    x_s, h_s = (wide(t.to(DEVICE, torch.float32)) for t in (x, h))
    c_t = c.to(DEVICE, torch.float32).t().contiguous().t()
    assert x_s.stride(0) == 2 * x.shape[1] and h_s.stride(0) == 2 * h.shape[1] and c_t.stride() == (1, 6)
    h_out, c_out, _ = K.lstm_cell_fwd(x_s, h_s, c_t, *to(params, torch.float32))
    h_ref, c_ref = lstm_cell_reference(x, h, c, *params)
    assert_close(h_out, h_ref, rel=1e-5, name="h'")
    assert_close(c_out, c_ref, rel=1e-5, name="c'")

    bf16 = to([x, h, None, *params], torch.bfloat16)
    bf16[2] = c.to(DEVICE, torch.float32)
    h_out, c_out, _ = K.lstm_cell_fwd(*bf16)
    assert h_out.dtype == c_out.dtype == torch.float32
    # The same inputs rounded to bf16, then exact: what is left is the kernel's fp32 arithmetic.
    rounded = [t.bfloat16().double() if t is not None else None for t in (x, h, None, *params)]
    h_ref, c_ref = lstm_cell_reference(rounded[0], rounded[1], c.float().double(), *rounded[3:])
    assert_close(h_out, h_ref, rel=1e-5, name="h' (bf16 x, fp32 c)")
    assert_close(c_out, c_ref, rel=1e-5, name="c' (bf16 x, fp32 c)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fwd_half_precision(dtype, blocks):
    """16-bit storage, fp32 arithmetic: within twice the reference's own error in that dtype
    plus one unit roundoff, and under a cap a wrong gate cannot meet."""
    args = random_cell(20, 37, 40)
    h_out, c_out, _ = K.lstm_cell_fwd(*to(args, dtype))
    h_exact, c_exact = lstm_cell_reference(*args)
    h_same, c_same = lstm_cell_reference(*[t.to(dtype) if t is not None else None for t in args])
    unit_roundoff, cap = torch.finfo(dtype).eps / 2, 2 * torch.finfo(dtype).eps
    for name, ours, same, exact in (("h'", h_out, h_same, h_exact), ("c'", c_out, c_same, c_exact)):
        assert ours.dtype == dtype
        err, err_ref = error_stats(ours, exact).rel, error_stats(same, exact).rel
        assert err <= min(2 * err_ref + unit_roundoff, cap), f"{name}: {err:.2e} (reference in {dtype}: {err_ref:.2e})"


def reference_bwd(gates, c, d_h, d_c):
    """d_gates and d_c by autograd through the reference cell update, in float64."""
    gates = gates.detach().double().requires_grad_()
    c = c.detach().double().requires_grad_()
    h_new, c_new = lstm_cell_update(gates, c)
    loss = (h_new * d_h).sum() if d_h is not None else 0
    loss = loss + ((c_new * d_c).sum() if d_c is not None else 0)
    return torch.autograd.grad(loss, [gates, c])


@pytest.mark.parametrize("grads", ["dh-dc", "dh", "dc"])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_bwd_fp32_matches_reference(case, grads, blocks):
    B, _, H = case
    g = torch.Generator().manual_seed(1)
    gates = torch.randn(B, 4 * H, generator=g, dtype=torch.float64) * 2
    c, d_h, d_c = (torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(3))
    d_h = d_h if "dh" in grads else None
    d_c = d_c if "dc" in grads else None
    d_gates, d_c_prev = K.lstm_cell_bwd(*to([gates, c, d_h, d_c], torch.float32), torch.float32)
    d_gates_ref, d_c_ref = reference_bwd(gates.float(), c, d_h, d_c)
    assert_close(d_gates, d_gates_ref, rel=1e-5, name="d_gates")
    assert_close(d_c_prev, d_c_ref, rel=1e-5, name="d_c")


def test_bwd_expanded_gradients_and_no_state():
    """Expanded (stride-0) gradients, as from a sum; c=None is a zero cell state."""
    B, H = 5, 23
    # Seeded: the interpreter truncates to bf16 instead of rounding, which puts the error near
    # the bound for some draws; the global RNG state depends on which tests ran before.
    torch.manual_seed(0)
    gates = torch.randn(B, 4 * H, dtype=torch.float64)
    d_h = torch.tensor(0.7, device=DEVICE).expand(B, H)
    d_c = torch.randn(H, device=DEVICE).expand(B, H)
    assert d_h.stride() == (0, 0) and d_c.stride() == (0, 1)
    d_gates, d_c_prev = K.lstm_cell_bwd(gates.to(DEVICE, torch.float32), None, d_h, d_c, torch.bfloat16)
    assert d_gates.dtype == d_c_prev.dtype == torch.bfloat16
    d_gates_ref, d_c_ref = reference_bwd(gates.float(), torch.zeros(B, H), d_h.cpu().double(), d_c.cpu().double())
    assert_close(d_gates, d_gates_ref, rel=2**-8, name="d_gates")  # rounded to bf16 on store
    assert_close(d_c_prev, d_c_ref, rel=2**-8, name="d_c")


def test_config_precision_and_blocks():
    """fp32 dots follow torch.backends.cuda.matmul.allow_tf32, as torch's cell's cuBLAS GEMMs."""
    torch.backends.cudnn.allow_tf32 = True  # both restored by the ieee_fp32 fixture
    assert K.kernel_config(5, 9, 23, torch.float32)["INPUT_PRECISION"] == "ieee"
    torch.backends.cuda.matmul.allow_tf32 = True
    assert K.kernel_config(5, 9, 23, torch.float32)["INPUT_PRECISION"] == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False
    config = K.kernel_config(5, 9, 23, torch.float32)
    assert config["INPUT_PRECISION"] == "ieee"
    assert (config["BLOCK_B"], config["BLOCK_H"], config["BLOCK_KI"], config["BLOCK_KH"]) == (16, 32, 16, 32)
    config = K.kernel_config(1000, 1000, 1000, torch.bfloat16)
    assert (config["BLOCK_B"], config["BLOCK_H"], config["BLOCK_KI"], config["BLOCK_KH"]) == (64, 32, 64, 64)
    assert K.kernel_config(1000, 1000, 1000, torch.float32)["BLOCK_KI"] == 32


def test_launchers_reject_bad_arguments():
    x, h, c, w_ih, w_hh, b_ih, b_hh = to(random_cell(3, 4, 8), torch.float32)
    with pytest.raises(TypeError):
        K.lstm_cell_fwd(*to(random_cell(3, 4, 8), torch.float64))
    with pytest.raises(ValueError):
        K.lstm_cell_fwd(x, h, c, w_ih.t(), w_hh, b_ih, b_hh)
    with pytest.raises(ValueError):
        K.lstm_cell_fwd(x, h[:2], c, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError):
        K.lstm_cell_fwd(x, h.half(), c, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError):
        K.lstm_cell_fwd(x, h, None, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError):
        K.lstm_cell_bwd(torch.zeros(3, 32, dtype=torch.float16, device=DEVICE), c, h, c, torch.float32)


# ----------------------------------------------------------------------------------------
# The interpreter type-checks nothing: compile for Hopper too (see tests/kernels/test_compile.py).

COMPILE = r"""
import json
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedrnn.kernels import lstm_cell as K

results = []

def compile(kernel, pointer_types, constexprs, options):
    signature = {p.name: "constexpr" if p.is_constexpr else pointer_types.get(p.name, "i32") for p in kernel.params}
    source = ASTSource(kernel, signature, constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm.get("cubin"), "no cubin"
    results.append({"kernel": kernel.fn.__name__, "shared": compiled.metadata.shared})

# The largest blocks, bf16 with an fp32 cell state: mixed pointer types. (Each compile costs
# 1-3 s; fp32 differs only in the dot's operand type.)
config = K.kernel_config(1000, 1000, 1000, torch.bfloat16)
options = {k: config.pop(k) for k in ("num_warps", "num_stages")}
pointers = {p.name: "*bf16" for p in K._lstm_cell_fwd_kernel.params if p.name.startswith("p_")}
pointers.update(p_c="*fp32", p_h_out="*fp32", p_c_out="*fp32", p_gates="*fp32")
compile(K._lstm_cell_fwd_kernel, pointers, dict(config, HAS_STATE=True, HAS_BIAS=True), options)
pointers = dict(p_gates="*fp32", p_c="*fp32", p_dh="*bf16", p_dc="*fp32", p_dgates="*bf16", p_dc_prev="*fp32")
flags = dict(BLOCK_B=64, BLOCK_H=32, HAS_STATE=True, HAS_DH=True, HAS_DC=True)
compile(K._lstm_cell_bwd_kernel, pointers, flags, {"num_warps": 4})
print(json.dumps(results))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton's CUDA compiler ships for Linux only")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CUDA tests compile and run the kernels")
def test_cell_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 2
    assert all(r["shared"] <= 232448 for r in results), results  # 227 KiB per block on H100


def test_fp32_in_tf32_multiplies_rounded_operands():
    """The cell kernel follows cuBLAS's TF32 switch: with it on, its pre-activations are
    b + x W_ih^T + h W_hh^T of x, h and both weights rounded to TF32 (the weights in the
    kernel, kernels/_helpers.py gates_matmul with W_ROUNDED off) to fp32's precision, where
    unrounded weights are a TF32 ulp away. Odd sizes: B = 3, I = 5, H = 20."""
    from fusedrnn.kernels._helpers import tf32_rounded

    torch.backends.cuda.matmul.allow_tf32 = True  # restored by the conftest's TF32 fixture
    g = torch.Generator().manual_seed(0)
    B, I, H = 3, 5, 20
    x, h, c = torch.randn(B, I, generator=g), torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    w_ih, w_hh = torch.randn(4 * H, I, generator=g), torch.randn(4 * H, H, generator=g) * 0.3
    b_ih, b_hh = torch.randn(4 * H, generator=g), torch.randn(4 * H, generator=g)
    _, _, gates = K.lstm_cell_fwd(*(t.to(DEVICE) for t in (x, h, c, w_ih, w_hh, b_ih, b_hh)))
    r = {name: tf32_rounded(t).double() for name, t in (("x", x), ("h", h), ("w_ih", w_ih), ("w_hh", w_hh))}
    bias = b_ih.double() + b_hh.double()
    rounded = bias + r["x"] @ r["w_ih"].t() + r["h"] @ r["w_hh"].t()
    weights_unrounded = bias + r["x"] @ w_ih.double().t() + r["h"] @ w_hh.double().t()
    assert (gates.cpu().double() - rounded).abs().max() < 1e-5
    assert (weights_unrounded - rounded).abs().max() > 1e-4  # the two are told apart

"""One-layer LSTM (and RNN) throughput: fusedrnn's launch strategies against cuDNN and the reference loop.

Running (pytest-benchmark; the options are defined in bench/conftest.py)
-----------------------------------------------------------------------
    python -m pytest bench                    # CPU/CI: the "ci" grid once, untimed
    bash bench/run_bench.sh OUT quick         # CUDA: the quick grid into OUT/bench-quick.json
    bash bench/run_bench.sh OUT full 2/6      # CUDA: part 2 of 6 of the full grid

or by hand: ``python -m pytest bench --benchmark-enable --benchmark-json=OUT.json
--bench-grid={ci,quick,full,proj} [--bench-part=K/N] [--bench-tf32={on,off}]``. The grid defaults
to "quick" with CUDA and "ci" without. ``--bench-part=K/N`` keeps the K-th of N round-robin
slices of the cases (mode, dtype, T, B, H, P); every provider of a case stays in the same part,
so speedups are always computed within one run. The full grid takes longer than one ten-minute
run: split it into parts (e.g. 1/6 ... 6/6) and merge their JSON with ``bench/report.py merge``.

Grids. Input size I = H, one layer, time-major input, no initial state, no projection
(P = proj_size) but in the proj grid and one ci case.
- full: B in {1, 8, 32, 128, 512} x H in {256, 512, 1024, 2048} x T in {64, 512} x float32,
  bfloat16, float16 x both modes x every provider but per-step-eager; the two reference providers (Python loops
  over T) only at T=64 and B <= 128, to keep the time bounded: the other cases are not
  generated, so nothing is recorded for them.
- quick (for iterating): B in {8, 128} x H in {512, 2048}, T=512, bfloat16 and float32, the
  fusedrnn strategies, per-step without CUDA graphs, cuDNN and the barrier floor.
- proj (layers with a projection, bench/NOTES.md v1.3; not part of the targets): B in
  {8, 128, 512} x (H, P) in {(1024, 256), (2048, 512)}, T=512, bfloat16 and float32, the
  fusedrnn strategies and cuDNN (``torch.nn.LSTM(proj_size=P)``).
- rnn (the RNN, tanh, on the same kernels): B in {8, 128} x H in {512, 2048}, T=512,
  bfloat16 and float32, the fusedrnn strategies and cuDNN (``torch.nn.RNN``); not part of the
  targets. Each row's "cell" is its cell (kernels/cells.py), "lstm" elsewhere.
- smoke (bench/gpu_smoke.py's speed section, one short call): T=512, bfloat16 B in {8, 32, 128}
  x H in {512, 1024, 2048} and B=512, H=1024 (bench/NOTES.md v1.4's occupancy risk), float32 at (B, H) = (32, 1024) and (128, 2048), float16 at B=16,
  H=768 (FlashRNN's and cuDNN's published shape), the fusedrnn strategies, cuDNN and the
  barrier floor.
- ci: T=4, B=2, H=16 (and H=16, P=8 without the reference loops), float32, every provider;
  and the tanh RNN at H=16 (fusedrnn, cuDNN and the reference loop);
  with benchmarking disabled (pyproject's default) each case runs once, so the suite cannot
  rot. Providers that cannot run on CPU skip with the reason.

Modes: "inference" is the forward under ``torch.no_grad``; "training" is the forward and the
backward of ``(y * dy).sum()`` (dy random, fixed, y's shape) into the input and all parameters, by
``torch.autograd.grad`` so that no gradient is kept from one call to the next.

Providers
- fusedrnn-{auto,persistent,per-step,one-launch}: ``fusedrnn.LSTM(backend="triton")`` under
  ``fusedrnn.kernels.planner.launch_strategy(name)``; "auto" lets the launchers choose, the
  others force a strategy and skip where it cannot run the shape on this device
  (``StrategyUnavailable``). The row's "strategy" is the one that ran (``last_strategy()``).
  Per-step recurrences replay CUDA graphs of their launches once a call repeats
  (fusedrnn/kernels/step_graphs.py); each row's "cuda_graphs" counts the case's recurrences
  run eagerly, captured and replayed.
- fusedrnn-per-step-eager (quick grid, CI): per-step with CUDA graphs off
  (``step_graphs.enabled(False)``), the A/B of the graphs.
- cudnn: ``torch.nn.LSTM`` with the same weights (cuDNN on CUDA; torch's CPU LSTM in CI).
- reference-eager: ``fusedrnn.LSTM(backend="reference")``, the plain PyTorch loop (the two
  reference providers run layers without a projection only).
- reference-compile: the same loop with its step under ``torch.compile``. Compiling the
  whole module would unroll all T steps (minutes of compilation at T=512), so the input GEMM
  runs once up front as in the reference and a compiled step (recurrent product plus
  ``lstm_cell_update``) is called T times from Python. In CI (CPU) it compiles with the
  "aot_eager" backend: that checks the tracing in about a second, where inductor's C++
  compilation takes ~15 s cold on two cores.
- floor-barrier (inference only): the barrier-only kernel (empty body, one grid barrier per
  step) on the persistent kernel's grid for this shape: the floor of the persistent strategy.
  In CI it runs under the interpreter with one program per batch block, as the kernel does.

float32 and TF32: like for like. Under ``torch.backends.cudnn.allow_tf32`` (torch's default:
on) cuDNN's fp32 LSTM runs all its products in TF32, the input GEMM too. fusedrnn's recurrent
products follow the same switch (``kernel_config``), but its input and weight-gradient GEMMs
are torch matmuls, which follow ``torch.backends.cuda.matmul.allow_tf32`` (default off). So
every benchmark sets the matmul switch to the cuDNN switch for its duration: a float32 row
runs all products of both sides in TF32 (``tf32`` true) or all in IEEE float32 (false), never
a mix. ``--bench-tf32=on`` / ``off`` picks which; without it torch's default (on) stays. Each
row records ``tf32`` (cudnn.allow_tf32) and ``tf32_matmul`` (the matmul switch), equal.

Timer and memory (CUDA). After a warm-up call (which compiles), ``triton.testing.do_bench``
times the call with CUDA events (L2 flushed before each call, repetitions sized by the time
of a call, so slow providers get few) and ``time_ms`` is the median. ``benchmark.pedantic``
also runs three host-timed rounds for pytest-benchmark's own table; ``time_ms`` is the number
to report. ``peak_memory_bytes`` is the peak allocation of one more, separate call minus what
was allocated before it: the memory one call needs on top of inputs and weights. On CPU, and
with benchmarking disabled, the timing and memory keys are None.
"""

import contextlib
import itertools
import json
import os
from datetime import datetime, timezone

import pytest
import torch
import triton
import triton.testing

import fusedrnn
from fusedrnn.kernels import launch, planner
from fusedrnn.kernels import step_graphs
from fusedrnn.kernels.reference import lstm_cell_update
from fusedrnn.kernels.tuning import dtype_name

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

FUSEDRNN = ["fusedrnn-auto", "fusedrnn-persistent", "fusedrnn-per-step", "fusedrnn-one-launch"]
PER_STEP_EAGER = "fusedrnn-per-step-eager"  # per-step without CUDA graphs: their A/B
SLOW = ["reference-compile", "reference-eager"]  # a Python loop over T
PROVIDERS = [*FUSEDRNN, PER_STEP_EAGER, "cudnn", *SLOW, "floor-barrier"]
MODES = ["inference", "training"]
SLOW_MAX_T, SLOW_MAX_B = 64, 128

GRIDS = {  # layers: (H, P), P the projection size or None
    "full": dict(
        T=(64, 512), B=(1, 8, 32, 128, 512), layers=[(H, None) for H in (256, 512, 1024, 2048)],
        dtypes=(torch.float32, torch.bfloat16, torch.float16), providers=[p for p in PROVIDERS if p != PER_STEP_EAGER],
    ),
    "quick": dict(
        T=(512,), B=(8, 128), layers=[(512, None), (2048, None)],
        dtypes=(torch.bfloat16, torch.float32), providers=[*FUSEDRNN, PER_STEP_EAGER, "cudnn", "floor-barrier"],
    ),
    "proj": dict(
        T=(512,), B=(8, 128, 512), layers=[(1024, 256), (2048, 512)],
        dtypes=(torch.bfloat16, torch.float32), providers=[*FUSEDRNN, "cudnn"],
    ),
    "ci": dict(T=(4,), B=(2,), layers=[(16, None), (16, 8)], dtypes=(torch.float32,), providers=PROVIDERS,
               cells=("lstm", "rnn_tanh", "gru")),
    "rnn": dict(
        T=(512,), B=(8, 128), layers=[(512, None), (2048, None)], cells=("rnn_tanh",),
        dtypes=(torch.bfloat16, torch.float32), providers=[*FUSEDRNN, "cudnn"],
    ),
    "gru": dict(  # cuDNN's GRU: PyTorch never picks its persistent algorithm for one (issue 21)
        T=(512,), B=(8, 128), layers=[(512, None), (2048, None)], cells=("gru",),
        dtypes=(torch.bfloat16, torch.float32), providers=[*FUSEDRNN, "cudnn"],
    ),
    # bench/gpu_smoke.py's speed section: listed shapes (cell, dtype, B, H, P), not a cross
    # product; the RNN's and GRU's against cuDNN's nn.RNN and nn.GRU at three of the LSTM's
    "smoke": dict(
        T=(512,), providers=[*FUSEDRNN, "cudnn", "floor-barrier"],
        shapes=[("lstm", torch.bfloat16, B, H, None) for B in (8, 32, 128) for H in (512, 1024, 2048)]
        + [("lstm", torch.bfloat16, 512, 1024, None), ("lstm", torch.float32, 32, 1024, None),
           ("lstm", torch.float32, 128, 2048, None), ("lstm", torch.float16, 16, 768, None)]
        + [(cell, dtype, B, H, None) for cell in ("rnn_tanh", "gru")
           for dtype, B, H in ((torch.bfloat16, 8, 1024), (torch.bfloat16, 128, 2048), (torch.float32, 32, 1024))],
    ),
}  # fmt: skip

RUN_START = datetime.now(timezone.utc)
ENVIRONMENT = dict(
    gpu=torch.cuda.get_device_name() if HAS_CUDA else "cpu",
    sm_count=torch.cuda.get_device_properties(DEVICE).multi_processor_count if HAS_CUDA else None,
    torch=torch.__version__,
    triton=triton.__version__,
    cuda=torch.version.cuda,
    cudnn=torch.backends.cudnn.version(),
    fusedrnn=fusedrnn.__version__,
    commit=os.environ.get("FUSEDRNN_COMMIT") or None,  # set by bench/gpu_check.sh
    date=RUN_START.isoformat(timespec="seconds"),
    run_id=RUN_START.strftime("%Y%m%dT%H%M%SZ"),
    timer="cuda-events" if HAS_CUDA else None,
)


def cases(grid):
    """The parameters (cell, mode, dtype, T, B, H, P, provider) of a grid, providers innermost."""
    g = GRIDS[grid]
    shapes = g.get("shapes") or [(cell, dtype, B, H, P) for cell in g.get("cells", ("lstm",)) for dtype in g["dtypes"]
                                 for B in g["B"] for H, P in g["layers"]]  # fmt: skip
    for mode, (cell, dtype, B, H, P), T, provider in itertools.product(MODES, shapes, g["T"], g["providers"]):
        if provider == "floor-barrier" and mode != "inference":
            continue
        # compiled_reference has no projection; the loops are timed for the targets, which have none
        if provider in SLOW and (T > SLOW_MAX_T or B > SLOW_MAX_B or P is not None):
            continue
        # The RNN: no projection, and the LSTM's compiled loop and barrier floor are the LSTM's
        if cell != "lstm" and (P is not None or provider in ("reference-compile", "floor-barrier")):
            continue
        layer = f"H{H}" + (f"-P{P}" if P is not None else "")
        prefix = "" if cell == "lstm" else f"{cell}-"  # the LSTM's ids as before
        yield pytest.param(cell, mode, dtype, T, B, H, P, provider,
                           id=f"{prefix}{mode}-{dtype_name(dtype)}-T{T}-B{B}-{layer}-{provider}")  # fmt: skip


def pytest_generate_tests(metafunc):
    grid = metafunc.config.getoption("bench_grid")
    metafunc.parametrize("cell,mode,dtype,T,B,H,P,provider", list(cases(grid)))


def _reference_step(gx_t, h, c, w_hh_t):
    """One step of ``lstm_reference``: recurrent product, gates and c in fp32, h in x's dtype."""
    h_new, c = lstm_cell_update(gx_t.float() + h.float() @ w_hh_t, c)
    return h_new.to(gx_t.dtype), c


def compiled_reference(module):
    """forward(x) -> y of the reference loop with its step compiled (module docstring)."""
    # Each case compiles afresh, or dynamo's per-function recompile limit (one compilation
    # per shape, dtype and grad mode) would silently run later cases eagerly.
    torch._dynamo.reset()
    step = torch.compile(_reference_step, dynamic=False, backend="inductor" if HAS_CUDA else "aot_eager")

    def forward(x):
        T, B, _ = x.shape
        gx = x @ module.weight_ih_l0.t() + (module.bias_ih_l0 + module.bias_hh_l0)
        w_hh_t = module.weight_hh_l0.float().t()
        h = x.new_zeros(B, module.hidden_size)
        c = x.new_zeros(B, module.hidden_size, dtype=torch.float32)
        outputs = []
        for t in range(T):
            h, c = step(gx[t], h, c, w_hh_t)
            outputs.append(h)
        return torch.stack(outputs)

    return forward


def build(provider, T, B, H, P, dtype, cell="lstm"):
    """``forward(x) -> y`` and the parameters it trains; every module has the same weights."""
    if provider == "floor-barrier":
        barriers = launch.barrier_floor(T, B, H, dtype, DEVICE, P=P)
        return (lambda x: barriers()), []
    torch.manual_seed(0)
    if cell == "lstm":
        layer = dict(proj_size=P or 0, device=DEVICE, dtype=dtype)
        torch_module, ours = torch.nn.LSTM, fusedrnn.LSTM
    elif cell == "gru":
        layer = dict(device=DEVICE, dtype=dtype)
        torch_module, ours = torch.nn.GRU, fusedrnn.GRU
    else:
        layer = dict(nonlinearity=cell.removeprefix("rnn_"), device=DEVICE, dtype=dtype)
        torch_module, ours = torch.nn.RNN, fusedrnn.RNN
    if provider == "cudnn":
        module = torch_module(H, H, **layer)
    else:
        backend = "reference" if provider in SLOW else "triton"
        module = ours(H, H, backend=backend, **layer)
    forward = compiled_reference(module) if provider == "reference-compile" else (lambda x: module(x)[0])
    return forward, list(module.parameters())


def make_call(mode, forward, x, parameters, out_features):
    """One benchmarked call of ``mode``; the output has ``out_features`` (H, or P)."""
    if mode == "inference":

        def call():
            with torch.no_grad():
                forward(x)

        return call

    inputs = [x, *parameters]
    dy = x.new_empty(*x.shape[:2], out_features).normal_()

    def call():
        torch.autograd.grad(forward(x), inputs, dy)  # returned, not accumulated into .grad

    return call


def measure(call):
    """Median ms per call by CUDA events, and the extra memory of one call (module docstring)."""
    time_ms = triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return time_ms, torch.cuda.max_memory_allocated() - before


def launch_settings(provider):
    """The strategy a fusedrnn provider forces (None for the others) and the context that
    forces it, with CUDA graphs of the per-step launches off for PER_STEP_EAGER."""
    if provider == PER_STEP_EAGER:
        settings = contextlib.ExitStack()
        settings.enter_context(planner.launch_strategy("per-step"))
        settings.enter_context(step_graphs.enabled(False))
        return "per-step", settings
    if provider in FUSEDRNN:
        strategy = provider.removeprefix("fusedrnn-")
        return strategy, planner.launch_strategy(strategy)
    return None, contextlib.nullcontext()


def test_lstm(benchmark, cell, mode, dtype, T, B, H, P, provider):
    strategy, settings = launch_settings(provider)
    # Like for like in float32 (module docstring); bench/conftest.py's tf32 fixture restores it.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    time_ms = peak_memory_bytes = None
    graph_counts = dict(step_graphs.cache.counts)
    # The strategy holds for the whole case: warm-up, timing, memory and the backward.
    with settings:
        try:
            forward, parameters = build(provider, T, B, H, P, dtype, cell)
            x = torch.randn(T, B, H, device=DEVICE, dtype=dtype, requires_grad=mode == "training")
            call = make_call(mode, forward, x, parameters, P or H)
            call()  # warm-up and compilation; a forced strategy that cannot run the shape raises
        except planner.StrategyUnavailable as err:
            pytest.skip(f"{provider} cannot run {cell} T={T} B={B} H={H} P={P} {dtype_name(dtype)} here: {err}")
        ran = planner.last_strategy() if strategy is not None else None
        if HAS_CUDA and not benchmark.disabled:
            time_ms, peak_memory_bytes = measure(call)

        def synced_call():
            call()
            if HAS_CUDA:
                torch.cuda.synchronize()

        benchmark.pedantic(synced_call, rounds=3, iterations=1)  # runs once when disabled (CI)

    benchmark.extra_info.update(
        provider=provider, strategy=ran, cell=cell, mode=mode, T=T, B=B, I=H, H=H, P=P, dtype=dtype_name(dtype),
        tf32=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32, **ENVIRONMENT,
        time_ms=time_ms,
        us_per_step=time_ms * 1e3 / T if time_ms is not None else None,
        tokens_per_s=T * B / (time_ms / 1e3) if time_ms is not None else None,
        peak_memory_bytes=peak_memory_bytes,
        cuda_graphs={k: v - graph_counts[k] for k, v in step_graphs.cache.counts.items()},
    )  # fmt: skip
    if os.environ.get("FUSEDRNN_BENCH_ROWS"):  # bench/gpu_smoke.py: each row as it is measured
        with open(os.environ["FUSEDRNN_BENCH_ROWS"], "a") as rows:
            rows.write(json.dumps(benchmark.extra_info, default=str) + "\n")

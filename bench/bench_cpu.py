"""CPU throughput: fusedrnn.LSTM (and fusedrnn.RNN) on CPU (``backend="auto"``: torch's own
CPU op) and the reference loop against torch.nn.LSTM (torch.nn.RNN), same weights, one
machine, one run.

Running (pytest-benchmark; the options are defined in bench/conftest.py)
-----------------------------------------------------------------------
    python -m pytest bench/bench_cpu.py                 # CI: the "ci" grid once, untimed
    python -m pytest bench/bench_cpu.py --benchmark-enable --cpu-grid=measured \\
        --benchmark-json=bench/results/cpu/<cpu model>-<date>.json

``--cpu-threads N`` (default 1, as the issue measured) sets ``torch.set_num_threads`` for the
run; rows record it with the CPU's model and core count. ``--cpu-cell`` picks the cell of the
timed grids (``lstm``, the default, ``rnn_tanh``/``rnn_relu``: fusedrnn.RNN against
torch.nn.RNN, RNNCell against nn.RNNCell, or ``gru``: GRU and GRUCell; kernels/cells.py's names); each row records its
``cell``. The ci grid runs every cell.

Grids (I = H, time-major, inference under ``no_grad`` and training = forward + backward into
the input and every parameter, as bench_lstm.py's modes):
- full: issue 19's, B in {1, 8, 32, 128} x H in {64, 256, 512, 1024} x T in {16, 128, 1024},
  float32, bfloat16 and float64, one layer; plus the layer kinds below. At one thread its
  largest training call (T = 1024, B = 128, H = 1024: about 3 TFLOP) takes about a minute:
  hours in all on a 2-core machine.
- measured (what bench/results/cpu/ holds): B in {1, 8, 32, 128} x H in {64, 256, 512} x
  T in {16, 128}, H = 1024 at T in {16, 128} x B in {1, 8, 32} and at T = 16, B = 128,
  T = 1024 at B in {1, 8} x H in {64, 256} (time linear in T), the three dtypes, and the
  layer kinds: the full grid less its calls of more than a few seconds.
- long: T in {1000, 4000}, B = 8, H = 64, and T = 20000, B = 2, H = 32, float32, one layer,
  every provider (the reference too: its backward was quadratic in T, T = 1000 -> 4000 20x as
  long, and at T = 20000 its peak memory was 6x torch's); run it with ``--cpu-memory``.
- ci: T = 4, B = 2, H = 8, float32, every kind and provider, untimed.
Layer kinds, at (T, B, H) in {(128, 8, 256), (128, 32, 512)}: "stacked-bidirectional"
(2 layers, both directions), "projection" (proj_size = H / 4; the LSTM only), "packed" (a PackedSequence of
unsorted random lengths), "lengths" (fusedrnn's ``lengths=``; torch: pack -> LSTM -> pad,
what a torch user writes for the same result), and "cell" (torch.nn.LSTMCell against
fusedrnn.LSTMCell, stepped T times from Python, at (T, B, H) in CELL_SHAPES: the per-call
overhead shows there).

Providers: "torch" (torch.nn.LSTM), "fusedrnn-auto" (fusedrnn.LSTM, default backend),
"reference-eager" (fusedrnn.LSTM(backend="reference"), the tests' oracle: a Python loop over
T, so only where T * B * H^2 <= REFERENCE_MAX_WORK and float32/float64).

Timer: ``time.perf_counter`` around each call (pytest-benchmark's pedantic rounds): one
warm-up call, then enough rounds for ROUND_BUDGET_S (at least 5, at most 50); ``time_ms`` is
the fastest round, ``median_ms`` the median. The fastest, because whatever else the machine
does only ever slows a call down. The fusedrnn and reference rows also time torch.nn.LSTM on
the same input between their own rounds (pytest-benchmark's untimed setup), ``torch_ms``: the
speedup is taken from these interleaved pairs, since rows of two providers measured one after
the other differed by up to 40% on this shared 2-core machine even for the same op.

Peak memory (``--cpu-memory``, Linux): ``peak_mib``, the resident memory one call adds at its
peak, after the timed rounds: free heap returned (``malloc_trim``), the kernel's high-water
mark reset (``/proc/self/clear_refs``), the call, then ``VmHWM`` less the resident size
before. With the option the run fixes glibc's mmap threshold at 64 KiB (``mallopt``), so
every large tensor is mapped and unmapped on its own: otherwise the threshold rises with
each freed block and the same call measured 45.8-53.5 MiB. Both providers of a pair run
under that setting.
"""

import ctypes
import gc
import os
import platform
import time
from datetime import datetime, timezone

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn.kernels.cells import torch_layer
from fusedrnn.kernels.tuning import dtype_name

PROVIDERS = ["torch", "fusedrnn-auto", "reference-eager"]
CELLS = ["lstm", "rnn_tanh", "rnn_relu", "gru"]  # kernels/cells.py's names
MODES = ["inference", "training"]
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
KINDS = ["layer", "stacked-bidirectional", "projection", "packed", "lengths", "cell"]
KIND_SHAPES = [(128, 8, 256), (128, 32, 512)]  # (T, B, H) of the LSTM kinds other than "layer"
CELL_SHAPES = [(16, 1, 64), (16, 8, 256), (16, 32, 512)]  # the cell stepped T times from Python
REFERENCE_MAX_WORK = 128 * 32 * 256**2  # T * B * H^2: the loop's slowest cases take seconds
ROUND_BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = 1.0, 5, 50


def _layer_shapes(grid):
    if grid == "long":  # issue 19's quadratic case (T = 1000 -> 4000 took 20x as long), and its memory case
        return [(T, 8, 64) for T in (1000, 4000)] + [(20000, 2, 32)]
    if grid == "full":
        return [(T, B, H) for T in (16, 128, 1024) for B in (1, 8, 32, 128) for H in (64, 256, 512, 1024)]
    if grid == "measured":
        shapes = [(T, B, H) for T in (16, 128) for B in (1, 8, 32, 128) for H in (64, 256, 512)]
        shapes += [(T, B, 1024) for T in (16, 128) for B in (1, 8, 32)] + [(16, 128, 1024)]
        return shapes + [(1024, B, H) for B in (1, 8) for H in (64, 256)]
    return [(4, 2, 8)]


def cases(grid, cell=None):
    """(cell, mode, dtype, kind, T, B, H, provider), providers innermost. ``cell`` None: every
    cell in the ci grid, the LSTM in the others."""
    cells = [cell] if cell else CELLS if grid == "ci" else ["lstm"]
    dtypes = DTYPES if grid in ("full", "measured") else (torch.float32,)
    shapes = [("layer", *shape) for shape in _layer_shapes(grid)]
    if grid != "long":
        shapes += [(kind, *shape) for kind in KINDS[1:-1] for shape in (KIND_SHAPES if grid != "ci" else [(4, 2, 8)])]
        shapes += [("cell", *shape) for shape in (CELL_SHAPES if grid != "ci" else [(4, 2, 8)])]
    for cell in cells:
        for mode in MODES:
            for dtype in dtypes:
                for kind, T, B, H in shapes:
                    if kind == "projection" and cell != "lstm":
                        continue
                    for provider in PROVIDERS:
                        slow = T * B * H * H > REFERENCE_MAX_WORK or dtype == torch.bfloat16
                        if provider == "reference-eager" and slow and grid not in ("ci", "long"):
                            continue
                        prefix = "" if cell == "lstm" else f"{cell}-"  # the LSTM's ids as before
                        name = f"{prefix}{mode}-{dtype_name(dtype)}-{kind}-T{T}-B{B}-H{H}-{provider}"
                        yield pytest.param(cell, mode, dtype, kind, T, B, H, provider, id=name)


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        grid, cell = metafunc.config.getoption("cpu_grid"), metafunc.config.getoption("cpu_cell")
        metafunc.parametrize("cell,mode,dtype,kind,T,B,H,provider", list(cases(grid, cell)))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RUN_START = datetime.now(timezone.utc)
ENVIRONMENT = dict(
    cpu=cpu_model(), cpu_count=os.cpu_count(), torch=torch.__version__, fusedrnn=fusedrnn.__version__,
    python=platform.python_version(), date=RUN_START.isoformat(timespec="seconds"),
    run_id=RUN_START.strftime("%Y%m%dT%H%M%SZ"), timer="perf_counter",
)  # fmt: skip


def build(provider, kind, H, dtype, cell="lstm"):
    """The provider's module: torch's (nn.LSTM, nn.RNN, nn.GRU or their cells) or fusedrnn's."""
    torch.manual_seed(0)
    library = torch.nn if provider == "torch" else fusedrnn
    options = dict(dtype=dtype)
    if provider != "torch":
        options.update(backend="auto" if provider == "fusedrnn-auto" else "reference")
    if cell.startswith("rnn_"):
        options.update(nonlinearity=cell.removeprefix("rnn_"))
    layer_class = torch_layer(cell)
    cell_class = layer_class + "Cell"
    if kind == "cell":
        return getattr(library, cell_class)(H, H, **options)
    if kind == "projection":
        options.update(proj_size=H // 4)
    if kind == "stacked-bidirectional":
        options.update(num_layers=2, bidirectional=True)
    return getattr(library, layer_class)(H, H, **options)


def make_forward(module, provider, kind, T, B):
    """forward(x) -> the output tensor, for the kind's input: padded, packed, or with lengths."""
    if kind == "cell":
        lstm = isinstance(module, (torch.nn.LSTMCell, fusedrnn.LSTMCell))

        def steps(x):
            state, outputs = None, []
            for x_t in x.unbind(0):
                state = module(x_t, state)
                outputs.append(state[0] if lstm else state)  # (h, c), or the RNN's h
            return torch.stack(outputs)

        return steps
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(1))
    lengths[0] = T
    if kind == "packed":
        return lambda x: module(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data
    if kind == "lengths" and provider == "torch":
        return lambda x: pad_packed_sequence(module(pack_padded_sequence(x, lengths, enforce_sorted=False))[0],
                                             total_length=T)[0]  # fmt: skip
    if kind == "lengths":
        return lambda x: module(x, lengths=lengths)[0]
    return lambda x: module(x)[0]


M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD = -3, 64 * 1024  # glibc's mallopt parameter, and its value here


def _libc():
    return ctypes.CDLL("libc.so.6")


def fix_mmap_threshold():
    if not _libc().mallopt(M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: peak memory needs glibc")


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mib(call):
    """Resident memory ``call()`` adds at its peak, in MiB (the module docstring says how)."""
    gc.collect()
    _libc().malloc_trim(0)
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    call()
    return _status_mib("VmHWM") - before


def make_call(mode, forward, x, parameters):
    if mode == "inference":

        def call():
            with torch.no_grad():
                forward(x)

        return call
    inputs = [x, *parameters]
    dy = None

    def call():
        nonlocal dy
        y = forward(x)
        if dy is None:
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.dtype)
        torch.autograd.grad(y, inputs, dy)

    return call


@pytest.fixture(scope="session", autouse=True)
def memory_setting(request):
    if request.config.getoption("cpu_memory"):
        fix_mmap_threshold()


@pytest.fixture(autouse=True)
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("cpu_threads"))
    yield
    torch.set_num_threads(saved)


def test_cpu(benchmark, request, cell, mode, dtype, kind, T, B, H, provider):
    module = build(provider, kind, H, dtype, cell)
    x = torch.randn(T, B, H, dtype=dtype, requires_grad=mode == "training")
    call = make_call(mode, make_forward(module, provider, kind, T, B), x, list(module.parameters()))
    peer_times, setup = [], None
    if provider != "torch":  # torch's module interleaved with this provider's rounds
        peer = build("torch", kind, H, dtype, cell)
        peer_call = make_call(mode, make_forward(peer, "torch", kind, T, B), x, list(peer.parameters()))
        peer_call()  # warm-up

        def setup():
            start = time.perf_counter()
            peer_call()
            peer_times.append(time.perf_counter() - start)

    start = time.perf_counter()
    call()  # warm-up
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(time.perf_counter() - start, 1e-6))))
    benchmark.pedantic(call, setup=setup, rounds=1 if benchmark.disabled else rounds, iterations=1)
    stats = None if benchmark.disabled else benchmark.stats.stats
    peak_mib = peak_memory_mib(call) if request.config.getoption("cpu_memory") else None
    time_ms, median_ms = (stats.min * 1e3, stats.median * 1e3) if stats else (None, None)
    stepped = kind == "cell"
    benchmark.extra_info.update(
        provider=provider, cell=cell, mode=mode, kind=kind, T=T, B=B, I=H, H=H,
        P=None if stepped else getattr(module, "proj_size", 0) or None,
        layers=1 if stepped else module.num_layers, bidirectional=False if stepped else module.bidirectional,
        dtype=dtype_name(dtype),
        threads=torch.get_num_threads(), **ENVIRONMENT, time_ms=time_ms, median_ms=median_ms,
        torch_ms=min(peer_times) * 1e3 if peer_times and stats else None,
        us_per_step=time_ms * 1e3 / T if time_ms is not None else None,
        tokens_per_s=T * B / (time_ms / 1e3) if time_ms is not None else None, peak_mib=peak_mib,
    )  # fmt: skip

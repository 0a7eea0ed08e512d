"""The one-call GPU check: everything decisive about the kernels in one command of at most
9 minutes on a fresh H100/H200 (bench/NOTES.md, "The one-call GPU check").

    python bench/gpu_smoke.py OUT_DIR --commit HASH [--sections env,barrier,...]
        [--select SECTION=EXPR ...] [--cap [SECTION=]SECONDS ...] [--tiny]

Sections, in order of priority, each in its own process under its own time cap, so that a
device-side assert, a crash or a hang in one leaves the others running, and a section
stopped at its cap still leaves the rows it finished:

1. env: GPU, SMs, registers and shared memory per SM, driver, torch, CUDA, cuDNN, Triton,
   the commit (passed in: the device's checkout has no .git).
2. barrier: the grid barrier alone on cooperative grids of 8 to 132 programs and on several
   batch blocks: counters exact, error word 0, microseconds per barrier; a barrier that
   never fills reports its error word instead of hanging; a grid larger than the GPU holds
   is refused by the driver.
3. correct: every strategy (one-launch where it applies, persistent, per-step with and
   without CUDA graphs, auto) on grids the test suite never reaches, in bf16, fp16, fp32
   with TF32 and IEEE, forward and every gradient against a float64 reference computed on
   the GPU and against cuDNN in the same dtype, with the tests' three-way bound; the LSTM's
   cases, six of the RNN's (tanh and relu, against cuDNN's nn.RNN) and six of the GRU's
   (against nn.GRU, one with H not a multiple of 4). Persistent
   runs twice and must be bitwise equal; per-step with graphs runs three times (eager,
   captured, replayed) and must equal the eager run bitwise. Cases are shared out over
   worker processes (compiling is CPU-bound); a worker that dies is restarted after the
   case it was running.
4. tests: the test suite on CUDA in parallel shards (bench/run_tests_sharded.sh) under a
   time cap, each failure by name.
5. speed: bench/bench_lstm.py's "smoke" grid (T = 512, inference and training), alone,
   and the table of cuDNN time / fusedrnn time.

Output (at most 8 files, what the device tool returns): OUT_DIR/gpu-smoke.tar.gz (every
section's JSON lines, logs and files, packed after each section), OUT_DIR/gpu-smoke.log
(the console), OUT_DIR/summary.json (per section: status, seconds, rows, failures, and the
kernels its processes built and found in Triton's cache). Each section's builds are logged in
compiles-<section>.jsonl (kernels/aot.py), from which bench/prebuild_cache.py fills a Triton
cache on a CPU for the next GPU run.
Unpack with ``tar -xzf gpu-smoke.tar.gz -C bench/results/<gpu>-<date>-smoke/``.

``--tiny`` (CPU, TRITON_INTERPRET=1; bench/test_gpu_smoke.py in CI) runs every section on
tiny shapes, with one program per barrier, so the script cannot rot.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SECTIONS = ("env", "barrier", "correct", "tests", "speed")
# Seconds per section on a GPU (bench/NOTES.md estimates each): 510 in all, inside a
# 9-minute command with a minute to spare for the install and the packing.
CAPS = dict(env=20, barrier=40, correct=180, tests=130, speed=140)
TINY_CAPS = dict(env=60, barrier=60, correct=300, tests=240, speed=240)
CORRECT_WORKERS = 8  # processes compiling and checking cases side by side (4 reached 28 of 44 cases in 150 s)
TEST_SHARDS = 8
# The command a session gives the device tool: one line, from the repository root.
# `python -m pip`, not `pip`: on the H200 image `pip` is the system Python's, so the
# package landed where the venv's python never looked and every section failed on its
# import (2026-12-04).
ONE_LINE = (
    'python -m pip install -q --no-deps --no-build-isolation -e . && python bench/gpu_smoke.py "$OUT" --commit HASH'
)
EPILOG = f"""The one-line command for the device tool (HASH: `git rev-parse HEAD` of the checkout
it copies, which has no .git there):

  {ONE_LINE}

Then unpack OUT/gpu-smoke.tar.gz under bench/results/<gpu>-<date>-smoke/, commit it, and
render the report (python bench/report.py render --readme README.md)."""


# ----------------------------------------------------------------------------------------
# Rows: one JSON object a line, flushed as it is written, so a killed section keeps them.


class Rows:
    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, **row):
        self.file.write(json.dumps(row, default=str) + "\n")
        self.file.flush()
        return row


def read_rows(path):
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut off by a kill
                pass
    return rows


def _hang_here(section):
    """Test hook (bench/test_gpu_smoke.py): FUSEDRNN_SMOKE_HANG=<section> stops that section
    after its first row, as a hung kernel would."""
    if os.environ.get("FUSEDRNN_SMOKE_HANG") == section:
        time.sleep(3600)


def _cuda():
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------
# 1. env


def section_env(args, emit):
    import platform

    import numpy
    import torch
    import triton

    import fusedrnn

    row = dict(
        kind="env", commit=args.commit, python=platform.python_version(), torch=torch.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), triton=triton.__version__,
        numpy=numpy.__version__, fusedrnn=fusedrnn.__version__, cpus=os.cpu_count(),
        interpreted=os.environ.get("TRITON_INTERPRET") == "1", date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        compile_log=os.environ.get(COMPILE_LOG_ENV), triton_cache=os.environ.get("TRITON_CACHE_DIR"),
    )  # fmt: skip
    if _cuda():
        props = torch.cuda.get_device_properties(0)
        row.update(
            gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
            regs_per_sm=getattr(props, "regs_per_multiprocessor", None),
            shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", None),
            shared_per_block_optin=getattr(props, "shared_memory_per_block_optin", None),
            threads_per_sm=getattr(props, "max_threads_per_multi_processor", None),
            l2_bytes=getattr(props, "L2_cache_size", None), memory_bytes=props.total_memory,
            driver=_driver_version(),
        )  # fmt: skip
    else:
        row.update(gpu="cpu")
    emit(**row)
    _hang_here("env")
    print(json.dumps(row, indent=1))


def _driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------
# 2. barrier

# A bounded spin for every launch of this script: about a second on a GPU (a poll is an L2
# round trip), so a barrier that never fills reports rather than hangs, and never asserts.
SMOKE_SPINS = 1 << 20


def section_barrier(args, emit):
    import torch

    from fusedrnn.kernels import barrier

    cuda = _cuda()
    device = "cuda" if cuda else "cpu"
    # (batch blocks, programs per batch block). The interpreter runs programs one after
    # another: there a barrier holds one program per batch block.
    grids = [(1, 8), (1, 32), (1, 64), (1, 128), (1, 132), (2, 64), (4, 33)] if cuda else [(1, 1), (3, 1)]
    steps = 1000 if cuda else 3
    sms = torch.cuda.get_device_properties(0).multi_processor_count if cuda else None
    ok = True
    for n_b, n_u in grids:
        if sms is not None and n_b * n_u > sms:
            emit(kind="barrier", grid=[n_b, n_u], skipped=f"more programs than the {sms} SMs")
            continue
        times, exact, errors = [], True, []
        for _ in range(5 if cuda else 1):
            sync = torch.zeros(n_b + 1, dtype=torch.int32, device=device)
            start, end = _events(cuda)
            barrier.barrier_floor_kernel[(n_b, n_u)](sync, steps, SMOKE_SPINS, launch_cooperative_grid=True, num_warps=4)
            us = _elapsed_us(start, end, cuda)
            counts = sync.tolist()
            exact &= counts[:-1] == [steps * n_u] * n_b
            errors.append(counts[-1])
            times.append(us / steps if us is not None else None)
        good = exact and not any(errors)
        ok &= good
        # The first launch compiles (on a GPU the first call is not timed: its time is host work)
        timed = sorted(t for t in times[1:] if t is not None)
        emit(kind="barrier", grid=[n_b, n_u], programs=n_b * n_u, steps=steps, counters_exact=exact,
             error_words=errors, us_per_barrier=timed[len(timed) // 2] if timed else None, ok=good)  # fmt: skip
        _hang_here("barrier")

    # A barrier one arrival short (counter primed at -1) never fills: the error word, no hang.
    sync = torch.tensor([-1, 0], dtype=torch.int32, device=device)
    barrier.barrier_floor_kernel[(1, 1)](sync, 3, 1000)
    counts = sync.tolist()
    good = counts == [2, 1]
    ok &= good
    emit(kind="barrier-timeout", counts=counts, expected=[2, 1], ok=good)

    if cuda:  # far more programs than can be resident: the driver must refuse, not hang
        grid = (64, sms)
        sync = torch.zeros(grid[0] + 1, dtype=torch.int32, device=device)
        try:
            barrier.barrier_floor_kernel[grid](sync, 2, 1 << 12, launch_cooperative_grid=True, num_warps=4)
            torch.cuda.synchronize()
            outcome, good = f"ran: counters {sync.tolist()[:3]}..., error word {sync.tolist()[-1]}", False
        except Exception as err:  # noqa: BLE001: Triton's launcher raises the driver's refusal as it likes
            outcome, good = f"refused: {type(err).__name__}: {err}", "cooperative" in str(err)
        ok &= good
        emit(kind="barrier-oversized", grid=list(grid), outcome=outcome, ok=good)
    print("barrier: ok" if ok else "barrier: FAILED")


def _events(cuda):
    import torch

    if not cuda:
        return None, None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    return start, end


def _elapsed_us(start, end, cuda):
    import torch

    if not cuda:
        return None
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3


# ----------------------------------------------------------------------------------------
# 3. correct


def correct_cases(tiny):
    """(name, settings) of every case, in a fixed order (workers take every n-th)."""
    cases = []

    def add(dtype, B, H, T=32, I=None, P=0, L=1, bidirectional=False, packed=False, cell="lstm"):
        name = ("" if cell == "lstm" else f"{cell}-") + f"{dtype}-T{T}-B{B}-I{I or H}-H{H}"
        name += (f"-P{P}" if P else "") + (f"-L{L}" if L > 1 else "")
        name += ("-bi" if bidirectional else "") + ("-packed" if packed else "")
        cases.append(dict(name=name, dtype=dtype, T=T, B=B, I=I or H, H=H, P=P, L=L, bidirectional=bidirectional,
                          packed=packed, cell=cell))  # fmt: skip

    if tiny:
        for dtype in ("bf16", "fp32-ieee"):
            add(dtype, 3, 20, T=4, I=5)
        add("fp32-ieee", 17, 40, T=3, I=6)  # two batch blocks, several unit blocks per step
        add("fp32-tf32", 4, 24, T=3, I=8, P=12, L=2, bidirectional=True, packed=True)
        add("fp32-ieee", 3, 20, T=4, I=5, cell="rnn_relu")
        add("fp32-ieee", 3, 20, T=4, I=5, cell="gru")
        return cases
    # Per dtype, shapes that reach every barrier size from 16 to 128 programs (persistent: B
    # rows in blocks of up to 64, units in blocks of 16) and a one-launch shape (H <= 128).
    shapes = [(1, 256), (8, 1024), (32, 512), (100, 1024), (128, 2048), (32, 2048), (8, 128)]
    for dtype in ("bf16", "fp16", "fp32-tf32", "fp32-ieee"):
        for B, H in shapes:
            add(dtype, B, H)
    for dtype in ("bf16", "fp32-ieee"):
        add(dtype, 32, 1024, P=256)  # a projection: two phases a step
        add(dtype, 16, 256, I=96, L=2, bidirectional=True, packed=True)
    # The RNN on the same kernels, against cuDNN's nn.RNN: persistent with held weights, the
    # widest streamed shape, a packed bidirectional stack.
    for dtype in ("bf16", "fp32-ieee"):
        add(dtype, 8, 1024, cell="rnn_tanh")
        add(dtype, 128, 2048, cell="rnn_relu")
        add(dtype, 16, 256, I=96, L=2, bidirectional=True, packed=True, cell="rnn_tanh")
    # The GRU, against cuDNN's nn.GRU: the same three shapes, and H not a multiple of 4 (where
    # cuDNN's GRU backward failed, pytorch issue 54307).
    for dtype in ("bf16", "fp32-ieee"):
        add(dtype, 8, 1024, cell="gru")
        add(dtype, 128, 2048, cell="gru")
        add(dtype, 16, 254, I=96, L=2, bidirectional=True, packed=True, cell="gru")
    return cases


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32-tf32": "float32", "fp32-ieee": "float32"}
# (name, strategy forced, CUDA graphs on, runs that must be bitwise equal)
STRATEGY_RUNS = [
    ("one-launch", "one-launch", True, 1),
    ("persistent", "persistent", True, 2),
    ("per-step-eager", "per-step", False, 1),
    ("per-step", "per-step", True, 3),
    ("auto", "auto", True, 1),
]


def section_correct(args, emit):
    from fusedrnn.kernels import barrier

    # A timed-out barrier raises after about a second, in this process, as in the tests.
    barrier.BARRIER_ERROR_CHECK, barrier.BARRIER_MAX_SPINS = "host", SMOKE_SPINS
    cases = correct_cases(args.tiny)
    chosen = re.compile(args.select.get("correct", ""))
    k, n = args.part
    for index, case in enumerate(cases):
        if index % n != k - 1 or index <= args.resume_after or not chosen.search(case["name"]):
            continue
        emit(kind="case-start", index=index, case=case["name"])
        if os.environ.get("FUSEDRNN_SMOKE_CRASH") == str(index):  # test hook: a worker dies mid-case
            os._exit(3)
        try:
            check_case(case, emit, index)
        except Exception as err:  # noqa: BLE001: the row says what and where; the next case runs
            if _context_lost(err):
                raise  # a device-side assert ends the CUDA context: the driver restarts the worker
            emit(kind="correct", index=index, case=case["name"], strategy=None, ok=False,
                 error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=8))  # fmt: skip
        _hang_here("correct")


def _context_lost(err):
    text = str(err)
    return "device-side assert" in text or "CUDA error" in text or "illegal memory access" in text


def check_case(case, emit, index):
    import torch
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    import fusedrnn
    from fusedrnn.kernels import planner, recurrence, step_graphs
    from fusedrnn.kernels.cells import CELLS, torch_layer
    from fusedrnn.testing import error_stats, module_forward_backward, no_worse_than_bound

    device = torch.device("cuda" if _cuda() else "cpu")
    dtype = getattr(torch, DTYPES[case["dtype"]])
    tf32 = case["dtype"] == "fp32-tf32"
    # Like for like: cuDNN's fp32 LSTM (and RNN) takes all its products in TF32 under cudnn.allow_tf32;
    # so does fusedrnn here (recurrence by that switch, its cuBLAS GEMMs by matmul's).
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    T, B, I, H, P = case["T"], case["B"], case["I"], case["H"], case["P"]
    cell = case.get("cell", "lstm")
    lstm = cell == "lstm"
    kwargs = dict(num_layers=case["L"], bidirectional=case["bidirectional"])
    if lstm:
        kwargs.update(proj_size=P)
    elif cell.startswith("rnn_"):
        kwargs.update(nonlinearity=cell.removeprefix("rnn_"))
    name = torch_layer(cell)
    ours_module, torch_module = getattr(fusedrnn, name), getattr(torch.nn, name)
    torch.manual_seed(index)
    exact_module = ours_module(I, H, backend="reference", dtype=torch.float64, device=device, **kwargs)
    cudnn = torch_module(I, H, device=device, dtype=dtype, **kwargs)
    cudnn.load_state_dict(exact_module.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    if case["packed"]:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[:2] = torch.tensor([1, T])[: min(B, 2)]
        x = pack_padded_sequence(x, lengths, enforce_sorted=False)
    states = case["L"] * (2 if case["bidirectional"] else 1)
    h0 = torch.randn(states, B, P or H, dtype=torch.float64, device=device)
    hx = (h0, torch.randn(states, B, H, dtype=torch.float64, device=device)) if lstm else h0
    with torch.no_grad():
        y, final = exact_module(x, hx)
    cotangents = [torch.randn_like(t) for t in (y.data if case["packed"] else y, *(final if lstm else (final,)))]

    def cast(t):
        return t._replace(data=t.data.to(dtype)) if isinstance(t, PackedSequence) else t.to(dtype)

    x_d, hx_d = cast(x), tuple(map(cast, hx)) if lstm else cast(hx)
    exact = module_forward_backward(exact_module, x, hx, cotangents)
    try:
        got_cudnn, baseline = module_forward_backward(cudnn, x_d, hx_d, cotangents), "cudnn"
    except Exception as err:  # noqa: BLE001: e.g. a cuDNN without bf16 RNNs (before 9.13)
        # the tests' other baseline: the reference path in the same dtype
        same_dtype = ours_module(I, H, backend="reference", device=device, dtype=dtype, **kwargs)
        same_dtype.load_state_dict(exact_module.state_dict())
        got_cudnn, baseline = module_forward_backward(same_dtype, x_d, hx_d, cotangents), f"reference ({err})"[:300]
    # The tests' bound (tests/test_modules.py): err(ours) <= 2 err(cuDNN) + atol, per tensor.
    atol = 1e-6 if dtype == torch.float32 and not tf32 else torch.finfo(dtype).eps / 2
    if tf32 and device.type == "cpu":
        # torch's CPU op has no TF32, while the interpreted kernels round their operands to
        # it (kernels/_helpers.py dot_operand): TF32's own precision, not twice IEEE's error.
        atol = 2.0**-10
    cudnn_err = {name: error_stats(got_cudnn[name], exact[name]).rel for name in exact}

    for label, strategy, graphs, repeats in STRATEGY_RUNS:
        ours = ours_module(I, H, backend="triton", device=device, dtype=dtype, **kwargs)
        ours.load_state_dict(exact_module.state_dict())
        counts_before = dict(step_graphs.cache.counts)
        row = dict(kind="correct", index=index, case=case["name"], strategy=label, baseline=baseline)
        try:
            with planner.launch_strategy(strategy), step_graphs.enabled(graphs):
                runs = []
                for _ in range(repeats):
                    runs.append(module_forward_backward(ours, x_d, hx_d, cotangents))
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                ran = planner.last_strategy()
                # the K slices of the backward's dh loop in the plan that ran (kernels/planner.py DH_SPLIT)
                plans = planner.plans(CELLS[cell], B, H, P or None, dtype, device, recurrence._recurrence_bwd_kernel,
                                      True)  # fmt: skip
                dh_split = next((config["DH_SPLIT"] for name, config in plans if name == ran), None)
        except planner.StrategyUnavailable as err:
            emit(**row, unavailable=str(err), ok=None)
            continue
        except Exception as err:  # noqa: BLE001: the row says what and where; the next strategy runs
            emit(**row, ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=8))
            if _context_lost(err):
                raise  # a device-side assert ends the CUDA context: the driver restarts the worker
            continue
        got = runs[0]
        tensors, ok = {}, True
        for name in exact:
            err = error_stats(got[name], exact[name]).rel
            base = cudnn_err[name]
            bound = no_worse_than_bound(base, atol=atol)
            tensors[name] = dict(ours=err, cudnn=base, bound=bound)
            ok &= err <= bound
        bitwise = all(torch.equal(run[name], got[name]) for run in runs[1:] for name in got)
        ok &= bitwise
        worst = max(tensors, key=lambda name: tensors[name]["ours"] / max(tensors[name]["bound"], 1e-30))
        graph_counts = {key: value - counts_before[key] for key, value in step_graphs.cache.counts.items()}
        emit(**row, ran=ran, dh_split=dh_split, ok=ok, repeats=repeats, bitwise_equal=bitwise, worst=worst,
             worst_err=tensors[worst],
             tensors=tensors, cuda_graphs=graph_counts)  # fmt: skip
        print(f"{case['name']:<40} {label:<15} {'ok' if ok else 'FAIL'}  worst {worst}: "
              f"{tensors[worst]['ours']:.2e} (bound {tensors[worst]['bound']:.2e})", flush=True)  # fmt: skip


# ----------------------------------------------------------------------------------------
# 4. tests


def own_pytest_env(**changes):
    """The environment of a pytest run of its own (the shards, the benchmark), with
    ``changes``: without an enclosing pytest-xdist worker's variables, under which
    pytest-benchmark disables itself and writes no JSON (the suite runs this script under
    xdist, bench/test_gpu_smoke.py)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST")}
    return {**env, **changes}



def section_tests(args, emit):
    import xml.etree.ElementTree as ET

    out = Path(args.work) / "tests"
    shards = 2 if args.tiny else TEST_SHARDS
    # The tiny run (CI) takes the barrier tests only: the whole suite runs in CI anyway. On a
    # GPU all but the ahead-of-time sm_90 builds, which CI runs on its CPU (100 s in one shard).
    select = ["-k", "test_barrier_counts" if args.tiny else "not test_kernels_compile_for_sm90"]
    if "tests" in args.select:
        select = ["-k", args.select["tests"]]
    # the script runs python3: this interpreter's, whether or not its venv is activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = own_pytest_env(SHARD_TIMEOUT=str(int(max(30, args.caps["tests"] - 30))), PATH=path)
    proc = subprocess.run(["bash", str(BENCH_DIR / "run_tests_sharded.sh"), str(out), str(shards), *select],
                          cwd=ROOT, env=env)  # fmt: skip
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    failed = []
    for xml in sorted(out.glob("tests-shard*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as err:  # a shard killed while writing it
            emit(kind="test-failure", test=xml.name, message=f"unreadable JUnit file: {err}")
            failed.append(xml.name)
            continue
        for suite in root.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                for bad in [*case.findall("failure"), *case.findall("error")]:
                    name = f"{case.get('classname')}::{case.get('name')}"
                    failed.append(name)
                    emit(kind="test-failure", test=name, message=(bad.get("message") or "")[:500])
    summary = (out / "tests-summary.txt").read_text() if (out / "tests-summary.txt").exists() else ""
    emit(kind="tests", rc=proc.returncode, **totals, interrupted="INTERRUPTED" in summary, failed=failed,
         ok=proc.returncode == 0 and not failed)  # fmt: skip


# ----------------------------------------------------------------------------------------
# 5. speed


def section_speed(args, emit):
    work = Path(args.work)
    results = work / "speed.json"
    command = [sys.executable, "-m", "pytest", str(BENCH_DIR / "bench_lstm.py"), "-q", "-p", "no:cacheprovider"]
    if args.tiny:  # CPU: host-timed rounds only (time_ms stays None), that the grid and its table run
        command += ["--bench-grid=ci", "-k", "inference and (auto or cudnn or floor)"]
    else:
        command += ["--bench-grid=smoke", "--benchmark-columns=median,rounds"]
    if "speed" in args.select:
        command += ["-k", args.select["speed"]]
    command += ["--benchmark-enable"]  # else pytest-benchmark writes no JSON
    command += [f"--benchmark-json={results}"]
    # bench_lstm.py appends each row here as it is measured: a run cut short keeps its rows
    row_file = work / "speed-rows.jsonl"
    env = own_pytest_env(FUSEDRNN_BENCH_ROWS=str(row_file))
    with open(work / "speed-pytest.txt", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:  # stop it before the driver's cap, so that pytest still writes its report
            proc.wait(max(10, args.caps["speed"] - 30))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:  # pytest stopped while writing it leaves an empty or cut file: the rows file has them
        rows = [bench["extra_info"] for bench in json.loads(results.read_text())["benchmarks"]]
    except (OSError, ValueError, KeyError):
        rows = []
    rows = rows or read_rows(row_file)
    table = speed_table(rows)
    (work / "speed-table.txt").write_text(table + "\n")
    print(table)
    for row in rows:
        emit(kind="speed", **{k: row.get(k) for k in ("provider", "strategy", "mode", "dtype", "tf32", "T", "B", "H",
                                                      "P", "time_ms", "us_per_step", "peak_memory_bytes")})  # fmt: skip
    emit(kind="speed-run", rc=proc.returncode, rows=len(rows), ok=proc.returncode == 0 and bool(rows))


def speed_table(rows):
    """Per case: cuDNN's ms and, per fusedrnn provider, its ms and cuDNN time / its time."""
    cases = {}
    for row in rows:
        # each cell its own row: the H200 table of 2026-12-04 printed the GRU's over the LSTM's
        key = (row.get("cell", "lstm"), row["mode"], row["dtype"], row.get("tf32"), row["B"], row["H"], row.get("P"))
        cases.setdefault(key, {})[row["provider"]] = row.get("time_ms")
    providers = sorted({p for c in cases.values() for p in c if p != "cudnn"})
    header = ["cell", "mode", "dtype", "B", "H", "cudnn ms", *providers]
    lines = ["\t".join(header)]
    for (cell, mode, dtype, tf32, B, H, P), times in sorted(cases.items(), key=str):
        cudnn = times.get("cudnn")
        cells = [cell, mode, dtype + ("-tf32" if dtype == "float32" and tf32 else ""), str(B), f"{H}" + (f"/P{P}" if P else ""),
                 f"{cudnn:.3f}" if cudnn else "-"]  # fmt: skip
        for p in providers:
            t = times.get(p)
            cells.append("-" if t is None else f"{t:.3f} ({cudnn / t:.2f}x)" if cudnn else f"{t:.3f}")
        lines.append("\t".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# The driver: sections in their own processes, time caps, packing.

SECTION_FUNCTIONS = dict(env=section_env, barrier=section_barrier, correct=section_correct, tests=section_tests,
                         speed=section_speed)  # fmt: skip


def run_section_process(args, name, part=(1, 1), resume_after=-1, cap=None):
    """Start one section (or one worker of it) as a child process in its own process group."""
    work = Path(args.work)
    suffix = f"-part{part[0]}" if part[1] > 1 else ""
    command = [sys.executable, __file__, args.out, "--section", name, "--work", str(work), "--commit", args.commit,
               "--part", f"{part[0]}/{part[1]}", "--resume-after", str(resume_after), "--cap", f"{name}={cap}"]  # fmt: skip
    if args.tiny:
        command.append("--tiny")
    command += [f"--select={section}={expr}" for section, expr in args.select.items()]
    log = open(work / f"{name}{suffix}.log", "a")
    # Every process of the section (pytest's included) logs each kernel it builds, for
    # bench/prebuild_cache.py and for the summary's compile seconds.
    env = {**os.environ, COMPILE_LOG_ENV: str(compile_log(work, name))}
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


# fusedrnn.kernels.aot.COMPILE_LOG_ENV, not imported: the driver imports no torch
COMPILE_LOG_ENV = "FUSEDRNN_COMPILE_LOG"


def compile_log(work, name):
    return Path(work) / f"compiles-{name}.jsonl"


def compile_stats(path):
    """Kernels a section built (and their seconds), and found in Triton's cache, from its log."""
    built = cached = unlogged = 0
    seconds = 0.0
    for row in read_rows(path):
        if "hash" not in row:
            unlogged += 1
        elif row["cache_hit"]:
            cached += 1
        else:
            built += 1
            seconds += row["seconds"]
    return dict(built=built, compile_seconds=round(seconds, 1), from_cache=cached, unlogged=unlogged)


def stop(proc):
    """SIGINT first (pytest reports what it has), then the whole group."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def drive_section(args, name, cap):
    """Run a section to its end or its cap; returns (status, seconds, restarts)."""
    work = Path(args.work)
    start = time.monotonic()
    workers = CORRECT_WORKERS if name == "correct" else 1
    procs = {k: run_section_process(args, name, (k, workers), cap=cap) for k in range(1, workers + 1)}
    restarts, status = 0, "ok"
    while procs:
        left = cap - (time.monotonic() - start)
        if left <= 0:
            for proc in procs.values():
                stop(proc)
            return "timeout", time.monotonic() - start, restarts
        time.sleep(min(0.5, left))
        for k, proc in list(procs.items()):
            if proc.poll() is None:
                continue
            del procs[k]
            if proc.returncode == 0:
                continue
            status = "failed"
            if name == "correct":  # restart after the case that killed the worker
                starts = [r["index"] for r in read_rows(work / f"correct-part{k}.jsonl") if r.get("kind") == "case-start"]
                if starts and left > 10:
                    restarts += 1
                    procs[k] = run_section_process(args, name, (k, workers), resume_after=max(starts), cap=cap)
    return status, time.monotonic() - start, restarts


def section_rows(work, name):
    rows = []
    for path in sorted(work.glob(f"{name}*.jsonl")):
        rows.extend(read_rows(path))
    return rows


def summarise(name, status, seconds, rows, restarts, compiles):
    checked = [r for r in rows if "ok" in r]
    failures = [r for r in checked if r["ok"] is False]
    if status == "ok" and failures:
        status = "failed"
    if name != "env" and not checked and status == "ok":
        status = "no results"
    return dict(status=status, seconds=round(seconds, 1), rows=len(rows), checked=len(checked), failed=len(failures),
                restarts=restarts, compiles=compiles, failures=[_failure_name(r) for r in failures][:40])  # fmt: skip


def _failure_name(row):
    return " ".join(str(row[k]) for k in ("kind", "case", "strategy", "grid", "test", "error") if row.get(k) is not None)


def import_problem():
    """Why this interpreter cannot import this checkout's fusedrnn, or None. Checked before any
    section: each section imports it, and a failed import costs a device call its whole run."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import fusedrnn.kernels; print(fusedrnn.__file__)"],
                               cwd=BENCH_DIR, capture_output=True, text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"gpu_smoke: {sys.executable} could not import fusedrnn ({type(err).__name__}: {err})"
    found = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    if found is not None and found.is_relative_to(ROOT):
        return None
    seen = f"it imports {found}" if found else (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return (f"gpu_smoke: {sys.executable} does not import fusedrnn from {ROOT} ({seen}); install it into this "
            f"interpreter: {sys.executable} -m pip install --no-deps --no-build-isolation -e {ROOT}")


def pack(work, out):
    tmp = out / "gpu-smoke.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname=".")
    tmp.replace(out / "gpu-smoke.tar.gz")


def main_driver(args):
    out = Path(args.out).resolve()
    work = out / "gpu-smoke"
    work.mkdir(parents=True, exist_ok=True)
    args.out, args.work = str(out), str(work)
    console = open(out / "gpu-smoke.log", "a", buffering=1)

    def say(text):
        print(text, flush=True)
        console.write(text + "\n")

    problem = import_problem()
    if problem:
        say(problem)
        return 2
    summary = dict(commit=args.commit, tiny=args.tiny, select=args.select, sections={})
    say(f"gpu_smoke: commit {args.commit}, sections {', '.join(args.sections)}")
    for name in args.sections:
        cap = args.caps[name]
        status, seconds, restarts = drive_section(args, name, cap)
        compiles = compile_stats(compile_log(work, name))
        summary["sections"][name] = summarise(name, status, seconds, section_rows(work, name), restarts, compiles)
        s = summary["sections"][name]
        say(f"{name:<8} {s['status']:<10} {s['seconds']:>6.1f} s  {s['checked']} checked, {s['failed']} failed"
            + (f", {restarts} restarts" if restarts else "")
            + f"; kernels: {compiles['built']} built in {compiles['compile_seconds']} s (all processes),"
            + f" {compiles['from_cache']} from the cache")  # fmt: skip
        for failure in s["failures"][:10]:
            say(f"    {failure}")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        pack(work, out)
    if (work / "speed-table.txt").exists():
        say((work / "speed-table.txt").read_text())
    return 0 if all(s["status"] == "ok" for s in summary["sections"].values()) else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="The one-call GPU check (bench/NOTES.md): env, barrier, correct, tests, speed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("out", help="output folder (the device tool's $OUT)")
    parser.add_argument("--commit", default=os.environ.get("FUSEDRNN_COMMIT", "unknown"),
                        help="the checkout's commit (no .git on the device)")  # fmt: skip
    parser.add_argument("--sections", default=",".join(SECTIONS), type=lambda s: [x for x in s.split(",") if x],
                        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all, in this order)")  # fmt: skip
    parser.add_argument("--select", action="append", default=[], metavar="SECTION=EXPR",
                        help="run part of a section: correct (a regular expression searched in case names), "
                             "tests (pytest -k, instead of the default), speed (pytest -k on the smoke grid)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for CPU under TRITON_INTERPRET=1 (CI)")
    parser.add_argument("--cap", action="append", default=[], metavar="[SECTION=]SECONDS",
                        help="time cap of every section, or of one (repeatable); default: bench/NOTES.md's plan")  # fmt: skip
    # a section's own process (started by the driver)
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--part", default="1/1", type=lambda s: tuple(map(int, s.split("/"))), help=argparse.SUPPRESS)
    parser.add_argument("--resume-after", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    caps = dict(TINY_CAPS if args.tiny else CAPS)
    for value in args.cap:
        name, _, seconds = value.rpartition("=")
        if name and name not in SECTIONS:
            parser.error(f"--cap {value}: unknown section {name!r}")
        try:
            caps.update({name: float(seconds)} if name else dict.fromkeys(SECTIONS, float(seconds)))
        except ValueError:
            parser.error(f"--cap {value}: expected SECONDS or SECTION=SECONDS")
    args.caps = caps
    raw, args.select = args.select, {}
    for value in raw:
        name, sep, expr = value.partition("=")
        if not sep or name not in ("correct", "tests", "speed"):
            parser.error(f"--select {value}: expected correct=REGEX, tests=EXPR or speed=EXPR")
        if name == "correct":
            try:
                re.compile(expr)
            except re.error as err:
                parser.error(f"--select {value}: not a regular expression ({err})")
        args.select[name] = expr
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("FUSEDRNN_COMMIT", args.commit)
    if args.section is None:
        return main_driver(args)
    if args.tiny or not _cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    suffix = f"-part{args.part[0]}" if args.part[1] > 1 else ""
    emit = Rows(Path(args.work) / f"{args.section}{suffix}.jsonl")
    SECTION_FUNCTIONS[args.section](args, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

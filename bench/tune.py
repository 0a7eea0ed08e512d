"""Tune the block sizes of the LSTM kernels on this GPU: the "configs" of its tuning table.

    python bench/tune.py [--grid quick|full | --shapes B:H[:P],...] [--dtypes bfloat16,float32]
        [--strategies persistent,per-step,one-launch] [--kernels fwd,bwd] [-T 64] [--part K/N]
        [-o kernels/tuned/<gpu slug>.json] [--log trials.json]
    python bench/tune.py --check [--log trials.json]    # CPU/CI: the interpreter, no timing
    python bench/tune.py --candidates prefetch ...      # only each kernel's launch without its prefetch

For each shape (B, H, P) of the grid (bench/bench_lstm.py's, I = H) or of
--shapes, each dtype, each strategy that can run the shape (StrategyUnavailable: skipped) and
each kernel (the LSTM's ``recurrence_fwd``, ``recurrence_bwd`` of fusedrnn.kernels.recurrence), every candidate of
CANDIDATES (the backward's: BACKWARD_CANDIDATES, which adds the splits of its dh loop; each
kernel's also its launch without the prefetch of the next step's tiles) runs
once under ``tuning.use_table`` with a one-entry table and
``launch_strategy(strategy)``. Candidates that come out as the same kernel config (BLOCK_K is
clamped to the padded sizes, and ignored where the weights are held, W_RESIDENT) run once. A
candidate that fails (compilation, out of resources, a grid that is not resident) or whose
outputs disagree with the default config's is dropped and reported. The others are timed
with ``triton.testing.do_bench`` (median), as is the default config before and after them
(the faster of the two counts). Timed per-step calls repeat on the same memory, so they
replay CUDA graphs of their launches (kernels/step_graphs.py), as a training loop does. The
fastest candidate becomes the table entry only if it beats the default by more than
MIN_GAIN; otherwise the entry of that key is removed and the default (the register budget of
kernels/planner.py) stays.

The table (default kernels/tuned/<slug of the GPU name>.json) is merged: entries of the keys
tuned now are replaced or removed, the others and its "dispatch" (bench/report.py dispatch)
are kept; "configs_provenance" lists each tuned key's default and tuned times. A run can be
split with --part K/N (round robin over the (dtype, B, H) shapes), each part merging into the
same file. Float32 is tuned with torch's TF32 defaults (the recurrent dots in TF32); its
entries apply under IEEE float32 too.

--check runs the same loop on one tiny shape (T=3, B=2, H=32, float32), every candidate once,
correctness only, under the Triton interpreter on a machine without CUDA, and writes no
table (--log writes the trials). tests/kernels/test_tuning.py runs it with two candidates.
"""

import argparse
import importlib.util
import itertools
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # The kernels run on CPU tensors only in the interpreter; set before they are imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.testing  # noqa: E402

from fusedrnn.kernels import planner, recurrence, tuning  # noqa: E402
from fusedrnn.kernels._helpers import is_interpreted  # noqa: E402
from fusedrnn.kernels.cells import CELLS, LSTM  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
BLOCK_CANDIDATES = [
    dict(BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    for block_k, num_warps, num_stages in itertools.product((16, 32, 64), (4, 8), (1, 2, 3, 4))
]
# Each kernel also tries its launch without the next step's tiles loaded before the barrier
# (kernels/planner.py, bench/NOTES.md v1.14 and v1.15; persistent only, elsewhere it is off
# already), with the other options at their defaults: does the prefetch pay on this GPU.
CANDIDATES = BLOCK_CANDIDATES + [{tuning.PREFETCH["fwd"]: False}]
# The backward also tries each split of its dh loop over K (kernels/planner.py DH_SPLIT) with the
# other options at their defaults: whether splitting pays is the question, not the product.
BACKWARD_CANDIDATES = BLOCK_CANDIDATES + [dict(DH_SPLIT=split) for split in (1, 2, 4, 8)] + [
    {tuning.PREFETCH["bwd"]: False}]  # fmt: skip
TUNED_KEYS = {"fwd": ("BLOCK_K", "num_warps", "num_stages", tuning.PREFETCH["fwd"]),
              "bwd": ("BLOCK_K", "num_warps", "num_stages", "DH_SPLIT", tuning.PREFETCH["bwd"])}  # fmt: skip
MIN_GAIN = 0.03  # do_bench medians of one config vary by about a percent from run to run
STRATEGIES = ("persistent", "per-step", "one-launch")
KERNELS = ("fwd", "bwd")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHECK_SHAPE = dict(T=3, B=2, H=32, P=None)  # H = 32: BLOCK_K 16 and 32 differ, 64 clamps to 32
# Outputs must agree with the default config's to this fraction of their largest magnitude
# (at least 1). Different K chunks only reorder fp32 sums, which moves a 16-bit output by an
# ulp or so; a broken config (unmasked chunk, NaN, wrong units) is off by O(1).
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 2e-2}


class Problem:
    """Inputs of one shape and dtype, and a run of each kernel on them."""

    def __init__(self, T, B, H, P, dtype, device, seed=0):
        g = torch.Generator().manual_seed(seed)
        K = P if P is not None else H  # the size of h

        def rand(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)

        self.T, self.B, self.H, self.P, self.dtype = T, B, H, P, dtype
        self.gx = rand(T, B, 4 * H, scale=0.5)
        self.w_hh = rand(4 * H, K, scale=H**-0.5)  # the scale of torch.nn.LSTM's init
        self.w_hr = rand(K, H, scale=H**-0.5) if P is not None else None
        self.h0, self.c0 = rand(B, K, scale=0.5), rand(B, H, scale=0.5)
        self.d_out, self.d_hn, self.d_cn = rand(T, B, K), rand(B, K), rand(B, H)
        self._fwd_outputs = None
        # Timed forward calls overwrite this one copy of Gx in place (recurrence_fwd stores the
        # pre-activations over it), so its values drift from call to call. The kernels' work
        # does not depend on the values, and a fresh clone per call would add a copy of
        # T*B*4H elements to every timing. Correctness runs take fresh clones.
        self.gates_timed = self.gx.clone()

    def fwd(self, gates=None):
        """recurrence_fwd's outputs, gates (overwritten with the pre-activations) included."""
        gates = self.gx.clone() if gates is None else gates
        out, c, m, _ = recurrence.recurrence_fwd(LSTM, gates, self.w_hh, self.h0, self.c0, w_hr=self.w_hr)
        return out, c, m, gates

    def bwd(self):
        """recurrence_bwd's outputs, on the default config's forward (made once, under the rule)."""
        if self._fwd_outputs is None:
            with tuning.use_table(None), planner.launch_strategy("auto"):
                self._fwd_outputs = self.fwd()
        _, c, _, gates = self._fwd_outputs
        return recurrence.recurrence_bwd(LSTM, gates, c, self.c0, self.w_hh, self.d_out, self.d_hn, self.d_cn, w_hr=self.w_hr)

    def run(self, kernel):
        return self.fwd() if kernel == "fwd" else self.bwd()

    def timed_call(self, kernel):
        if kernel == "fwd":
            return lambda: self.fwd(self.gates_timed)
        self.bwd()  # the forward it reads, made outside the timing
        return self.bwd


def run_kernel(problem, kernel):
    """The outputs of one run (tests replace it to fake a wrong candidate)."""
    return problem.run(kernel)


def disagreement(outputs, reference, dtype):
    """None when the outputs agree with the reference's, else what differs."""
    for i, (a, b) in enumerate(zip(outputs, reference)):
        if a is None and b is None:
            continue
        err = (a.float() - b.float()).abs().max().item()
        scale = max(1.0, b.float().abs().max().item())
        if not err <= TOLERANCE[dtype] * scale:  # NaN compares False: a disagreement
            return f"output {i} differs from the default config's by {err:.3g} (largest |value| {scale:.3g})"
    return None


def case_key(kernel, strategy, problem):
    """The table key of one case: the tuner times the LSTM's kernels."""
    return dict(cell=LSTM.name, kernel=kernel, strategy=strategy, dtype=tuning.dtype_name(problem.dtype),
                B=problem.B, H=problem.H, P=problem.P)  # fmt: skip


def one_entry_table(kernel, strategy, problem, config):
    """A table that sets ``config`` for this kernel, strategy, dtype and shape only."""
    return {"gpu": "candidate", "dispatch": [], "configs": [dict(case_key(kernel, strategy, problem), config=config)]}


def effective(kernel, strategy, problem, device):
    """The tuned options of the config the launchers use now (under the installed table)."""
    config = planner.kernel_config(problem.B, problem.H, problem.dtype, strategy, cell=LSTM, P=problem.P,
                                   backward=kernel == "bwd", device=device,
                                   interpreted=is_interpreted(recurrence._recurrence_fwd_kernel))  # fmt: skip
    return {key: config[key] for key in TUNED_KEYS[kernel]}


def describe(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


def tune_case(kernel, strategy, problem, candidates, timing, say=print):
    """Try the candidates of one (kernel, strategy, dtype, shape). Returns a dict: the key,
    "default" (its tuned options) and "default_ms", "trials" (each candidate: "config",
    "status" (ok, dropped, same as ...), "ms"), and "best" (the winning candidate's options
    or None), or the key and "error" when the default config fails; None when the strategy
    cannot run the shape."""
    device = problem.gx.device
    key = case_key(kernel, strategy, problem)
    name = f"{kernel} {strategy} {key['dtype']} B={problem.B} H={problem.H}" + (f" P={problem.P}" if problem.P else "")

    def bench(call):
        return triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median") if timing else None

    with planner.launch_strategy(strategy):
        with tuning.use_table(None):  # the default config: the register budget, no table
            try:
                default = effective(kernel, strategy, problem, device)
                reference = run_kernel(problem, kernel)
                default_ms = bench(problem.timed_call(kernel))
            except planner.StrategyUnavailable as err:
                say(f"{name}: skipped, {err}")
                return None
            except Exception as err:  # the default must run: a bug, reported; the table keeps its entry
                say(f"{name}: the default config failed: {describe(err)}")
                return dict(key, error=describe(err), trials=[], best=None)
        trials, seen = [], {tuple(default.items()): "the default"}
        for candidate in candidates:
            trial = dict(config=candidate, status="ok", ms=None)
            trials.append(trial)
            with tuning.use_table(one_entry_table(kernel, strategy, problem, candidate)):
                config = effective(kernel, strategy, problem, device)
                same = seen.setdefault(tuple(config.items()), f"candidate {candidate}")
                if same != f"candidate {candidate}":
                    trial["status"] = f"same config as {same}"
                    continue
                try:
                    wrong = disagreement(run_kernel(problem, kernel), reference, problem.dtype)
                    if wrong is None:
                        trial["ms"] = bench(problem.timed_call(kernel))
                        if timing:  # each as it comes: a run stopped part way still says what it timed
                            say(f"{name}: {candidate} {trial['ms']:.4f} ms")
                except Exception as err:  # compile errors, OutOfResources, StrategyUnavailable
                    wrong = describe(err)
                if wrong is not None:
                    trial["status"] = f"dropped: {wrong}"
                    say(f"{name}: {candidate} dropped: {wrong}")
        if timing:  # the default again: the faster of its two timings is the one to beat
            with tuning.use_table(None):
                default_ms = min(default_ms, bench(problem.timed_call(kernel)))
    timed = [t for t in trials if t["ms"] is not None]
    fastest = min(timed, key=lambda t: t["ms"], default=None)
    best = fastest if fastest is not None and fastest["ms"] < (1 - MIN_GAIN) * default_ms else None
    checked = sum(t["status"] == "ok" for t in trials)
    if timing:
        verdict = f"{best['config']} {best['ms']:.4f} ms" if best else "the default stays"
        say(f"{name}: default {default} {default_ms:.4f} ms; {checked} candidates timed; {verdict}")
    else:
        say(f"{name}: default {default}; {checked} candidates agree with it")
    return dict(key, default=default, default_ms=default_ms, trials=trials,
                best=best["config"] if best else None, best_ms=best["ms"] if best else None)  # fmt: skip


def tune(shapes, dtypes, strategies=STRATEGIES, kernels=KERNELS, candidates=None, T=64, timing=True,
         device=None, say=print):  # fmt: skip
    """tune_case for every (dtype, shape, strategy, kernel); the results that ran. Candidates
    default to CANDIDATES (forward) and BACKWARD_CANDIDATES; a dict gives each kernel's."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for dtype, (B, H, P) in itertools.product(dtypes, shapes):
        problem = Problem(T, B, H, P, dtype, device)
        for strategy, kernel in itertools.product(strategies, kernels):
            if isinstance(candidates, dict):  # each kernel's own
                tried = candidates[kernel]
            else:
                tried = candidates or (BACKWARD_CANDIDATES if kernel == "bwd" else CANDIDATES)
            result = tune_case(kernel, strategy, problem, tried, timing, say)
            if result is not None:
                results.append(dict(result, T=T))
    return results


def versions():
    return f"torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}"


def merge(table, results, date):
    """``table`` with the tuned results merged into its "configs" and "configs_provenance"
    (a new dict): the keys tuned are replaced (a winner) or removed (the default stays)."""
    fields = ("cell", "kernel", "strategy", "dtype", "B", "H", "P")

    def key(entry):
        return tuple(entry[f] for f in fields)

    tuned = {key(r): r for r in results if "error" not in r}  # a failed case keeps its entry
    configs = [e for e in table.get("configs", []) if key(e) not in tuned]
    configs += [dict(zip(fields, k), config=r["best"]) for k, r in tuned.items() if r["best"] is not None]
    provenance = dict(table.get("configs_provenance") or {})
    cases = [c for c in provenance.get("cases", []) if key(c) not in tuned]
    cases += [dict(zip(fields, k), T=r["T"], default=r["default"], default_ms=r["default_ms"], tuned_ms=r["best_ms"],
                   date=date, versions=versions()) for k, r in tuned.items()]  # fmt: skip

    def order(entry):
        return (list(CELLS).index(entry["cell"]), KERNELS.index(entry["kernel"]), STRATEGIES.index(entry["strategy"]),
                list(DTYPES).index(entry["dtype"]), entry["B"], entry["H"], entry["P"] or 0)  # fmt: skip

    provenance.update(made_by="bench/tune.py", min_gain=MIN_GAIN, cases=sorted(cases, key=order))
    return dict(table, configs=sorted(configs, key=order), configs_provenance=provenance)


def write_table(path, results, gpu, sm_count, date):
    """Merge the results into the table at ``path`` (created if missing): it must be ``gpu``'s."""
    path = Path(path)
    if path.exists():
        table = tuning.load_table(path)
        if table["gpu"] != gpu:
            raise ValueError(f"{path} is {table['gpu']}'s table, not {gpu}'s")
    else:
        table = {"gpu": gpu, "sm_count": sm_count, "dispatch": [], "configs": []}
    table = merge(table, results, date)
    tuning.validate(table, path)
    path.write_text(tuning.dumps(table))
    return table


def bench_grid(name):
    """(shapes (B, H, P), dtypes) of a grid of bench/bench_lstm.py (I = H)."""
    spec = importlib.util.spec_from_file_location("bench_lstm", BENCH_DIR / "bench_lstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grid = module.GRIDS[name]
    return [(B, H, P) for B, (H, P) in itertools.product(grid["B"], grid["layers"])], list(grid["dtypes"])


def parse_shapes(text):
    """"8:512,32:1024:256" -> [(8, 512, None), (32, 1024, 256)]."""
    shapes = []
    for item in text.split(","):
        sizes = [int(v) for v in item.split(":")]
        if len(sizes) not in (2, 3) or min(sizes) < 1:
            raise argparse.ArgumentTypeError(f"expected B:H or B:H:P, got {item!r}")
        shapes.append((sizes[0], sizes[1], sizes[2] if len(sizes) == 3 else None))
    return shapes


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="one tiny shape, correctness only (CPU: interpreter)")
    parser.add_argument("--grid", choices=["quick", "full", "proj"], default="quick", help="bench/bench_lstm.py's grid")
    parser.add_argument("--shapes", type=parse_shapes, help="B:H[:P],... instead of the grid's")
    parser.add_argument("--dtypes", help="comma-separated (default: the grid's)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("-T", type=int, default=64, help="timesteps of the timed runs")
    parser.add_argument("--candidates", choices=["all", "prefetch"], default="all",
                        help="prefetch: only each kernel's launch without its prefetch, against the default")
    parser.add_argument("--part", help="K/N: the K-th of N round-robin slices of the (dtype, shape) cases")
    parser.add_argument("-o", "--output", help="the table to merge into (default kernels/tuned/<gpu slug>.json)")
    parser.add_argument("--log", help="write every trial (JSON) here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    strategies, kernels = args.strategies.split(","), args.kernels.split(",")
    if not set(strategies) <= set(STRATEGIES) or not set(kernels) <= set(KERNELS):
        raise SystemExit(f"strategies among {STRATEGIES}, kernels among {KERNELS}")
    candidates = None  # all
    if args.candidates == "prefetch":
        candidates = {"fwd": CANDIDATES[-1:], "bwd": BACKWARD_CANDIDATES[-1:]}
    if args.check:
        if args.output:
            raise SystemExit("--check times nothing, so it writes no table: use --log")
        results = tune([(CHECK_SHAPE["B"], CHECK_SHAPE["H"], CHECK_SHAPE["P"])], [torch.float32], strategies,
                       kernels, candidates, T=CHECK_SHAPE["T"], timing=False)  # fmt: skip
    else:
        if not torch.cuda.is_available():
            raise SystemExit("tuning times the kernels on a CUDA GPU; without one, run --check")
        shapes, dtypes = bench_grid(args.grid)
        shapes = args.shapes or shapes
        dtypes = [DTYPES[d] for d in args.dtypes.split(",")] if args.dtypes else dtypes
        cases = list(itertools.product(dtypes, shapes))
        if args.part:
            k, n = map(int, args.part.split("/"))
            if not 1 <= k <= n:
                raise SystemExit(f"--part K/N needs 1 <= K <= N, got {args.part}")
            cases = cases[k - 1 :: n]
            if not cases:
                raise SystemExit(f"--part {args.part}: no case falls in this part")
        gpu = torch.cuda.get_device_name()
        output = args.output or tuning.table_path(gpu)
        sm_count = torch.cuda.get_device_properties(0).multi_processor_count
        results = []
        for dtype, shape in cases:
            found = tune([shape], [dtype], strategies, kernels, candidates, T=args.T)
            # written after each shape: a run stopped part way keeps what it measured
            date = datetime.now(timezone.utc).isoformat(timespec="seconds")
            table = write_table(output, found, gpu, sm_count, date)
            results += found
        tuned = sum(r["best"] is not None for r in results)
        print(f"{output}: {tuned} of {len(results)} tuned keys beat the default; {len(table['configs'])} entries")
    if args.log:
        Path(args.log).write_text(json.dumps(results, indent=1) + "\n")
    dropped = [t for r in results for t in r["trials"] if t["status"].startswith("dropped")]
    failed = [r for r in results if "error" in r]
    print(f"{len(results)} cases ({len(failed)} failed), {len(dropped)} candidates dropped")
    # --check fails when a config does not run or disagrees: on the interpreter every
    # candidate should, so that is a bug to look at.
    return 1 if failed or (args.check and dropped) else 0


if __name__ == "__main__":
    sys.exit(main())

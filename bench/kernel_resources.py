"""Compile-time resources of the recurrence kernels on an H100 (sm_90), without a GPU.

    python bench/kernel_resources.py [--out bench/results/kernel-resources-sm90.md] [--jobs 2]
    python bench/kernel_resources.py --strategy per-step --out bench/results/kernel-resources-sm90-per-step.md
    python bench/kernel_resources.py --strategy per-step --projection --out bench/results/kernel-resources-sm90-per-step-proj.md
    python bench/kernel_resources.py --cell rnn_tanh --out bench/results/kernel-resources-sm90-rnn.md

The LSTM's kernels by default; --cell builds another cell's (kernels/cells.py; no projection).

For every shape of the benchmark grid (B in {1, 8, 32, 128, 512} x H in {256, 512, 1024,
2048}, input = H, no projection), or with --projection for the layers with a projection of
bench/NOTES.md's v1.3 table, bf16 and fp32 (TF32 dots, as cudnn.allow_tf32 = True gives),
forward and backward kernel, each launch of a step (a per-step layer with a projection
launches two phases a step): the config the launcher picks on 132 SMs for the strategy
(default "persistent"), the registers, spills and shared memory of the sm_90 build (Triton's
compiler and its own ptxas), the programs per SM those allow and whether the grid is
resident, and an analytic floor per step (weight bytes, L2 streaming time, tensor-core time). It compiles the kernels
as tests/kernels/test_compile.py does; nothing runs on a GPU, so no time here is measured.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

# The interpreter replaces @triton.jit kernels by Python functions that triton.compile cannot
# take; it is read when the kernel module is imported, so drop it first.
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusedrnn.kernels import aot, launch, planner, recurrence  # noqa: E402
from fusedrnn.kernels.cells import CELLS, LSTM  # noqa: E402

CELL = LSTM  # the cell whose kernels are built (--cell)
# An H100 SXM as the launcher would see it: 132 SMs, one program each planned (as test_compile).
H100_SMS = 132
planner.LIMITS = planner.PlannerLimits(modelled_sms=H100_SMS)
# Per-SM limits of sm_90 (CUDA occupancy calculator): registers are allocated per warp in
# units of 256; each block reserves 1 KiB of shared memory on top of what it asks for.
SM_REGS, SM_SHARED, SM_THREADS = 65536, 228 * 1024, 2048
# Assumed peaks for the analytic floor (not measured here): H100 SXM dense tensor-core peaks
# and an L2 read bandwidth estimate (the 50 MB L2 at ~5.5 TB/s; HBM3 is 3.35 TB/s).
L2_BYTES_PER_S = 5.5e12
MMA_FLOPS_PER_S = {"bf16": 990e12, "fp32": 495e12}  # fp32 dots run as TF32
L2_SIZE_MIB = 50

BATCHES, HIDDENS = (1, 8, 32, 128, 512), (256, 512, 1024, 2048)
GRID_SHAPES = [(B, H, None) for H in HIDDENS for B in BATCHES]  # (B, H, proj_size)
# (B, H, proj_size): the shapes of bench/NOTES.md's v1.3 table (per-step tiles planned per
# phase), a wider projection, and a projection whose phases get unequal programs.
PROJECTION_SHAPES = [(8, 1024, 256), (128, 1024, 256), (512, 1024, 128), (512, 2048, 512), (512, 2048, 1024),
                     (100, 4096, 1024)]  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
KERNELS = {"fwd": (recurrence._recurrence_fwd_kernel, False), "bwd": (recurrence._recurrence_bwd_kernel, True)}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")


def ptxas_info(ptx):
    """Registers, spill store/load bytes and static shared bytes that ptxas reports for the PTX,
    built for the arch its .target names (sm_90a: Triton uses the wgmma features)."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # -lineinfo as Triton's make_cubin passes it, so this is the build Triton made.
        done = subprocess.run([PTXAS, "-lineinfo", "-v", "--gpu-name", arch, src, "-o", os.path.join(tmp, "k.o")],
                              capture_output=True, text=True)  # fmt: skip
    log = done.stdout + done.stderr
    if done.returncode:
        errors = [line for line in log.splitlines() if "error" in line] or log.strip().splitlines()[-1:]
        raise RuntimeError(f"ptxas failed ({done.returncode}): " + " | ".join(errors))

    def number(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return dict(arch=arch, regs=number(r"Used (\d+) registers"), spill_st=number(r"(\d+) bytes spill stores"),
                spill_ld=number(r"(\d+) bytes spill loads"), smem_static=number(r"(\d+) bytes smem"))  # fmt: skip


def compile_one(job):
    """Compile one kernel variant for sm_90 and read its resources; an error becomes a string."""
    kernel_key, dtype_name, constexprs, options, int_args = job
    kernel = KERNELS[kernel_key][0]
    try:
        signature, constants, attrs = aot.compile_spec(kernel, dtype_name, dict(int_args))
        source = ASTSource(kernel, signature, {**constexprs, **constants}, attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        return dict(ptxas_info(compiled.asm["ptx"]), shared=compiled.metadata.shared)
    except Exception as e:  # record it: a config that does not build is a finding, not a crash
        return {"error": describe(e)}


def describe(error):
    """One line for a compile error. Triton chains a CompilationError per call frame ("at
    line:col:", the source, a caret) down to the error itself: keep the innermost frame's
    function and position and the last message."""
    where = ""
    while True:
        text = str(error)
        frame = re.match(r"at (\d+:\d+):\s*\n(?:.*\n)*?\s*def (\w+)", text)
        if frame:
            where = f"in {frame.group(2)} at {frame.group(1)}: "
        if error.__cause__ is None:
            break
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip() not in ("", "^")]
    return f"{type(error).__name__} {where}{lines[-1] if lines else ''}"[:400]


def plan(dtype_name, B, H, P, kernel_key, strategy="persistent"):
    """The strategy's config for a shape and a compile job per launch of a step: one launch
    running every phase (persistent, or a layer without a projection), or one per phase
    (per-step with a projection). Returns (config, [(flags, job)]), or ({"unavailable": why}, [])."""
    torch.backends.cudnn.allow_tf32 = True  # fp32 recurrent dots in TF32 (kernel_config reads it)
    backward = KERNELS[kernel_key][1]
    try:
        config = planner.kernel_config(B, H, DTYPES[dtype_name], strategy, cell=CELL, P=P, backward=backward)
    except planner.StrategyUnavailable as e:
        return {"unavailable": str(e)}, []
    config, options = aot.split_launch_options(config)
    options["launch_cooperative_grid"] = config["GRID_SYNC"]
    phases = planner.kernel_phases(P is not None, backward, config.get("DH_SPLIT", 1))
    launches = phases if strategy == "per-step" else [planner.all_phase_flags(phases)]
    int_args = tuple(sorted(aot.layer_int_args(CELL.gates, B, H, P if P is not None else H).items()))
    constexprs = dict(REVERSE=False, VARLEN=False, **recurrence.cell_constexprs(CELL))
    jobs = [(flags, (kernel_key, dtype_name, dict(config, **flags, **constexprs), options, int_args))
            for flags in launches]  # fmt: skip
    return dict(config, **options), jobs


def launch_name(kernel_key, flags):
    """"fwd cell", "bwd dh+cell", "bwd dh_partial+dh+cell", ...: the kernel and the phases one
    launch runs."""
    names = ("cell", "proj", "dh_partial", "dh")
    return kernel_key + " " + "+".join(name for name in names if flags.get("DO_" + name.upper()))


def weight_parts(backward, flags, H, P, dh_split=1):
    """(unit block, units, elements of W per unit, K slices) of each phase in a launch: what
    the launch reads of the weights each step, a program a 1/slices share of its units'.
    Forward: a cell unit's four W_hh rows (4 x P), a projected unit's W_hr row (H). Backward:
    a projected unit's (or, without a projection, an h unit's) W_hh column (4H) for dh, split
    into dh_split K slices by the dh_partial phase where the config says so (dh then only
    adds the partial sums), a cell unit's W_hr column (P) for dm. P None: no projection."""
    G = CELL.gates  # four for the LSTM
    if not backward:
        parts = [("BLOCK_H", H, G * (P or H), 1)] if flags["DO_CELL"] else []
        return parts + ([("BLOCK_P", P, H, 1)] if flags["DO_PROJ"] else [])
    parts = [("BLOCK_PS", P or H, G * H, dh_split)] if flags.get("DO_DH_PARTIAL") else []
    parts += [("BLOCK_P", P or H, G * H, 1)] if flags["DO_DH"] and dh_split == 1 else []
    return parts + ([("BLOCK_H", H, P, 1)] if flags["DO_CELL"] and P is not None else [])


def floor(dtype_name, B, parts, config):
    """Per-step analytic floor of one launch: the bytes of the weights it reads, those of one
    program's slice, and L2 and tensor-core times (2 B FLOPs per weight element)."""
    itemsize = DTYPES[dtype_name].itemsize
    elements = sum(units * per_unit for _, units, per_unit, _ in parts)
    slice_elements = sum(config[block] * per_unit // slices for block, _, per_unit, slices in parts)
    w_bytes = elements * itemsize
    return dict(w_mib=w_bytes / 2**20, slice_kib=slice_elements * itemsize / 1024,
                stream_us=w_bytes / L2_BYTES_PER_S * 1e6, mma_us=2 * B * elements / MMA_FLOPS_PER_S[dtype_name] * 1e6)  # fmt: skip


def row_cells(r):
    """The table cells of one (dtype, launch, shape) result."""
    head = [r["kernel"], r["B"], r["H"], r["P"] or "-"]
    if "unavailable" in r:
        return head + ["unavailable: " + r["unavailable"]] + [""] * (len(COLUMNS) - len(head) - 1)
    cfg, f = r["config"], r["floor"]
    grid = f"{r['grid'][0]}x{r['grid'][1]}"
    w_on_chip = "yes" if cfg.get("W_RESIDENT") else "no"  # W_RESIDENT: the program holds its W_hh slice
    blocks = [cfg["BLOCK_B"], cfg["BLOCK_H"], cfg["BLOCK_P"], cfg["BLOCK_K"]]
    # K slices of the backward's dh loop x units of a partial-sum item (DH_SPLIT x BLOCK_PS)
    split = f"{cfg['DH_SPLIT']}x{cfg['BLOCK_PS']}" if cfg.get("DH_SPLIT", 1) > 1 else "-"
    cells = head + blocks + [split, cfg["num_warps"], grid, w_on_chip]
    if "error" in r:
        cells += ["compile error (below)", "", "", "", ""]
    else:
        spills = f"{r['spill_st']}/{r['spill_ld']}"
        if r["spill_st"] or r["spill_ld"]:
            spills = f"**{spills}**"
        resident = "yes" if r["resident"] else "**NO**"
        cells += [r["regs"], spills, f"{r['shared_total'] / 1024:.1f}", r["per_sm"], resident]
    return cells + [f"{f['w_mib']:.2f}", f"{f['slice_kib']:.0f}", f"{f['stream_us']:.2f}", f"{f['mma_us']:.3f}"]


COLUMNS = ["launch", "B", "H", "P", "BLOCK_B", "BLOCK_H", "BLOCK_P", "BLOCK_K", "dh split", "warps", "grid",
           "W on chip", "regs",
           "spills st/ld (B)", "shared (KiB)", "programs/SM", "resident?", "W read (MiB)",
           "W slice/program (KiB)", "stream us/step (L2)", "MMA us/step"]  # fmt: skip


def versions():
    ptxas = subprocess.run([PTXAS, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\w.]+), (V[\w.]+)", ptxas)
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()  # fmt: skip

    try:
        # "-dirty" for changed tracked files outside bench/results, where the reports go:
        # writing one report must not mark the next as built from a changed tree.
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)bench/results")
        commit = git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return triton.__version__, torch.__version__, " ".join(release.groups()) if release else "unknown", commit


def render(results, elapsed, strategy, projection):
    triton_v, torch_v, ptxas_v, commit = versions()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    archs = sorted({r["arch"] for r in results if "arch" in r}) or ["none built"]
    built = [r for r in results if "regs" in r]
    spilled = [r for r in built if r["spill_st"] or r["spill_ld"]]
    outside = [r for r in built if not r["resident"]]
    on_chip = [r for r in built if r["shared_total"] >= r["floor"]["slice_kib"] * 1024]
    out = [
        f"# {'LSTM' if CELL is LSTM else CELL.name} kernels, {strategy} launch{', with a projection' if projection else ''}: sm_90 resources and "
        "per-step floor (H100)",
        "",
        f"Generated by `bench/kernel_resources.py` on {now} in {elapsed:.0f} s: triton {triton_v}, "
        f"torch {torch_v}, ptxas {ptxas_v} (Triton's wheel), fusedrnn at {commit}. **Compiled for sm_90 on a "
        "CPU machine, no GPU run**: nothing here is a measured time.",
        "",
        f"- Config: `planner.kernel_config(B, H, dtype, \"{strategy}\", P=P)` with {H100_SMS} SMs "
        "(`PlannerLimits(modelled_sms)`, as tests/kernels/test_compile.py plans); input = H, "
        + ("P = proj_size" if projection else "no projection (P = H)")
        + ", REVERSE = VARLEN = False. A launch is `_recurrence_fwd_kernel` (fwd) or `_recurrence_bwd_kernel` (bwd), "
        f"CELL = {CELL.name}, with "
        "the phases it runs (`planner.kernel_phases`): cell (DO_CELL), proj (DO_PROJ), dh (DO_DH), dh_partial "
        "(DO_DH_PARTIAL: dh's K loop split in `dh split` = DH_SPLIT slices x BLOCK_PS units); a per-step "
        "layer launches each phase of a step on its own, except dh+cell without a projection. "
        "fp32 with `cudnn.allow_tf32 = True` "
        f"(INPUT_PRECISION tf32{', the backward tf32x3' if planner.LIMITS.tf32_backward_precision == 'tf32x3' else ''}).",
        "- Built with `triton.compile(..., GPUTarget(\"cuda\", 90, 32))`, specialised as a launch is "
        "(`aot.compile_spec`: aligned pointers, sizes and strides that are multiples of 16 marked so, those "
        "equal to 1 constants), "
        "num_warps, num_stages and maxnreg (ptxas register cap) from the config, "
        "`launch_cooperative_grid` for a persistent launch; regs and spills from `ptxas -lineinfo -v` on the PTX (target "
        f"{', '.join(archs)}). "
        "Shared = Triton's dynamic shared memory + ptxas static smem.",
        f"- programs/SM: `launch.programs_per_sm` (the launcher's check) with {SM_REGS} regs/SM (per warp, in "
        f"units of 256), {SM_SHARED // 1024} KiB shared/SM with 1 KiB reserved per block, {SM_THREADS} "
        f"threads/SM; resident = grid (batch blocks x unit blocks) <= {H100_SMS} x programs/SM.",
        "- Floor per step of a launch (assumptions, not measurements): W read = the weights its phases read, "
        f"times itemsize: cell forward and dh backward all of W_hh ({CELL.gates}H*P), proj forward and cell "
        "backward (dm) all of W_hr (P*H); W slice/program = the rows (forward) or columns (backward) of its units, "
        f"{CELL.gates}*BLOCK_H*P (cell), BLOCK_P*H (proj), {CELL.gates}*BLOCK_P*H (dh), BLOCK_H*P (cell backward, "
        "with a projection), "
        "what each program reads per step when W is not kept on chip; stream = W read once at an assumed "
        f"{L2_BYTES_PER_S / 1e12:.1f} TB/s L2 bandwidth (every batch block reads all of it: multiply by the "
        f"grid's batch blocks for the grid's traffic; weights over the {L2_SIZE_MIB} MB L2 come from HBM, "
        "~3.35 TB/s); MMA = 2*B FLOPs per weight element (forward h @ W_hh^T, backward dG @ W_hh alike) at the "
        f"H100 SXM dense peak, {MMA_FLOPS_PER_S['bf16'] / 1e12:.0f} TFLOP/s bf16, "
        f"{MMA_FLOPS_PER_S['fp32'] / 1e12:.0f} TFLOP/s TF32.",
        "- Bold: spills, grids that are not resident."
        + ("" if strategy == "persistent" else " A per-step grid need not be resident: there the column "
           "only says whether a launch runs in one wave of programs."),
        "",
        f"Summary: {len(built)} of {len(results)} (dtype, launch, shape) built; {len(spilled)} spill; "
        f"{len(outside)} not resident; {sum('unavailable' in r for r in results)} unavailable; "
        f"{sum('error' in r for r in results)} compile errors; {len(on_chip)} have as much shared memory "
        "as their W slice (otherwise W cannot be held in shared memory across steps).",
    ]
    for dtype_name in DTYPES:
        rows = [r for r in results if r["dtype"] == dtype_name]
        out += ["", f"## {dtype_name}" + (" (TF32 dots)" if dtype_name == "fp32" else ""), ""]
        out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(str(c) for c in row_cells(r)) + " |" for r in rows]
    errors = [r for r in results if "error" in r]
    out += ["", "## Compile errors", ""]
    out += [f"- {r['dtype']} {r['kernel']} B={r['B']} H={r['H']} P={r['P']}: `{r['error']}`" for r in errors] or ["None."]
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--strategy", default="persistent", choices=["persistent", "per-step"],
                        help="the launch strategy whose configs to build (default persistent)")
    parser.add_argument("--cell", default="lstm", choices=list(CELLS), help="whose kernels (default lstm)")
    parser.add_argument("--projection", action="store_true",
                        help="layers with a projection (bench/NOTES.md v1.3's shapes) instead of the benchmark grid")
    parser.add_argument("--tf32-backward-precision", default="tf32", choices=["tf32", "tf32x3"],
                        help="the fp32 backward's dot precision (planner.PlannerLimits.tf32_backward_precision)")
    args = parser.parse_args()
    planner.LIMITS = planner.PlannerLimits(modelled_sms=H100_SMS, tf32_backward_precision=args.tf32_backward_precision)
    global CELL
    CELL = CELLS[args.cell]
    if args.projection and not CELL.projection:
        parser.error(f"--projection: the {CELL.name} cell has none")
    start = time.time()

    results, jobs = [], {}
    for dtype_name in DTYPES:
        for B, H, P in PROJECTION_SHAPES if args.projection else GRID_SHAPES:
            for kernel_key, (_, backward) in KERNELS.items():
                config, launches = plan(dtype_name, B, H, P, kernel_key, args.strategy)
                r = dict(dtype=dtype_name, B=B, H=H, P=P)
                if not launches:
                    results.append(dict(r, kernel=kernel_key, **config))
                for flags, job in launches:
                    # Shapes with the same constexprs, multiples of 16 and ones (constants) share a build.
                    key = repr((job[:4], [(name, value % 16 == 0, value == 1) for name, value in job[4]]))
                    jobs.setdefault(key, job)
                    grid = planner.phase_grid(config, args.strategy, B, H, P or H, flags)
                    parts = weight_parts(backward, flags, H, P, config.get("DH_SPLIT", 1))
                    results.append(dict(r, kernel=launch_name(kernel_key, flags), config=config, job=key, grid=grid,
                                        floor=floor(dtype_name, B, parts, config)))  # fmt: skip

    with ProcessPoolExecutor(args.jobs) as pool:
        built = dict(zip(jobs, pool.map(compile_one, jobs.values())))
    for r in results:
        if "job" not in r:
            continue
        r.update(built[r["job"]])
        if "error" not in r:
            r["shared_total"] = r["shared"] + r["smem_static"]
            r["per_sm"] = launch.programs_per_sm(r["regs"], r["shared_total"], r["config"]["num_warps"], SM_REGS, SM_SHARED, SM_THREADS)
            r["resident"] = r["grid"][0] * r["grid"][1] <= H100_SMS * r["per_sm"]

    report = render(results, time.time() - start, args.strategy, args.projection)
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
    print(f"{len(jobs)} distinct builds in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

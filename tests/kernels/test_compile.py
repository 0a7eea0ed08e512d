"""Compile the kernels for Hopper (sm_90) ahead of time, without a GPU.

The interpreter does not type-check a kernel as the compiler does (both branches of an `if`
must yield one type, dot operands one dtype) and knows nothing of shared memory. Triton can
compile for a GPU target on any machine (ptxas ships in its wheel), so this test compiles
every configuration the launchers pick, exactly as they pick it, and checks that it fits
sm_90's shared memory. Runs in a subprocess: the test session runs the interpreter.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SM90_MAX_SHARED_BYTES = 232448  # 227 KiB opt-in per block on H100/H200
H100_SMS = 132
# (B, H, proj_size or None, strategy): the auto strategy (smallest block, one launch with
# chunked K, largest one launch, per step; with a projection in one launch and per step),
# and the persistent kernel on 132 SMs with its smallest and largest tiles and a projection.
# B = 1 (unbatched input) in every strategy: a launch passes a size equal to 1 as a constant.
# The backward's split dh loop (DH_SPLIT > 1): persistent at B = 128, H = 1024 (and fp32 at
# H = 1024), per step at H = 1024.
SIZES = [
    (16, 1, None, "auto"), (16, 100, None, "auto"), (16, 128, None, "auto"), (16, 300, None, "auto"),
    (16, 100, 60, "auto"), (16, 300, 200, "auto"),
    (8, 256, None, "persistent"), (16, 1024, None, "persistent"), (128, 1024, None, "persistent"),
    (32, 300, 200, "persistent"),
    (1, 100, None, "auto"), (1, 300, 200, "auto"), (1, 256, None, "persistent"),
    (8, 1024, None, "per-step"),  # the backward's dh K loop split: a partial-sums launch of its own
]  # fmt: skip
# The RNN's builds (one gate, no c, no projection) in a few of those: the smallest and the
# largest one-launch, per step, persistent with held and with streamed weights; rnn_relu differs
# from rnn_tanh only in its activation, so one size is enough for it.
RNN_SIZES = [(16, 100, None, "auto"), (16, 128, None, "auto"), (16, 300, None, "auto"), (8, 256, None, "persistent"),
             (128, 1024, None, "persistent"), (8, 1024, None, "per-step")]  # fmt: skip
CASES = [("lstm", *size) for size in SIZES] + [("rnn_tanh", *size) for size in RNN_SIZES]
CASES.append(("rnn_relu", *RNN_SIZES[-1]))
# The GRU's (three gates, b_hn and hn inside the step, the n slot's two gradients): one launch,
# persistent with held and with streamed weights, per step.
CASES += [("gru", *size) for size in RNN_SIZES[1:2] + RNN_SIZES[3:]]

COMPILE_ALL = r"""
import json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedrnn.kernels import aot, planner, recurrence
from fusedrnn.kernels.cells import CELLS

planner.LIMITS = planner.PlannerLimits(modelled_sms=132)  # an H100's SMs, one program each
NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
results = []


def compile_kernel(kernel, dtype, config, options, sizes):
    signature, constants, attrs = aot.compile_spec(kernel, NAMES[dtype], sizes)  # as a launch specialises
    source = ASTSource(kernel, signature, {**config, **constants}, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm.get("cubin"), "no cubin"
    # .cg loads of 16 bits one element at a time: h_{t-1}'s tile not vectorised (bench/NOTES.md v1.17)
    return compiled.metadata.shared, compiled.asm["ptx"].count("ld.global.cg.b16")


for dtype in NAMES:
    for tf32 in ([False, True] if dtype == torch.float32 else [True]):
        torch.backends.cudnn.allow_tf32 = tf32
        for cell_name, B, H, P, strategy in json.loads(sys.argv[1]):
            cell = CELLS[cell_name]
            if cell_name != "lstm" and (dtype == torch.float16 or not tf32):
                continue  # fp16 and IEEE fp32 dots differ from bf16 and TF32 in dtype only: the LSTM's builds cover them
            if strategy == "auto":
                strategy = planner.fallback_strategy(H, P)
            # REVERSE and VARLEN only add index arithmetic and masks: compile them with all
            # their code in one dtype, and the plain variant everywhere.
            variants = [(False, False)] + ([(True, True)] if dtype == torch.bfloat16 else [])
            for kernel, backward in ((recurrence._recurrence_fwd_kernel, False), (recurrence._recurrence_bwd_kernel, True)):
                config = planner.kernel_config(B, H, dtype, strategy, cell=cell, P=P, backward=backward)
                config, options = aot.split_launch_options(config)
                options["launch_cooperative_grid"] = config["GRID_SYNC"]
                phases = planner.kernel_phases(P is not None, backward, config.get("DH_SPLIT", 1))
                for flags in phases if strategy == "per-step" else [planner.all_phase_flags(phases)]:
                    for reverse, varlen in variants:
                        constexprs = dict(config, **flags, REVERSE=reverse, VARLEN=varlen,
                                          **recurrence.cell_constexprs(cell))
                        int_args = aot.layer_int_args(cell.gates, B, H, P or H)  # as a contiguous layer launches
                        shared, scalar_cg_loads = compile_kernel(kernel, dtype, constexprs, options, int_args)
                        results.append({"cell": cell_name, "kernel": kernel.fn.__name__, "dtype": NAMES[dtype], "B": B, "H": H, "P": P,
                                        "strategy": strategy, "w_resident": config.get("W_RESIDENT", False),
                                        "flags": flags, "reverse": reverse, "varlen": varlen,
                                        "precision": config["INPUT_PRECISION"], "shared": shared,
                                        "scalar_cg_loads": scalar_cg_loads})
print(json.dumps(results))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton's CUDA compiler ships for Linux only")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CUDA tests compile and run the kernels")
def test_kernels_compile_for_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_ALL, json.dumps(CASES)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert {(r["cell"], r["B"], r["H"], r["P"]) for r in results} == {tuple(case[:4]) for case in CASES}
    assert {r["strategy"] for r in results} == {"one-launch", "per-step", "persistent"}
    for kernel in ("_recurrence_fwd_kernel", "_recurrence_bwd_kernel"):  # both hold their weights in some builds
        for cell in ("lstm", "rnn_tanh", "gru"):
            held = [r["w_resident"] for r in results if r["kernel"] == kernel and r["cell"] == cell]
            assert any(held) and not all(held), (kernel, cell)
    assert {r["kernel"] for r in results} == {"_recurrence_fwd_kernel", "_recurrence_bwd_kernel"}
    split = [r for r in results if r["flags"].get("DO_DH_PARTIAL")]  # the split dh loop, per step and persistent
    assert {r["strategy"] for r in split} == {"per-step", "persistent"}
    too_big = [r for r in results if r["shared"] > SM90_MAX_SHARED_BYTES]
    assert not too_big, too_big
    # The forward reads h_{t-1} (its only .cg load) in 16-byte vectors wherever the sizes allow
    # (multiples of 16): Triton 3.8 loaded it one element at a time behind a select of row
    # pointers, and spilled (bench/NOTES.md v1.17). The GPU image's Triton 3.6 vectorised both.
    aligned = [r for r in results if r["kernel"] == "_recurrence_fwd_kernel" and r["dtype"] != "fp32"
               and r["H"] % 16 == 0 and (r["P"] or r["H"]) % 16 == 0]  # fmt: skip
    scalar = [(r["cell"], r["dtype"], r["B"], r["H"], r["P"], r["strategy"], r["reverse"], r["varlen"], r["scalar_cg_loads"])
              for r in aligned if r["scalar_cg_loads"]]  # fmt: skip
    assert aligned and not scalar, scalar


LOG_AND_REBUILD = r"""
import json, os, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedrnn.kernels import aot, planner, recurrence
from fusedrnn.kernels.cells import CELLS

log, first_cache, second_cache = sys.argv[1:4]
triton.knobs.cache.dir = first_cache
aot.log_compiles(log)
cell = CELLS["gru"]  # constants of every kind: ints, bools, a str, a tl.dtype
kernel = recurrence._recurrence_fwd_kernel
constexprs, options = aot.split_launch_options(
    planner.kernel_config(1, 32, torch.bfloat16, "one-launch", cell=cell, backward=False))
constexprs.update(planner.all_phase_flags(planner.kernel_phases(False, False, 1)), REVERSE=True, VARLEN=True,
                  **recurrence.cell_constexprs(cell))
signature, constants, attrs = aot.compile_spec(kernel, "bf16", dict(B=1, H=32, P=32))  # B = 1: a constant
source = ASTSource(kernel, signature, {**constexprs, **constants}, attrs)
built = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
(record,) = [json.loads(line) for line in open(log)]
triton.knobs.cache.dir = second_cache
triton.knobs.compilation.store_binary_only = True
rebuilt = aot.rebuild(record)
again = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
print(json.dumps(dict(built=built.hash, rebuilt=rebuilt.hash, again=again.hash,
                      log=[json.loads(line) for line in open(log)],
                      files=sorted(p for _, _, names in os.walk(second_cache) for p in names))))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton's CUDA compiler ships for Linux only")
def test_a_logged_build_rebuilds_with_its_hash_into_a_cache_the_launch_then_hits(tmp_path):
    """The compile log (FUSEDRNN_COMPILE_LOG, kernels/aot.py) records a build so exactly that
    `aot.rebuild` gets the same cache hash in another cache folder, where the same build is
    then a cache hit; `bench/prebuild_cache.py` checks a log so and reports it."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDRNN_COMPILE_LOG")}
    log, first, second = tmp_path / "compiles.jsonl", tmp_path / "first", tmp_path / "second"
    done = subprocess.run([sys.executable, "-c", LOG_AND_REBUILD, str(log), str(first), str(second)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["built"] == result["rebuilt"] == result["again"]
    assert [(row["hash"], row["cache_hit"]) for row in result["log"]] == [(result["built"], False)] * 2 + [
        (result["built"], True)
    ]
    assert result["log"][0]["kernel"] == "fusedrnn.kernels.recurrence:_recurrence_fwd_kernel"
    assert {"tl.dtype": "bf16"} in [value for _, value in result["log"][0]["constants"]]
    assert not [name for name in result["files"] if name.endswith((".ptx", ".ttgir", ".llir"))]  # binary only

    # The script over the log and a line of another library's: one kernel (three lines),
    # rebuilt with its hash.
    with open(log, "a") as f:
        f.write(json.dumps(dict(result["log"][0], kernel="torch._inductor.generated:triton_poi_fused_add_0")) + "\n")
    tool = Path(__file__).resolve().parents[2] / "bench" / "prebuild_cache.py"
    done = subprocess.run([sys.executable, str(tool), str(log), "--cache", str(tmp_path / "third"), "--jobs", "1"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "1 kernels logged (1 log lines left out" in done.stdout
    assert "1 with the logged hash, 0 with another, 0 failed" in done.stdout

    # A record that is not what was built (another num_warps) rebuilds with another hash: the
    # script says so, and which part of the key differs.
    record = result["log"][0]
    record["options"]["num_warps"] *= 2
    (tmp_path / "edited.jsonl").write_text(json.dumps(record) + "\n")
    command = [sys.executable, str(tool), str(tmp_path / "edited.jsonl"), "--cache", str(tmp_path / "fourth"),
               "--jobs", "1"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "0 with the logged hash, 1 with another" in done.stdout, done.stdout
    assert "key parts that differ: options in 1" in done.stdout, done.stdout

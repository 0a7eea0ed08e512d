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

import pytest
import torch

SM90_MAX_SHARED_BYTES = 232448  # 227 KiB opt-in per block on H100/H200
HIDDEN_SIZES = [1, 100, 128, 300]  # smallest block, one launch with chunked K, largest one launch, per step

COMPILE_ALL = r"""
import json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedrnn.kernels import lstm

FP32_POINTERS = {"p_c", "p_dc"}  # the fp32 cell state and its carried gradient
NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
results = []
for dtype in NAMES:
    for tf32 in ([False, True] if dtype == torch.float32 else [True]):
        torch.backends.cudnn.allow_tf32 = tf32
        for H in json.loads(sys.argv[1]):
            config, one_launch = lstm.kernel_config(H, dtype)
            options = {k: config.pop(k) for k in ("num_warps", "num_stages")}
            for kernel in (lstm._lstm_fwd_kernel, lstm._lstm_bwd_kernel):
                signature = {}
                for param in kernel.params:
                    name = param.name
                    if param.is_constexpr:
                        signature[name] = "constexpr"
                    elif name.startswith("p_"):
                        signature[name] = "*fp32" if name in FP32_POINTERS else "*" + NAMES[dtype]
                    else:
                        signature[name] = "i32"
                compiled = triton.compile(
                    ASTSource(kernel, signature, dict(config)), target=GPUTarget("cuda", 90, 32), options=options
                )
                assert compiled.asm.get("cubin"), "no cubin"
                results.append({"kernel": kernel.fn.__name__, "dtype": NAMES[dtype], "H": H,
                                "precision": config["INPUT_PRECISION"], "shared": compiled.metadata.shared})
print(json.dumps(results))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton's CUDA compiler ships for Linux only")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the CUDA tests compile and run the kernels")
def test_kernels_compile_for_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_ALL, json.dumps(HIDDEN_SIZES)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * 4 * len(HIDDEN_SIZES)
    too_big = [r for r in results if r["shared"] > SM90_MAX_SHARED_BYTES]
    assert not too_big, too_big

"""Building a recurrence kernel ahead of time, without a GPU, exactly as a launch would build
it: the sm_90 compile test (tests/kernels/test_compile.py) and the resource tables
(bench/kernel_resources.py) read registers, spills and shared memory off these builds.
"""

def compile_spec(kernel, dtype_name, int_args):
    """``(signature, constants, attrs)`` for ``triton.compile(ASTSource(kernel, signature,
    {**constexprs, **constants}, attrs))``: ``kernel`` built ahead of time as a launch with
    ``dtype_name`` ("fp32", "bf16", "fp16") tensors and the integer arguments ``int_args``
    ({name: value}, the others generic) builds it (tests/kernels/test_compile.py,
    bench/kernel_resources.py). Tensors: the fp32 state and gradient buffers, int64 lengths,
    the int32 barrier counters; every pointer 16-byte aligned (torch's allocations are).
    Integers: 32-bit; one that is a multiple of 16 marked so (without it the masked loads do
    not vectorise, and the registers and spills are not the launch's), one equal to 1 the
    constant 1 (Triton specialises it so: a kernel must not call tensor methods on it)."""
    types = {"p_c": "*fp32", "p_dc": "*fp32", "p_dh": "*fp32", "p_dh_part": "*fp32", "p_lengths": "*i64",
             "p_sync": "*i32", "p_hn": "*fp32", "p_dgx_n": "*fp32"}  # fmt: skip
    aligned = [["tt.divisibility", 16]]
    signature, constants, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name.startswith("p_"):
            signature[p.name] = types.get(p.name, "*" + dtype_name)
            attrs[(i,)] = aligned
        elif int_args.get(p.name) == 1:
            signature[p.name], constants[p.name] = "constexpr", 1
        else:
            signature[p.name] = "i32"
            if p.name in int_args and int_args[p.name] % 16 == 0:
                attrs[(i,)] = aligned
    return signature, constants, attrs


LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def split_launch_options(config):
    """A ``kernel_config`` split into the kernel's constexprs and the compiler's options (for
    ``triton.compile``, which takes them apart, unlike a launch)."""
    constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    return constexprs, {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}


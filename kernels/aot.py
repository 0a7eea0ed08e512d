"""Building a recurrence kernel ahead of time, without a GPU, exactly as a launch would build
it: the sm_90 compile test (tests/kernels/test_compile.py) and the resource tables
(bench/kernel_resources.py) read registers, spills and shared memory off these builds.

The compile log: with ``FUSEDRNN_COMPILE_LOG=path`` in its environment, a process appends one
JSON line to ``path`` for every kernel Triton builds or finds in its cache (what was built,
for which target and options, its cache hash, the seconds it took). ``rebuild`` builds a
logged kernel again on any machine, a CPU one included, and ``bench/prebuild_cache.py`` fills
a Triton cache with a GPU run's kernels: where the rebuilt hash equals the logged one, the
next run on that GPU finds them there instead of compiling.
"""

import hashlib
import importlib
import json
import os
import warnings


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


def layer_int_args(gates, B, H, P):
    """The integer arguments of a layer's launches that Triton specialises on (multiples of 16,
    ones), for ``compile_spec``: sizes and the strides of contiguous time-major (T, B, *)
    tensors; P = H without a projection (W_hh is gates*H x P, W_hr P x H, h and its gradients
    P wide, c H wide)."""
    return dict(
        B=B, H=H, P=P, stride_gt=B * gates * H, stride_gb=gates * H, stride_dgt=B * gates * H, stride_dgb=gates * H,
        stride_ot=B * P, stride_ob=P, stride_dyt=B * P, stride_dyb=P, stride_dyh=1, stride_w=P, stride_hr=H,
        stride_h0b=P, stride_c0b=H, stride_dhnb=P,
    )  # fmt: skip


LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def split_launch_options(config):
    """A ``kernel_config`` split into the kernel's constexprs and the compiler's options (for
    ``triton.compile``, which takes them apart, unlike a launch)."""
    constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    return constexprs, {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}


COMPILE_LOG_ENV = "FUSEDRNN_COMPILE_LOG"


def log_compiles_from_environment():
    """Install the compile log if ``FUSEDRNN_COMPILE_LOG`` names a file (the kernel modules call
    this when they are imported)."""
    path = os.environ.get(COMPILE_LOG_ENV)
    if path:
        log_compiles(path)


def log_compiles(path):
    """Append a line to ``path`` for each kernel this process builds or loads from Triton's
    cache (a launch builds each variant once per process). Keeps any listener already set."""
    import triton

    if getattr(triton.knobs.compilation.listener, "fusedrnn_log", None) == path:
        return
    before = triton.knobs.compilation.listener

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        if before is not None:
            before(src=src, metadata=metadata, metadata_group=metadata_group, times=times, cache_hit=cache_hit)
        try:
            line = json.dumps(compile_record(src, metadata, times, cache_hit)) + "\n"
        except Exception as err:  # a log must never fail the launch it describes
            line = json.dumps({"error": f"{type(err).__name__}: {err}", "name": getattr(src, "name", None)}) + "\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())  # one write: processes logging to one file do not interleave lines
            finally:
                os.close(fd)
        except OSError as err:
            warnings.warn(f"{COMPILE_LOG_ENV}={path}: {err}", RuntimeWarning, stacklevel=2)

    listener.fusedrnn_log = path
    triton.knobs.compilation.listener = listener


def compile_record(src, metadata, times, cache_hit):
    """What ``rebuild`` needs to build a kernel again, and its hash to check the rebuild by."""
    import triton
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    target = metadata["target"]
    if isinstance(target, dict):  # as a cache hit's metadata may hold it
        target = GPUTarget(**target)
    # extern_libs holds a path, which differs between machines: the key hashes its file
    option_names = make_backend(target).parse_options({}).__dict__.keys() - {"extern_libs"}
    options = {k: metadata[k] for k in sorted(option_names) if k in metadata}
    fn = src.fn.fn
    return {
        "kernel": f"{fn.__module__}:{fn.__qualname__}",
        "signature": dict(src.signature),
        "constants": [[list(path), _encode_constant(value)] for path, value in src.constants.items()],
        "attrs": [[list(path), value] for path, value in src.attrs.items()],
        "options": options,
        "env_vars": dict(get_cache_invalidating_env_vars()),
        "target": [target.backend, target.arch, target.warp_size],
        "hash": metadata["hash"],
        "key_parts": key_parts(src, target, _tuples(options)),
        "triton": triton.__version__,
        "cache_hit": cache_hit,
        "seconds": round(times.total / 1e6, 4),
        "pid": os.getpid(),
    }


def key_parts(source, target, options):
    """Hashes of the parts of a build's cache key: the kernel's source and specialisation, the
    compiler backend (its ptxas version and the architecture), the compiler's options, the
    Triton installation (its files, its library included)."""
    from triton.compiler.compiler import make_backend
    from triton.runtime.cache import triton_key

    backend = make_backend(target)
    return {"src": source.hash(), "backend": backend.hash(), "options": backend.parse_options(options).hash(),
            "triton": hashlib.sha256(triton_key().encode()).hexdigest()}  # fmt: skip


def _encode_constant(value):
    import triton.language as tl

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tl.dtype):
        return {"tl.dtype": value.name}
    return {"repr": repr(value)}  # not rebuilt: rebuild raises on it


def _decode_constant(value):
    import triton.language as tl

    if not isinstance(value, dict):
        return value
    if "tl.dtype" in value:
        return tl.dtype(value["tl.dtype"])
    raise ValueError(f"a constant the compile log could not record: {value['repr']}")


def _tuples(options):
    """JSON's lists back to the tuples Triton's options hold (their hash is of their str)."""

    def tuples(value):
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    return {k: tuples(v) for k, v in options.items()}


def logged_source(record):
    """The ``(ASTSource, GPUTarget)`` of a compile-log record, as the logged build had them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, _, name = record["kernel"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    constants = {tuple(path): _decode_constant(value) for path, value in record["constants"]}
    attrs = {tuple(path): value for path, value in record["attrs"]}
    return ASTSource(fn, dict(record["signature"]), constants, attrs), GPUTarget(*record["target"])


def rebuild(record):
    """Build the kernel of one compile-log record again, for the target, options and
    specialisation the logged build had, into Triton's cache (``triton.knobs.cache.dir``).
    Returns the CompiledKernel: its ``hash`` equals ``record["hash"]`` exactly where a launch
    with that record's Triton, target and environment finds the kernel in this cache."""
    import triton

    source, target = logged_source(record)
    return triton.compile(source, target=target, options=_tuples(record["options"]), _env_vars=record["env_vars"])


def rebuilt_key_parts(record):
    """``key_parts`` of the build ``rebuild`` makes of ``record`` on this machine."""
    return key_parts(*logged_source(record), _tuples(record["options"]))

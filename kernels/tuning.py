"""Measured launch choices of the recurrence kernels, per GPU and cell: which strategy "auto"
runs for a shape, and the block sizes (BLOCK_K, num_warps, num_stages; for the backward DH_SPLIT, the K
slices of its dh loop) and the prefetch switch (PREFETCH_GX, PREFETCH_OWN_TILES) of a kernel config.

Tables. One JSON file per GPU model, ``kernels/tuned/<slug of the GPU name>.json``, shipped
as package data (``kernels/tuned/README.md`` says how they are made)::

    {"gpu": "NVIDIA H100 80GB HBM3",         # torch.cuda.get_device_name()
     "dispatch": [{"cell": "lstm", "kernel": "fwd", "dtype": "bfloat16", "B": 32, "H": 1024,
                   "P": null, "strategy": "persistent"}, ...],
     "configs": [{"cell": "lstm", "kernel": "fwd", "strategy": "persistent", "dtype": "bfloat16",
                  "B": 32, "H": 1024, "P": null, "config": {"BLOCK_K": 64, "num_warps": 8,
                  "num_stages": 3}}, ...],
     ...}                                    # other keys: provenance, not read here

"cell" names the cell (``kernels/cells.py`` CELLS: each cell's kernels are built and tuned
apart), "kernel" is "fwd" (the forward recurrence, ``recurrence_fwd``) or "bwd" (its
backward), "P" the projection size or null.
``bench/report.py dispatch`` writes "dispatch" from benchmark results; ``bench/tune.py``
writes "configs". A table is validated when it is loaded: a bad one raises ValueError naming
its file.

Which table. ``use_table(table)`` installs one for every device, CPU and the Triton
interpreter included, inside its ``with`` block (tests; the tuner trying a candidate);
``use_table(None)`` installs none. Otherwise the environment variable ``FUSEDRNN_TUNING``
decides: "off" for no table, a path for that JSON file (used on every CUDA device, whatever
its "gpu" says: trying a table on a sibling GPU is the point), unset or empty for the
committed table of the device's GPU name, if there is one. CPU tensors, the interpreter and
``device=None`` get no table unless ``use_table`` installed one.
"""

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from .cells import CELLS

TUNED_DIR = Path(__file__).parent / "tuned"
ENV_VAR = "FUSEDRNN_TUNING"
KERNELS = ("fwd", "bwd")
STRATEGIES = ("one-launch", "persistent", "per-step")  # kernels/planner.py launch_strategy
DTYPES = ("float32", "float16", "bfloat16")
NUM_WARPS = (1, 2, 4, 8, 16)
MAX_NUM_STAGES = 5
MAX_DH_SPLIT = 8  # DH_SPLIT (kernels/planner.py): the backward's K slices of its dh loop
# Each kernel's switch for loading the next step's own tiles before a step's barrier
# (kernels/planner.py): a table can turn it off where the measurements say it does not pay.
PREFETCH = {"fwd": "PREFETCH_GX", "bwd": "PREFETCH_OWN_TILES"}
# A dispatch measurement stands in for shapes up to this far from it, in
# |log2 B - log2 B'| + |log2 H - log2 H'| (+ the same for P): one doubling or halving of B or
# H. The strategies trade launch count against programs and registers, which move with B*H;
# two doublings away (4x the work per step) the measurement says little about the winner.
MAX_DISTANCE = 1.0

_DISPATCH_KEYS = ("cell", "kernel", "dtype", "B", "H", "P", "strategy")
_CONFIG_KEYS = ("cell", "kernel", "strategy", "dtype", "B", "H", "P", "config")
_NO_TABLE = object()  # use_table not active
_installed = _NO_TABLE
_cache = {}  # ("gpu", name) or ("file", absolute path) -> _Table or None
_device_names = {}  # CUDA device index -> name


def slug(gpu_name):
    """The table file's stem for a GPU name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def table_path(gpu_name):
    return TUNED_DIR / f"{slug(gpu_name)}.json"


def dtype_name(dtype):
    """"bfloat16" for torch.bfloat16 or "bfloat16"."""
    return str(dtype).removeprefix("torch.")


class _Table:
    """A validated table and its entries indexed by key."""

    def __init__(self, table, dispatch, configs):
        self.table = table
        self.dispatch = dispatch  # {(cell, kernel, dtype, B, H, P): strategy}
        self.configs = configs  # {(cell, kernel, strategy, dtype, B, H, P): {option: value}}

    def strategy(self, cell, kernel, B, H, P, dtype):
        exact = self.dispatch.get((cell, kernel, dtype, B, H, P))
        if exact is not None:
            return exact
        nearest, strategies = math.inf, set()
        for (c, k, d, b, h, p), strategy in self.dispatch.items():
            if c != cell or k != kernel or d != dtype or (p is None) != (P is None):
                continue
            distance = abs(math.log2(B / b)) + abs(math.log2(H / h)) + (abs(math.log2(P / p)) if P else 0.0)
            if distance < nearest - 1e-9:
                nearest, strategies = distance, {strategy}
            elif distance <= nearest + 1e-9:
                strategies.add(strategy)
        # Equally near measurements that disagree say nothing for this shape: the rule decides.
        if nearest <= MAX_DISTANCE + 1e-9 and len(strategies) == 1:
            return strategies.pop()
        return None


def _positive_int(value):
    return type(value) is int and value >= 1  # bool is an int: excluded


def _check_entry(entry, keys, where):
    """The entry's key problems (a message) or None."""
    if not isinstance(entry, dict) or set(entry) != set(keys):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        return f"{where}: expected the keys {', '.join(keys)}, got {got}"
    if entry["cell"] not in CELLS:
        return f"{where}: cell must be one of {tuple(CELLS)}, got {entry['cell']!r}"
    if entry["kernel"] not in KERNELS:
        return f"{where}: kernel must be one of {KERNELS}, got {entry['kernel']!r}"
    if entry["strategy"] not in STRATEGIES:
        return f"{where}: strategy must be one of {STRATEGIES}, got {entry['strategy']!r}"
    if entry["dtype"] not in DTYPES:
        return f"{where}: dtype must be one of {DTYPES}, got {entry['dtype']!r}"
    for name in ("B", "H"):
        if not _positive_int(entry[name]):
            return f"{where}: {name} must be a positive integer, got {entry[name]!r}"
    if entry["P"] is not None and not _positive_int(entry["P"]):
        return f"{where}: P must be null or a positive integer, got {entry['P']!r}"
    return None


def _check_config(config, kernel, where):
    """The problem of a "config" value of a ``kernel`` entry (a message) or None."""
    options = ("BLOCK_K", "num_warps", "num_stages") + (("DH_SPLIT", PREFETCH["bwd"]) if kernel == "bwd"
                                                         else (PREFETCH["fwd"],))  # fmt: skip
    if not isinstance(config, dict) or not config or not set(config) <= set(options):
        return f"{where}: config must set some of {', '.join(options)} and nothing else, got {config!r}"
    prefetch = config.get(PREFETCH[kernel])
    if prefetch is not None and type(prefetch) is not bool:
        return f"{where}: {PREFETCH[kernel]} must be true or false, got {prefetch!r}"
    block_k, warps, stages, split = (config.get(k) for k in ("BLOCK_K", "num_warps", "num_stages", "DH_SPLIT"))
    if split is not None and not (_positive_int(split) and split <= MAX_DH_SPLIT):
        return f"{where}: DH_SPLIT must be an integer from 1 to {MAX_DH_SPLIT}, got {split!r}"
    if block_k is not None and not (_positive_int(block_k) and block_k >= 16 and block_k & (block_k - 1) == 0):
        return f"{where}: BLOCK_K must be a power of two >= 16 (tl.dot's minimum), got {block_k!r}"
    if warps is not None and not (type(warps) is int and warps in NUM_WARPS):
        return f"{where}: num_warps must be one of {NUM_WARPS}, got {warps!r}"
    if stages is not None and not (_positive_int(stages) and stages <= MAX_NUM_STAGES):
        return f"{where}: num_stages must be an integer from 1 to {MAX_NUM_STAGES}, got {stages!r}"
    return None


def validate(table, origin):
    """A table's entries indexed (``_Table``), or ValueError naming ``origin`` (its file)."""

    def fail(problem):
        raise ValueError(f"fusedrnn tuning table {origin}: {problem}")

    if not isinstance(table, dict):
        fail(f"expected a JSON object, got {type(table).__name__}")
    if not isinstance(table.get("gpu"), str) or not table["gpu"]:
        fail('"gpu" must name the GPU (torch.cuda.get_device_name())')
    for section in ("dispatch", "configs"):
        if not isinstance(table.get(section), list):
            fail(f'"{section}" must be a list')
    dispatch, configs = {}, {}
    for i, entry in enumerate(table["dispatch"]):
        where = f"dispatch[{i}]"
        problem = _check_entry(entry, _DISPATCH_KEYS, where)
        if problem:
            fail(problem)
        key = tuple(entry[k] for k in _DISPATCH_KEYS[:-1])
        if key in dispatch:
            fail(f"{where}: a second entry for {dict(zip(_DISPATCH_KEYS, key))}")
        dispatch[key] = entry["strategy"]
    for i, entry in enumerate(table["configs"]):
        where = f"configs[{i}]"
        problem = _check_entry(entry, _CONFIG_KEYS, where) or _check_config(entry["config"], entry["kernel"], where)
        if problem:
            fail(problem)
        key = tuple(entry[k] for k in _CONFIG_KEYS[:-1])
        if key in configs:
            fail(f"{where}: a second entry for {dict(zip(_CONFIG_KEYS, key))}")
        configs[key] = dict(entry["config"])
    return _Table(table, dispatch, configs)


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"fusedrnn tuning table {path}: cannot be read: {err}") from err


def load_table(path):
    """The table in JSON file ``path``, validated (ValueError naming the file)."""
    return validate(_read(path), path).table


def _load(path, gpu_name=None):
    """The indexed table in ``path``; with ``gpu_name``, the committed table of that GPU (None
    when there is none), which must say it is that GPU's."""
    if gpu_name is not None and not path.exists():
        return None
    index = validate(_read(path), path)
    if gpu_name is not None and index.table["gpu"] != gpu_name:
        raise ValueError(f"fusedrnn tuning table {path}: measured on {index.table['gpu']!r}, not {gpu_name!r}")
    return index


def _device_name(device):
    """The CUDA device's name (cached per device), None for CPU tensors and for None."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _device_names:
        _device_names[index] = torch.cuda.get_device_name(index)
    return _device_names[index]


def _index_for(device):
    if _installed is not _NO_TABLE:
        return _installed
    setting = os.environ.get(ENV_VAR, "")
    if setting.lower() == "off":
        return None
    name = _device_name(device)
    if name is None:
        return None
    key = ("file", os.path.abspath(setting)) if setting else ("gpu", name)
    if key not in _cache:  # a table that fails to load is not cached: it fails every time
        _cache[key] = _load(Path(setting)) if setting else _load(table_path(name), name)
    return _cache[key]


_generation = 0  # counts the changes of which tables apply (use_table, clear_cache)


def state():
    """A token that changes whenever the tables that apply may have: what the launchers' kept
    plans (kernels/planner.py ``plans``) are keyed on."""
    return _generation, os.environ.get(ENV_VAR)


def _changed():
    global _generation
    _generation += 1


def clear_cache():
    """Forget the tables loaded (after changing a table file in the same process)."""
    _cache.clear()
    _device_names.clear()
    _changed()


def table_for(device):
    """The table that applies to ``device`` (see the module docstring), or None."""
    index = _index_for(device)
    return None if index is None else index.table


@contextmanager
def use_table(table):
    """Use ``table`` (a dict as in the module docstring; None: no table) for every device
    inside the ``with`` block, instead of the committed tables and ``FUSEDRNN_TUNING``. It is
    validated on entry. Process-wide, not per thread, like ``launch_strategy``."""
    global _installed
    index = None if table is None else validate(table, "given to use_table")
    saved, _installed = _installed, index
    _changed()
    try:
        yield
    finally:
        _installed = saved
        _changed()


def measured_strategy(cell, kernel, B, H, P, dtype, device):
    """The strategy the table measured fastest for ``cell``'s (a CELLS name) ``kernel`` ("fwd"
    or "bwd") at (B, H, P) in ``dtype``: the entry of that shape, else of the nearest measured
    shape of the same cell, kernel, dtype and projection-ness within MAX_DISTANCE; None when
    there is none (or no table)."""
    index = _index_for(device)
    return None if index is None else index.strategy(cell, kernel, B, H, P, dtype_name(dtype))


def tuned_config(cell, kernel, strategy, B, H, P, dtype, device):
    """The measured overrides ({"BLOCK_K", "num_warps", "num_stages", ...}, some of them) of the
    kernel config of ``cell``'s ``kernel`` under ``strategy`` at exactly (B, H, P) in ``dtype`` (a fresh
    dict), or None. Exact: the tiles the options were tuned for depend on B beyond its power
    of two (the per-step plan weighs the grid against the SMs), and options tuned for one
    tile can spill on another."""
    index = _index_for(device)
    if index is None:
        return None
    config = index.configs.get((cell, kernel, strategy, dtype_name(dtype), B, H, P))
    return None if config is None else dict(config)


def dumps(table):
    """A table as JSON text with one line per entry, so that a changed entry is one line of
    diff."""

    def format_value(value, depth):
        pad, end = "  " * (depth + 1), "  " * depth
        if isinstance(value, dict) and value:
            items = [f"{pad}{json.dumps(k)}: {format_value(v, depth + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{end}}}"
        if isinstance(value, list) and value:
            return "[\n" + ",\n".join(pad + json.dumps(v) for v in value) + f"\n{end}]"
        return json.dumps(value)

    return format_value(table, 0) + "\n"

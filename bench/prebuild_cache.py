"""Fill a Triton cache, on a CPU, with the kernels a GPU run built.

A GPU machine here starts with an empty Triton cache, so every kernel variant a run launches
is compiled there first (about 0.3-1 s each, hundreds of them). `bench/gpu_smoke.py` logs
every build (`FUSEDRNN_COMPILE_LOG`, `kernels/aot.py`) into `compiles-<section>.jsonl`. This
script builds each logged kernel again for its GPU target, into a cache folder, and checks the
rebuilt cache hash against the logged one:

    python bench/prebuild_cache.py bench/results/<run>/compiles-*.jsonl --cache .triton-prebuilt

Run it with the GPU's Python and Triton (Python 3.12 and the GPU image's Triton: the cache key
hashes Triton's own files, its compiled library included, which differ between Python
versions). Where every hash matches, a GPU run started with `TRITON_CACHE_DIR` on that folder
(the device tool's `carry`) loads those kernels instead of compiling them. A hash that differs
says which part of the key differs: the kernel's source and specialisation (`src`; expected
where the kernels changed since the logged run, and then the rebuild is of the code as it is
now), the compiler's ptxas (`backend`), its options (`options`), or the Triton installation
(`triton`); none of them: the environment variables that invalidate Triton's cache. Only the cubin
and the metadata are stored (`TRITON_STORE_BINARY_ONLY`, which is not part of the key).
"""

import argparse
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def read_records(paths):
    """fusedrnn's logged builds, one per cache hash (a hash logged by several processes once),
    and how many lines were left out: a build the log could not describe, a line cut by a
    kill, another library's kernel (inductor's, in the torch.compile tests)."""
    records, left_out = {}, 0
    for path in paths:
        for line in Path(path).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {}
            if "hash" not in record or not record["kernel"].startswith("fusedrnn."):
                left_out += 1
                continue
            records.setdefault(record["hash"], record)
    return list(records.values()), left_out


def _rebuild_one(record, cache_dir):
    """(rebuilt hash or None, the key parts that differ, error or None) of one record."""
    import triton

    from fusedrnn.kernels import aot

    triton.knobs.cache.dir = cache_dir
    triton.knobs.compilation.store_binary_only = True
    try:
        compiled = aot.rebuild(record)
    except Exception as err:
        return None, [], f"{type(err).__name__}: {err}"
    differs = []
    if compiled.hash != record["hash"]:
        here = aot.rebuilt_key_parts(record)
        differs = [part for part, value in here.items() if value != record["key_parts"][part]]
    return compiled.hash, differs, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring.")  # fmt: skip
    parser.add_argument("logs", nargs="+", help="compile logs (compiles-*.jsonl of a gpu_smoke run)")
    parser.add_argument("--cache", required=True, help="the Triton cache folder to fill")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="builds at once")
    parser.add_argument("--archive", help="also pack the cache folder into this .tar.gz")
    args = parser.parse_args(argv)

    records, left_out = read_records(args.logs)
    cache_dir = str(Path(args.cache).resolve())
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(_rebuild_one, records, [cache_dir] * len(records)))
    matched = [rec for rec, (rebuilt, _, _) in zip(records, results) if rebuilt == rec["hash"]]
    failed = [(rec["hash"], error) for rec, (_, _, error) in zip(records, results) if error is not None]
    differ = [differs for rec, (rebuilt, differs, _) in zip(records, results) if rebuilt not in (None, rec["hash"])]
    logged = sum(rec.get("seconds", 0) for rec in records if not rec.get("cache_hit"))
    print(f"{len(records)} kernels logged ({left_out} log lines left out: not fusedrnn's, or not a build), "
          f"{logged:.0f} s of compiling where they were built")  # fmt: skip
    print(f"rebuilt in {time.monotonic() - start:.0f} s: {len(matched)} with the logged hash, "
          f"{len(differ)} with another, {len(failed)} failed")  # fmt: skip
    parts = {}
    for differs in differ:
        for part in differs:
            parts[part] = parts.get(part, 0) + 1
    if parts:
        print("  key parts that differ: " + ", ".join(f"{k} in {v}" for k, v in sorted(parts.items())))
    for logged_hash, error in failed[:10]:
        print(f"  {logged_hash[:12]}: {error}")
    size = sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file())
    print(f"cache {cache_dir}: {size / 2**20:.1f} MiB")
    if args.archive:
        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(cache_dir, arcname=".")
        print(f"archive {args.archive}: {Path(args.archive).stat().st_size / 2**20:.1f} MiB")
    return 0 if not failed and not differ else 1


if __name__ == "__main__":
    sys.exit(main())

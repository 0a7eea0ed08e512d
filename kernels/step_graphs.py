"""CUDA graphs of the per-step strategy's launches (``fusedrnn.kernels.recurrence``).

Why. The per-step strategy launches its kernel once per step and phase: T or 2T launches a
recurrence. Each launch from Python costs Triton's argument binding and a driver call on the
CPU, and the GPU idles whenever a step's work is shorter than that. A CUDA graph issues the
whole sequence with one call.

When. A graph re-issues its launches with the arguments they were captured with: pointers,
sizes, strides. It can serve a later call only when that call's launches are exactly the
same, which is the normal case in a training or inference loop: the caching allocator hands
the same addresses to the same sequence of allocations every iteration. So the cache keys a
recurrence on everything its launches pass (each tensor argument as address and dtype, every
integer, the constexprs, the grid), counts how often each key occurs, captures the sequence
on the key's ``CAPTURE_AFTER``-th occurrence and replays it from then on. The occurrences
before ran eagerly, so every kernel is compiled and loaded before a capture. A replay is the
same launches on the same memory: the tensors' contents are read when it runs, and only
their addresses, which are the key, are baked in. A call whose key changes every time (say
fresh inputs that are kept alive) never captures and pays a dictionary lookup.

Not used: off CUDA (the interpreter), while the caller's stream is itself being captured
(``torch.cuda.graph``, ``torch.compile(mode="reduce-overhead")``: the launches go into the
caller's graph), while Triton launch hooks are installed (a profiler such as proton: a replay
would bypass them), with ``FUSEDRNN_CUDA_GRAPHS=0`` in the environment, or inside
``enabled(False)`` (bench/bench_lstm.py's A/B). A capture that fails leaves its sequence to
eager launches for good.

Threads. Captures are serialised by a process-wide lock and run on one side stream per device
from PyTorch's pool, as ``torch.cuda.graph`` does by default. The capture is "thread_local",
so other threads' CUDA calls do not invalidate it, but, as with ``torch.cuda.graph``, work that
another thread puts on that same pool stream during the capture would be captured, and a
CUDA RNG call on the same device from another thread may be refused while the capture lasts.
A capture records T launches (a few milliseconds of host time) once per sequence.
"""

import os
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import torch
import triton

ENV_VAR = "FUSEDRNN_CUDA_GRAPHS"
CAPTURE_AFTER = 2  # occurrences of a launch sequence before it is captured
MAX_GRAPHS = 32  # graphs kept, least recently used dropped: layers x directions x fwd/bwd
MAX_COUNTED = 256  # keys counted while not (yet) captured

_forced = None  # set by enabled(); None: the environment decides


@contextmanager
def enabled(flag):
    """Use graphs for per-step recurrences inside the block (``flag`` True) or not (False),
    whatever ``FUSEDRNN_CUDA_GRAPHS`` says. Process-wide, like ``launch_strategy``."""
    global _forced
    saved, _forced = _forced, bool(flag)
    try:
        yield
    finally:
        _forced = saved


def active(device):
    """Whether a per-step recurrence on ``device`` goes through the graph cache now."""
    on = _forced if _forced is not None else os.environ.get(ENV_VAR, "1") != "0"
    return on and device.type == "cuda" and not _launch_hooks() and not torch.cuda.is_current_stream_capturing()


def _launch_hooks():
    """Whether Triton calls hooks around each launch (which a replay would not call)."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    hooks = (getattr(runtime, name, None) for name in ("launch_enter_hook", "launch_exit_hook"))
    return any(hook is not None and getattr(hook, "calls", True) for hook in hooks)  # HookChain: .calls


def _arg_key(arg):
    if isinstance(arg, torch.Tensor):
        return "tensor", arg.data_ptr(), arg.dtype, arg.device
    return type(arg), arg


def launch_key(kernel, grid, args, constexprs):
    """What one launch ``kernel[grid](*args, **constexprs)`` depends on, hashable: equal keys
    are the same launch (the same compiled kernel on the same memory)."""
    return kernel, tuple(grid), tuple(map(_arg_key, args)), tuple(sorted((k, type(v), v) for k, v in constexprs.items()))


_capture_lock = threading.Lock()
_capture_streams = {}


def _capture_cuda(launch_all, device):
    """A CUDA graph of ``launch_all()``'s launches. The capture runs on a side stream (a
    capture cannot use the legacy default stream); nothing executes during it, so it needs no
    ordering against the caller's stream. ``replay()`` runs on the caller's current stream."""
    with _capture_lock:
        stream = _capture_streams.get(device)
        if stream is None:
            stream = _capture_streams[device] = torch.cuda.Stream(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                launch_all()
            finally:
                graph.capture_end()
    return graph


_NEVER = object()  # a sequence whose capture failed: eager from then on


class GraphCache:
    """Launch sequences by key: counted, then captured with ``capture(launch_all, device)``
    (an object with ``replay()``), then replayed. ``counts`` says how each call went."""

    def __init__(self, capture=_capture_cuda, capture_after=CAPTURE_AFTER, max_graphs=MAX_GRAPHS,
                 max_counted=MAX_COUNTED):  # fmt: skip
        if capture_after < 2:
            raise ValueError("capture_after must be >= 2: the first run compiles and loads the kernels")
        self._capture = capture
        self._capture_after = capture_after
        self._max_graphs = max_graphs
        self._max_counted = max_counted
        self._graphs = OrderedDict()  # key -> graph, or _NEVER
        self._seen = OrderedDict()
        self._lock = threading.Lock()  # the dictionaries and counts; launches run unlocked
        self.counts = dict(eager=0, captured=0, replayed=0, failed=0)

    def __len__(self):
        return sum(graph is not _NEVER for graph in self._graphs.values())

    def run(self, key, launch_all, device):
        """Run the launch sequence ``launch_all()`` identified by ``key``: eagerly, or by
        capturing it (the run that captures also replays), or by replaying its graph."""
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                action = "eager" if graph is _NEVER else "replay"
            else:
                seen = self._seen.pop(key, 0) + 1
                action = "capture" if seen >= self._capture_after else "eager"
                if action == "eager":
                    self._seen[key] = seen
                    _trim(self._seen, self._max_counted)
        if action == "capture":
            try:
                graph = self._capture(launch_all, device)
            except Exception as err:  # nothing ran during the capture: launch eagerly instead
                warnings.warn(f"fusedrnn: capturing a per-step recurrence as a CUDA graph failed ({err}); "
                              "it runs without one from now on", RuntimeWarning, stacklevel=2)  # fmt: skip
                graph = _NEVER
            with self._lock:
                self._graphs[key] = graph
                _trim(self._graphs, self._max_graphs)
                self.counts["captured" if graph is not _NEVER else "failed"] += 1
        if graph is None or graph is _NEVER:
            launch_all()
            with self._lock:
                self.counts["eager"] += 1
            return
        graph.replay()
        with self._lock:
            self.counts["replayed"] += 1

    def clear(self):
        with self._lock:
            self._graphs.clear()
            self._seen.clear()


def _trim(entries, size):
    while len(entries) > size:
        entries.popitem(last=False)


cache = GraphCache()


def run(make_key, launch_all, device):
    """``launch_all()``, through the graph cache where ``active(device)``; ``make_key()`` gives
    the sequence's key (only computed then)."""
    if not active(device):
        launch_all()
        return
    cache.run(make_key(), launch_all, device)

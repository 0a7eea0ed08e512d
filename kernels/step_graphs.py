"""CUDA graphs of the per-step strategy's launches (``fusedrnn.kernels.lstm``).

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
caller's graph), with ``FUSEDRNN_CUDA_GRAPHS=0`` in the environment, or inside
``enabled(False)`` (bench/bench_lstm.py's A/B).
"""

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager

import torch

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
    return on and device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def _arg_key(arg):
    if isinstance(arg, torch.Tensor):
        return "tensor", arg.data_ptr(), arg.dtype, arg.device
    return arg


def launch_key(kernel, grid, args, constexprs):
    """What one launch ``kernel[grid](*args, **constexprs)`` depends on, hashable: equal keys
    are the same launch (the same compiled kernel on the same memory)."""
    name = getattr(getattr(kernel, "fn", kernel), "__qualname__", repr(kernel))
    return name, tuple(grid), tuple(map(_arg_key, args)), tuple(sorted((k, str(v)) for k, v in constexprs.items()))


def _capture_cuda(launch_all, device):
    """A CUDA graph of ``launch_all()``'s launches. The capture runs on a side stream (a
    capture cannot use the legacy default stream); nothing executes during it, so it needs no
    ordering against the caller's stream. ``replay()`` runs on the caller's current stream.
    "thread_local": another thread's CUDA calls do not break this capture."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(torch.cuda.Stream(device)):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            launch_all()
        finally:
            graph.capture_end()
    return graph


class GraphCache:
    """Launch sequences by key: counted, then captured with ``capture(launch_all, device)``
    (an object with ``replay()``), then replayed. ``counts`` says how each call went."""

    def __init__(self, capture=_capture_cuda, capture_after=CAPTURE_AFTER, max_graphs=MAX_GRAPHS,
                 max_counted=MAX_COUNTED):  # fmt: skip
        self._capture = capture
        self._capture_after = capture_after
        self._max_graphs = max_graphs
        self._max_counted = max_counted
        self._graphs = OrderedDict()
        self._seen = OrderedDict()
        self._lock = threading.Lock()  # the dictionaries only: launches and captures run unlocked
        self.counts = dict(eager=0, captured=0, replayed=0)

    def __len__(self):
        return len(self._graphs)

    def run(self, key, launch_all, device):
        """Run the launch sequence ``launch_all()`` identified by ``key``: eagerly, or by
        capturing it (the run that captures also replays), or by replaying its graph."""
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                action = "replay"
            else:
                seen = self._seen.pop(key, 0) + 1
                action = "capture" if seen >= self._capture_after else "eager"
                if action == "eager":
                    self._seen[key] = seen
                    _trim(self._seen, self._max_counted)
        if action == "eager":
            launch_all()
            self.counts["eager"] += 1
            return
        if action == "capture":
            graph = self._capture(launch_all, device)
            with self._lock:
                self._graphs[key] = graph
                _trim(self._graphs, self._max_graphs)
            self.counts["captured"] += 1
        graph.replay()
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

"""CUDA graphs of the per-step launches (fusedrnn/kernels/step_graphs.py).

On CPU the cache's policy is tested with a stand-in graph, and the launchers' use of it under
the interpreter with a stand-in whose "capture" keeps the capturing call's launch closure and
whose "replay" runs it again. That is what a CUDA graph does, launches re-issued on the
memory of the capture, so a key that missed an argument would replay another call's tensors
and the comparison with eager launches would fail. On CUDA the real graphs run.
"""

import pytest
import torch
import triton
from helpers import DEVICE, HAS_CUDA

from fusedrnn.kernels import recurrence as K
from fusedrnn.kernels import planner
from fusedrnn.kernels import step_graphs
from fusedrnn.kernels.cells import LSTM



def NEEDS_CUDA_GRAPHS(test):
    """Skipped without CUDA, and marked `cuda` (see tests/helpers.py NEEDS_CUDA)."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device")(test))


class ReplayedClosure:
    """Stands in for a CUDA graph: the capturing call's launches, re-run by replay()."""

    def __init__(self, launch_all, device):
        self.launch_all = launch_all
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.launch_all()


def test_a_sequence_runs_eagerly_then_is_captured_then_replayed():
    calls = []
    cache = step_graphs.GraphCache(capture=ReplayedClosure)
    for i in range(4):
        cache.run("k", lambda i=i: calls.append(i), "cuda")
    # call 0 eager; call 1 captured (nothing runs) and replayed; calls 2, 3 replay call 1's
    assert calls == [0, 1, 1, 1]
    assert cache.counts == dict(eager=1, captured=1, replayed=3, failed=0)


def test_keys_are_counted_apart_and_old_graphs_dropped():
    cache = step_graphs.GraphCache(capture=ReplayedClosure, capture_after=2, max_graphs=2)
    runs = []
    for key in ["a", "b", "a", "b", "c", "c"]:  # captures a, b, then c, which drops a
        cache.run(key, lambda key=key: runs.append(key), "cuda")
    assert len(cache) == 2 and cache.counts["captured"] == 3
    cache.run("a", lambda: runs.append("a again"), "cuda")  # counted anew: eager
    assert runs[-1] == "a again" and cache.counts["eager"] == 4


def test_a_sequence_seen_once_never_captures():
    cache = step_graphs.GraphCache(capture=ReplayedClosure)
    for i in range(5):
        cache.run(("fresh", i), lambda: None, "cuda")
    assert cache.counts == dict(eager=5, captured=0, replayed=0, failed=0) and len(cache) == 0


def test_launch_key_changes_with_every_argument():
    x, y = torch.zeros(8), torch.zeros(8)
    base = step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x, 3), dict(BLOCK_B=16))
    assert base == step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x, 3), dict(BLOCK_B=16))
    assert base == step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x[:4], 3), dict(BLOCK_B=16))  # same address
    for other in [
        step_graphs.launch_key(K._recurrence_bwd_kernel, (1, 2), (x, 3), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (2, 2), (x, 3), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (y, 3), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x[1:], 3), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x.view(torch.int32), 3), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x, 4), dict(BLOCK_B=16)),
        step_graphs.launch_key(K._recurrence_fwd_kernel, (1, 2), (x, 3), dict(BLOCK_B=32)),
    ]:
        assert other != base


def test_not_active_on_cpu_nor_when_switched_off(monkeypatch):
    cuda = torch.device("cuda")  # only the switches are read before the device type: no CUDA call
    assert not step_graphs.active(torch.device("cpu"))
    with step_graphs.enabled(True):
        assert not step_graphs.active(torch.device("cpu"))  # nothing to capture without CUDA
    with step_graphs.enabled(False):
        assert not step_graphs.active(cuda)
    monkeypatch.setenv(step_graphs.ENV_VAR, "0")
    assert not step_graphs.active(cuda)


def test_not_active_while_triton_launch_hooks_are_installed(monkeypatch):
    monkeypatch.setattr(step_graphs, "_forced", True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert step_graphs.active(torch.device("cuda"))
    hook = lambda *args: None  # noqa: E731 (a profiler's launch hook)
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert not step_graphs.active(torch.device("cuda"))
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert step_graphs.active(torch.device("cuda"))


def test_a_failed_capture_falls_back_to_eager_launches_for_good():
    def broken_capture(launch_all, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    runs = []
    cache = step_graphs.GraphCache(capture=broken_capture)
    with pytest.warns(RuntimeWarning, match="capturing a per-step recurrence as a CUDA graph failed"):
        for i in range(4):
            cache.run("k", lambda i=i: runs.append(i), "cuda")
    assert runs == [0, 1, 2, 3]  # every call ran, once
    assert cache.counts == dict(eager=4, captured=0, replayed=0, failed=1) and len(cache) == 0


def test_capture_needs_an_eager_run_first():
    with pytest.raises(ValueError, match="capture_after must be >= 2"):
        step_graphs.GraphCache(capture_after=1)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """The launchers' graph path on this device, with ReplayedClosure as the graph."""
    cache = step_graphs.GraphCache(capture=ReplayedClosure)
    monkeypatch.setattr(step_graphs, "cache", cache)
    monkeypatch.setattr(step_graphs, "active", lambda device: True)
    with planner.override_limits(per_step_block_units=16):  # several programs per step
        yield cache


@pytest.fixture
def fixed_outputs(monkeypatch):
    """The launchers' outputs in the same memory every call, as the caching allocator gives a
    loop on CUDA, so that a repeated call has the same launches."""
    kept = {}

    def keep(name, make):
        def outputs(*args):
            fresh = make(*args)
            if name not in kept:
                kept[name] = fresh
            for into, t in zip(kept[name], fresh):
                if t is not None:
                    into.copy_(t)  # d_c arrives holding d_cn
            return kept[name]

        return outputs

    monkeypatch.setattr(K, "forward_outputs", keep("fwd", K.forward_outputs))
    monkeypatch.setattr(K, "backward_outputs", keep("bwd", K.backward_outputs))


def lstm_inputs(T, B, H, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return dict(gates=rand(T, B, 4 * H), w_hh=rand(4 * H, H, scale=H**-0.5), h0=rand(B, H), c0=rand(B, H),
                d_out=rand(T, B, H), d_hn=rand(B, H), d_cn=rand(B, H))  # fmt: skip


def forward_backward(buffers, values, h0=None):
    """recurrence_fwd then recurrence_bwd (the LSTM) on ``buffers``' memory holding ``values``; clones of the results."""
    for name, t in buffers.items():
        t.copy_(values[name])
    b = buffers
    h0 = b["h0"] if h0 is None else h0
    out, c, _, _ = K.recurrence_fwd(LSTM, b["gates"], b["w_hh"], h0, b["c0"])
    forward = [out.clone(), c.clone(), b["gates"].clone()]
    d_gates, d_c0, _, _ = K.recurrence_bwd(LSTM, b["gates"], c, b["c0"], b["w_hh"], b["d_out"], b["d_hn"], b["d_cn"])
    return forward + [d_gates.clone(), d_c0.clone()]


def test_per_step_launchers_replay_with_the_current_contents(stand_in_graphs, fixed_outputs):
    T, B, H = 3, 4, 32
    buffers = lstm_inputs(T, B, H, seed=0)
    with planner.launch_strategy("per-step"):
        for seed in range(1, 4):  # eager, captured, replayed: each with new values in place
            values = lstm_inputs(T, B, H, seed)
            expected = _eager(values)
            for got, want in zip(forward_backward(buffers, values), expected):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert stand_in_graphs.counts == dict(eager=2, captured=2, replayed=4, failed=0)  # forward and backward each


def test_per_step_launchers_do_not_replay_for_another_tensor(stand_in_graphs, fixed_outputs):
    T, B, H = 3, 4, 32
    buffers = lstm_inputs(T, B, H, seed=0)
    values = lstm_inputs(T, B, H, seed=1)
    with planner.launch_strategy("per-step"):
        forward_backward(buffers, values)
        forward_backward(buffers, values)  # captured
        other_h0 = torch.randn(B, H, generator=torch.Generator().manual_seed(9)).to(DEVICE)
        got = forward_backward(buffers, values, h0=other_h0)
        assert stand_in_graphs.counts["eager"] == 3  # the forward's key changed with h0; the backward's did not
        expected = _eager(values, h0=other_h0)
    for g, w in zip(got, expected):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def _eager(values, h0=None):
    """forward_backward on fresh memory, without the graph cache."""
    saved_active = step_graphs.active
    step_graphs.active = lambda device: False
    try:
        fresh = {n: torch.empty_like(t) for n, t in values.items()}
        return forward_backward(fresh, values, h0)
    finally:
        step_graphs.active = saved_active


def test_persistent_and_one_launch_do_not_use_the_cache(stand_in_graphs):
    T, B, H = 3, 4, 32
    values = lstm_inputs(T, B, H, seed=1)
    for strategy in ("one-launch", "persistent"):
        with planner.launch_strategy(strategy):
            forward_backward({n: torch.empty_like(t) for n, t in values.items()}, values)
    assert stand_in_graphs.counts == dict(eager=0, captured=0, replayed=0, failed=0)


@NEEDS_CUDA_GRAPHS
@pytest.mark.parametrize("side_stream", [False, True], ids=["current-stream", "side-stream"])
def test_cuda_graphs_replay_a_loop_exactly(fixed_outputs, side_stream):
    T, B, H = 16, 8, 64
    step_graphs.cache.clear()
    before = dict(step_graphs.cache.counts)
    buffers = lstm_inputs(T, B, H, seed=0)
    stream = torch.cuda.Stream() if side_stream else torch.cuda.current_stream()
    # on a side stream the replays must follow the copies into the buffers on that stream
    with planner.launch_strategy("per-step"), step_graphs.enabled(True), torch.cuda.stream(stream):
        for seed in range(1, 5):
            values = lstm_inputs(T, B, H, seed)
            got = forward_backward(buffers, values)
            with step_graphs.enabled(False):
                expected = forward_backward({n: torch.empty_like(t) for n, t in values.items()}, values)
            for g, w in zip(got, expected):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert step_graphs.cache.counts["captured"] > before["captured"]
    assert step_graphs.cache.counts["replayed"] > before["replayed"] + 2


@NEEDS_CUDA_GRAPHS
def test_per_step_launches_go_into_the_callers_own_graph():
    T, B, H = 16, 8, 64
    values = lstm_inputs(T, B, H, seed=1)
    buffers = {n: torch.empty_like(t) for n, t in values.items()}
    with planner.launch_strategy("per-step"), step_graphs.enabled(True):
        expected = forward_backward({n: torch.empty_like(t) for n, t in values.items()}, values)
        forward_backward(buffers, values)  # compiles before the capture
        counts, graphs = dict(step_graphs.cache.counts), len(step_graphs.cache)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward_backward(buffers, values)
        graph.replay()
    assert (step_graphs.cache.counts, len(step_graphs.cache)) == (counts, graphs)  # ours were bypassed
    for g, w in zip(captured, expected):
        torch.testing.assert_close(g, w, rtol=0, atol=0)

"""fusedrnn.LSTM under DistributedDataParallel and FSDP2 (``fully_shard``): 2 CPU processes, gloo.

Each rank trains on its half of a global batch. After every backward its gradients (averaged
by DDP, reduce-scattered by FSDP) must equal those of one process on the whole batch with the
same mean-reduced loss, parameter by parameter; after every SGD step (with momentum) the
weights must be the same on both ranks and equal the single-process run's.

The ranks are fresh interpreters running this file as a script: TRITON_INTERPRET=1 must be in
their environment before triton is imported, whatever this pytest process imported. They meet
through a file in a tmp dir (no port to pick or race for), with gloo on the loopback
interface. One pair of processes per backend runs DDP, then FSDP, then (rank 0) the
single-process reference, and saves what it saw; this process compares. One pair for both
wrappers because starting a rank (importing torch, DDP importing dynamo) costs seconds.
"""

import datetime
import os
import subprocess
import sys
import time
import traceback

import pytest
import torch

import fusedrnn
from fusedrnn.testing import assert_close

WORLD_SIZE = 2
STEPS = 2  # more than one: momentum, and DDP checks each step's reduction finished
VOCAB, EMBED, HIDDEN, CLASSES = 11, 4, 6, 3
BATCH, T = 4, 4  # global batch; each rank takes BATCH // WORLD_SIZE rows. Tiny: the interpreter
TIMEOUT_S = 240  # for the whole run: a hang is killed and fails instead of blocking CI


class SequenceClassifier(torch.nn.Module):
    """Embedding -> fusedrnn.LSTM (2 layers, bidirectional, lengths=) -> linear head on the
    last layer's final states plus the output averaged over each sequence's own length, so
    the gradient reaches the LSTM through output and h_n, and every parameter gets one."""

    def __init__(self, backend, dtype):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMBED, dtype=dtype)
        # No dropout: its masks would differ between the ranks and the single process.
        self.lstm = fusedrnn.LSTM(
            EMBED, HIDDEN, num_layers=2, bidirectional=True, batch_first=True, backend=backend, dtype=dtype
        )
        self.head = torch.nn.Linear(2 * HIDDEN, CLASSES, dtype=dtype)

    def forward(self, tokens, lengths):
        output, (h_n, _) = self.lstm(self.embed(tokens), lengths=lengths)
        pooled = output.sum(1) / lengths.to(output.dtype)[:, None]
        return self.head(torch.cat([h_n[-2], h_n[-1]], 1) + pooled)


def make_model(backend, seed):
    torch.manual_seed(seed)
    return SequenceClassifier(backend, torch.float64 if backend == "reference" else torch.float32)


def global_batch(step):
    """The same global batch in every process: tokens (B, T), lengths in [1, T], labels."""
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(VOCAB, (BATCH, T), generator=g)
    lengths = torch.randint(1, T + 1, (BATCH,), generator=g)
    lengths[step % BATCH] = T
    return tokens, lengths, torch.randint(CLASSES, (BATCH,), generator=g)


def train(model, rows, full_tensor=lambda t: t, prefix=""):
    """STEPS of SGD on the given rows of each global batch. Returns the initial weights and,
    per step, the gradients after backward and the weights after the step, by parameter name
    (less the wrapper's prefix)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def snapshot(get):
        tensors = {n.removeprefix(prefix): get(p) for n, p in model.named_parameters()}
        missing = [n for n, t in tensors.items() if t is None]
        assert not missing, f"no gradient for {missing}"
        return {n: full_tensor(t).detach().clone() for n, t in tensors.items()}

    record = {"init": snapshot(lambda p: p), "grads": [], "params": []}
    for step in range(STEPS):
        tokens, lengths, labels = global_batch(step)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens[rows], lengths[rows]), labels[rows])
        loss.backward()
        record["grads"].append(snapshot(lambda p: p.grad))
        opt.step()
        record["params"].append(snapshot(lambda p: p))
    return record


def worker(rank, backend, store, out):
    """One rank: DDP, then FSDP, then on rank 0 the single-process run; saves the records."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # two ranks on a two-core CI machine
    if backend == "triton":
        from fusedrnn.kernels import _helpers

        _helpers.POISON_OUTPUTS = True  # as tests/conftest.py: an unwritten kernel output is NaN
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )  # fmt: skip
    half = BATCH // WORLD_SIZE
    rows = slice(rank * half, (rank + 1) * half)
    # Rank 1 starts from other weights: DDP's broadcast of rank 0's at construction must reach
    # the LSTM's parameters. find_unused_parameters stays False (the default).
    ddp = DistributedDataParallel(make_model(backend, seed=rank))
    records = {"ddp": train(ddp, rows, prefix="module.")}
    # fully_shard does not broadcast: every rank builds the same weights and keeps its shard.
    model = make_model(backend, seed=0)
    fully_shard(model.lstm)
    fully_shard(model)
    records["fsdp"] = train(model, rows, full_tensor=lambda t: t.full_tensor())  # DTensors
    dist.destroy_process_group()
    if rank == 0:
        records["single"] = train(make_model(backend, seed=0), slice(None))
    torch.save(records, out)


def run_ranks(tmp_path, backend):
    """Start WORLD_SIZE ranks and wait; on a failure or a hang kill the rest and fail with
    every rank's exit status and output. Returns each rank's records."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # CPU and gloo, also on a CUDA machine
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"  # read when triton is imported: set before the rank starts
    if os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # not whatever the hostname resolves to
    procs, logs = [], []
    try:
        for rank in range(WORLD_SIZE):
            logs.append(open(tmp_path / f"rank{rank}.log", "w+"))
            args = [str(rank), backend, str(tmp_path / "store"), str(tmp_path / f"rank{rank}.pt")]
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, *args],
                    env=env, stdin=subprocess.DEVNULL, stdout=logs[-1], stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        deadline = time.monotonic() + TIMEOUT_S
        # A rank that dies leaves the other blocked in a collective: stop at the first failure.
        while True:
            codes = [p.poll() for p in procs]  # every rank, each time
            if all(c == 0 for c in codes) or any(c for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not all(c == 0 for c in codes):
            report = []
            for rank, (p, log) in enumerate(zip(procs, logs)):
                log.seek(0)
                status = "still running, killed" if p.poll() is None else f"exit status {p.returncode}"
                report.append(f"--- rank {rank}: {status} ---\n{log.read()[-4000:]}")
            why = "a rank failed" if any(codes) else f"timed out after {TIMEOUT_S} s"
            pytest.fail(f"{backend} backend: {why}\n" + "\n".join(report), pytrace=False)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def interpreter_numpy_problem():
    """Why the ranks cannot run the kernels under the Triton interpreter here, or None:
    numpy >= 2.4 breaks Triton 3.6's interpreter (the "interpret" extra pins numpy < 2.4, but
    a CUDA image may bring its own numpy; its GPU has no use for the interpreter)."""
    import numpy

    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    if (major, minor) >= (2, 4):
        return f"numpy {numpy.__version__} breaks the Triton interpreter the CPU ranks run (pip install 'numpy<2.4')"
    return None


@pytest.fixture(scope="module", params=["reference", "triton"])
def runs(request, tmp_path_factory):
    """(backend, per-rank records): one 2-process run per backend, shared by the tests."""
    backend = request.param
    why_not = interpreter_numpy_problem() if backend == "triton" else None
    if why_not:
        pytest.skip(why_not)
    return backend, run_ranks(tmp_path_factory.mktemp(f"distributed-{backend}"), backend)


def check_against_single_process(runs, wrapper):
    backend, ranks = runs
    single = ranks[0]["single"]
    records = [r[wrapper] for r in ranks]
    names = list(single["init"])
    # float64 reference path: only the order of the batch sums differs. float32 kernels: 1e-5.
    rel = 1e-12 if backend == "reference" else 1e-5
    for rank, record in enumerate(records):
        assert list(record["init"]) == names, f"{wrapper} rank {rank}: parameter names differ"
        for name in names:
            # DDP broadcast rank 0's initial weights; with FSDP every rank built the same.
            same = torch.equal(record["init"][name], single["init"][name])
            assert same, f"{wrapper} rank {rank}: initial {name} differs from the single process's"
    for step in range(STEPS):
        for rank, record in enumerate(records):
            where = f"{wrapper} rank {rank} step {step}"
            grads, params = record["grads"][step], record["params"][step]
            for name in names:
                assert_close(grads[name], single["grads"][step][name], rel=rel, name=f"{where}: grad {name}")
                assert_close(params[name], single["params"][step][name], rel=rel, name=f"{where}: {name}")
                # Both ranks stepped with the same reduced gradients: bitwise equal weights.
                same = torch.equal(params[name], records[0]["params"][step][name])
                assert same, f"{where}: {name} differs from rank 0's"


def test_ddp_gradients_equal_single_process(runs):
    check_against_single_process(runs, "ddp")


def test_fsdp2_gradients_equal_single_process(runs):
    check_against_single_process(runs, "fsdp")


if __name__ == "__main__":  # a rank, started by run_ranks
    rank, backend, store, out = sys.argv[1:]
    try:
        worker(int(rank), backend, store, out)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"rank {rank} failed")

"""kernels/tuning.py (measured dispatch and block sizes) and bench/tune.py's loop, on tables and
timings made up here: nothing in this file is a measurement. Without CUDA the kernels run
under the interpreter, where only a table installed with use_table applies."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import DEVICE

from fusedrnn.kernels import recurrence as K
from fusedrnn.kernels import planner, tuning
from fusedrnn.kernels.cells import LSTM
from fusedrnn.kernels.reference import lstm_reference

ROOT = Path(__file__).resolve().parents[2]
GPU = "Synthetic GPU"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_tables(monkeypatch):
    """No FUSEDRNN_TUNING from the environment, and no table cached across tests."""
    monkeypatch.delenv(tuning.ENV_VAR, raising=False)
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def entry(kernel, dtype, B, H, strategy, P=None, cell="lstm"):
    return {"cell": cell, "kernel": kernel, "dtype": dtype, "B": B, "H": H, "P": P, "strategy": strategy}


def config_entry(kernel, strategy, dtype, B, H, config, P=None, cell="lstm"):
    return {"cell": cell, "kernel": kernel, "strategy": strategy, "dtype": dtype, "B": B, "H": H, "P": P,
            "config": config}  # fmt: skip


def table(dispatch=(), configs=(), gpu=GPU):
    return {"gpu": gpu, "dispatch": list(dispatch), "configs": list(configs)}


# ----------------------------------------------------------------------------------- lookups

LOOKUP = table([
    entry("fwd", "bfloat16", 32, 1024, "persistent"),
    entry("fwd", "bfloat16", 128, 1024, "per-step"),
    entry("fwd", "bfloat16", 8, 256, "one-launch"),
    entry("bwd", "bfloat16", 32, 1024, "per-step"),
    entry("fwd", "bfloat16", 32, 1024, "one-launch", P=256),
])  # fmt: skip


@pytest.mark.parametrize(
    "kernel, B, H, P, dtype, expected",
    [
        ("fwd", 32, 1024, None, torch.bfloat16, "persistent"),  # exact
        ("bwd", 32, 1024, None, torch.bfloat16, "per-step"),  # each kernel its own entries
        ("fwd", 32, 1024, None, "bfloat16", "persistent"),  # a dtype's name will do
        ("fwd", 16, 1024, None, torch.bfloat16, "persistent"),  # B halved: distance 1
        ("fwd", 32, 2048, None, torch.bfloat16, "persistent"),  # H doubled: distance 1
        ("fwd", 48, 1024, None, torch.bfloat16, "persistent"),  # 0.58 from B=32, 1.42 from B=128
        ("fwd", 96, 1024, None, torch.bfloat16, "per-step"),  # 1.58 from B=32, 0.42 from B=128
        ("fwd", 64, 1024, None, torch.bfloat16, None),  # 1 from both, and they disagree
        ("fwd", 32, 4096, None, torch.bfloat16, None),  # distance 2: too far
        ("fwd", 8, 512, None, torch.bfloat16, "one-launch"),
        ("fwd", 16, 512, None, torch.bfloat16, None),  # 2 from (8, 256) and from (32, 1024)
        ("bwd", 128, 1024, None, torch.bfloat16, None),  # 2 from the one backward entry
        ("fwd", 32, 1024, None, torch.float16, None),  # no float16 entries
        ("fwd", 32, 1024, 200, torch.bfloat16, "one-launch"),  # projected: P=256 is 0.36 away
        ("fwd", 32, 1024, 1024, torch.bfloat16, None),  # P=1024 is 2 from P=256
    ],
)  # fmt: skip
def test_measured_strategy_exact_nearest_or_none(kernel, B, H, P, dtype, expected):
    with tuning.use_table(LOOKUP):
        assert tuning.measured_strategy("lstm", kernel, B, H, P, dtype, None) == expected
        assert tuning.measured_strategy("rnn", kernel, B, H, P, dtype, None) is None  # each cell its own entries
    assert tuning.measured_strategy("lstm", kernel, B, H, P, dtype, None) is None  # no table outside


def test_tuned_config_is_keyed_on_the_exact_shape():
    configs = [config_entry("fwd", "per-step", "bfloat16", 32, 512, {"num_warps": 8})]
    with tuning.use_table(table(configs=configs)):
        assert tuning.tuned_config("lstm", "fwd", "per-step", 32, 512, None, torch.bfloat16, None) == {"num_warps": 8}
        for B in (20, 33):  # other tiles may be planned there
            assert tuning.tuned_config("lstm", "fwd", "per-step", B, 512, None, torch.bfloat16, None) is None
        assert tuning.tuned_config("lstm", "fwd", "persistent", 32, 512, None, torch.bfloat16, None) is None
        assert tuning.tuned_config("lstm", "bwd", "per-step", 32, 512, None, torch.bfloat16, None) is None
        assert tuning.tuned_config("lstm", "fwd", "per-step", 32, 512, 256, torch.bfloat16, None) is None
        tuning.tuned_config("lstm", "fwd", "per-step", 32, 512, None, torch.bfloat16, None)["num_warps"] = 4
        assert tuning.tuned_config("lstm", "fwd", "per-step", 32, 512, None, torch.bfloat16, None) == {"num_warps": 8}


GOOD_CONFIG = config_entry("fwd", "per-step", "bfloat16", 32, 512, {"BLOCK_K": 32, "num_warps": 8, "num_stages": 3})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(config={"BLOCK_K": 24}), "BLOCK_K must be a power of two >= 16"),
        (dict(config={"BLOCK_K": 8}), "BLOCK_K must be a power of two >= 16"),
        (dict(config={"num_warps": 3}), "num_warps must be one of"),
        (dict(config={"num_warps": 4.0}), "num_warps must be one of"),
        (dict(config={"num_stages": 0}), "num_stages must be an integer from 1 to 5"),
        (dict(config={"num_stages": 6}), "num_stages must be an integer from 1 to 5"),
        (dict(config={"num_stages": True}), "num_stages must be an integer from 1 to 5"),
        (dict(config={"BLOCK_H": 32}), "config must set some of BLOCK_K, num_warps, num_stages, PREFETCH_GX and n"),
        (dict(config={"DH_SPLIT": 2}), "num_stages, PREFETCH_GX and nothing else"),  # the forward has no split
        (dict(config={"PREFETCH_OWN_TILES": False}), "config must set some of"),  # the backward's switch
        (dict(kernel="bwd", config={"PREFETCH_GX": False}), "DH_SPLIT, PREFETCH_OWN_TILES and nothing else"),
        (dict(config={"PREFETCH_GX": 0}), "PREFETCH_GX must be true or false, got 0"),
        (dict(kernel="bwd", config={"PREFETCH_OWN_TILES": "no"}), "PREFETCH_OWN_TILES must be true or false"),
        (dict(kernel="bwd", config={"DH_SPLIT": 9}), "DH_SPLIT must be an integer from 1 to 8"),
        (dict(kernel="bwd", config={"DH_SPLIT": 0}), "DH_SPLIT must be an integer from 1 to 8"),
        (dict(config={}), "config must set some of"),
        (dict(strategy="auto"), "strategy must be one of"),
        (dict(kernel="both"), "kernel must be one of"),
        (dict(cell="lstmp"), "cell must be one of"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(H=0), "H must be a positive integer"),
        (dict(P=1.5), "P must be null or a positive integer"),
        (dict(extra=1), "expected the keys"),
    ],
)  # fmt: skip
def test_bad_config_entries_raise_naming_the_file(tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(table(configs=[dict(GOOD_CONFIG, **change)])))
    with pytest.raises(ValueError, match=message) as raised:
        tuning.load_table(path)
    assert str(path) in str(raised.value) and "configs[0]" in str(raised.value)


def test_bad_tables_raise(tmp_path):
    good = entry("fwd", "bfloat16", 8, 256, "per-step")
    bad = {
        "no gpu": ({"dispatch": [], "configs": []}, '"gpu" must name the GPU'),
        "no configs": ({"gpu": GPU, "dispatch": []}, '"configs" must be a list'),
        "no P": (table([{k: v for k, v in good.items() if k != "P"}]), r"dispatch\[0\]: expected the keys"),
        "twice": (table([good, dict(good, strategy="persistent")]), r"dispatch\[1\]: a second entry"),
        "configs twice": (table(configs=[GOOD_CONFIG, GOOD_CONFIG]), r"configs\[1\]: a second entry"),
    }
    for name, (content, message) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            tuning.load_table(path)
        with pytest.raises(ValueError, match=message), tuning.use_table(content):
            pass
    path = tmp_path / "not-json.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="not-json.json: cannot be read"):
        tuning.load_table(path)
    tuning.validate(table([good], [GOOD_CONFIG]), "good")  # and the good one passes


# ------------------------------------------------------------------------- the launchers' hooks


def test_kernel_config_applies_the_tuned_overrides():
    override = {"BLOCK_K": 16, "num_warps": 8, "num_stages": 4}
    default = planner.kernel_config(2, 32, torch.float32, "per-step", interpreted=True)
    assert (default["BLOCK_K"], default["num_warps"], default["num_stages"]) == (32, 4, 3)
    configs = [
        config_entry("fwd", "per-step", "float32", 2, 32, override),
        config_entry("bwd", "per-step", "float32", 2, 32, {"BLOCK_K": 64}),  # wider than K: clamped
        config_entry("fwd", "persistent", "bfloat16", 2, 32, {"BLOCK_K": 16, "num_warps": 4}),
        config_entry("bwd", "per-step", "float16", 2, 32, {"DH_SPLIT": 4}),
        config_entry("bwd", "persistent", "bfloat16", 2, 32, {"DH_SPLIT": 4}),
    ]
    with tuning.use_table(table(configs=configs)):
        tuned = planner.kernel_config(2, 32, torch.float32, "per-step", interpreted=True)
        assert tuned == dict(default, **override)
        assert planner.kernel_config(2, 32, torch.float32, "per-step", backward=True, interpreted=True)["BLOCK_K"] == 32
        assert planner.kernel_config(2, 32, torch.float32, "one-launch", interpreted=True)["num_stages"] == 3  # no entry
        # held weights are one dot over the whole padded K: a tuned BLOCK_K is ignored there
        held = planner.kernel_config(2, 32, torch.bfloat16, "persistent", interpreted=True)
        assert held["W_RESIDENT"] and (held["BLOCK_K"], held["num_warps"]) == (32, 4)
        # a tuned split of the backward's dh loop applies, except where W is held (no K loop)
        assert planner.kernel_config(2, 32, torch.float16, "per-step", backward=True, interpreted=True)["DH_SPLIT"] == 4
        held = planner.kernel_config(2, 32, torch.bfloat16, "persistent", backward=True, interpreted=True)
        assert held["W_RESIDENT"] and held["DH_SPLIT"] == 1


def test_interpreted_launches_ignore_committed_tables(synthetic_gpu):
    synthetic_gpu.write_text(json.dumps(table(
        dispatch=[entry("fwd", "float32", 2, 32, "per-step")],
        configs=[config_entry("fwd", "per-step", "float32", 2, 32, {"num_stages": 4})],
    )))  # fmt: skip
    # The table is there for this (synthetic) device...
    assert tuning.tuned_config("lstm", "fwd", "per-step", 2, 32, None, torch.float32, CPU) == {"num_stages": 4}
    # ...but an interpreted launch asks with no device: only use_table's table applies.
    assert planner.kernel_config(2, 32, torch.float32, "per-step", interpreted=True, device=CPU)["num_stages"] == 3
    plans = planner.plans(LSTM, 2, 32, None, torch.float32, torch.device(DEVICE), K._recurrence_fwd_kernel, False)
    if planner.is_interpreted(K._recurrence_fwd_kernel):
        assert [strategy for strategy, _ in plans] == ["one-launch"] == [planner.fallback_strategy(32)]
    else:  # on CUDA the kernels are compiled: their launches read the (synthetic) GPU's table
        assert [strategy for strategy, _ in plans] == ["per-step", "one-launch"]


def problem(T=3, B=2, H=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gx = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64) * 0.5
    w_hh = (torch.rand(4 * H, H, generator=g, dtype=torch.float64) * 2 - 1) * H**-0.5
    h0, c0 = (torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    return gx, w_hh, h0, c0


def test_measured_strategy_drives_auto():
    gx, w_hh, h0, c0 = problem()
    assert planner.fallback_strategy(16) == "one-launch"
    measured = table([entry("fwd", "float32", 2, 16, "per-step"), entry("bwd", "float32", 2, 16, "per-step")])
    w_hh32, c0_32 = w_hh.float().to(DEVICE), c0.float().to(DEVICE)

    def forward():
        gates = gx.float().to(DEVICE)
        out, c, _, _ = K.recurrence_fwd(LSTM, gates, w_hh32, h0.float().to(DEVICE), c0_32)
        return out, c, gates

    with tuning.use_table(measured):
        out, c, gates = forward()
        assert planner.last_strategy() == "per-step"
        d_out = torch.randn_like(out)
        d_gates = K.recurrence_bwd(LSTM, gates, c, c0_32, w_hh32, d_out, out[-1] * 0, c[-1] * 0)[0]
        assert planner.last_strategy() == "per-step"
        with planner.launch_strategy("one-launch"):  # a forced strategy beats the table
            forward()
            assert planner.last_strategy() == "one-launch"
    expected, (_, c_n) = lstm_reference(gx, h0, c0, torch.eye(4 * 16, dtype=torch.float64), w_hh)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c[-1].cpu().double(), c_n, rtol=1e-5, atol=1e-6)

    forward()  # without the table: the rule
    assert planner.last_strategy() == "one-launch"
    rule = K.recurrence_bwd(LSTM, gates, c, c0_32, w_hh32, d_out, out[-1] * 0, c[-1] * 0)[0]
    assert planner.last_strategy() == "one-launch"
    torch.testing.assert_close(d_gates, rule, rtol=1e-5, atol=1e-6)


INTERPRETER_ONLY = pytest.mark.skipif(DEVICE == "cuda", reason="a GPU holds this persistent grid")


@pytest.mark.parametrize("measured", ["one-launch", pytest.param("persistent", marks=INTERPRETER_ONLY)])
def test_measured_strategy_that_cannot_run_falls_back_to_the_rule(measured):
    # H=200: more units than one program holds; under the interpreter a persistent grid has
    # one program per batch block, so it cannot either. Measured at B=4, one doubling away.
    with tuning.use_table(table([entry("fwd", "float32", 4, 200, measured)])):
        plans = planner.plans(LSTM, 2, 200, None, torch.float32, torch.device(DEVICE), K._recurrence_fwd_kernel, False)
    assert [strategy for strategy, _ in plans] == [planner.fallback_strategy(200)] == ["per-step"]
    assert not plans[0][1]["GRID_SYNC"]


def test_plan_refused_at_the_launch_falls_back_to_the_next():
    # A measured persistent plan passes kernel_config but the compiled kernel's occupancy
    # (checked at the launch, on a GPU) refuses it: the rule's plan runs instead.
    ran = []

    def run(strategy, config):
        ran.append(strategy)
        if strategy == "persistent":
            raise planner.StrategyUnavailable("persistent: not resident")

    planner.run_plans([("persistent", {}), ("per-step", {})], run)
    assert ran == ["persistent", "per-step"] and planner.last_strategy() == "per-step"
    with pytest.raises(planner.StrategyUnavailable, match="not resident"):  # nothing left to try
        planner.run_plans([("persistent", {})], run)


# ---------------------------------------------------------------------- which table applies


@pytest.fixture
def synthetic_gpu(monkeypatch, tmp_path):
    """Any device is the GPU "Synthetic GPU", whose committed tables live in tmp_path."""
    monkeypatch.setattr(tuning, "_device_name", lambda device: None if device is None else GPU)
    monkeypatch.setattr(tuning, "TUNED_DIR", tmp_path / "tuned")
    (tmp_path / "tuned").mkdir()
    return tmp_path / "tuned" / "synthetic-gpu.json"


def test_committed_table_environment_and_use_table(synthetic_gpu, tmp_path, monkeypatch):
    assert tuning.table_path(GPU) == synthetic_gpu
    assert tuning.table_for(CPU) is None  # no file: no table
    committed = table([entry("fwd", "float32", 2, 16, "per-step")])
    synthetic_gpu.write_text(json.dumps(committed))
    assert tuning.table_for(CPU) is None  # "no table" was cached for this GPU
    tuning.clear_cache()
    assert tuning.table_for(CPU) == committed
    assert tuning.table_for(None) is None  # device None: no table
    assert tuning.measured_strategy("lstm", "fwd", 2, 16, None, torch.float32, CPU) == "per-step"

    other = tmp_path / "other.json"
    other.write_text(json.dumps(table([entry("fwd", "float32", 2, 16, "persistent")], gpu="Another GPU")))
    monkeypatch.setenv(tuning.ENV_VAR, str(other))  # any file, whichever GPU it names
    assert tuning.measured_strategy("lstm", "fwd", 2, 16, None, torch.float32, CPU) == "persistent"
    monkeypatch.setenv(tuning.ENV_VAR, "off")
    assert tuning.table_for(CPU) is None
    with tuning.use_table(committed):  # use_table beats the environment
        assert tuning.table_for(CPU) == committed
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="missing.json: cannot be read"):
        tuning.table_for(CPU)
    monkeypatch.delenv(tuning.ENV_VAR)
    with tuning.use_table(None):  # no table at all, committed or not
        assert tuning.table_for(CPU) is None
    assert tuning.table_for(CPU) == committed


def test_committed_table_of_another_gpu_is_an_error(synthetic_gpu):
    synthetic_gpu.write_text(json.dumps(table(gpu="Another GPU")))
    with pytest.raises(ValueError, match="synthetic-gpu.json: measured on 'Another GPU', not 'Synthetic GPU'"):
        tuning.table_for(CPU)


def test_committed_tables_are_valid_and_cite_committed_results():
    """Every kernels/tuned/*.json: valid, named for its GPU, its dispatch made from committed
    bench results and its configs with the tuner's record."""
    for path in sorted(tuning.TUNED_DIR.glob("*.json")):
        data = tuning.load_table(path)
        assert path.name == f"{tuning.slug(data['gpu'])}.json"
        if data["dispatch"]:
            sources = data["dispatch_provenance"]["source"]
            assert sources and all((ROOT / source).is_file() for source in sources), sources
        if data["configs"]:
            assert data["configs_provenance"]["made_by"] == "bench/tune.py"


def test_slug():
    assert tuning.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert tuning.slug("NVIDIA GeForce RTX 4090 (laptop)") == "nvidia-geforce-rtx-4090-laptop"


# -------------------------------------------------------------------------------- the tuner

_spec = importlib.util.spec_from_file_location("bench_tune", ROOT / "bench" / "tune.py")
tune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune)

K16 = {"BLOCK_K": 16, "num_warps": 8, "num_stages": 3}
K64 = {"BLOCK_K": 64, "num_warps": 4, "num_stages": 3}  # at H=32: BLOCK_K 32, the default


def installed_block_k():
    """BLOCK_K of the candidate being tried (None for the default config)."""
    installed = tuning.table_for(None)
    return installed["configs"][0]["config"]["BLOCK_K"] if installed else None


def test_tuner_grids_are_the_benchmark_grids():
    """tune.py --grid reads bench/bench_lstm.py's grids, so they tune the shapes the benchmark times."""
    assert tune.bench_grid("quick") == ([(8, 512, None), (8, 2048, None), (128, 512, None), (128, 2048, None)],
                                        [torch.bfloat16, torch.float32])  # fmt: skip
    shapes, dtypes = tune.bench_grid("full")
    assert len(shapes) == 20 and {P for _, _, P in shapes} == {None} and torch.float16 in dtypes
    shapes, _ = tune.bench_grid("proj")
    assert (8, 1024, 256) in shapes and (512, 2048, 512) in shapes and None not in {P for _, _, P in shapes}


def test_tuner_check_tries_each_distinct_candidate():
    lines = []
    results = tune.tune([(2, 32, None)], [torch.float32], ["per-step", "persistent"], ["fwd", "bwd"],
                        candidates=[K16, K64], T=3, timing=False, say=lines.append)  # fmt: skip
    assert [(r["kernel"], r["strategy"]) for r in results] == [
        ("fwd", "per-step"), ("bwd", "per-step"), ("fwd", "persistent"), ("bwd", "persistent")]  # fmt: skip
    for result in results:
        # the backward's tuned options add its split; each kernel's its prefetch, on in persistent launches
        split = {"DH_SPLIT": 1} if result["kernel"] == "bwd" else {}
        prefetch = {tuning.PREFETCH[result["kernel"]]: result["strategy"] == "persistent"}
        assert result["default"] == {"BLOCK_K": 32, "num_warps": 4, "num_stages": 3, **split, **prefetch}
        assert [t["status"] for t in result["trials"]] == ["ok", "same config as the default"]
        assert result["best"] is None  # nothing timed, nothing wins
    assert len(lines) == 4 and "1 candidates agree" in lines[0]


def test_tuner_drops_candidates_that_fail_or_disagree(monkeypatch):
    def run_kernel(problem, kernel):
        outputs = problem.run(kernel)
        if installed_block_k() == 16 and kernel == "fwd":
            outputs[0][0, 0, 0] += 1.0  # a wrong h
        if installed_block_k() == 16 and kernel == "bwd":
            raise RuntimeError("out of resource: shared memory\nRequired: 300000")
        return outputs

    monkeypatch.setattr(tune, "run_kernel", run_kernel)
    results = tune.tune([(2, 32, None)], [torch.float32], ["per-step"], ["fwd", "bwd"], candidates=[K16],
                        T=3, timing=False, say=lambda line: None)  # fmt: skip
    fwd, bwd = (r["trials"][0]["status"] for r in results)
    assert fwd.startswith("dropped: output 0 differs from the default config's by 1")
    assert bwd == "dropped: RuntimeError: Required: 300000"


@pytest.mark.parametrize("candidate_ms, wins", [(0.9, True), (0.98, False)])
def test_tuner_keeps_a_candidate_only_if_clearly_faster(monkeypatch, tmp_path, candidate_ms, wins):
    times = iter([1.05, 1.0])  # the default's two timings (before and after): the faster counts

    def do_bench(call, **options):
        call()
        return candidate_ms if installed_block_k() == 16 else next(times)

    monkeypatch.setattr(tune.triton.testing, "do_bench", do_bench)
    (result,) = tune.tune([(2, 32, None)], [torch.float32], ["per-step"], ["fwd"], candidates=[K16], T=3,
                          say=lambda line: None)  # fmt: skip
    assert result["default_ms"] == 1.0 and result["trials"][0]["ms"] == candidate_ms
    assert result["best"] == (K16 if wins else None)

    # merged into the GPU's table: this key set (or removed), the others and "dispatch" kept
    path = tmp_path / "table.json"
    other = config_entry("bwd", "per-step", "float32", 2, 32, {"num_warps": 8})
    stale = config_entry("fwd", "per-step", "float32", 2, 32, {"num_warps": 8})
    dispatch = [entry("fwd", "float32", 2, 32, "per-step")]
    path.write_text(json.dumps(table(dispatch, [other, stale])))
    written = tune.write_table(path, [result], GPU, 100, "2030-01-01T00:00:00+00:00")
    assert tuning.load_table(path) == written
    key = dict(cell="lstm", kernel="fwd", strategy="per-step", dtype="float32", B=2, H=32, P=None)
    assert written["configs"] == ([dict(key, config=K16)] if wins else []) + [other]  # forward first
    assert written["dispatch"] == dispatch
    (case,) = written["configs_provenance"]["cases"]
    assert case == dict(key, T=3, default=result["default"], default_ms=1.0, tuned_ms=0.9 if wins else None,
                        date="2030-01-01T00:00:00+00:00", versions=tune.versions())  # fmt: skip
    with pytest.raises(ValueError, match="Another GPU"):
        tune.write_table(path, [result], "Another GPU", 100, "2030-01-01")


def test_tuner_check_command(tmp_path):
    log = tmp_path / "trials.json"
    assert tune.main(["--check", "--strategies", "per-step", "--kernels", "fwd", "--log", str(log)]) == 0
    (result,) = json.loads(log.read_text())
    statuses = [t["status"] for t in result["trials"]]
    assert len(statuses) == len(tune.CANDIDATES) and statuses.count("ok") == 15  # BLOCK_K 16/32 x 8, less the default
    with pytest.raises(SystemExit, match="writes no table"):
        tune.main(["--check", "-o", str(tmp_path / "table.json")])


def test_tuner_tries_each_kernel_without_its_prefetch():
    assert tune.CANDIDATES[-1] == {"PREFETCH_GX": False}
    assert tune.BACKWARD_CANDIDATES[-1] == {"PREFETCH_OWN_TILES": False}
    for strategy, status in (("persistent", "ok"), ("per-step", "same config as the default")):  # off there already
        for kernel, candidates in (("fwd", tune.CANDIDATES), ("bwd", tune.BACKWARD_CANDIDATES)):
            (result,) = tune.tune([(2, 32, None)], [torch.float32], [strategy], [kernel], T=3, timing=False,
                                  candidates=candidates[-1:], say=lambda line: None)  # fmt: skip
            assert [t["status"] for t in result["trials"]] == [status], (strategy, kernel)


def test_tuner_prefetch_candidates_command(tmp_path):
    log = tmp_path / "trials.json"
    assert tune.main(["--check", "--candidates", "prefetch", "--strategies", "persistent", "--log", str(log)]) == 0
    results = json.loads(log.read_text())
    assert [(r["kernel"], [t["config"] for t in r["trials"]], [t["status"] for t in r["trials"]]) for r in results] == [
        ("fwd", [{"PREFETCH_GX": False}], ["ok"]), ("bwd", [{"PREFETCH_OWN_TILES": False}], ["ok"])]  # fmt: skip


def test_tuner_tries_the_backward_dh_splits():
    assert tune.BACKWARD_CANDIDATES[-5:-1] == [{"DH_SPLIT": split} for split in (1, 2, 4, 8)]
    (result,) = tune.tune([(2, 32, None)], [torch.float32], ["per-step"], ["bwd"], T=3, timing=False,
                          candidates=[{"DH_SPLIT": split} for split in (1, 2, 4)], say=lambda line: None)  # fmt: skip
    # K = 4H = 128 in chunks of 32: split 4 ways, a chunk a slice; each agrees with the unsplit default
    assert [t["status"] for t in result["trials"]] == ["same config as the default", "ok", "ok"]

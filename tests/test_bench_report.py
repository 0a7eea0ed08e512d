"""bench/report.py on synthetic benchmark files (made up here, in tmp_path: no real GPU
numbers), and the committed README's performance section against what it generates."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

GPU = "Synthetic GPU"
AUTO, CUDNN = "fusedrnn-auto", "cudnn"
H_ALL = (256, 512, 1024, 2048)


def info(provider, mode, dtype, B, H, time_ms, run_id, date="2030-01-01T00:00:00Z", **extra):
    row = dict(
        provider=provider, strategy="persistent" if provider == "fusedrnn-auto" else None,
        mode=mode, T=512, B=B, I=H, H=H, dtype=dtype, tf32=True, gpu=GPU, sm_count=100,
        torch="0.0-synthetic", triton="0.0", cuda="0.0", cudnn="0", fusedrnn="0.0",
        date=date, run_id=run_id, timer="cuda-events", time_ms=time_ms,
        us_per_step=None if time_ms is None else time_ms * 1e3 / 512,
        tokens_per_s=None if time_ms is None else 512 * B / time_ms * 1e3,
        peak_memory_bytes=None,
    )  # fmt: skip
    row.update(extra)
    return row


def write_results(path, infos):
    benchmarks = [{"name": f"synthetic{i}", "params": {}, "stats": {}, "extra_info": x}
                  for i, x in enumerate(infos)]  # fmt: skip
    data = {"machine_info": {"node": "synthetic"}, "commit_info": {"id": "0" * 40},
            "benchmarks": benchmarks, "datetime": "2030-01-01T00:00:00",
            "version": "4.0.0"}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def training_case(dtype, B, H):
    return report.Case("training", dtype, True, 512, B, H, H)


def training_speedup(B, H):
    """The made-up speedup of each training shape: 2x for small H, 0.5x for large H."""
    return 2.0 if H <= 512 else 0.5


def full_grid(run_of_dtype):
    """Both grids, every provider the targets need. cuDNN takes 10 ms everywhere."""
    rows = []
    for dtype in ("float32", "bfloat16"):
        run = run_of_dtype[dtype]
        for B in (1, 8, 32, 128, 512):
            for H in H_ALL:
                auto_ms = 10.0 / training_speedup(B, H)
                rows += [
                    info("cudnn", "training", dtype, B, H, 10.0, run, peak_memory_bytes=1000),
                    info("fusedrnn-auto", "training", dtype, B, H, auto_ms, run,
                         peak_memory_bytes=900 if H < 2048 else 1100),  # fmt: skip
                ]
        for B in (1, 8, 32):
            for H in H_ALL:
                # 1.6x faster than cuDNN; 1.5x the floor except B=32 H=2048 at 2.5x
                floor_ms = 6.25 / (2.5 if (B, H) == (32, 2048) else 1.5)
                rows += [
                    info("cudnn", "inference", dtype, B, H, 10.0, run),
                    info("fusedrnn-auto", "inference", dtype, B, H, 6.25, run),
                    info("floor-barrier", "inference", dtype, B, H, floor_ms, run),
                ]
    # torch.compile'd reference on two cases only: 8x and 6x fusedrnn-auto
    rows.append(info("reference-compile", "inference", "bfloat16", 1, 256, 50.0,
                     run_of_dtype["bfloat16"]))  # fmt: skip
    rows.append(info("reference-compile", "training", "float32", 8, 256, 30.0,
                     run_of_dtype["float32"]))  # fmt: skip
    return rows


@pytest.fixture
def split_results(tmp_path):
    """The full grid split over two runs in two files: float32 in one, bfloat16 in the other."""
    rows = full_grid({"float32": "run-a", "bfloat16": "run-b"})
    fp32 = [r for r in rows if r["dtype"] == "float32"]
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    return [write_results(tmp_path / "a.json", fp32), write_results(tmp_path / "b.json", bf16)]


def evaluated(paths):
    selected = report.select_runs(report.load_rows(paths))
    assert list(selected) == [report.Config(GPU, True)]
    config, cases = next(iter(selected.items()))
    return cases, {t.name: t for t in report.targets(config, cases)}


def test_speedups_and_targets(split_results):
    cases, results = evaluated(split_results)
    expected = {
        training_case(dtype, B, H): training_speedup(B, H)
        for dtype in ("float32", "bfloat16")
        for B in (1, 8, 32, 128, 512)
        for H in H_ALL
    }
    for case, value in expected.items():
        assert report.speedup(cases[case]) == pytest.approx(value)

    # half the shapes at 2x, half at 0.5x: geometric mean exactly 1
    gm = math.prod(expected.values()) ** (1 / len(expected))
    assert gm == pytest.approx(1.0)
    t = results["Training speedup vs cuDNN"]
    assert (t.status, t.measured, t.expected, t.missing) == ("MISS", 40, 40, ())
    assert t.value == pytest.approx(gm)
    assert "by 0.30x" in t.result and "23.1%" in t.result  # 0.3 / 1.3

    t = results["Training speedup vs cuDNN, worst shape"]
    assert (t.status, t.value) == ("MISS", pytest.approx(0.5))
    assert t.worst.H in (1024, 2048)
    assert "by 0.30x" in t.result and "37.5%" in t.result  # 0.3 / 0.8

    t = results["Inference speedup vs cuDNN, B <= 32"]
    assert (t.status, t.value, t.measured, t.expected) == ("PASS", pytest.approx(1.6), 24, 24)

    t = results["Inference time per step / floor, B <= 32"]
    assert (t.status, t.value, (t.worst.B, t.worst.H)) == ("MISS", pytest.approx(2.5), (32, 2048))
    assert "by 0.50x" in t.result and "25.0%" in t.result  # 0.5 / 2.0

    t = results["Speedup vs torch.compile'd reference"]
    assert (t.status, t.value, t.measured, t.expected) == ("PASS", pytest.approx(6.0), 2, None)

    t = results["Peak training memory / cuDNN's"]
    assert (t.status, t.value, t.worst.H) == ("MISS", pytest.approx(1.1), 2048)
    assert "by 0.10x" in t.result and "10.0%" in t.result


def passing_grid():
    """full_grid in one run, with every target met."""
    rows = full_grid({"float32": "r", "bfloat16": "r"})
    for row in rows:
        if row["provider"] == "fusedrnn-auto" and row["mode"] == "training":
            row["time_ms"], row["peak_memory_bytes"] = 10.0 / 1.5, 900
        if row["provider"] == "floor-barrier":
            row["time_ms"] = 6.25 / 1.9
        if row["provider"] == "reference-compile":
            row["time_ms"] = 50.0  # >= 7.5x the fusedrnn-auto times above
    return rows


def test_all_targets_pass(tmp_path):
    _, results = evaluated([write_results(tmp_path / "r.json", passing_grid())])
    assert {t.status for t in results.values()} == {"PASS"}
    assert results["Training speedup vs cuDNN"].value == pytest.approx(1.5)


def test_layers_with_a_projection_are_cases_of_their_own_outside_the_targets(tmp_path, monkeypatch):
    """The proj grid's rows share B, H and the run with grid rows: they are cases of their
    own (not a second measurement of the grid's case), in the tables, and not in the targets,
    which are set for layers without a projection."""
    rows = passing_grid()
    for dtype in ("float32", "bfloat16"):
        for mode in ("training", "inference"):  # 0.2x cuDNN, twice its memory: would miss every target
            rows += [info("cudnn", mode, dtype, 512, 1024, 10.0, "r", P=256, peak_memory_bytes=1000),
                     info("fusedrnn-auto", mode, dtype, 512, 1024, 50.0, "r", P=256, peak_memory_bytes=2000)]  # fmt: skip
    path = write_results(tmp_path / "r.json", rows)
    cases, results = evaluated([path])
    projected = report.Case("training", "bfloat16", True, 512, 512, 1024, 1024, 256)
    assert report.speedup(cases[projected]) == pytest.approx(0.2)
    assert report.speedup(cases[training_case("bfloat16", 512, 1024)]) == pytest.approx(1.5)
    assert {t.status for t in results.values()} == {"PASS"}
    assert results["Training speedup vs cuDNN"].measured == 40

    monkeypatch.setattr(report, "write_plot", lambda series, path: None)  # test_plot draws
    md, readme = tmp_path / "REPORT.md", readme_with_markers(tmp_path / "README.md")
    out = ["--out-md", str(md), "--out-png", str(tmp_path / "speedup.png"), "--readme", str(readme), "--cpu-results"]
    assert report.main(["render", str(path), *out]) == 0
    assert "| 512 | 1024 P=256 | 1024 | 10.000 | 50.000 | persistent | 0.20x |" in md.read_text()
    assert "| training | bfloat16 | 512 | 1024 P=256 | - | - | - | - | 0.20x |" in readme.read_text()


def test_missing_grid_case_is_not_measured(tmp_path):
    rows = full_grid({"float32": "r", "bfloat16": "r"})
    gone = training_case("bfloat16", 512, 2048)
    rows = [row for row in rows if report.case_of(row) != gone]
    for row in rows:
        if row["provider"] == "fusedrnn-auto" and row["mode"] == "training":
            row["time_ms"], row["peak_memory_bytes"] = 10.0 / 1.5, 900
    _, results = evaluated([write_results(tmp_path / "r.json", rows)])
    for name in ("Training speedup vs cuDNN", "Training speedup vs cuDNN, worst shape",
                 "Peak training memory / cuDNN's"):  # fmt: skip
        t = results[name]
        assert (t.status, t.result, t.measured, t.missing) == (
            "not measured", "not measured", 39, (gone,))  # fmt: skip
        line = f"- {name}: not measured for training bfloat16 T=512: B=512 H=2048"
        assert report.missing_lines([t]) == [line]


def test_worst_shape_miss_is_decided_without_the_whole_grid(tmp_path):
    rows = full_grid({"float32": "r", "bfloat16": "r"})
    rows = [r for r in rows if not (r["mode"], r["B"]) == ("training", 512)]
    _, results = evaluated([write_results(tmp_path / "r.json", rows)])
    assert results["Training speedup vs cuDNN"].status == "not measured"  # a mean needs all
    assert results["Training speedup vs cuDNN, worst shape"].status == "MISS"  # 0.5x seen
    assert len(results["Training speedup vs cuDNN, worst shape"].missing) == 8


def test_no_ratio_across_runs(tmp_path):
    case = training_case("float32", 1, 256)
    rows = [
        info("fusedrnn-auto", "training", "float32", 1, 256, 5.0, "run-a"),
        info("cudnn", "training", "float32", 1, 256, 10.0, "run-b"),
        info("fusedrnn-auto", "training", "float32", 8, 256, 5.0, "run-b"),
    ]
    cases, results = evaluated([write_results(tmp_path / "a.json", rows[:1]),
                                write_results(tmp_path / "b.json", rows[1:])])  # fmt: skip
    assert report.speedup(cases[case]) is None
    t = results["Training speedup vs cuDNN"]
    assert (t.status, t.measured, t.value) == ("not measured", 0, None)
    assert case in t.missing
    assert report.missing_lines([t]) == [
        "- Training speedup vs cuDNN: not measured for training float32 T=512: all 20 shapes; "
        "training bfloat16 T=512: all 20 shapes"
    ]


def test_latest_run_with_cudnn_wins(tmp_path):
    rows = [
        (CUDNN, 10.0, "old", "2030-01-01"),
        (AUTO, 5.0, "old", "2030-01-01"),
        (CUDNN, 10.0, "new", "2030-02-01"),
        (AUTO, 4.0, "new", "2030-02-01"),
        (AUTO, 1.0, "newest-no-cudnn", "2030-03-01"),
    ]
    rows = [info(provider, "training", "float32", 1, 256, time_ms, run, date=f"{day}T00:00:00Z")
            for provider, time_ms, run, day in rows]  # fmt: skip
    cases, _ = evaluated([write_results(tmp_path / "r.json", rows)])
    assert report.speedup(cases[training_case("float32", 1, 256)]) == pytest.approx(2.5)


def test_null_times_are_ignored(tmp_path, split_results):
    _, reference = evaluated(split_results)
    nulls = [
        # the same provider and case in the same run: a conflict if it were read
        info("cudnn", "training", "float32", 1, 256, None, "run-a"),
        # a later run with cuDNN: it would be chosen for this case if it were read
        info("cudnn", "training", "float32", 8, 256, None, "run-z", date="2031-01-01T00:00:00Z"),
    ]
    _, results = evaluated([*split_results, write_results(tmp_path / "cpu.json", nulls)])
    assert results == reference


def test_conflicting_rows_in_one_run_are_an_error(tmp_path):
    rows = [info("cudnn", "training", "float32", 1, 256, t, "r") for t in (10.0, 11.0)]
    with pytest.raises(ValueError, match="two cudnn rows"):
        report.select_runs(report.load_rows([write_results(tmp_path / "r.json", rows)]))


def test_missing_extra_info_key_is_an_error(tmp_path):
    row = info("cudnn", "training", "float32", 1, 256, 10.0, "r")
    del row["run_id"]
    with pytest.raises(ValueError, match="run_id"):
        report.load_rows([write_results(tmp_path / "r.json", [row])])


def test_merge_round_trips(tmp_path, split_results):
    merged = tmp_path / "merged.json"
    assert report.main(["merge", *map(str, split_results), "-o", str(merged)]) == 0
    parts = [json.loads(p.read_text()) for p in split_results]
    data = json.loads(merged.read_text())
    assert data["benchmarks"] == parts[0]["benchmarks"] + parts[1]["benchmarks"]
    assert {"machine_info", "commit_info", "datetime", "version"} <= set(data)
    infos = [row.info for row in report.load_rows([merged])]
    assert infos == [row.info for row in report.load_rows(split_results)]
    assert evaluated([merged])[1] == evaluated(split_results)[1]
    # a merged file next to its parts: the same rows, counted once
    assert evaluated([merged, *split_results])[1] == evaluated(split_results)[1]


def readme_with_markers(path):
    section = f"{report.BEGIN}\nhand-typed\n{report.END}"
    cpu_section = f"{report.CPU_BEGIN}\nhand-typed too\n{report.CPU_END}"
    path.write_text(f"# x\n\n## Performance\n\n{section}\n\n### CPU\n\n{cpu_section}\n\n## After\n")
    return path


def test_render_then_check(tmp_path, split_results, monkeypatch):
    plots = []
    monkeypatch.setattr(report, "write_plot", lambda series, path: plots.append(path))  # test_plot
    readme = readme_with_markers(tmp_path / "README.md")
    out = ["--out-md", str(tmp_path / "REPORT.md"), "--out-png", str(tmp_path / "speedup.png"), "--cpu-results"]
    files = list(map(str, split_results))
    assert report.main(["render", *files, *out, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "hand-typed" not in text and text.endswith(f"{report.CPU_END}\n\n## After\n")
    assert "| Training speedup vs cuDNN | >= 1.30x geometric mean | 1.00x |" in text
    assert "[REPORT.md](REPORT.md)" in text
    md = (tmp_path / "REPORT.md").read_text()
    assert "### training, bfloat16, T=512" in md and "### inference, float32, T=512" in md
    assert report.main(["check", *files, *out, "--readme", str(readme)]) == 0
    # rendering is deterministic and independent of the order of the files
    assert report.main(["render", *reversed(files), *out, "--readme", str(readme)]) == 0
    assert readme.read_text() == text and (tmp_path / "REPORT.md").read_text() == md

    readme.write_text(text.replace("1.00x", "1.40x", 1))
    assert report.main(["check", *files, *out, "--readme", str(readme)]) == 1
    assert plots == [str(tmp_path / "speedup.png")] * 2


def test_plot(tmp_path, split_results):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the cli extra)")
    series = report.plot_series(report.select_runs(report.load_rows(split_results)))
    assert len(series) == 4  # (training, inference) x (float32, bfloat16)
    png = tmp_path / "speedup.png"
    report.write_plot(series, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_no_results_section(tmp_path):
    readme = readme_with_markers(tmp_path / "README.md")
    untimed = [info("cudnn", "training", "float32", 1, 256, None, "r")]
    empty = write_results(tmp_path / "cpu.json", untimed)
    out = ["--out-md", str(tmp_path / "REPORT.md"), "--out-png", str(tmp_path / "speedup.png"), "--cpu-results"]
    assert report.main(["render", str(empty), *out, "--readme", str(readme)]) == 0
    assert "No GPU results are committed yet." in readme.read_text()
    assert not (tmp_path / "REPORT.md").exists() and not (tmp_path / "speedup.png").exists()


def test_committed_readme_is_generated():
    """The README's performance section is what render makes of bench/results/*.json."""
    assert report.main(["check", "--readme", str(ROOT / "README.md")]) == 0


# ----------------------------------------------------------- dispatch (tuning table "dispatch")


def strategy_rows(mode, dtype, B, H, times, run_id="r", T=512, **extra):
    """One row per forced strategy with the made-up times {strategy: ms} (None: not run)."""
    return [info(f"fusedrnn-{name}", mode, dtype, B, H, ms, run_id, T=T, **extra)
            for name, ms in times.items()]  # fmt: skip


def dispatch(tmp_path, rows, *extra_args, output=None):
    output = output or tmp_path / "table.json"
    results = write_results(tmp_path / f"results{len(list(tmp_path.glob('results*')))}.json", rows)
    assert report.main(["dispatch", str(results), "-o", str(output), *extra_args]) == 0
    return json.loads(output.read_text())


def test_dispatch_takes_the_fastest_strategy_per_mode_at_the_largest_t(tmp_path):
    rows = [
        # inference -> the forward's entries; training -> the backward's
        *strategy_rows("inference", "bfloat16", 8, 512, {"persistent": 1.0, "per-step": 3.0, "one-launch": None}),
        *strategy_rows("training", "bfloat16", 8, 512, {"persistent": 4.0, "per-step": 2.0}),
        # T=64 says one-launch, T=512 (the largest) says per-step: T=512 decides
        *strategy_rows("inference", "float32", 1, 256, {"one-launch": 1.0, "per-step": 9.0}, T=64),
        *strategy_rows("inference", "float32", 1, 256, {"one-launch": 5.0, "per-step": 4.0}, T=512),
        # the auto and cuDNN rows are not candidates, however fast
        info("fusedrnn-auto", "inference", "bfloat16", 8, 512, 0.1, "r"),
        info("cudnn", "inference", "bfloat16", 8, 512, 0.1, "r"),
        # an input size other than H is not the bench's layer: ignored
        *strategy_rows("inference", "bfloat16", 32, 512, {"per-step": 1.0}, I=256),
    ]
    table = dispatch(tmp_path, rows)
    assert table["gpu"] == GPU and table["sm_count"] == 100 and table["configs"] == []
    assert table["dispatch"] == [
        {"cell": "lstm", "kernel": "fwd", "dtype": "float32", "B": 1, "H": 256, "P": None, "strategy": "per-step"},
        {"cell": "lstm", "kernel": "fwd", "dtype": "bfloat16", "B": 8, "H": 512, "P": None, "strategy": "persistent"},
        {"cell": "lstm", "kernel": "bwd", "dtype": "bfloat16", "B": 8, "H": 512, "P": None, "strategy": "per-step"},
    ]
    provenance = table["dispatch_provenance"]
    assert provenance["cases"][0] == {"cell": "lstm", "kernel": "fwd", "dtype": "float32", "B": 1, "H": 256, "P": None, "T": 512,
                                      "tf32": True, "ms": {"per-step": 4.0, "one-launch": 5.0}}  # fmt: skip
    assert provenance["versions"]["torch"] == "0.0-synthetic"
    assert provenance["source"] == ["results0.json"]  # outside the repository: the file's name

    from fusedrnn.kernels import tuning

    with tuning.use_table(table):  # what auto then reads
        assert tuning.measured_strategy("lstm", "bwd", 8, 512, None, "bfloat16", None) == "per-step"


def test_dispatch_entries_of_a_projection_are_their_own(tmp_path):
    rows = [*strategy_rows("training", "bfloat16", 8, 1024, {"persistent": 1.0, "per-step": 2.0}),
            *strategy_rows("training", "bfloat16", 8, 1024, {"persistent": 3.0, "per-step": 2.0}, P=256)]  # fmt: skip
    table = dispatch(tmp_path, rows)
    assert table["dispatch"] == [
        {"cell": "lstm", "kernel": "bwd", "dtype": "bfloat16", "B": 8, "H": 1024, "P": None, "strategy": "persistent"},
        {"cell": "lstm", "kernel": "bwd", "dtype": "bfloat16", "B": 8, "H": 1024, "P": 256, "strategy": "per-step"},
    ]

    from fusedrnn.kernels import tuning

    with tuning.use_table(table):
        assert tuning.measured_strategy("lstm", "bwd", 8, 1024, 256, "bfloat16", None) == "per-step"
        assert tuning.measured_strategy("lstm", "bwd", 8, 1024, None, "bfloat16", None) == "persistent"


def test_dispatch_float32_follows_one_tf32_setting(tmp_path):
    rows = [
        *strategy_rows("inference", "float32", 8, 512, {"persistent": 1.0, "per-step": 2.0}, tf32=True),
        *strategy_rows("inference", "float32", 8, 512, {"persistent": 2.0, "per-step": 1.0}, tf32=False),
        # 16-bit kernels ignore the setting: rows of the other one count where they are all
        *strategy_rows("inference", "bfloat16", 8, 512, {"persistent": 2.0, "per-step": 1.0}, tf32=False),
    ]
    strategies = {(e["dtype"], e["strategy"]) for e in dispatch(tmp_path, rows)["dispatch"]}
    assert strategies == {("float32", "persistent"), ("bfloat16", "per-step")}
    strategies = {(e["dtype"], e["strategy"]) for e in dispatch(tmp_path, rows, "--tf32", "off")["dispatch"]}
    assert strategies == {("float32", "per-step"), ("bfloat16", "per-step")}


def test_dispatch_keeps_the_tuned_configs_of_the_same_gpu(tmp_path):
    output = tmp_path / "table.json"
    config = {"cell": "lstm", "kernel": "fwd", "strategy": "per-step", "dtype": "bfloat16", "B": 8, "H": 512, "P": None,
              "config": {"num_warps": 8}}  # fmt: skip
    old_dispatch = {"cell": "lstm", "kernel": "bwd", "dtype": "float16", "B": 1, "H": 256, "P": None, "strategy": "one-launch"}
    output.write_text(json.dumps({"gpu": GPU, "dispatch": [old_dispatch], "configs": [config],
                                  "configs_provenance": {"made_by": "bench/tune.py"}}))  # fmt: skip
    rows = strategy_rows("inference", "bfloat16", 8, 512, {"persistent": 1.0, "per-step": 2.0})
    table = dispatch(tmp_path, rows, output=output)
    assert table["configs"] == [config] and table["configs_provenance"] == {"made_by": "bench/tune.py"}
    assert [e["strategy"] for e in table["dispatch"]] == ["persistent"]  # rebuilt from the results

    output.write_text(json.dumps({"gpu": "Another GPU", "dispatch": [], "configs": []}))
    with pytest.raises(ValueError, match="Another GPU's table"):
        dispatch(tmp_path, rows, output=output)
    output.write_text(json.dumps({"gpu": GPU, "dispatch": [], "configs": [dict(config, config={"num_warps": 3})]}))
    with pytest.raises(ValueError, match="table.json: configs.0.: num_warps must be one of"):
        dispatch(tmp_path, rows, output=output)


def test_dispatch_refuses_results_of_several_gpus(tmp_path):
    rows = [
        *strategy_rows("inference", "bfloat16", 8, 512, {"persistent": 1.0}),
        *strategy_rows("inference", "bfloat16", 32, 512, {"persistent": 1.0}, gpu="Another GPU"),
    ]
    with pytest.raises(ValueError, match="several GPUs"):
        dispatch(tmp_path, rows)
    assert not (tmp_path / "table.json").exists()


def test_dispatch_needs_timed_strategy_rows(tmp_path):
    rows = [*strategy_rows("inference", "bfloat16", 8, 512, {"persistent": None}),
            info("cudnn", "inference", "bfloat16", 8, 512, 1.0, "r")]  # fmt: skip
    with pytest.raises(ValueError, match="no timed fusedrnn"):
        dispatch(tmp_path, rows)


def test_case_table_shows_the_gain_of_per_step_graphs(tmp_path):
    rows = [
        info("cudnn", "inference", "bfloat16", 128, 2048, 10.0, "r"),
        info("fusedrnn-auto", "inference", "bfloat16", 128, 2048, 5.0, "r"),
        info("fusedrnn-per-step", "inference", "bfloat16", 128, 2048, 5.0, "r"),
        info("fusedrnn-per-step-eager", "inference", "bfloat16", 128, 2048, 6.5, "r"),
        info("cudnn", "inference", "bfloat16", 8, 2048, 10.0, "r"),  # no A/B: no gain shown
        info("fusedrnn-per-step", "inference", "bfloat16", 8, 2048, 5.0, "r"),
    ]
    selected = report.select_runs(report.load_rows([write_results(tmp_path / "r.json", rows)]))
    (cases,) = selected.values()
    header, _, *body = report.case_table("inference", cases).splitlines()
    gain = [c.strip() for c in header.split("|")].index("per-step graphs gain")
    assert sorted(row.split("|")[gain].strip() for row in body) == ["-", "1.30x"]


# --------------------------------------------------------------- CPU (bench/bench_cpu.py's rows)


def cpu_info(provider, mode, dtype, kind, T, B, H, time_ms, run_id="c", date="2030-01-01T00:00:00Z"):
    return dict(
        provider=provider, mode=mode, kind=kind, T=T, B=B, I=H, H=H, P=None, layers=1, bidirectional=False,
        dtype=dtype, threads=1, cpu="Synthetic CPU", cpu_count=2, torch="0.0-synthetic", fusedrnn="0.0",
        python="3.11", date=date, run_id=run_id, timer="perf_counter", time_ms=time_ms,
        us_per_step=None if time_ms is None else time_ms * 1e3 / T, tokens_per_s=None,
    )  # fmt: skip


def cpu_rows(auto_factor=1.0, reference_growth=1.0, run_id="c", date="2030-01-01T00:00:00Z"):
    """torch 1 ms a step-unit; fusedrnn-auto torch's time / auto_factor; the reference 10x
    auto's at T=128 and reference_growth times that per step at T=1024."""
    rows = []
    for mode in ("training", "inference"):
        for dtype in ("float32", "float64"):
            for T in (128, 1024):
                for B, H in ((1, 64), (8, 256)):
                    base = T * 0.01
                    rows += [cpu_info("torch", mode, dtype, "layer", T, B, H, base, run_id, date),
                             cpu_info("fusedrnn-auto", mode, dtype, "layer", T, B, H, base / auto_factor, run_id, date),
                             cpu_info("reference-eager", mode, dtype, "layer", T, B, H,
                                      10 * base * (reference_growth if T == 1024 else 1.0), run_id, date)]  # fmt: skip
    return rows


def cpu_targets(rows, tmp_path):
    path = write_results(tmp_path / "cpu.json", rows)
    (cases,) = report.load_cpu([path]).values()
    return {name: (measured, result) for name, _, measured, result in report.cpu_targets(cases)}


def test_cpu_targets_pass_and_miss(tmp_path):
    results = cpu_targets(cpu_rows(auto_factor=1.1, reference_growth=1.0), tmp_path)
    assert results["speedup, geometric mean"] == ("1.100x", "PASS")
    assert results["speedup, worst case"][1] == "PASS"
    assert results["fusedrnn-auto: growth of time per step over T (over torch.nn.LSTM's where that grows)"][1] == "PASS"
    # a reference whose time per step grows 8x from T=128 to 1024 is quadratic: a miss, by how much
    results = cpu_targets(cpu_rows(auto_factor=0.85, reference_growth=8.0), tmp_path)
    assert results["speedup, geometric mean"] == ("0.850x", "MISS by 15.0%")
    assert results["speedup, worst case"][1] == "MISS by 5.6%"
    measured, result = results["reference-eager: growth of time per step over T (over torch.nn.LSTM's where that grows)"]
    assert measured.startswith("8.000x (") and result == "MISS by 540.0%"


def test_cpu_ratios_come_from_the_latest_run(tmp_path):
    old = cpu_rows(auto_factor=0.5, run_id="old", date="2029-01-01T00:00:00Z")
    results = cpu_targets(old + cpu_rows(auto_factor=1.2, run_id="new"), tmp_path)
    assert results["speedup, geometric mean"] == ("1.200x", "PASS")
    with pytest.raises(ValueError, match="two torch rows"):
        cpu_targets(cpu_rows() + [cpu_info("torch", "training", "float32", "layer", 128, 1, 64, 9.0)], tmp_path)


def test_cpu_render_then_check(tmp_path, monkeypatch):
    plots = []
    monkeypatch.setattr(report, "write_plot", lambda series, path, *args: plots.append(path))  # test_plot draws
    readme = readme_with_markers(tmp_path / "README.md")
    cpu = write_results(tmp_path / "cpu.json", cpu_rows(auto_factor=1.05))
    out = ["--out-md", str(tmp_path / "REPORT.md"), "--out-png", str(tmp_path / "speedup.png"),
           "--cpu-md", str(tmp_path / "CPU-REPORT.md"), "--cpu-png", str(tmp_path / "cpu.png"), "--readme", str(readme)]  # fmt: skip
    empty = write_results(tmp_path / "gpu.json", [])
    assert report.main(["render", str(empty), *out, "--cpu-results", str(cpu)]) == 0
    text = readme.read_text()
    assert "No GPU results are committed yet." in text and "hand-typed too" not in text
    assert "**Synthetic CPU**, 2 cores, 1 thread(s)" in text
    assert "| speedup, geometric mean | >= 1.0 | 1.050x | PASS |" in text
    assert "[CPU-REPORT.md](CPU-REPORT.md)" in text
    md = (tmp_path / "CPU-REPORT.md").read_text()
    assert "### training, float32" in md and "| layer | 1024 | 256 | 8 | 10.240 | 9.752 | 102.400 | 1.05x | 10.5x |" in md
    assert report.main(["check", str(empty), *out, "--cpu-results", str(cpu)]) == 0
    readme.write_text(text.replace("1.050x", "1.500x", 1))
    assert report.main(["check", str(empty), *out, "--cpu-results", str(cpu)]) == 1
    assert plots == [str(tmp_path / "cpu.png")]


def test_cpu_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the cli extra)")
    selected = report.load_cpu([write_results(tmp_path / "cpu.json", cpu_rows(auto_factor=1.05))])
    series = report.cpu_plot_series(selected)
    assert len(series) == 4  # (training, inference) x (float32, float64), one-layer cases at T=128
    png = tmp_path / "cpu.png"
    report.write_plot(series, png, report.cpu_plot_title, "speedup vs torch.nn.LSTM")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_cpu_speedup_comes_from_the_interleaved_torch_timing(tmp_path):
    """The auto row's torch_ms (torch.nn.LSTM timed between its rounds) beats the torch row."""
    rows = cpu_rows(auto_factor=0.8)  # the rows alone: 0.8x
    for row in rows:
        if row["provider"] == "fusedrnn-auto":
            row["torch_ms"] = row["time_ms"] * 1.02
    assert cpu_targets(rows, tmp_path)["speedup, geometric mean"] == ("1.020x", "PASS")


def test_cpu_peak_memory_targets_and_table(tmp_path):
    """Peak memory over torch's per case, and its growth per step over T against torch's."""
    rows = cpu_rows()
    for row in rows:  # torch 2 MiB a step-unit at T = 128 and linear; auto at 1.1x; reference 2x, quadratic
        scale = {"torch": 1.0, "fusedrnn-auto": 1.1, "reference-eager": 2.0}[row["provider"]]
        growth = row["T"] / 128 if row["provider"] == "reference-eager" else 1.0
        row["peak_mib"] = 2.0 * row["T"] / 128 * scale * growth
    results = cpu_targets(rows, tmp_path)
    assert results["fusedrnn-auto: peak memory / torch.nn.LSTM's"] == (results["fusedrnn-auto: peak memory / torch.nn.LSTM's"][0], "PASS")
    assert results["fusedrnn-auto: peak memory / torch.nn.LSTM's"][0].startswith("1.100x (")
    growth = results["fusedrnn-auto: growth of peak memory per step over T (over torch.nn.LSTM's where that grows)"]
    assert growth[0].startswith("1.000x (") and growth[1] == "PASS"
    measured, result = results["reference-eager: peak memory / torch.nn.LSTM's"]
    assert measured.startswith("16.000x (") and result == "MISS by 1180.0%"  # 2x times 8x at T = 1024
    growth = results["reference-eager: growth of peak memory per step over T (over torch.nn.LSTM's where that grows)"]
    assert growth[0].startswith("8.000x (") and growth[1] == "MISS by 540.0%"
    (cases,) = report.load_cpu([write_results(tmp_path / "cpu.json", rows)]).values()
    table = report.cpu_memory_table(cases)
    assert "| training | float32 | layer | 1024 | 256 | 8 | 16.0 | 17.6 | 256.0 | 1.10x | 16.00x |" in table
    without = cpu_targets(cpu_rows(), tmp_path)  # no peak measured: said so, not passed
    assert without["fusedrnn-auto: peak memory / torch.nn.LSTM's"] == ("-", report.NOT_MEASURED)


def test_rows_of_another_cell_are_their_own_cases_in_tables_targets_and_dispatch(tmp_path):
    """An RNN row (extra_info "cell") and an LSTM row of the same shape are two cases: the
    LSTM's targets and tables do not take the RNN's times, the RNN's rows say their cell,
    and the dispatch entries carry it. Rows without "cell" (older results) are the LSTM's."""
    lstm = [info(CUDNN, "training", "bfloat16", 8, 512, 2.0, "r"), info(AUTO, "training", "bfloat16", 8, 512, 1.0, "r")]
    rnn = [info(CUDNN, "training", "bfloat16", 8, 512, 1.0, "r", cell="rnn_tanh"),
           info(AUTO, "training", "bfloat16", 8, 512, 4.0, "r", cell="rnn_tanh")]  # fmt: skip
    (config, cases), = report.select_runs([report.Row("x", row) for row in lstm + rnn]).items()
    assert sorted(case.cell for case in cases) == ["lstm", "rnn_tanh"]
    lstm_case = training_case("bfloat16", 8, 512)
    assert lstm_case in cases and report.speedup(cases[lstm_case]) == 2.0
    rnn_case = lstm_case._replace(cell="rnn_tanh")
    assert report.speedup(cases[rnn_case]) == 0.25 and report.layer_label(rnn_case) == "512 (rnn_tanh)"
    target = report.targets(config, cases)[0]  # training geomean: the LSTM's case only
    assert target.measured == 1 and target.value == 2.0
    rows = [*lstm, *strategy_rows("inference", "bfloat16", 8, 512, {"persistent": 1.0, "per-step": 2.0}, cell="rnn_tanh")]
    entries = dispatch(tmp_path, rows)["dispatch"]
    assert [(e["cell"], e["kernel"], e["strategy"]) for e in entries] == [("rnn_tanh", "fwd", "persistent")]


def test_cpu_rows_of_another_cell_get_their_own_section_and_targets(tmp_path):
    """bench_cpu.py's RNN rows (extra_info "cell") are cases apart from the LSTM's of the same
    shape: their own section against torch.nn.RNN, their own targets, and the LSTM's speedup
    does not take their times. Rows without "cell" (older results) are the LSTM's."""
    lstm = cpu_rows(auto_factor=1.1)
    rnn = [dict(row, cell="rnn_tanh") for row in cpu_rows(auto_factor=0.5)]
    (cases,) = report.load_cpu([write_results(tmp_path / "cpu.json", lstm + rnn)]).values()
    per_cell = report.by_cell(cases)
    assert list(per_cell) == ["lstm", "rnn_tanh"] and len(per_cell["lstm"]) == len(per_cell["rnn_tanh"])
    lstm_targets = {name: value for name, _, value, _ in report.cpu_targets(per_cell["lstm"])}
    rnn_targets = {name: (value, result) for name, _, value, result in report.cpu_targets(per_cell["rnn_tanh"])}
    assert lstm_targets["speedup, geometric mean"] == "1.100x"
    assert rnn_targets["speedup, geometric mean"] == ("0.500x", "MISS by 50.0%")
    assert "reference-eager: peak memory / torch.nn.RNN's" in rnn_targets
    md = report.render_cpu_report(report.load_cpu([write_results(tmp_path / "cpu.json", lstm + rnn)]), None)
    assert "## Synthetic CPU, 1 thread(s): fusedrnn.LSTM against torch.nn.LSTM" in md
    assert "## Synthetic CPU, 1 thread(s): fusedrnn.RNN against torch.nn.RNN" in md
    with pytest.raises(ValueError, match="unknown provider, mode, kind or cell"):
        report.load_cpu([write_results(tmp_path / "bad.json", [dict(lstm[0], cell="gru9")])])

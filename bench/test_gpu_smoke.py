"""bench/gpu_smoke.py on CPU under the Triton interpreter, on its tiny shapes: every section
runs and passes, so that the one GPU call a session gets cannot fail for a reason a CPU
could have shown. Also its driver: a hung section is stopped at its cap and the next one
runs; a worker that dies mid-case is restarted after that case."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import gpu_smoke  # noqa: E402

def smoke(out, *args, **env):
    command = [sys.executable, str(BENCH / "gpu_smoke.py"), str(out), "--tiny", "--commit", "test-commit", *args]
    environment = dict(os.environ, TRITON_INTERPRET="1", **env)
    proc = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    return proc, summary


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    return out, *smoke(out)


def test_every_section_runs_and_passes(tiny_run):
    out, proc, summary = tiny_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(summary["sections"]) == list(gpu_smoke.SECTIONS)
    for name, section in summary["sections"].items():
        assert section["status"] == "ok", (name, section)
        # interpreted: nothing is compiled, and nothing fails to be logged
        assert section["compiles"] == dict(built=0, compile_seconds=0.0, from_cache=0, unlogged=0), name
    assert summary["commit"] == "test-commit"
    (env,) = gpu_smoke.section_rows(out / "gpu-smoke", "env")
    assert env["compile_log"] == str(gpu_smoke.compile_log(out / "gpu-smoke", "env"))  # each section logs its builds


def test_compile_stats_count_builds_and_cache_hits(tmp_path):
    from fusedrnn.kernels import aot

    assert gpu_smoke.COMPILE_LOG_ENV == aot.COMPILE_LOG_ENV
    log = tmp_path / "compiles-correct.jsonl"
    rows = [dict(hash="a", cache_hit=False, seconds=0.5), dict(hash="b", cache_hit=False, seconds=1.25),
            dict(hash="a", cache_hit=True, seconds=0.01), dict(error="KeyError: 'x'", name="k")]  # fmt: skip
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"hash": "cut')  # a line cut by a kill
    assert gpu_smoke.compile_stats(log) == dict(built=2, compile_seconds=1.8, from_cache=1, unlogged=1)
    assert gpu_smoke.compile_stats(tmp_path / "none.jsonl") == dict(built=0, compile_seconds=0.0, from_cache=0, unlogged=0)


def test_correct_checks_every_strategy_of_every_case_against_both_oracles(tiny_run):
    out = tiny_run[0]
    rows = gpu_smoke.section_rows(out / "gpu-smoke", "correct")
    results = [r for r in rows if r["kind"] == "correct"]
    expected = {(c["name"], s[0]) for c in gpu_smoke.correct_cases(tiny=True) for s in gpu_smoke.STRATEGY_RUNS}
    assert any(c["cell"] == "rnn_relu" for c in gpu_smoke.correct_cases(tiny=True))  # the RNN's cases run too
    assert any(c["cell"] == "gru" for c in gpu_smoke.correct_cases(tiny=True))  # and the GRU's
    assert {(r["case"], r["strategy"]) for r in results} == expected
    for r in results:
        assert r["ok"] is True, r
        assert r["bitwise_equal"]
        assert r["dh_split"] == 1  # the interpreter does not split the backward's dh loop (rows say it on a GPU)
        # forward and every gradient, each within the three-way bound
        states = {"h_n", "grad h0"} | (set() if r["case"].startswith(("rnn_", "gru-")) else {"c_n", "grad c0"})
        assert {"output", "grad input", *states} <= set(r["tensors"])
        assert any(name.startswith("grad weight_hh") for name in r["tensors"])
        assert all(t["ours"] <= t["bound"] for t in r["tensors"].values())


def test_results_come_back_in_few_files(tiny_run):
    out = tiny_run[0]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["gpu-smoke.log", "gpu-smoke.tar.gz", "summary.json"]
    with tarfile.open(out / "gpu-smoke.tar.gz") as tar:
        names = set(tar.getnames())
    for name in ("env.jsonl", "barrier.jsonl", "correct-part1.jsonl", "tests.jsonl", "speed.json", "speed-rows.jsonl",
                 "speed-table.txt"):
        assert f"./{name}" in names


def test_barrier_rows_are_exact(tiny_run):
    rows = gpu_smoke.section_rows(tiny_run[0] / "gpu-smoke", "barrier")
    grids = [r for r in rows if r["kind"] == "barrier"]
    assert grids and all(r["counters_exact"] and r["error_words"] == [0] for r in grids)
    assert [r["counts"] for r in rows if r["kind"] == "barrier-timeout"] == [[2, 1]]


def test_a_hung_section_is_stopped_at_its_cap_and_a_dead_worker_restarted_after_its_case(tmp_path):
    # the first three cases only (the suite's time): case 1 dies, case 2 must still run
    chosen = "^(bf16|fp32-ieee)-T[34]-B(3|17)-"
    proc, summary = smoke(tmp_path, "--sections", "env,barrier,correct", "--cap", "env=8", "--select",
                          f"correct={chosen}", FUSEDRNN_SMOKE_HANG="env", FUSEDRNN_SMOKE_CRASH="1")  # fmt: skip
    sections = summary["sections"]
    assert proc.returncode == 1
    assert sections["env"]["status"] == "timeout"
    assert sections["env"]["rows"] == 1  # the row written before the hang is kept
    assert sections["barrier"]["status"] == "ok"  # the next section runs
    assert sections["correct"]["status"] == "failed" and sections["correct"]["restarts"] == 1
    rows = gpu_smoke.section_rows(tmp_path / "gpu-smoke", "correct")
    assert [c["name"] for c in gpu_smoke.correct_cases(tiny=True) if re.search(chosen, c["name"])] == [
        c["name"] for c in gpu_smoke.correct_cases(tiny=True)[:3]]  # fmt: skip
    assert {r["index"] for r in rows if r["kind"] == "correct"} == {0, 2}  # case 1 died with its worker


def test_its_own_pytest_runs_leave_an_enclosing_xdist_worker_behind(monkeypatch):
    """Under an xdist worker's variables pytest-benchmark writes no JSON: the speed section's
    pytest and the test shards run without them."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    env = gpu_smoke.own_pytest_env(FUSEDRNN_BENCH_ROWS="rows.jsonl")
    assert not any(key.startswith("PYTEST_XDIST") for key in env)
    assert env["FUSEDRNN_BENCH_ROWS"] == "rows.jsonl" and env["PATH"] == os.environ["PATH"]


def test_help_gives_the_one_line_command():
    text = subprocess.run([sys.executable, str(BENCH / "gpu_smoke.py"), "--help"], capture_output=True, text=True).stdout
    assert gpu_smoke.ONE_LINE in text
    assert len(gpu_smoke.ONE_LINE) < 2000 and "\n" not in gpu_smoke.ONE_LINE


def test_speed_table_gives_cudnn_time_over_ours():
    rows = [
        dict(mode="inference", dtype="bfloat16", tf32=True, B=8, H=512, P=None, provider="cudnn", time_ms=2.0),
        dict(mode="inference", dtype="bfloat16", tf32=True, B=8, H=512, P=None, provider="fusedrnn-auto", time_ms=1.0),
        dict(mode="inference", dtype="bfloat16", tf32=True, B=8, H=512, P=None, provider="fusedrnn-persistent",
             time_ms=None),
    ]  # fmt: skip
    rows += [dict(row, cell="gru", time_ms=3.0 * row["time_ms"] if row["time_ms"] else None) for row in rows]
    lines = gpu_smoke.speed_table(rows).splitlines()
    assert lines[0].split("\t") == ["cell", "mode", "dtype", "B", "H", "cudnn ms", "fusedrnn-auto", "fusedrnn-persistent"]
    assert lines[1].split("\t") == ["gru", "inference", "bfloat16", "8", "512", "6.000", "3.000 (2.00x)", "-"]
    assert lines[2].split("\t") == ["lstm", "inference", "bfloat16", "8", "512", "2.000", "1.000 (2.00x)", "-"]


def test_select_runs_part_of_a_section_and_reaches_its_worker(tmp_path):
    proc, summary = smoke(tmp_path, "--sections", "correct", "--select", "correct=^rnn_")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["select"] == {"correct": "^rnn_"}
    cases = {r["case"] for r in gpu_smoke.section_rows(tmp_path / "gpu-smoke", "correct") if r["kind"] == "correct"}
    assert cases == {c["name"] for c in gpu_smoke.correct_cases(tiny=True) if c["name"].startswith("rnn_")}


@pytest.mark.parametrize("value", ["nosuch=x", "correct", "correct=(unclosed"])
def test_select_refuses_what_it_cannot_run(value, capsys):
    with pytest.raises(SystemExit):
        gpu_smoke.parse_args(["out", "--select", value])
    assert "--select" in capsys.readouterr().err


def test_an_interpreter_without_this_checkout_stops_before_any_section(tmp_path, monkeypatch):
    """The first H200 call installed with the image's `pip`, another Python's: every section
    then failed on its import. The driver now says so first and runs nothing."""
    assert gpu_smoke.import_problem() is None  # this interpreter imports this checkout
    monkeypatch.setattr(gpu_smoke.sys, "executable", sys.executable + "-missing")
    problem = gpu_smoke.import_problem()
    assert problem is not None and "could not import fusedrnn" in problem

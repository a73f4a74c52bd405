"""``python -m bench perf``: the rows' statistics, their JSON and ``docs/performance.md`` from
hand-made rows (met, not met, no goal; limits shown), and a tiny real invocation of every
comparison (smallest sizes, one repeat). No test asserts a speed: timings only have to exist.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.perf import engine, gradients, kernels, load_note, processes, report
from bench.perf.rows import Goal, Row, explain, interleaved_times, ratio_row, spread

MACHINE = {"cores": 2, "cpu": "Test CPU", "platform": "Linux", "python": "3.11.0",
           "torch": "2.0", "threads": 1, "load_before": [2.5, 2.0, 1.5],
           "load_after": [3.0, 2.1, 1.6], "date": "2025-01-01 00:00 UTC",
           "command": "python -m bench perf --repeats 3 --write-docs"}


def _rows() -> list[Row]:
    return [
        Row("engine", "HPS run", "engine vs bare", 1.05, 0.98, 1.2, 3, goal=Goal("<=", 1.10)),
        Row("engine", "HPS run, slow", "engine vs bare", 1.40, 1.3, 1.5, 3,
            goal=Goal("<=", 1.10), limits="the selection | history"),
        Row("start-up", "python -m bench list methods", "fresh process", 1.5, 1.4, 1.7, 3,
            unit="s", goal=Goal("<", 2.0), details={"interpreter s": 0.05}),
        Row("peak memory", "hps: one smoke run", "peak RSS", 512.4, 512.4, 512.4, 1, unit="MB",
            details={"vs hps": 1.0}),
    ]


def test_spread_and_ratio_rows_pair_the_interleaved_repeats() -> None:
    assert spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        spread([])
    row = ratio_row("g", "b", "A vs B", [2.0, 3.0, 8.0], [1.0, 1.0, 2.0], Goal("<=", 2.5))
    assert (row.median, row.minimum, row.maximum, row.repeats) == (3.0, 2.0, 4.0, 3)
    assert row.details == {"A ms": 3000.0, "B ms": 1000.0}
    assert row.met is False
    with pytest.raises(ValueError, match="pairs"):
        ratio_row("g", "b", "A vs B", [1.0], [1.0, 2.0])


def test_goals_and_limits() -> None:
    assert Goal(">=", 1.8).met_by(1.8) and not Goal(">", 1.8).met_by(1.8)
    assert Goal("<", 2.0).text("s") == "< 2 s" and Goal("<=", 1.1).text("×") == "≤ 1.1"
    with pytest.raises(ValueError):
        Goal("=", 1.0)
    assert Row("g", "b", "c", 1.0, 1.0, 1.0, 1).met is None
    noisy = explain(Row("g", "b", "c", 1.3, 1.0, 1.5, 3, goal=Goal("<=", 1.1)), "the solve")
    assert noisy.limits.startswith("noise") and "the solve" in noisy.limits
    slow = explain(Row("g", "b", "c", 1.3, 1.2, 1.5, 3, goal=Goal("<=", 1.1)), "the solve")
    assert slow.limits.startswith("even the best") and "the solve" in slow.limits
    assert explain(Row("g", "b", "c", 1.0, 1.0, 1.0, 1, goal=Goal("<=", 1.1)), "x").limits == ""
    # a speed-up goal (>=): the best repeat is the largest one
    fast_once = explain(Row("g", "b", "c", 1.57, 1.38, 1.87, 3, goal=Goal(">=", 1.8)), "fixed")
    assert fast_once.limits.startswith("noise") and "(1.87)" in fast_once.limits
    never = explain(Row("g", "b", "c", 1.49, 1.42, 1.50, 3, goal=Goal(">=", 1.7)), "fixed")
    assert never.limits.startswith("even the best")
    assert "loaded" in load_note([1.5, 1, 1], [2.0, 1, 1], cores=2)
    assert load_note([0.2, 0, 0], [0.3, 0, 0], cores=2) == "" and load_note(None, None, 2) == ""


def test_interleaved_times_alternate_the_cases() -> None:
    calls: list[str] = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # a warm-up round, then A B A B
    assert [len(v) for v in times.values()] == [2, 2]
    calls.clear()
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              repeats=2, warmup=False, number=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # 3 calls a sample
    assert [len(v) for v in times.values()] == [2, 2]


def test_markdown_shows_goals_met_unmet_none_and_limits() -> None:
    text = report.render_markdown(_rows(), MACHINE, seconds=90.0)
    assert "`python -m bench perf --repeats 3 --write-docs`" in text
    assert "2 cores, Test CPU" in text and "2.50 / 2.00 / 1.50 before" in text
    assert "1.5 min" in text
    assert "## Engine" in text and "## Start-up" in text and "## Peak memory" in text
    lines = text.splitlines()
    fast = next(line for line in lines if line.startswith("| HPS run |"))
    assert "×1.05 [0.98, 1.20]" in fast and "≤ 1.1" in fast and "| yes |" in fast
    slow = next(line for line in lines if line.startswith("| HPS run, slow |"))
    assert "**no**" in slow and "the selection \\| history" in slow
    startup = next(line for line in lines if "list methods" in line)
    assert "1.50 s [1.40, 1.70]" in startup and "< 2 s" in startup and "interpreter s 0.05" \
        in startup
    memory = next(line for line in lines if "hps: one smoke run" in line)
    assert "512 MB" in memory and "| – | – |" in memory


def test_json_holds_rows_and_machine(tmp_path: Path) -> None:
    path = tmp_path / "out" / "perf.json"
    report.write_json(path, _rows(), MACHINE)
    data = json.loads(path.read_text())
    assert data["machine"] == MACHINE
    first, slow, _, memory = data["rows"]
    assert first["met"] is True and first["goal"] == {"op": "<=", "value": 1.1, "text": "≤ 1.1"}
    assert slow["met"] is False and slow["limits"] == "the selection | history"
    assert memory["met"] is None and memory["goal"] is None and memory["unit"] == "MB"
    assert {"benchmark", "compared", "median", "minimum", "maximum", "repeats"} <= set(first)


def test_machine_info_and_console_table() -> None:
    info = report.machine_info("2.0", 1, (1.0, 2.0, 3.0), None, ["perf", "--json", "x.json"])
    assert info["command"] == "python -m bench perf --json x.json"
    assert info["load_before"] == [1.0, 2.0, 3.0] and info["load_after"] is None
    assert info["cores"] >= 1 and info["threads"] == 1
    table = report.console_table(_rows())
    assert "NOT met" in table and "limits: the selection" in table


def _finite(rows: list[Row]) -> None:
    assert rows
    for row in rows:
        assert math.isfinite(row.median) and row.minimum <= row.median <= row.maximum


def test_engine_vs_bare_loop_runs() -> None:
    torch.set_num_threads(1)
    rows = engine.engine_vs_bare_benchmark(repeats=1, profile="smoke", epochs=1)
    _finite(rows)
    assert rows[0].goal == engine.GOAL and "bare" in rows[0].compared


def test_gradient_methods_against_the_floor_run() -> None:
    torch.set_num_threads(1)
    rows = gradients.gradient_methods_benchmark(repeats=1, methods=("pcgrad", "gradnorm"),
                                                task_counts=(2,), number=2)
    _finite(rows)
    assert [r.compared for r in rows] == ["T-backward floor vs HPS step",
                                          "pcgrad step vs T-backward floor",
                                          "gradnorm step vs T-backward floor"]
    assert all(r.goal == gradients.GOAL for r in rows[1:]) and "vs_hps" in rows[1].details


def test_kernel_rows_run() -> None:
    torch.set_num_threads(1)
    _finite(kernels.mola_conv_benchmark(repeats=1, batch=8, channels=8, size=4, tasks=2))
    _finite(kernels.streaming_benchmark(repeats=1, batch=2, steps=1))


def test_startup_rows_run(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    rows = processes.startup_benchmark(
        repeats=1, results_dir=tmp_path / "results",
        commands=(("--help", ("--help",), Goal("<", 1000.0)),))
    _finite(rows)
    assert rows[0].unit == "s" and rows[0].details["exit codes"] == [0]


def test_memory_rows_run() -> None:
    rows = processes.memory_benchmark(("hps",), scenario="digits_domains", profile="smoke")
    assert len(rows) == 1 and rows[0].unit == "MB" and rows[0].median > 0
    assert rows[0].limits == "" and rows[0].details["vs hps"] == 1.0


def test_jobs_scaling_rows_run(tmp_path: Path, monkeypatch) -> None:
    """Only the bookkeeping: each sweep is a stand-in whose time its flags decide (one core
    4 s, --jobs 1 with its threads 3 s, --jobs 2 2 s)."""
    commands: list[list[str]] = []

    def seconds(cmd: list[str], cwd: Path | None = None) -> tuple[float, int]:
        commands.append(cmd)
        return (4.0 if "--threads" in cmd else 3.0 if cmd[cmd.index("--jobs") + 1] == "1"
                else 2.0), 0

    monkeypatch.setattr(processes, "_seconds", seconds)
    rows = processes.jobs_scaling_benchmark(
        repeats=2, workloads=(processes.JobsWorkload("stand-in", ("--list",), Goal(">=", 1.8)),
                              processes.JobsWorkload("two variants", ("--all",), Goal(">=", 2.5),
                                                     ("one core", "--jobs 2"))))
    scaling, threads, two = rows
    assert scaling.median == 2.0 and scaling.met is True and scaling.repeats == 2
    assert threads.median == 1.5 and threads.goal is None and "no goal" in threads.limits
    assert two.median == 2.0 and two.met is False and two.benchmark == "two variants"
    assert len(commands) == 10 and len({c[c.index("--results-dir") + 1] for c in commands}) == 10
    # interleaved: each repeat times every variant of the workload before the next repeat
    assert [("--threads" in c, c[c.index("--jobs") + 1]) for c in commands[6:]] == [
        (True, "1"), (False, "2")] * 2


def test_cli_writes_json_and_docs(tmp_path: Path, monkeypatch) -> None:
    """``perf --only startup --json F --write-docs D`` (the start-up group on a stand-in)."""
    monkeypatch.setattr(processes, "STARTUP_COMMANDS", (("--help", ("--help",), None),))
    out, docs = tmp_path / "perf.json", tmp_path / "docs" / "performance.md"
    code = main(["perf", "--only", "startup", "--repeats", "1", "--results-dir",
                 str(tmp_path), "--json", str(out), "--write-docs", str(docs)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["machine"]["command"].startswith("python -m bench perf --only startup")
    assert [r["benchmark"] for r in data["rows"]] == ["python -m bench --help"]
    assert "python -m bench --help" in docs.read_text()


def test_cli_refuses_unknown_groups_and_methods(capsys) -> None:
    assert main(["perf", "--only", "kernel"]) == 2
    assert "unknown group(s) kernel" in capsys.readouterr().err
    assert main(["perf", "--only", "memory", "--memory-methods", "hsp"]) == 2
    assert "unknown method(s) hsp" in capsys.readouterr().err

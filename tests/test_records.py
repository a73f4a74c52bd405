"""Records are validated against one declared schema (bench/records/schema.py) by `results
check`, the leaderboard and resume alike: a record with a NaN metric or the wrong shape is
reported and run again, never a crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from committed_records import current_records

from bench.cli import main
from bench.records import load_records, record_problem
from bench.run.plan import make_run
from bench.run.sweep import pending

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results"
SCENARIO = "digits_domains"


def _committed(tmp: Path, method: str = "hps", seeds: tuple[int, ...] = (0, 1, 2)) -> list[Path]:
    """Records of ``method`` on digits_domains in ``tmp`` with today's configs (no training)."""
    return current_records(tmp, method, SCENARIO, seeds)


def _task(rec: dict) -> str:
    return rec["tasks"][0]["name"]


def _set_test(record: dict, task: str, metric: str, value: float) -> None:
    """Set a test metric where tables read it: ``metrics`` and every selection rule's pick."""
    record["metrics"]["test"][task][metric] = value
    for chosen in (record.get("selection") or {}).values():
        chosen["test"][task][metric] = value


MUTATIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "nan metric": (lambda r: r["metrics"]["test"][_task(r)].update(accuracy=float("nan")),
                   "finite number"),
    "metrics a list": (lambda r: r.update(metrics=[1, 2]), "metrics: Input should be"),
    "seed a string": (lambda r: r.update(seed="0"), "seed: Input should be a valid integer"),
    "task missing from metrics.test": (lambda r: r["metrics"]["test"].pop(_task(r)),
                                       "metrics.test has no task"),
    "metric a string": (lambda r: r["metrics"]["test"][_task(r)].update(accuracy="81.3"),
                        "Input should be a valid number"),
    "unknown status": (lambda r: r.update(status="done"), "unknown status 'done'"),
    "ok without tasks": (lambda r: r.pop("tasks"), "tasks: Field required"),
    "negative seed": (lambda r: r.update(seed=-1), "greater than or equal to 0"),
    "params a float": (lambda r: r.update(trainable_params=1.5), "trainable_params"),
    # a rule's pick is read by every table (found by test_properties' random mutations)
    "selection without test": (lambda r: r["selection"]["val_loss"].pop("test"),
                               "selection.val_loss.test: Field required"),
    "selection test null": (lambda r: r["selection"]["val_loss"].update(test=None),
                            "selection.val_loss.test: Input should be a valid dictionary"),
    "task missing from a selection": (lambda r: r["selection"]["oracle"]["test"].pop(_task(r)),
                                      "selection.oracle.test has no task"),
    "metric missing from a selection": (
        lambda r: r["selection"]["last"]["test"][_task(r)].pop("accuracy"),
        "has no metric 'accuracy'"),
}


def test_the_committed_records_match_the_schema() -> None:
    records, bad = load_records(COMMITTED)
    assert len(records) >= 324 and bad == []


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_an_invalid_record_is_reported_skipped_and_rerun(mutation: str, tmp_path: Path,
                                                         capsys) -> None:
    mutate, problem = MUTATIONS[mutation]
    victim = _committed(tmp_path)[0]
    record = json.loads(victim.read_text())
    mutate(record)
    assert problem in (record_problem(record) or "")
    victim.write_text(json.dumps(record))  # NaN is written as the JSON token NaN
    assert main(["results", "check", "--results-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"corrupt: {victim}: " in out and problem in out
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--output",
                 str(tmp_path / "lb.md")]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {victim}: " in err and "Traceback" not in err
    assert "| hps |" in (tmp_path / "lb.md").read_text()  # the two valid seeds
    runs = [make_run("hps", SCENARIO, seed, "default") for seed in (0, 1, 2)]
    assert pending(runs, tmp_path) == runs[:1]  # resume runs the invalid one again


def test_run_prints_the_leaderboards_warnings(tmp_path: Path, capsys) -> None:
    victim = _committed(tmp_path)[0]
    victim.write_text(victim.read_text().replace('"seed": 0', '"seed": "0"'))
    # seeds 1 and 2 are done: nothing trains, the leaderboard is regenerated
    assert main(["run", "--method", "hps", "--scenario", SCENARIO, "--seeds", "1,2",
                 "--results-dir", str(tmp_path), "--leaderboard", str(tmp_path / "lb.md")]) == 0
    run_err = capsys.readouterr().err
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--output",
                 str(tmp_path / "lb.md")]) == 0
    board_err = capsys.readouterr().err
    warning = f"warning: skipped {victim}: seed: Input should be a valid integer"
    assert warning in run_err and warning in board_err


def test_a_record_whose_tasks_differ_from_its_scenarios_is_skipped(tmp_path: Path,
                                                                   capsys) -> None:
    paths = _committed(tmp_path)
    record = json.loads(paths[2].read_text())
    dropped = record["tasks"].pop(0)  # consistent in itself, not with its scenario's records
    record["metrics"]["test"].pop(dropped["name"])
    paths[2].write_text(json.dumps(record))
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--output",
                 str(tmp_path / "lb.md")]) == 0
    assert f"warning: skipped {paths[2]}: its tasks and metrics differ" in \
        capsys.readouterr().err


def test_huge_metrics_give_nan_cells_not_a_crash(tmp_path: Path) -> None:
    from bench.report import render

    for path in _committed(tmp_path):
        record = json.loads(path.read_text())
        _set_test(record, _task(record), "accuracy", 1.7e308)
        path.write_text(json.dumps(record))
    text, bad = render(tmp_path, tmp_path / "lb.md")
    assert not bad and "| hps | nan |" in text  # the 1.7e308 task: a nan cell


def test_ties_at_the_shown_precision_are_all_bold(tmp_path: Path) -> None:
    from bench.report import render

    template = json.loads(_committed(tmp_path / "source", seeds=(0,))[0].read_text())
    board = tmp_path / "board"
    values = {"hps": 80.004, "tie_a": 80.001, "tie_b": 80.0, "below": 79.99, "single_task": 70.0}
    for label, value in values.items():
        record = json.loads(json.dumps(template))
        record.update(label=label, method=label)
        for split in ("val", "test"):
            for task in record["metrics"][split].values():
                task["accuracy"] = value
        for task in record["metrics"]["test"]:
            _set_test(record, task, "accuracy", value)
        folder = board / "default" / SCENARIO / label
        folder.mkdir(parents=True)
        (folder / "seed0.json").write_text(json.dumps(record))
    text, bad = render(board, tmp_path / "lb.md")
    assert not bad
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and " | " in line and not line.startswith("| Method")}
    for label in ("hps", "tie_a", "tie_b"):  # 80.00 at the shown precision
        assert rows[label].count("**80.00**") == 5, rows[label]  # 4 tasks, Avg
    assert "**" not in rows["below"].split(" | ")[1]
    assert "**" not in rows["single_task"]


def test_a_run_with_a_nan_metric_is_recorded_as_failed(tmp_path: Path, monkeypatch) -> None:
    """The worker checks its record against the same schema: an "ok" run whose test metric is
    NaN is written as failed with the field named (listed, retried), not as an invalid record
    that every sweep would silently redo."""
    import torch

    import bench.run.engine
    from bench.records import read_record, record_path
    from bench.run.worker import run_one

    real = bench.run.engine.run_config

    def nan_metric(run, progress=None):
        result, wall = real(run, progress)
        task = next(iter(result.test_metrics))
        result.test_metrics[task]["accuracy"] = float("nan")
        return result, wall

    monkeypatch.setattr(bench.run.engine, "run_config", nan_metric)
    torch.set_num_threads(1)
    run = make_run("hps", SCENARIO, 0, "smoke")
    summary = run_one(run, str(tmp_path))
    assert summary["status"] == "failed" and "finite number" in summary["error"]
    record, problem = read_record(record_path(tmp_path, run.profile, run.scenario, run.display,
                                              run.seed, run.config_hash))
    assert problem is None and record["status"] == "failed"

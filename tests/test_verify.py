"""`python -m bench results verify` re-runs committed records and compares each test metric with
the seed spread: identical on the machine that made them, statistical elsewhere; the CPU and its
BLAS / instruction set are recorded in `versions` (outside the config hash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import load_records
from bench.run.plan import make_run
from bench.run.sweep import execute

SCENARIO = "digits_domains"


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("verify")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [make_run("hps", SCENARIO, seed, "smoke") for seed in (0, 1, 2)]
        assert execute(runs, root, jobs=1).count("ok") == 3
    finally:
        torch.set_num_threads(previous)
    return root


def test_records_name_the_cpu_and_blas_outside_the_config(smoke_records: Path) -> None:
    records, _ = load_records(smoke_records)
    for rec in records:
        assert {"cpu", "cpu_capability", "blas", "onednn"} <= set(rec["versions"])
        assert rec["versions"]["cpu_capability"] and rec["versions"]["blas"] != "unknown"
        assert "cpu" not in json.dumps(rec["config"])  # not part of the run's identity


def _first(root: Path) -> Path:
    records, _ = load_records(root)
    return Path(min(records, key=lambda r: r["config_hash"])["_path"])


def _edit(path: Path, **changes: object) -> None:
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "accuracy_delta":
            for task in record["metrics"]["test"].values():
                task["accuracy"] += value
        else:
            record["versions"][key] = value
    path.write_text(json.dumps(record))


def test_verify_is_exact_on_the_same_machine(smoke_records: Path, tmp_path: Path,
                                             capsys) -> None:
    assert main(["results", "verify", "--sample", "1", "--results-dir",
                 str(smoke_records)]) == 0
    out = capsys.readouterr().out
    assert "identical  hps on digits_domains (smoke)" in out
    assert "1 identical, 0 within 2 seed std, 0 failed (of 1)" in out
    copy = tmp_path / "r"
    import shutil

    shutil.copytree(smoke_records, copy)
    _edit(_first(copy), accuracy_delta=1e-9)  # a last-bit change: not exact any more
    assert main(["results", "verify", "--sample", "1", "--results-dir", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAILED     hps" in out and "exact expected" in out


def test_verify_is_statistical_on_another_machine(smoke_records: Path, tmp_path: Path,
                                                  capsys) -> None:
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(smoke_records, copy)
    first = _first(copy)
    _edit(first, cpu="Another CPU", accuracy_delta=1e-6)  # within the seed spread
    assert main(["results", "verify", "--sample", "1", "--results-dir", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "close      hps" in out and "another machine or software; statistical" in out
    assert "× the seed std" in out
    _edit(first, accuracy_delta=100.0)  # far outside it
    assert main(["results", "verify", "--sample", "1", "--results-dir", str(copy)]) == 1
    assert "0 identical, 0 within 2 seed std, 1 failed" in capsys.readouterr().out

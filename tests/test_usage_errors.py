"""Unusable paths and bad command lines end with one line on stderr naming the problem and the
fix, exit code 2, and nothing written — before any training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from committed_records import current_records

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "digits_domains"
SMOKE = ["--method", "hps", "--scenario", SCENARIO, "--seeds", "0", "--profile", "smoke",
         "--jobs", "1"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _unwritable(tmp_path: Path) -> list[Path]:
    """Folders nothing can be written in: a path below a file, and (as root, for whom chmod
    does not stop writes) /proc, else a read-only folder."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = [a_file / "below"]
    if os.geteuid() == 0:
        if Path("/proc").is_dir():
            out.append(Path("/proc/bench-results"))
    else:
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o555)
        out.append(locked)
    return out


def _copy_committed(target: Path) -> None:
    """hps records of digits_domains for the default seeds: a `run` of them trains nothing."""
    current_records(target)


# ---------------------------------------------------------------- results folders
def test_a_results_dir_that_is_a_file_stops_run_before_training(tmp_path: Path,
                                                                 capsys) -> None:
    results = tmp_path / "results.json"
    results.write_text("{}")
    code = main(["run", *SMOKE, "--results-dir", str(results), "--leaderboard",
                 str(tmp_path / "lb.md")])
    assert code == 2
    assert f"--results-dir {results} is a file, not a folder" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("which", [0, 1])
def test_an_unwritable_results_dir_stops_run_before_training(which: int, tmp_path: Path,
                                                             capsys) -> None:
    folders = _unwritable(tmp_path)
    if which >= len(folders):
        pytest.skip("no read-only folder available")
    code = main(["run", *SMOKE, "--results-dir", str(folders[which]), "--leaderboard",
                 str(tmp_path / "lb.md")])
    line = _one_error_line(capsys)
    assert code == 2 and "--results-dir: cannot write in" in line
    assert not (tmp_path / "lb.md").exists()


def test_an_unwritable_leaderboard_stops_run_before_training(tmp_path: Path, capsys) -> None:
    for folder in _unwritable(tmp_path):
        code = main(["run", *SMOKE, "--results-dir", str(tmp_path / "r"), "--leaderboard",
                     str(folder / "lb.md")])
        assert code == 2 and "--leaderboard: cannot write in" in _one_error_line(capsys)
    assert not list((tmp_path / "r").rglob("*.json"))


def test_leaderboard_output_in_an_unwritable_folder(tmp_path: Path, capsys) -> None:
    _copy_committed(tmp_path / "r")
    for folder in _unwritable(tmp_path):
        code = main(["leaderboard", "--results-dir", str(tmp_path / "r"), "--output",
                     str(folder / "lb.md")])
        assert code == 2 and "--output: cannot write in" in _one_error_line(capsys)
    assert main(["leaderboard", "--results-dir", str(tmp_path / "r"), "--output",
                 str(tmp_path)]) == 2
    assert "is a folder" in _one_error_line(capsys)


@pytest.mark.parametrize("command", [["results", "check"], ["leaderboard"]])
def test_a_misspelt_results_folder_is_an_error(command: list[str], tmp_path: Path, capsys,
                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    assert main([*command, "--results-dir", "reslts"]) == 2
    line = _one_error_line(capsys)
    assert "no results folder reslts; did you mean --results-dir results?" in line
    assert main([*command, "--results-dir", "elsewhere"]) == 2
    assert "`python -m bench run` writes records there" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_another_results_folder_gets_its_own_leaderboard(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    """`--results-dir X` never overwrites the project's leaderboard.md: X/leaderboard.md."""
    monkeypatch.chdir(tmp_path)
    _copy_committed(tmp_path / "mine")
    assert main(["leaderboard", "--results-dir", "mine"]) == 0
    assert (tmp_path / "mine" / "leaderboard.md").is_file()
    (tmp_path / "mine" / "leaderboard.md").unlink()
    assert main(["run", "--method", "hps", "--scenario", SCENARIO, "--results-dir", "mine"]) == 0
    assert "0 to run" in capsys.readouterr().err
    assert (tmp_path / "mine" / "leaderboard.md").is_file()
    assert not (tmp_path / "leaderboard.md").exists()
    # the default results folder keeps the project's leaderboard.md
    _copy_committed(tmp_path / "results")
    assert main(["leaderboard"]) == 0
    assert (tmp_path / "leaderboard.md").is_file()


# ---------------------------------------------------------------- data root
def test_data_download_into_a_file(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "data.txt"
    a_file.write_text("x")
    assert main(["data", "download", "medmnist_mola", "--data-root", str(a_file)]) == 2
    line = _one_error_line(capsys)
    assert f"the data root {a_file} is a file" in line and "--data-root DIR" in line
    assert main(["data", "download", "medmnist_mola", "--data-root",
                 str(a_file / "below")]) == 2
    assert "cannot create" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


# ---------------------------------------------------------------- list
def test_list_backbones_exists_and_is_what_errors_point_to(tmp_path: Path, capsys) -> None:
    assert main(["run", "--method", "hps", "--scenario", SCENARIO, "--set",
                 "backbone.name=swin_x", "--results-dir", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert "did you mean swin_t" in line and "`python -m bench list backbones`" in line
    assert main(["list", "backbones"]) == 0
    names = [row.split()[0] for row in capsys.readouterr().out.splitlines()]
    assert {"resnet", "resnet18", "timm_resnet18", "swin_embedded", "swin_t"} <= set(names)


def test_list_matches_a_part_of_the_name(capsys) -> None:
    assert main(["list", "methods", "mola"]) == 0
    assert [row.split()[0] for row in capsys.readouterr().out.splitlines()] == [
        "mola_grad", "mola_router"]
    assert main(["list", "methods", "grad"]) == 0  # anywhere in the name
    assert {"mola_grad", "pcgrad", "gradvac", "graddrop", "gradnorm"} <= {
        row.split()[0] for row in capsys.readouterr().out.splitlines()}
    assert main(["list", "methods", "mola*"]) == 0  # globs still work
    assert main(["list", "weightings", "nothing_like_this"]) == 1


# ---------------------------------------------------------------- install extras
def test_a_method_whose_extra_is_missing_is_refused_in_one_line(tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """Nash-MTL's cvxpy is the ``nash-mtl`` extra: without it planning refuses the method,
    naming the extra (exit 2, nothing written), also inside a combination."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cvxpy" else real(name, *a))
    for method in ("nash_mtl", "mmoe+nash_mtl"):
        code = main(["run", "--method", method, "--scenario", "digits_tasks", "--seeds", "0",
                     "--profile", "smoke", "--results-dir", str(tmp_path / "r")])
        line = _one_error_line(capsys)
        assert code == 2
        assert "needs cvxpy, not installed" in line and 'pip install -e ".[nash-mtl]"' in line
    assert not (tmp_path / "r").exists()
    # --all plans every other method and lists the ones whose extra is missing as skipped
    code = main(["run", "--all", "--suite", "full", "--scenario", "digits_tasks", "--seeds", "0",
                 "--profile", "smoke", "--dry-run", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0
    assert "skipped nash_mtl on digits_tasks: method 'nash_mtl' needs cvxpy" in err

"""Registry, plan, records, resume, CLI errors, leaderboard determinism and Δm%."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from bench import registry
from bench.cli import main
from bench.records import load_records, write_json_atomic
from bench.report import delta_m, render
from bench.run.plan import expand, make_run

SCENARIO = "digits_domains"


def test_registry_lists_required_methods_and_suggests_names() -> None:
    names = registry.methods.list()
    for required in ("hps", "single_task", "uniform"):
        assert required in names
    assert registry.methods.list("single*") == ["single_task"]
    with pytest.raises(registry.UnknownNameError, match="did you mean hps"):
        registry.methods.get("hsp")


def test_cli_unknown_method_exits_2_with_one_line_and_writes_nothing(tmp_path: Path,
                                                                     capsys) -> None:
    code = main(["run", "--method", "pcgrd", "--scenario", SCENARIO, "--profile", "smoke",
                 "--results-dir", str(tmp_path / "r"), "--leaderboard", str(tmp_path / "lb.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "unknown method 'pcgrd'" in err[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "lb.md").exists()


def test_cli_unknown_scenario_and_bad_seeds(tmp_path: Path, capsys) -> None:
    assert main(["run", "--method", "hps", "--scenario", "digits_domain", "--results-dir",
                 str(tmp_path)]) == 2
    assert "did you mean digits_domains" in capsys.readouterr().err
    assert main(["run", "--method", "hps", "--seeds", "a,b", "--results-dir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_config_hash_is_stable_and_sensitive() -> None:
    a = make_run("hps", SCENARIO, 0, "smoke")
    b = make_run("hps", SCENARIO, 0, "smoke")
    c = make_run("hps", SCENARIO, 1, "smoke")
    d = make_run("hps", SCENARIO, 0, "smoke", {"train.lr": 0.01})
    assert a.config_hash == b.config_hash
    assert len({a.config_hash, c.config_hash, d.config_hash}) == 3


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x" / "rec.json"

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": Boom()})
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def _smoke(tmp_path: Path, *extra: str) -> int:
    return main(["run", "--method", "hps,single_task", "--scenario", SCENARIO, "--seeds", "0,1",
                 "--profile", "smoke", "--jobs", "1", "--results-dir", str(tmp_path / "results"),
                 "--leaderboard", str(tmp_path / "leaderboard.md"), *extra])


def test_smoke_sweep_records_resume_and_deterministic_leaderboard(tmp_path: Path,
                                                                  capsys) -> None:
    assert _smoke(tmp_path) == 0
    records, bad = load_records(tmp_path / "results")
    assert not bad and len(records) == 4
    for rec in records:
        assert rec["status"] == "ok"
        for key in ("config", "config_hash", "metrics", "trainable_params", "total_params",
                    "wall_time_s", "versions", "param_scaling"):
            assert rec[key] is not None
        assert set(rec["versions"]) >= {"python", "torch", "LibMTL", "git_commit"}
        assert set(rec["metrics"]) == {"val", "test"}
        assert rec["family"] == "baseline" and "family" not in rec["config"]
        assert set(rec["selection"]) == {"val_loss", "val_metric", "last", "oracle"}
        assert rec["selection"]["val_loss"]["test"] == rec["metrics"]["test"]
        assert rec["selection"]["val_loss"]["epoch"] == rec["best_epoch"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*.json")}
    capsys.readouterr()
    assert _smoke(tmp_path) == 0  # resume: nothing re-run
    assert "0 to run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*.json")} == mtimes
    first = (tmp_path / "leaderboard.md").read_bytes()
    png = sorted((tmp_path / "results" / "plots").glob("*.png"))
    assert png, "parameter-count plot missing"
    png_bytes = png[0].read_bytes()
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--output",
                 str(tmp_path / "leaderboard.md")]) == 0
    assert (tmp_path / "leaderboard.md").read_bytes() == first
    assert png[0].read_bytes() == png_bytes
    text = first.decode()
    assert "single_task" in text and "Δm%" in text and "| hps |" in text


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    from bench.run.engine import run_config

    run = make_run("hps", SCENARIO, 3, "smoke")
    a, _ = run_config(run)
    b, _ = run_config(run)
    assert a.test_metrics == b.test_metrics


def test_corrupt_record_is_reported_and_skipped(tmp_path: Path, capsys) -> None:
    assert _smoke(tmp_path) == 0
    victim = sorted((tmp_path / "results").rglob("*.json"))[0]
    victim.write_text(victim.read_text()[:50])
    assert main(["results", "check", "--results-dir", str(tmp_path / "results")]) == 1
    assert "corrupt" in capsys.readouterr().out
    assert main(["leaderboard", "--results-dir", str(tmp_path / "results"), "--output",
                 str(tmp_path / "lb.md")]) == 0
    assert "warning: skipped" in capsys.readouterr().err


def test_delta_m_reproduces_mola_table5_hsp_row() -> None:
    """MoLA Table 5 (NYUv2): HSP against Single-task has Δm% = 4.72."""
    tasks = [
        {"name": "seg", "metrics": [{"name": "miou", "higher_is_better": True},
                                    {"name": "pix", "higher_is_better": True}]},
        {"name": "depth", "metrics": [{"name": "abs", "higher_is_better": False},
                                      {"name": "rel", "higher_is_better": False}]},
        {"name": "normal", "metrics": [{"name": "mean", "higher_is_better": False},
                                       {"name": "median", "higher_is_better": False},
                                       {"name": "11", "higher_is_better": True},
                                       {"name": "22", "higher_is_better": True},
                                       {"name": "30", "higher_is_better": True}]},
    ]
    single = {"seg": {"miou": 49.37, "pix": 72.03}, "depth": {"abs": 0.52, "rel": 0.24},
              "normal": {"mean": 22.97, "median": 16.94, "11": 0.34, "22": 0.62, "30": 0.73}}
    hsp = {"seg": {"miou": 45.21, "pix": 69.70}, "depth": {"abs": 0.49, "rel": 0.21},
           "normal": {"mean": 26.10, "median": 21.08, "11": 0.26, "22": 0.52, "30": 0.66}}
    assert delta_m(hsp, single, tasks) == pytest.approx(4.72, abs=0.006)
    assert delta_m(single, single, tasks) == 0.0


def test_plugin_file_in_extra_folder_runs_through_a_sweep(tmp_path: Path, monkeypatch) -> None:
    plugins = tmp_path / "my_methods"
    plugins.mkdir()
    (plugins / "my_hps_sum.py").write_text(textwrap.dedent('''
        """HPS with the mean of the task losses (a user's plugin)."""
        import numpy as np
        from bench.api import CompatWeighting, register_method, register_weighting

        class MeanLoss(CompatWeighting):
            needs_task_gradients = False

            def backward(self, losses, **kwargs):
                losses.mean().backward()
                return np.full(self.task_num, 1.0 / self.task_num)

        register_weighting("mean_loss", MeanLoss, description="mean of task losses")
        register_method("hps_mean", architecture="hps", weighting="mean_loss",
                        description="HPS with averaged losses")
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(plugins))
    assert "hps_mean" in registry.methods.list()
    plan = expand(["hps_mean", "hps_mean+ew"], [SCENARIO], [0], "smoke")
    assert len(plan.runs) == 2
    assert main(["run", "--method", "hps_mean", "--scenario", SCENARIO, "--seeds", "0",
                 "--profile", "smoke", "--jobs", "1", "--results-dir", str(tmp_path / "r"),
                 "--no-leaderboard"]) == 0
    records, _ = load_records(tmp_path / "r")
    assert [r["method"] for r in records] == ["hps_mean"]


def test_leaderboard_with_no_records(tmp_path: Path) -> None:
    text, bad = render(tmp_path / "empty", tmp_path / "lb.md")
    assert "No records yet" in text and not bad


def test_impossible_combinations_fail_at_planning_time(tmp_path: Path, capsys) -> None:
    """Cross-Stitch needs a staged (ResNet-shaped) encoder; a rep-grad weighting needs a shared
    representation: both are refused before any training, with one line and exit code 2."""
    from bench.api import Scenario, register_scenario
    from bench.models.method import IncompatibleError, check_compatible, resolve_method

    class SwinScenario(Scenario):
        """A scenario whose backbone is a Swin Transformer (not staged)."""

        name = "test_swin_scenario"
        heterogeneity = "domain"
        backbone = "swin_embedded"

    register_scenario("test_swin_scenario")(SwinScenario)
    try:
        with pytest.raises(IncompatibleError, match="staged encoder"):
            check_compatible(resolve_method("cross_stitch"), SwinScenario())
        code = main(["run", "--method", "cross_stitch", "--scenario", "test_swin_scenario",
                     "--profile", "smoke", "--results-dir", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "cross_stitch" in err[0]
        assert not (tmp_path / "r").exists()
    finally:
        del registry.scenarios.entries["test_swin_scenario"]
    with pytest.raises(IncompatibleError, match="no shared representation"):
        make_run("uniform+mgda_ub", SCENARIO, 0, "smoke")


def _fake_record(tmp: Path, label: str, seed: int, value: float, profile: str = "default",
                 scenario: str = "medmnist_mola") -> None:
    tasks = [{"name": "breastmnist", "label": "Breast", "kind": "classification",
              "num_outputs": 2, "metrics": [{"name": "accuracy", "label": "Acc",
                                             "higher_is_better": True}]}]
    record = {"kind": "run", "method": label, "label": label, "scenario": scenario,
              "seed": seed, "profile": profile, "config": {"heterogeneity": "multi_input"},
              "config_hash": f"{label}{seed}", "status": "ok", "tasks": tasks,
              "metrics": {"val": {"breastmnist": {"accuracy": value}},
                          "test": {"breastmnist": {"accuracy": value}}},
              "trainable_params": 10, "total_params": 10, "wall_time_s": 1.0, "versions": {}}
    write_json_atomic(tmp / profile / scenario / label / f"seed{seed}.json", record)


def test_zero_baseline_makes_delta_m_undefined_not_a_crash(tmp_path: Path) -> None:
    _fake_record(tmp_path, "single_task", 0, 0.0)
    _fake_record(tmp_path, "hps", 0, 50.0)
    text, bad = render(tmp_path, tmp_path / "lb.md")
    assert not bad and "Δm% undefined" in text


def test_paper_profile_tables_show_the_papers_numbers(tmp_path: Path) -> None:
    _fake_record(tmp_path, "single_task", 0, 80.0, profile="paper")
    _fake_record(tmp_path, "mola_grad", 0, 85.0, profile="paper")
    text, _ = render(tmp_path, tmp_path / "lb.md")
    assert "Reported in Table 4" in text and "| mola_grad (MoLA-Grad) |" in text
    assert "87.82" in text  # MoLA-Grad's Breast accuracy in MoLA Table 4
    assert "(Uniform)" not in text  # only methods we ran
    other = tmp_path / "other"
    _fake_record(other, "single_task", 0, 80.0)
    _fake_record(other, "mola_grad", 0, 85.0)
    text_default, _ = render(other, tmp_path / "lb2.md")
    assert "Reported in" not in text_default  # the papers' numbers sit beside paper runs only


def _committed_records() -> tuple[list[dict], list[dict]]:
    """The records shipped in results/, split into those of the scenarios' current data
    versions and the stale ones (a data version bumped since: the next `run --all` runs them
    again, as designed)."""
    from bench.registry import scenarios

    records, bad = load_records(Path(__file__).resolve().parents[1] / "results")
    if not records:
        pytest.skip("no committed records")
    assert not bad
    current = [r for r in records if r["config"]["scenario_data_version"]
               == scenarios.get(r["scenario"]).data_version]
    stale = [r for r in records if r not in current]
    return current, stale


def test_committed_records_match_the_current_configs() -> None:
    """The records shipped in results/ for the scenarios' current data versions must still be
    what `run --all` would produce: same config, same hash (otherwise a fresh clone silently
    re-runs them)."""
    from bench.run.plan import build_config, canonical_json, config_hash

    current, _ = _committed_records()
    for rec in current:
        cfg = build_config(rec["method"], rec["scenario"], rec["seed"], rec["profile"],
                           rec["config"].get("overrides"), rec["label"], rec.get("ablation"),
                           rec["config"].get("search"))
        assert json.loads(canonical_json(cfg)) == rec["config"], f"{rec['_path']}: changed"
        assert config_hash(cfg) == rec["config_hash"]


def test_stale_committed_records_differ_only_by_an_older_data_version() -> None:
    """A committed record whose config no longer matches is one of a scenario whose data
    version was bumped since, and its config differs in nothing else."""
    from bench.registry import scenarios
    from bench.run.plan import build_config, canonical_json, config_hash

    _, stale = _committed_records()
    for rec in stale:
        version = rec["config"]["scenario_data_version"]
        assert int(version) < int(scenarios.get(rec["scenario"]).data_version), rec["_path"]
        cfg = build_config(rec["method"], rec["scenario"], rec["seed"], rec["profile"],
                           rec["config"].get("overrides"), rec["label"], rec.get("ablation"),
                           rec["config"].get("search"))
        assert config_hash(cfg) != rec["config_hash"]
        cfg["scenario_data_version"] = version
        if "init" not in rec["config"]:  # records made before the pretrained start (issue 13)
            assert cfg.pop("init", {"init": "scratch"})["init"] == "pretrained"
            cfg["method_identity"].get("backbone_kwargs", {}).pop("init", None)
            if cfg["method_identity"].get("backbone_kwargs") == {}:
                del cfg["method_identity"]["backbone_kwargs"]
        if rec["config"]["method_identity"]["architecture"] in MOLA_SHORTCUT_CHANGED:
            # issue 15: MoLA adapts the block convolutions only, as the reference; the records
            # adapted the 1x1 shortcut too (arch.adapt_shortcut=true rebuilds them)
            assert cfg["method_identity"]["arch_kwargs"].pop("adapt_shortcut") is False
            assert json.loads(canonical_json(cfg)) == rec["config"], f"{rec['_path']}: changed"
            continue
        assert json.loads(canonical_json(cfg)) == rec["config"], f"{rec['_path']}: changed"
        assert config_hash(cfg) == rec["config_hash"]


#: architectures whose default changed on purpose after records existed (issue 15)
MOLA_SHORTCUT_CHANGED = ("mola_grad", "mola_router")


def test_a_record_config_alone_rebuilds_its_run() -> None:
    """A committed record's config is enough to rebuild and rerun its run: the run resolved from
    the config alone (no method name resolved again) has the same config hash, and the model it
    builds has the record's parameter counts — one record of every method and ablation variant
    (MTLoRA's Swin, MoLA on a Transformer backbone, Cross-Stitch's columns...)."""
    from bench.models.method import build_model, count_parameters
    from bench.run.engine import load_scenario
    from bench.run.plan import RunSpec

    current, stale = _committed_records()
    records = current + stale  # parameter counts do not depend on the evaluation splits
    firsts: dict[tuple[str, str, str | None], dict] = {}
    for rec in records:
        firsts.setdefault((rec["scenario"], rec["label"], rec.get("ablation")), rec)
    torch.manual_seed(0)
    for rec in firsts.values():
        run = RunSpec.from_config(rec["config"])
        assert run.config_hash == rec["config_hash"]
        assert run.method_spec.identity() == rec["config"]["method_identity"]
        model = build_model(run.method_spec, load_scenario(run.scenario, run.profile))
        assert count_parameters(model) == (rec["trainable_params"], rec["total_params"]), \
            rec["_path"]


def test_dry_run_plans_a_scenario_whose_data_are_missing(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "no-data"))
    args = ["run", "--method", "hps", "--scenario", "medmnist_mola", "--profile", "paper",
            "--seeds", "0", "--results-dir", str(tmp_path / "r")]
    assert main([*args, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "data missing for medmnist_mola" in captured.err
    assert "todo  paper" in captured.out
    assert main(args) == 2  # a real run still stops before training
    assert not (tmp_path / "r").exists()


def test_dry_run_estimates_from_records_of_the_same_data_version_only(tmp_path: Path) -> None:
    from bench.cli import _record_seconds

    run = make_run("hps", SCENARIO, 0, "smoke")
    for name, version, seconds in (("a", run.config["scenario_data_version"], 10.0),
                                   ("b", "0", 99.0)):
        record = {"kind": "run", "method": "hps", "label": "hps", "scenario": SCENARIO,
                  "seed": 1, "profile": "smoke", "status": "diverged", "wall_time_s": seconds,
                  "config": {**run.config, "scenario_data_version": version},
                  "config_hash": name, "metrics": {"test": {}}, "trainable_params": 1,
                  "total_params": 1, "versions": {}}
        write_json_atomic(tmp_path / f"{name}.json", record)
    assert _record_seconds([run], tmp_path) == {run: 10.0}


def test_run_all_takes_a_suite(capsys) -> None:
    """`run --all` plans the mission suite (the papers' comparison) unless --suite full."""
    from bench.run.plan import SUITES, suite_methods

    mission = expand(None, ["digits_tasks"], [0], "smoke", run_all=True, suite="mission")
    assert {r.method for r in mission.runs} == set(SUITES["mission"])
    assert len(suite_methods("mission")) == 10
    full = expand(None, ["digits_tasks"], [0], "smoke", run_all=True, suite="full")
    assert {r.method for r in mission.runs} < {r.method for r in full.runs}
    assert len({r.method for r in full.runs}) > 40
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--all", "--suite", "everything", "--dry-run"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err

"""Equal-budget random search: deterministic draws, the same budget for every method, selection
on validation only, declared spaces checked at planning, resumable like any sweep."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.data.search import OPTIMISER_SPACE, Choice, LogUniform, Uniform, draw
from bench.data.settings import UnknownSettingError
from bench.records import load_records
from bench.records.search import select_trial, validation_ranks
from bench.run.search import TRIAL_SEED, expand_search, trial_draws

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--profile", "smoke", "--jobs", "1"]


def test_distributions_stay_in_their_support() -> None:
    rng = random.Random(0)
    for _ in range(200):
        assert 1e-4 <= LogUniform("t", 1e-4, 1e-2).sample(rng) <= 1e-2
        assert 0.1 <= Uniform("t", 0.1, 0.9).sample(rng) <= 0.9
        assert Choice("t", (1, 4, 8)).sample(rng) in (1, 4, 8)
    with pytest.raises(ValueError):
        LogUniform("t", 0.0, 1.0)
    assert set(draw(OPTIMISER_SPACE, rng)) == {"lr", "weight_decay"}


def test_draws_are_deterministic_and_trial_i_does_not_depend_on_n() -> None:
    space = dict(OPTIMISER_SPACE, calpha=Uniform("t", 0.1, 0.9))
    five = trial_draws(space, 5, 0, "cagrad", "digits_tasks")
    assert five == trial_draws(space, 5, 0, "cagrad", "digits_tasks")
    assert trial_draws(space, 3, 0, "cagrad", "digits_tasks") == five[:3]
    assert five[0] == {}  # trial 0: the defaults
    assert trial_draws(space, 5, 1, "cagrad", "digits_tasks") != five  # another search seed
    assert trial_draws(space, 5, 0, "cagrad", "digits_scene") != five  # its own stream


def test_the_same_plan_in_another_process() -> None:
    """No dependence on Python's hash seed or process state: a subprocess with another
    PYTHONHASHSEED plans the same trials (same config hashes), as a remote worker would."""
    code = ("from bench.run.search import expand_search; print(','.join(r.config_hash for r in "
            "expand_search(['hps','cagrad'], ['digits_tasks'], 'smoke', 4, 7).runs))")
    out = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}
                          ).stdout.strip() for seed in ("1", "2")]
    assert out[0] == out[1]
    here = ",".join(r.config_hash for r in expand_search(["hps", "cagrad"], ["digits_tasks"],
                                                          "smoke", 4, 7).runs)
    assert here == out[0]


def test_every_method_gets_the_same_number_of_trials() -> None:
    """All methods on all embedded scenarios: the same N each, and every declared space plans
    (each draw is validated against the method's settings when the run is resolved)."""
    plan = expand_search(None, None, "smoke", 5, run_all=True)
    per_pair: dict[tuple[str, str], int] = {}
    drawn_keys: set[str] = set()
    for run in plan.runs:
        assert run.seed == TRIAL_SEED and run.config["search"]["seed"] == 0
        per_pair[(run.method, run.scenario)] = per_pair.get((run.method, run.scenario), 0) + 1
        drawn_keys |= set(run.config["overrides"])
    assert len(per_pair) > 100 and set(per_pair.values()) == {5}
    assert {"train.lr", "weighting.calpha", "arch.rank", "arch.num_experts"} <= drawn_keys


def _trial(trial: int, val: dict[str, float], test: dict[str, float]) -> dict:
    tasks = [{"name": t, "metrics": [{"name": "accuracy", "higher_is_better": True}]}
             for t in val]
    return {"status": "ok", "tasks": tasks, "config": {"search": {"trial": trial}},
            "metrics": {"val": {t: {"accuracy": v} for t, v in val.items()},
                        "test": {t: {"accuracy": v} for t, v in test.items()}}}


def test_selection_reads_validation_only() -> None:
    """Trial 1 is best on validation, trial 2 on test: trial 1 is chosen, and it stays chosen
    whatever the test metrics say (even when they are missing)."""
    trials = [_trial(0, {"a": 50, "b": 50}, {"a": 60, "b": 60}),
              _trial(1, {"a": 70, "b": 65}, {"a": 40, "b": 40}),
              _trial(2, {"a": 60, "b": 60}, {"a": 99, "b": 99})]
    assert select_trial(trials)["config"]["search"]["trial"] == 1
    for rec in trials:
        del rec["metrics"]["test"]
    assert select_trial(trials)["config"]["search"]["trial"] == 1
    assert validation_ranks(trials) == [3.0, 1.0, 2.0]


def test_selection_ranks_per_task_with_directions_and_ties() -> None:
    tasks = [{"name": "seg", "metrics": [{"name": "miou", "higher_is_better": True},
                                         {"name": "err", "higher_is_better": False}]}]

    def rec(trial: int, miou: float, err: float, status: str = "ok") -> dict:
        return {"status": status, "tasks": tasks, "config": {"search": {"trial": trial}},
                "metrics": {"val": {"seg": {"miou": miou, "err": err}}}}

    # trial 0 and 1 tie on mean rank (1.5 each): the lower trial number wins
    assert select_trial([rec(1, 30, 0.1), rec(0, 40, 0.2)])["config"]["search"]["trial"] == 0
    assert select_trial([rec(0, 30, 0.3), rec(1, 40, 0.1)])["config"]["search"]["trial"] == 1
    assert select_trial([rec(0, 99, 0.0, "failed")]) is None


def _plugin(tmp_path: Path, monkeypatch, search: str, suffix: str) -> None:
    """A plugin whose weighting declares ``search``; names end in ``suffix`` (a registry entry
    cannot be registered twice from two files)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tuned_weighting.py").write_text(textwrap.dedent(f'''
        """A weighting with a declared search space (a test plugin)."""
        from bench.api import (CompatWeighting, Choice, Uniform, register_method,
                               register_weighting)

        class Scaled(CompatWeighting):
            needs_task_gradients = False

            def backward(self, losses, **kwargs):
                (kwargs["scale"] * losses.sum()).backward()

        register_weighting("scaled_{suffix}", Scaled, defaults={{"scale": 1.0}},
                           search={search})
        register_method("hps_scaled_{suffix}", architecture="hps", weighting="scaled_{suffix}",
                        description="HPS with a scaled loss")
    '''))
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, str(plugins))


def test_a_declared_space_with_an_unknown_key_fails_at_planning(tmp_path: Path, monkeypatch,
                                                                 capsys) -> None:
    _plugin(tmp_path, monkeypatch, '{"sacle": Uniform("a typo", 0.5, 2.0)}', "typo")
    with pytest.raises(UnknownSettingError, match="weighting.sacle"):
        expand_search(["hps_scaled_typo"], ["digits_tasks"], "smoke", 2)
    code = main(["run", "--method", "hps_scaled_typo", "--scenario", "digits_tasks", "--search",
                 "2", "--results-dir", str(tmp_path / "r"), *SMOKE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "weighting.sacle" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_draw_outside_the_declared_range_fails_at_planning(tmp_path: Path,
                                                             monkeypatch) -> None:
    _plugin(tmp_path, monkeypatch, '{"scale": Choice("bad", ("big",))}', "range")
    with pytest.raises(ValueError, match="weighting.scale"):
        expand_search(["hps_scaled_range"], ["digits_tasks"], "smoke", 2)


def test_search_trains_trials_then_reruns_the_choice_and_resumes(tmp_path: Path,
                                                                 capsys) -> None:
    results = tmp_path / "r"
    args = ["run", "--method", "hps", "--scenario", "digits_tasks", "--search", "2",
            "--seeds", "0", "--results-dir", str(results), "--no-leaderboard", *SMOKE]
    assert main([*args, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "trials: 2 runs (0 already done, 2 to run)" in err and "re-runs: 1 runs" in err
    assert not results.exists()
    assert main(args) == 0
    records, _ = load_records(results)
    trials = [r for r in records if "trial" in r["config"].get("search", {})]
    assert sorted(r["config"]["search"]["trial"] for r in trials) == [0, 1]
    chosen = select_trial(trials)["config"]["search"]["trial"]
    reruns = [r for r in records if r not in trials]
    assert [r["seed"] for r in reruns] == [0] and len(records) == 3
    assert ("search" in reruns[0]["config"]) == (chosen != 0)  # the defaults: a default run
    capsys.readouterr()
    assert main(args) == 0  # resumed: everything done, nothing trained again
    err = capsys.readouterr().err
    assert "trials: 2 runs (2 already done, 0 to run)" in err
    assert "(1 already done, 0 to run)" in err
    assert len(load_records(results)[0]) == 3
    assert json.loads(next(results.rglob("seed1000-*.json")).read_text())["seed"] == TRIAL_SEED


def test_the_scalarization_frontier_preset() -> None:
    """Fixed weightings: the simplex's corners, its centre and seeded Dirichlet draws, each
    summing to T (the centre is equal weighting), planned per scenario with its own T."""
    from bench.run.ablations import FRONTIER_SAMPLES, scalarization_weights
    from bench.run.plan import expand_ablation

    for num_tasks in (2, 3, 4):
        weights = scalarization_weights(num_tasks)
        assert weights == scalarization_weights(num_tasks)  # seeded
        assert len(weights) == num_tasks + 1 + FRONTIER_SAMPLES
        assert all(abs(sum(w) - num_tasks) < 5e-3 and min(w) >= 0 for w in weights)
        assert [1.0] * num_tasks in weights and [float(num_tasks)] + [0.0] * (num_tasks - 1) \
            in weights
    plan = expand_ablation("scalarization", None, [0], "smoke")
    per_scenario: dict[str, int] = {}
    for run in plan.runs:
        assert run.method == "linear_scalarization" and run.ablation == "scalarization"
        per_scenario[run.scenario] = per_scenario.get(run.scenario, 0) + 1
        assert len(run.config["overrides"]["weighting.weights"]) == len(
            run.config["method_identity"]["weighting_kwargs"]["weights"])
    assert per_scenario == {"digits_domains": 11, "digits_tasks": 11, "digits_scene": 10}


# ---------------------------------------------------------------- the report's tuned tables
TASKS = [{"name": t, "label": t, "kind": "classification", "num_outputs": 10,
          "metrics": [{"name": "accuracy", "label": "Acc", "higher_is_better": True}]}
         for t in ("a", "b")]


def _synthetic(root: Path, label: str, seed: int, val: float, test: float,
               search: dict | None = None, overrides: dict | None = None,
               ablation: str | None = None, method: str | None = None,
               scenario: str = "synth") -> None:
    from bench.records import write_json_atomic

    config = {"heterogeneity": "domain", "scenario_data_version": "1",
              "overrides": overrides or {}, **({"search": search} if search else {})}
    metrics = {"val": {t["name"]: {"accuracy": val} for t in TASKS},
               "test": {t["name"]: {"accuracy": test + i} for i, t in enumerate(TASKS)}}
    record = {"kind": "run", "method": method or label.split(" ")[0], "label": label,
              "scenario": scenario, "seed": seed, "profile": "default", "ablation": ablation,
              "config": config, "config_hash": f"{label}-{seed}-{json.dumps(search)}",
              "status": "ok", "tasks": TASKS, "best_epoch": 1, "metrics": metrics,
              "trainable_params": 1000, "total_params": 1000, "wall_time_s": 1.0,
              "versions": {}}
    name = f"{label}-{seed}-{abs(hash(json.dumps(search))) % 10**6}.json"
    write_json_atomic(root / "default" / scenario / label.replace(" ", "_") / name, record)


def test_the_leaderboard_shows_tuned_tables_and_the_best_fixed_weighting(tmp_path: Path
                                                                          ) -> None:
    """Trials choose (validation only) and stay out of the tables; a method whose defaults won
    shows its default runs as tuned rows; the best fixed weighting (on validation) is a
    reference row, and the one method far above it is marked and named."""
    from bench.report import render

    noise = [0.3, -0.2, 0.1, -0.4, 0.2]
    for s, e in enumerate(noise):
        for label, base in (("hps", 70), ("single_task", 70), ("cagrad", 70)):
            _synthetic(tmp_path, label, s, 60, base + e)
        # cagrad's trial 1 wins on validation; its re-runs are far better on test
        _synthetic(tmp_path, "cagrad", s, 60, 90 + e,
                   search={"seed": 0, "trials": 2, "chosen_trial": 1},
                   overrides={"train.lr": 0.01})
        for w, (val, test) in {"ls[w=2,0]": (50, 10), "ls[w=1,1]": (65, 71 + e),
                               "ls[w=0,2]": (55, 99)}.items():
            _synthetic(tmp_path, w, s, val, test + e, ablation="scalarization",
                       method="linear_scalarization")
    for method in ("hps", "single_task", "cagrad"):
        _synthetic(tmp_path, f"{method} (trial 0)", 1000, 60, 0, {"seed": 0, "trial": 0},
                   method=method)
        _synthetic(tmp_path, f"{method} (trial 1)", 1000, 61 if method == "cagrad" else 59,
                   0, {"seed": 0, "trial": 1}, {"train.lr": 0.01}, method=method)
    text, bad = render(tmp_path, tmp_path / "lb.md")
    assert not bad and " (trial " not in text  # trials only choose: no row of theirs
    tuned = text[text.index("### Tuned"):text.index("### Ablation")]
    rows = {line.split(" | ")[0][2:]: line for line in tuned.splitlines()
            if line.startswith("| ") and not line.startswith(("| Method", "| *"))}
    assert rows["cagrad"].endswith("| lr=0.01 |") and "90.50" in rows["cagrad"]
    assert rows["hps"].endswith("| defaults |") and "70.50" in rows["hps"]  # default runs
    fixed = "best fixed weights [w=1,1]"  # best on validation, not the 99 % on test
    assert fixed in rows and "| ref |" in rows[fixed]
    assert "Significantly better than the best fixed weighting: cagrad." in tuned
    main = text[:text.index("### Tuned")]
    assert "Significantly better than the best fixed weighting: no method." in main


def test_the_best_fixed_weighting_is_one_row_across_scenarios(tmp_path: Path) -> None:
    """Each scenario's best fixed weighting has its own weights, yet the cross-scenario summary
    ranks it as one reference row, not one unranked row per weight vector."""
    from bench.report import render

    for scenario, best in (("synth_a", "ls[w=2,0]"), ("synth_b", "ls[w=0,2]")):
        for s, e in enumerate([0.3, -0.2, 0.1]):
            for label, base in (("hps", 70), ("single_task", 72)):
                _synthetic(tmp_path, label, s, 60, base + e, scenario=scenario)
            for w in ("ls[w=2,0]", "ls[w=0,2]"):
                _synthetic(tmp_path, w, s, 65 if w == best else 55, 75 + e,
                           ablation="scalarization", method="linear_scalarization",
                           scenario=scenario)
    text, bad = render(tmp_path, tmp_path / "lb.md")
    assert not bad
    summary = text[text.index("### Across scenarios"):text.index("### Ablation")]
    rows = [line for line in summary.splitlines() if line.startswith("| best fixed weights")]
    assert len(rows) == 1 and rows[0].startswith("| best fixed weights (each scenario's) | ")
    assert "| 1.00 |" in rows[0]  # ranked first (MR 1) on both scenarios

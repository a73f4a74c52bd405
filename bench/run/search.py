"""Equal-budget random search (``python -m bench run ... --search N [--search-seed S]``).

The protocol of DomainBed (Gulrajani & Lopez-Paz, ICLR 2021), and of the MTL re-evaluations that
tune every method alike (Kurin et al., NeurIPS 2022; Gama & Grassi, 2025):

1. **Trials.** For every (method, scenario) the same number ``N`` of configurations is trained on
   one trial seed (:data:`TRIAL_SEED`, outside the reported seeds). Trial 0 is the method's
   defaults (DomainBed's ``hparams_seed = 0``); trials 1..N-1 are drawn from the method's declared
   search space — the optimiser's (``train.*``, the scenario's) and the method's own
   (``arch.*``, ``weighting.*``, declared in its plugin file) — with a :class:`random.Random`
   seeded by ``(S, method, scenario)``: the same draws in every process, backend and resume, and
   trial ``i`` does not depend on ``N`` (a larger ``N`` keeps the earlier trials).
2. **Selection on validation only** (:func:`bench.records.search.select_trial`): each trial's
   validation metrics at its selected epoch are ranked against the other trials', per task and
   metric (direction-aware), and the lowest mean rank wins — scale-free, so no task's metric
   scale decides alone. Test metrics are never read.
3. **Re-run.** The chosen configuration is trained on the standard seeds; those records are the
   "tuned" rows of the leaderboard, with the chosen hyper-parameters listed. When the defaults
   (trial 0) win, the re-runs are the default sweep's own runs (same config, nothing trained
   twice).

Trials and re-runs are ordinary records whose config carries a ``search`` entry
(``{"seed", "trial"}`` or ``{"seed", "trials", "chosen_trial"}``; none for re-runs of the
defaults): resumed and distributed searches skip finished runs like any sweep.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.data.scenario import Scenario, TrainingSetup
from bench.data.search import Distribution, draw
from bench.data.settings import UnknownSettingError
from bench.models.method import MethodSpec, resolve_run_method
from bench.records import find_record
from bench.records.search import select_trial
from bench.registry import scenarios
from bench.run.plan import Plan, RunSpec, expand, override_label, resolve_run

#: the seed every trial trains on: outside the default seeds, so that the noise of the seed
#: that selected a configuration does not flatter its reported runs
TRIAL_SEED = 1000


def search_space(spec: MethodSpec, scen: Scenario, profile: str,
                 fixed: dict[str, Any] | None = None) -> dict[str, Distribution]:
    """The distributions a trial of ``spec`` on ``scen`` draws from, by ``--set`` key: the
    scenario's optimiser space, then the architecture's and the weighting's own. Keys fixed by
    the user's ``--set`` are left out. A declared key that the method's settings do not have is
    a one-line :class:`~bench.data.settings.UnknownSettingError`."""
    owner = f"the search space of {spec.name!r}"
    groups = (
        ("train", scen.search_space(profile), {f.name for f in fields(TrainingSetup)}),
        ("arch", spec.arch_spec.search, set(spec.arch_spec.settings_model.model_fields)),
        ("weighting", spec.weighting_spec.search,
         set(spec.weighting_spec.settings_model.model_fields)),
    )
    space: dict[str, Distribution] = {}
    for group, declared, known in groups:
        for key, dist in declared.items():
            if key not in known:
                raise UnknownSettingError(
                    f"{owner} declares {group}.{key}, which is not one of its {group} settings "
                    f"({', '.join(sorted(known)) or 'none'}); fix the plugin's search=")
            space[f"{group}.{key}"] = dist
    return {k: v for k, v in space.items() if k not in (fixed or {})}


def search_rng(search_seed: int, method: str, scenario: str) -> random.Random:
    """The random stream of one (method, scenario) of a search: a SHA-256 of the three, so it is
    the same in every process (no dependence on Python's hash seed)."""
    digest = hashlib.sha256(f"{search_seed}\x00{method}\x00{scenario}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def trial_draws(space: dict[str, Distribution], trials: int, search_seed: int, method: str,
                scenario: str) -> list[dict[str, Any]]:
    """The ``--set`` overrides of trials ``0..trials-1``: trial 0 the defaults (``{}``)."""
    rng = search_rng(search_seed, method, scenario)
    return [{}] + [draw(space, rng) for _ in range(trials - 1)]


def trial_label(method: str, trial: int) -> str:
    return f"{method} (trial {trial})"


def expand_search(method_names: list[str] | None, scenario_names: list[str] | None,
                  profile: str, trials: int, search_seed: int = 0, run_all: bool = False,
                  require_data: bool = True, overrides: dict[str, Any] | None = None,
                  suite: str = "full") -> Plan:
    """The trials of a search: ``trials`` runs of every (method, scenario) the request plans
    (the same combinations, skips and errors as :func:`bench.run.plan.expand`)."""
    if trials < 1:
        raise ValueError(f"--search takes the number of trials per method and scenario (≥ 1), "
                         f"got {trials}")
    base = expand(method_names, scenario_names, [TRIAL_SEED], profile, run_all, require_data,
                  overrides, suite)
    plan = Plan([], base.skipped, base.missing_data, base.missing_weights)
    for run in base.runs:
        scen = scenarios.get(run.scenario)()
        space = search_space(run.method_spec, scen, profile, overrides)
        for i, drawn in enumerate(trial_draws(space, trials, search_seed, run.method,
                                              run.scenario)):
            given = {**(overrides or {}), **drawn}
            spec = resolve_run_method(run.method, given, profile)
            plan.runs.append(resolve_run(spec, run.method, scen, TRIAL_SEED, profile, given,
                                         trial_label(run.method, i),
                                         search={"seed": search_seed, "trial": i}))
    return plan


def tuned_plan(trials: Plan, results_dir: Path, seeds: list[int], trials_per_pair: int,
               search_seed: int) -> tuple[Plan, list[tuple[str, str, str]]]:
    """The re-runs of each (method, scenario)'s chosen trial on ``seeds``, from the trials'
    records in ``results_dir``; and the pairs left out (no trial ended ok)."""
    groups: dict[tuple[str, str], list[RunSpec]] = defaultdict(list)
    for run in trials.runs:
        groups[(run.method, run.scenario)].append(run)
    plan = Plan([])
    left_out: list[tuple[str, str, str]] = []
    for (method, scenario), runs in groups.items():
        records = [find_record(results_dir, r.profile, r.scenario, r.display, r.seed,
                               r.config_hash) for r in runs]
        chosen = select_trial([r for r in records if r is not None])
        if chosen is None:
            left_out.append((method, scenario, "no trial ended ok"))
            continue
        overrides = dict(chosen["config"]["overrides"])
        profile = runs[0].profile
        spec = resolve_run_method(method, overrides, profile)
        scen = scenarios.get(scenario)()
        trial = chosen["config"]["search"]["trial"]
        # the defaults chosen: the default sweep's own runs (done already if it ran)
        mark = None if trial == 0 else {"seed": search_seed, "trials": trials_per_pair,
                                        "chosen_trial": trial}
        label = override_label(method, overrides) if trial == 0 else method
        for seed in seeds:
            plan.runs.append(resolve_run(spec, method, scen, seed, profile, overrides, label,
                                         search=mark))
    return plan, left_out


def default_stand_ins(trials: Plan, seeds: list[int]) -> list[RunSpec]:
    """For a dry run: the re-runs as if each pair chose its defaults (trial 0), one per seed —
    their cost stands in for the re-runs' (unknown until the trials have run)."""
    out = []
    for run in trials.runs:
        if run.config["search"]["trial"] != 0:
            continue
        scen = scenarios.get(run.scenario)()
        for seed in seeds:
            out.append(resolve_run(run.method_spec, run.method, scen, seed, run.profile,
                                   dict(run.overrides), run.method,
                                   search={**run.config["search"], "stand_in": True}))
    return out

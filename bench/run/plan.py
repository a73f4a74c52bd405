"""Expand a request (``--all``, ``--method``, ``--scenario``, ``--seeds``, ``--ablation``)
into runs.

A run's identity is the SHA-256 of its canonical config (:func:`config_hash`): method identity
(architecture, weighting, resolved hyper-parameters), scenario, its data version and training
setup, seed, profile and the record schema version. The code version (git commit) is recorded
but is *not* part of the key, so a sweep resumes across commits that do not change a config;
bump ``SCHEMA_VERSION`` or a scenario's ``data_version`` to invalidate old records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bench.data.scenario import DataMissingError, Scenario, TrainingSetup
from bench.data.settings import SettingsError, UnknownSettingError
from bench.models.backbones import weights_problem
from bench.models.method import (
    ExtraMissingError,
    IncompatibleError,
    MethodSpec,
    check_compatible,
    resolve_method,
    resolve_run_method,
)
from bench.models.pretrained import manifest
from bench.registry import UnknownNameError, methods, scenarios
from bench.run.ablations import ablations
from bench.run.precision import default_device, precision_problem

SCHEMA_VERSION = 1


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run, resolved once at planning time and frozen.

    ``spec`` is the method with every keyword resolved (architecture and weighting defaults,
    the profile's paper-scale overrides, the user's ``--set``), ``setup`` the training setup;
    ``config`` is what they serialise to (its SHA-256 is the run's identity). The engine, the
    cost estimate, every backend and the record use these and never resolve a method by name
    again; :meth:`from_config` rebuilds the same run from a record's config alone.
    """

    method: str
    scenario: str
    seed: int
    profile: str
    overrides: tuple[tuple[str, Any], ...] = ()
    #: name shown in tables (the method, or an ablation variant such as ``mola_grad[r=8]``)
    label: str = ""
    ablation: str | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    spec: MethodSpec | None = field(default=None, compare=False, hash=False)
    setup: TrainingSetup | None = field(default=None, compare=False, hash=False)

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def __eq__(self, other: object) -> bool:
        """Two runs are the same run when their configs are (the run's identity)."""
        return isinstance(other, RunSpec) and self.config_hash == other.config_hash

    def __hash__(self) -> int:
        return hash(self.config_hash)

    @property
    def display(self) -> str:
        return self.label or self.method

    @property
    def method_spec(self) -> MethodSpec:
        """The resolved method (rebuilt from ``config`` if this run was made without it)."""
        return self.spec or MethodSpec.from_identity(self.method, self.config["method_identity"])

    @property
    def training(self) -> TrainingSetup:
        """The resolved training setup."""
        return self.setup or TrainingSetup.from_dict(self.config["training"])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunSpec:
        """The run a (record's) config describes; no name is resolved again."""
        return cls(config["method"], config["scenario"], int(config["seed"]), config["profile"],
                   tuple(sorted((config.get("overrides") or {}).items())),
                   config.get("label") or config["method"], config.get("ablation"), config,
                   MethodSpec.from_identity(config["method"], config["method_identity"]),
                   TrainingSetup.from_dict(config["training"]))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def resolved_setup(spec: MethodSpec, scen: Scenario, profile: str) -> TrainingSetup:
    """The scenario profile's training setup with the method's ``train.*`` overrides, validated
    against :class:`TrainingSetup`'s declared types and ranges."""
    return scen.setup(profile).with_overrides(spec.training_overrides,
                                              f"method {spec.name!r} on {scen.name} ({profile})")


def training_problem(spec: MethodSpec, setup: TrainingSetup) -> str | None:
    """Why ``setup``'s precision or data parallelism cannot train ``spec`` on this machine's
    device (one line), or ``None``: fp16 off CUDA, more processes than GPUs, weightings on
    representation gradients or pooled batches under data parallelism."""
    import torch

    device = default_device()
    problem = precision_problem(setup.precision, device)
    if problem or setup.ddp == 1:
        return problem
    if spec.rep_grad:
        return (f"train.ddp={setup.ddp} cannot run a weighting on representation gradients "
                f"(weighting {spec.weighting!r} with rep_grad): they are per sample, one "
                "process's rows are not the batch's; use its parameter-gradient variant "
                "(e.g. mgda instead of mgda_ub) or train.ddp=1")
    if setup.sampling == "pooled":
        return (f"train.ddp={setup.ddp} needs train.sampling=per_task (a pooled batch's "
                "shards may miss a task on some processes); or train.ddp=1")
    if device.type == "cuda" and setup.ddp > torch.cuda.device_count():
        return (f"train.ddp={setup.ddp} needs {setup.ddp} GPUs, this machine has "
                f"{torch.cuda.device_count()}")
    return None


#: the seeds a run takes: numpy's seed range (``seed_everything`` seeds numpy with it)
MAX_SEED = 2**32 - 1


def check_seeds(seeds: list[int]) -> list[int]:
    """``seeds`` if each is an integer in [0, 2^32) and none repeats; else one line."""
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise SettingsError(f"--seeds: {seed!r} is not a seed; seeds are integers from 0 to "
                                f"{MAX_SEED}, e.g. --seeds 0,1,2")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SettingsError(f"--seeds repeats {', '.join(map(str, repeated))}: give each seed "
                            "once (a seed is one run)")
    return seeds


def resolve_run(spec: MethodSpec, method: str, scen: Scenario, seed: int, profile: str,
                overrides: dict[str, Any] | None = None, label: str = "",
                ablation: str | None = None, search: dict[str, Any] | None = None,
                rows: dict[str, str] | None = None) -> RunSpec:
    """The frozen run of the resolved method ``spec`` (checked against ``scen``). ``search``
    marks the runs of an equal-budget search (:mod:`bench.run.search`: a trial, or a re-run of
    the chosen configuration) in their config, so that they never pass for default runs;
    ``rows`` names the rows of an ablation that are default runs (label -> method)."""
    scen.check_profile(profile)
    check_compatible(spec, scen, profile)
    setup = resolved_setup(spec, scen, profile)
    problem = training_problem(spec, setup)
    if problem:
        raise SettingsError(f"{spec.name} on {scen.name}: {problem}")
    config = {
        "schema": SCHEMA_VERSION,
        "method": method,
        "label": label or method,
        "ablation": ablation,
        "scenario": scen.name,
        "scenario_data_version": scen.data_version,
        "heterogeneity": scen.heterogeneity,
        "seed": int(seed),
        "profile": profile,
        "overrides": dict(overrides or {}),
        "method_identity": spec.identity(),
        "training": setup.to_dict(),
        **backbone_start(spec, scen, profile),
        # only for search runs, so that the config hashes of all other runs stay as they were
        **({"search": dict(search)} if search else {}),
        # an ablation's rows taken from default runs (label -> method), for its tables
        **({"ablation_rows": dict(rows)} if rows else {}),
    }
    return RunSpec(method, scen.name, int(seed), profile,
                   tuple(sorted((overrides or {}).items())), label or method, ablation, config,
                   spec, setup)


def backbone_start(spec: MethodSpec, scen: Scenario, profile: str) -> dict[str, Any]:
    """``{"init": {...}}`` for a run whose encoder declares a start (``backbone.init``): the
    encoder, ``scratch`` or ``pretrained`` and the SHA-256 of the committed checkpoint, so that
    records trained from scratch never pass for pretrained ones (and a re-made checkpoint makes
    new runs). Empty for encoders without it (their records keep their hashes)."""
    name, kwargs = spec.resolve_backbone(scen.backbone_of(profile),
                                         scen.backbone_kwargs_of(profile))
    init = kwargs.get("init")
    if init is None:
        return {}
    sha = manifest().get(name, {}).get("sha256") if init == "pretrained" else None
    return {"init": {"backbone": name, "init": init, "sha256": sha}}


def make_run(method: str, scenario: str, seed: int, profile: str,
             overrides: dict[str, Any] | None = None, label: str = "",
             ablation: str | None = None, search: dict[str, Any] | None = None) -> RunSpec:
    """Resolve ``method`` (a name or ``A+B``) with its overrides on ``scenario`` into a run
    (``search``: the mark of a search's trial or re-run, :func:`resolve_run`)."""
    spec = resolve_run_method(method, overrides, profile)
    scen = scenarios.get(scenario)()
    rows = (ablation_rows(ablation, scen, profile)
            if ablation is not None and ablation in ablations else None)
    return resolve_run(spec, method, scen, seed, profile, overrides, label, ablation, search,
                       rows=rows)


def build_config(method: str, scenario: str, seed: int, profile: str,
                 overrides: dict[str, Any] | None = None, label: str = "",
                 ablation: str | None = None, search: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The full, self-describing config of one run (validates names and compatibility)."""
    return make_run(method, scenario, seed, profile, overrides, label, ablation, search).config


@dataclass
class Plan:
    runs: list[RunSpec]
    #: (method, scenario, reason) combinations left out because they cannot run
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    #: (scenario, problem) planned for a dry run although their data are missing
    missing_data: list[tuple[str, str]] = field(default_factory=list)
    #: (method, scenario, problem) planned for a dry run although the backbone's weights are
    #: not available (:func:`bench.models.backbones.weights_problem`)
    missing_weights: list[tuple[str, str, str]] = field(default_factory=list)


class WeightsMissingError(DataMissingError):
    """A run's backbone weights (a checkpoint file, pretrained weights) cannot be obtained; one
    line saying how to provide them (exit code 2, before any training)."""


def override_label(method: str, overrides: dict[str, Any] | None) -> str:
    """The name a run with ``--set`` overrides gets in tables: ``method[key=value,...]``."""
    if not overrides:
        return method
    inner = ",".join(f"{k.split('.', 1)[-1]}={v}" for k, v in sorted(overrides.items()))
    return f"{method}[{inner}]"


def weights_problem_of(spec: MethodSpec, scen: Scenario, profile: str) -> str | None:
    """Why the backbone ``spec`` runs on in ``scen``'s ``profile`` cannot get its weights."""
    return weights_problem(*spec.resolve_backbone(scen.backbone_of(profile),
                                                  scen.backbone_kwargs_of(profile)))


#: ``run --all --suite NAME``: the methods of each suite (None: every registered method).
#: ``mission``: the comparison the MoLA and MTLoRA papers are about — the references
#: (Single-task, Uniform, HPS), three gradient methods every MTL table reports (PCGrad, CAGrad,
#: MGDA) and the four low-rank methods — small enough that `run --all` takes minutes;
#: ``full``: the whole roster (every scenario it applies to; about an hour and more).
SUITES: dict[str, tuple[str, ...] | None] = {
    "mission": ("single_task", "uniform", "hps", "pcgrad", "cagrad", "mgda", "mola_grad",
                "mola_router", "mtlora", "mtlora_plus"),
    "full": None,
}
DEFAULT_SUITE = "mission"


def suite_methods(suite: str) -> list[str]:
    """The methods ``run --all`` plans under ``suite`` (one line naming the suites if unknown)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
    members = SUITES[suite]
    return methods.list() if members is None else [m for m in members if m in methods]


def _names(requested: list[str] | None, registry: Any, everything: bool,
           suite: str | None = None) -> list[str]:
    if requested:
        for name in requested:
            if "+" in name:
                resolve_method(name)
            else:
                registry.get(name)  # raises UnknownNameError with suggestions
        return requested
    if everything:
        return suite_methods(suite) if suite and registry is methods else registry.list()
    raise ValueError(f"choose {registry.kind}s with --{registry.kind} a,b or use --all")


def expand(method_names: list[str] | None, scenario_names: list[str] | None, seeds: list[int],
           profile: str, run_all: bool = False, require_data: bool = True,
           overrides: dict[str, Any] | None = None, suite: str = "full") -> Plan:
    """Cross methods × scenarios × seeds, each run with the ``--set`` ``overrides``. With
    ``--all`` (or a wildcard side), combinations that cannot run are skipped and listed; when
    both sides are explicit they are errors. A scenario whose data are missing stops a named
    request and is skipped by ``--all``; with ``require_data=False`` (``--dry-run``) it is
    planned anyway and listed in ``plan.missing_data``, and so is a run whose backbone weights
    are unavailable (``plan.missing_weights``). ``--all`` takes the methods of ``suite``
    (:data:`SUITES`)."""
    check_seeds(seeds)
    method_list = _names(method_names, methods, run_all, suite)
    scenario_list = _names(scenario_names, scenarios, run_all or bool(method_names))
    explicit = bool(method_names) and bool(scenario_names)
    plan = Plan([])
    unknown: list[UnknownSettingError] = []
    for scenario in scenario_list:
        scen = scenarios.get(scenario)()
        if profile not in scen.profiles:
            if scenario_names:
                scen.check_profile(profile)
            plan.skipped.append(("*", scenario, f"no profile {profile!r}"))
            continue
        try:  # real datasets: a missing file stops the plan before any training
            scen.check_data(profile)
        except DataMissingError as err:
            if scenario_names and require_data:
                raise
            if require_data:
                plan.skipped.append(("*", scenario, f"data missing ({err})"))
                continue
            plan.missing_data.append((scenario, str(err)))
        for method in method_list:
            try:
                spec = resolve_run_method(method, overrides, profile)
            except ExtraMissingError as err:  # --all: the methods whose extras are installed
                if method_names:
                    raise
                plan.skipped.append((method, scenario, str(err)))
                continue
            try:
                check_compatible(spec, scen, profile)
            except IncompatibleError as err:
                if explicit:
                    raise
                plan.skipped.append((method, scenario, str(err)))
                continue
            except UnknownSettingError as err:
                if method_names:  # a named method must take every --set key
                    raise
                unknown.append(err)  # --all: the methods that have the setting run it
                plan.skipped.append((method, scenario, str(err)))
                continue
            problem = weights_problem_of(spec, scen, profile)
            if problem and not require_data:
                plan.missing_weights.append((method, scenario, problem))
            elif problem and explicit:
                raise WeightsMissingError(f"{method} on {scenario}: {problem}")
            elif problem:
                plan.skipped.append((method, scenario, f"weights unavailable ({problem})"))
                continue
            for seed in seeds:
                plan.runs.append(resolve_run(spec, method, scen, seed, profile, overrides,
                                             override_label(method, overrides)))
    if unknown and not plan.runs:
        raise unknown[0]
    return plan


def default_rows(name: str, scen: Scenario, profile: str
                 ) -> list[tuple[str, str, MethodSpec]]:
    """The rows of ablation ``name`` on ``scen`` that are default runs, resolved once:
    ``(label, method, spec)`` for each of its ``from_defaults`` methods that can run there."""
    rows = []
    for label, method in ablations.get(name).from_defaults:
        spec = resolve_run_method(method, None, profile)
        try:
            check_compatible(spec, scen, profile)
        except IncompatibleError:
            continue
        rows.append((label, method, spec))
    return rows


def ablation_rows(name: str, scen: Scenario, profile: str) -> dict[str, str]:
    """The rows of ablation ``name`` on ``scen`` that are default runs (label -> method)."""
    return {label: method for label, method, _ in default_rows(name, scen, profile)}


def expand_ablation(name: str, scenario_names: list[str] | None, seeds: list[int],
                    profile: str) -> Plan:
    """An ablation preset: a list of ``(label, method, overrides)`` variants on its scenarios."""
    check_seeds(seeds)
    preset = ablations.get(name)
    scenario_list = scenario_names or list(preset.scenarios)
    plan = Plan([])
    for scenario in scenario_list:
        scen = scenarios.get(scenario)()
        scen.check_data(profile)
        variants = (preset.variants_of(len(scen.shape(profile).tasks)) if preset.variants_for
                    else list(preset.variants))
        defaults = default_rows(name, scen, profile)
        rows = {label: method for label, method, _ in defaults}
        for _, method, spec in defaults:  # default runs, shared with `run --all`
            plan.runs += [resolve_run(spec, method, scen, seed, profile) for seed in seeds]
        for label, method, overrides in variants:
            spec = resolve_run_method(method, overrides, profile)
            try:
                check_compatible(spec, scen, profile)
            except IncompatibleError as err:
                plan.skipped.append((label, scenario, str(err)))
                continue
            problem = weights_problem_of(spec, scen, profile)
            if problem:
                raise WeightsMissingError(f"{label} on {scenario}: {problem}")
            for seed in seeds:
                plan.runs.append(resolve_run(spec, method, scen, seed, profile, overrides,
                                             label, name, rows=rows))
    return plan


__all__ = ["Plan", "RunSpec", "UnknownNameError", "WeightsMissingError", "expand",
           "expand_ablation", "make_run", "override_label", "resolve_run"]

"""Methods: a named pairing of an architecture and a weighting with its defaults (LibMTL's split).

``methods/<name>.py`` registers architectures (:func:`register_architecture`), weightings
(:func:`register_weighting`) and methods (:func:`register_method`). A method name may also be a
combination ``A+B``: the architecture of method (or architecture) ``A`` trained with the weighting
of method (or weighting) ``B`` — e.g. ``mmoe+pcgrad``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from bench.data.scenario import (
    HETEROGENEITY_LABELS,
    Scenario,
    ScenarioData,
    TaskSpec,
    is_dense,
)
from bench.data.settings import Settings, settings_from_defaults, validate
from bench.models.backbones import WEIGHT_KWARGS, backbone_settings, backbones, build_backbone
from bench.models.compat import ArchitectureSpec, WeightingSpec
from bench.models.heads import ClassificationHead, DenseHead
from bench.registry import UnknownNameError, architectures, methods, weightings

#: backbone keywords a scenario sets for every encoder its methods run on (the embedded
#: scenarios start them all from the committed pretrained weights: ``init="pretrained"``)
SCENARIO_WIDE: tuple[str, ...] = ("init",)
#: backbones that satisfy an architecture's ``needs_encoder`` ("any": every backbone)
CONV_BACKBONES: tuple[str, ...] = ("resnet", "resnet18", "timm_resnet18")
SWIN_BACKBONES: tuple[str, ...] = ("swin_embedded", "swin_t")
ENCODER_BACKBONES: dict[str, tuple[str, ...]] = {
    "staged": CONV_BACKBONES,
    "conv": CONV_BACKBONES,
    "swin": SWIN_BACKBONES,
    # MoLA: adapters on a ResNet's convolutions or on a Swin's linear layers (bench/mola.py)
    "conv_or_swin": CONV_BACKBONES + SWIN_BACKBONES,
}
ENCODER_LABELS: dict[str, str] = {
    "staged": "a convolutional staged encoder (ResNet-shaped)",
    "conv": "a convolutional staged encoder (ResNet-shaped)",
    "swin": "a Swin Transformer encoder",
    "conv_or_swin": "a ResNet or Swin Transformer encoder",
}


#: method families, in the order tables group them, with the label a table shows
FAMILIES: dict[str, str] = {
    "baseline": "Baselines",
    "loss_weighting": "Loss weightings",
    "gradient": "Gradient methods",
    "architecture": "Architectures",
    "low_rank": "Low-rank / PEFT",
    # DomainBed-style baselines (one classifier for all domains, a domain-level loss)
    "domain_generalisation": "Domain generalisation",
}


class IncompatibleError(ValueError):
    """A method that cannot run on a scenario; raised at planning time, before any training."""


class ExtraMissingError(ValueError):
    """A method whose optional dependencies are not installed (one line naming the extra)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    architecture: str
    weighting: str
    description: str = ""
    paper: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    rep_grad: bool = False
    training_overrides: dict[str, Any] = field(default_factory=dict)
    #: encoder override (``backbone.name``): None keeps the architecture's or the scenario's
    backbone: str | None = None
    #: backbone keyword overrides (``backbone.NAME``), applied over the resolved ones
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the row group of tables (a key of :data:`FAMILIES`, or a plugin's own name); not part
    #: of :meth:`identity`, so it never changes a run's config hash. Empty: inferred
    #: (:func:`infer_family`)
    family: str = ""

    @classmethod
    def from_identity(cls, name: str, identity: dict[str, Any]) -> MethodSpec:
        """The method a run config's ``method_identity`` describes (every keyword resolved):
        ``spec.identity()`` round-trips, so the run's config hash is unchanged. A setting the
        architecture gained later (``ArchitectureSpec.legacy``) takes the value earlier runs
        implied when the identity does not name it."""
        recorded = dict(identity["arch_kwargs"])
        legacy = architectures.get(identity["architecture"]).legacy
        arch_kwargs = {**{k: v for k, v in legacy.items() if k not in recorded}, **recorded}
        return cls(name=name, architecture=identity["architecture"],
                   weighting=identity["weighting"], arch_kwargs=arch_kwargs,
                   weighting_kwargs=dict(identity["weighting_kwargs"]),
                   rep_grad=bool(identity["rep_grad"]),
                   training_overrides=dict(identity.get("training_overrides") or {}),
                   backbone=identity.get("backbone"),
                   backbone_kwargs=dict(identity.get("backbone_kwargs") or {}))

    @property
    def arch_spec(self) -> ArchitectureSpec:
        return architectures.get(self.architecture)

    @property
    def weighting_spec(self) -> WeightingSpec:
        return weightings.get(self.weighting)

    def resolved_arch_kwargs(self) -> dict[str, Any]:
        return {**self.arch_spec.defaults, **self.arch_kwargs}

    def resolved_weighting_kwargs(self) -> dict[str, Any]:
        return {**self.weighting_spec.defaults, **self.weighting_kwargs}

    def with_overrides(self, overrides: dict[str, Any] | None) -> MethodSpec:
        """Apply ``{"arch.rank": 8, "weighting.calpha": 0.4, "train.lr": 1e-3}`` overrides.

        ``backbone.name`` runs the method on another registered encoder (MoLA §5.5, Table 8:
        ``{"backbone.name": "swin_embedded"}``); ``backbone.NAME`` sets one of its keywords."""
        if not overrides:
            return self
        arch, weight, train = dict(self.arch_kwargs), dict(self.weighting_kwargs), dict(
            self.training_overrides)
        backbone, backbone_kwargs = self.backbone, dict(self.backbone_kwargs)
        if "backbone.name" in overrides:  # first, so that its keywords given with it apply
            if backbone != overrides["backbone.name"]:
                backbone_kwargs = {}  # another encoder: the previous one's keywords do not apply
            backbone = str(overrides["backbone.name"])
        for key, value in overrides.items():
            group, _, name = key.partition(".")
            if group == "backbone" and name == "name":
                continue
            target = {"arch": arch, "weighting": weight, "train": train,
                      "backbone": backbone_kwargs}.get(group)
            if target is None or not name:
                raise ValueError(f"override {key!r}: use arch.NAME, weighting.NAME, train.NAME, "
                                 f"backbone.name or backbone.NAME")
            target[name] = value
        return replace(self, arch_kwargs=arch, weighting_kwargs=weight, training_overrides=train,
                       backbone=backbone, backbone_kwargs=backbone_kwargs)

    def identity(self) -> dict[str, Any]:
        """Everything about the method that changes results (part of the run's config hash).
        A later setting at the value earlier runs implied is left out, so those runs' records
        still match."""
        legacy = self.arch_spec.legacy
        arch_kwargs = {k: v for k, v in self.resolved_arch_kwargs().items()
                       if not (k in legacy and v == legacy[k])}
        return {
            "architecture": self.architecture,
            "weighting": self.weighting,
            "arch_kwargs": arch_kwargs,
            "weighting_kwargs": self.resolved_weighting_kwargs(),
            "rep_grad": self.rep_grad,
            "training_overrides": dict(self.training_overrides),
            # only when overridden, so that the config hashes of earlier runs stay valid
            **({"backbone": self.backbone} if self.backbone is not None else {}),
            **({"backbone_kwargs": dict(self.backbone_kwargs)} if self.backbone_kwargs else {}),
        }

    def resolve_backbone(self, scenario_backbone: str, scenario_kwargs: dict[str, Any]
                         ) -> tuple[str, dict[str, Any]]:
        """The encoder the method runs on and its keywords: the ``backbone.*`` overrides, else
        the architecture's own (MTLoRA's Swin), else the scenario's."""
        arch = self.arch_spec
        if arch.backbone is None:
            name, kwargs = scenario_backbone, {**scenario_kwargs, **arch.backbone_kwargs}
        else:
            name, kwargs = arch.backbone, dict(arch.backbone_kwargs)
        if self.backbone is not None and self.backbone != name:
            # another encoder: keep only the keywords given for it by its owner
            name = self.backbone
            kwargs = (dict(scenario_kwargs) if name == scenario_backbone
                      else dict(arch.backbone_kwargs) if name == arch.backbone else {})
        # the scenario's start (``init``) applies to whichever encoder runs, when it has one
        declared = backbone_settings(name).model_fields if name in backbones else {}
        kwargs.update({k: scenario_kwargs[k] for k in SCENARIO_WIDE
                       if k in scenario_kwargs and k in declared and k not in kwargs})
        return name, {**kwargs, **self.backbone_kwargs}


def _declared(name: str, settings: type[Settings] | None, defaults: dict[str, Any] | None
              ) -> type[Settings]:
    if settings is not None and defaults is not None:
        raise ValueError(f"{name}: give settings= (types, ranges and defaults) or defaults= "
                         "(types inferred), not both")
    return settings or settings_from_defaults(name, defaults or {})


def register_architecture(name: str, cls: type, *, description: str = "",
                          settings: type[Settings] | None = None,
                          defaults: dict[str, Any] | None = None, **spec: Any) -> type:
    """Register an architecture. ``settings``: a :class:`~bench.data.settings.Settings` model
    declaring each ``arch.*`` keyword's type, range and default; or only ``defaults`` (each
    keyword typed as its default). Unknown keywords are refused at planning time."""
    declared = _declared(name, settings, defaults)
    architectures.add(name, ArchitectureSpec(cls=cls, description=description,
                                             defaults=declared.defaults(), settings=declared,
                                             **spec), description)
    return cls


def register_weighting(name: str, cls: type, *, description: str = "",
                       settings: type[Settings] | None = None,
                       defaults: dict[str, Any] | None = None, **spec: Any) -> type:
    """Register a weighting; ``settings`` / ``defaults`` as for :func:`register_architecture`
    (``weighting.*`` keywords)."""
    declared = _declared(name, settings, defaults)
    weightings.add(name, WeightingSpec(cls=cls, description=description,
                                       defaults=declared.defaults(), settings=declared, **spec),
                   description)
    return cls


def register_method(name: str, *, architecture: str, weighting: str, description: str,
                    paper: str = "", family: str = "", **kwargs: Any) -> MethodSpec:
    """Register a method; ``family`` groups its rows in tables (a key of :data:`FAMILIES`:
    baseline, loss_weighting, gradient, architecture, low_rank, domain_generalisation;
    inferred when omitted)."""
    spec = MethodSpec(name=name, architecture=architecture, weighting=weighting,
                      description=description, paper=paper, family=family, **kwargs)
    methods.add(name, spec, description)
    return spec


def infer_family(spec: MethodSpec) -> str:
    """A method's family when its registration declares none: another architecture than HPS
    is an ``architecture``; on HPS, a weighting that needs per-task gradients a ``gradient``
    method, any other weighting but equal weights a ``loss_weighting``; HPS with equal weights
    a ``baseline``."""
    if spec.architecture != "hps":
        return "architecture"
    if spec.weighting == "ew":
        return "baseline"
    needs_gradients = getattr(spec.weighting_spec.cls, "needs_task_gradients", True)
    return "gradient" if needs_gradients else "loss_weighting"


def method_family(name: str) -> str:
    """The family of method ``name`` (a registered name or ``A+B``): the declared one, else
    :func:`infer_family`. ``A+B`` has the family of ``A``, unless ``A`` is a baseline trained
    with another weighting (``hps+pcgrad`` is a gradient method): then that of ``B``."""
    spec = resolve_method(name)
    if "+" not in name:
        return spec.family or infer_family(spec)
    left, _, right = name.partition("+")
    if left in methods:
        base = methods.get(left)
        family = base.family or infer_family(base)
    else:  # an architecture name
        family = "baseline" if left == "hps" else "architecture"
    if family != "baseline" or spec.weighting == "ew":
        return family
    other = methods.get(right) if right in methods else None
    if other is not None and other.family:
        return other.family
    return infer_family(replace(spec, architecture="hps"))


def resolve_method(name: str) -> MethodSpec:
    """A registered method, or ``A+B`` = architecture of ``A`` with the weighting of ``B``."""
    if "+" not in name:
        return methods.get(name)
    left, _, right = name.partition("+")
    if left in methods:
        base = methods.get(left)
    elif left in architectures:
        base = MethodSpec(name=left, architecture=left, weighting="ew")
    else:
        raise UnknownNameError(methods.unknown_message(left))
    if right in methods:
        other = methods.get(right)
        weighting, wkw, rep_grad = other.weighting, other.weighting_kwargs, other.rep_grad
    elif right in weightings:
        weighting, wkw, rep_grad = right, {}, False
    else:
        raise UnknownNameError(weightings.unknown_message(right))
    return replace(base, name=name, weighting=weighting, weighting_kwargs=dict(wkw),
                   rep_grad=rep_grad,
                   description=f"{base.architecture} architecture with {weighting} weighting")


PAPER_PROFILE = "paper"


def resolve_run_method(method: str, overrides: dict[str, Any] | None = None,
                       profile: str | None = None) -> MethodSpec:
    """The method a run trains: ``method`` (a name or ``A+B``), then — under the ``paper``
    profile — its architecture's ``paper_scale`` overrides, then the user's ``overrides``."""
    spec = resolve_method(method)
    check_installed(spec)
    if profile == PAPER_PROFILE and spec.arch_spec.paper_scale:
        spec = spec.with_overrides(spec.arch_spec.paper_scale)
    return spec.with_overrides(overrides)


def check_installed(spec: MethodSpec) -> None:
    """Raise :class:`ExtraMissingError` (one line naming the install extra) when the weighting
    or architecture of ``spec`` needs an optional package that is not installed (e.g. Nash-MTL's
    cvxpy: ``pip install -e ".[nash-mtl]"``)."""
    import importlib.util

    weighting = weightings.get(spec.weighting)
    for part in (weighting, architectures.get(spec.architecture)):
        requires: tuple[str, ...] = getattr(part, "requires", ())
        missing = [name for name in requires if importlib.util.find_spec(name) is None]
        if missing:
            extra = getattr(part, "extra", "")
            raise ExtraMissingError(
                f"method {spec.name!r} needs {', '.join(missing)}, not installed: "
                f'pip install -e ".[{extra}]" (from a checkout; else '
                f'pip install "mtl-hetero-bench[{extra}]")')


def check_settings(spec: MethodSpec, scenario: Scenario, profile: str | None = None) -> None:
    """Validate every setting of the run against its declared type and range: ``arch.*`` and
    ``weighting.*`` (the resolved keywords), ``backbone.*`` (the overrides, against the settings
    of the encoder the method runs on) and ``train.*`` (on the profile's setup). Raises
    :class:`~bench.data.settings.SettingsError` (one line) before anything is built."""
    owner = f"method {spec.name!r}"
    validate(spec.arch_spec.settings_model, spec.resolved_arch_kwargs(), "arch",
             f"{owner} (architecture {spec.architecture!r})")
    validate(spec.weighting_spec.settings_model, spec.resolved_weighting_kwargs(), "weighting",
             f"{owner} (weighting {spec.weighting!r})")
    if spec.backbone_kwargs:
        name, _ = spec.resolve_backbone(scenario.backbone_of(profile), {})
        validate(backbone_settings(name), spec.backbone_kwargs, "backbone",
                 f"{owner} (backbone {name!r})")
    if profile is not None:
        scenario.setup(profile).with_overrides(spec.training_overrides,
                                               f"{owner} on {scenario.name} ({profile})")


def check_compatible(spec: MethodSpec, scenario: Scenario, profile: str | None = None) -> None:
    """Raise :class:`IncompatibleError` when ``spec`` cannot run on ``scenario`` (with the
    backbone of ``profile``'s models), :class:`~bench.data.settings.SettingsError` when one of
    its settings is not what its declaration allows (:func:`check_settings`)."""
    if spec.backbone is not None:
        backbones.get(spec.backbone)  # an unknown name: UnknownNameError with suggestions
    arch = spec.arch_spec
    weighting = spec.weighting_spec
    if arch.scenarios is not None and scenario.heterogeneity not in arch.scenarios:
        kinds = ", ".join(HETEROGENEITY_LABELS[k] for k in arch.scenarios)
        raise IncompatibleError(
            f"method {spec.name!r} cannot run on scenario {scenario.name!r} "
            f"({HETEROGENEITY_LABELS[scenario.heterogeneity]}): architecture "
            f"{spec.architecture!r} supports only {kinds}")
    if weighting.scenarios is not None and scenario.heterogeneity not in weighting.scenarios:
        kinds = ", ".join(HETEROGENEITY_LABELS[k] for k in weighting.scenarios)
        raise IncompatibleError(
            f"method {spec.name!r} cannot run on scenario {scenario.name!r} "
            f"({HETEROGENEITY_LABELS[scenario.heterogeneity]}): weighting "
            f"{spec.weighting!r} supports only {kinds}")
    if spec.rep_grad and not arch.supports_rep_grad:
        raise IncompatibleError(
            f"method {spec.name!r}: architecture {spec.architecture!r} exposes no shared "
            f"representation, so weighting {spec.weighting!r} (rep_grad=True) cannot run on it")
    if spec.rep_grad not in weighting.rep_grad:
        raise IncompatibleError(
            f"method {spec.name!r}: weighting {spec.weighting!r} does not support "
            f"rep_grad={spec.rep_grad}")
    if (spec.rep_grad and profile is not None and scenario.heterogeneity != "single_input"
            and scenario.setup(profile).with_overrides(spec.training_overrides, spec.name)
            .sampling == "pooled"):
        raise IncompatibleError(
            f"method {spec.name!r}: weighting {spec.weighting!r} needs every task's "
            f"representation in every batch, but scenario {scenario.name!r} draws pooled "
            f"batches in profile {profile!r} (some tasks are absent from a batch); "
            "--set train.sampling=per_task gives every task rows in every step")
    backbone, _ = spec.resolve_backbone(scenario.backbone_of(profile), {})
    where = (f"the {backbone!r} backbone override" if spec.backbone is not None
             else f"scenario {scenario.name!r}'s backbone {backbone!r}")
    allowed = ENCODER_BACKBONES.get(arch.needs_encoder)
    if allowed is not None and backbone not in allowed:
        raise IncompatibleError(
            f"method {spec.name!r} needs {ENCODER_LABELS[arch.needs_encoder]}, but runs on "
            f"{where}")
    check_settings(spec, scenario, profile)


def make_decoder(task: TaskSpec, in_channels: int, input_shape: tuple[int, int, int]) -> nn.Module:
    if not is_dense(task.kind):
        return ClassificationHead(in_channels, task.num_outputs)
    return DenseHead(in_channels, task.num_outputs, input_shape[1:])


def build_model(spec: MethodSpec, data: ScenarioData, device: torch.device | str = "cpu",
                load_weights: bool = True) -> nn.Module:
    """Instantiate ``architecture x weighting`` as LibMTL's Trainer does (one mixed class).
    ``load_weights=False`` ignores the backbone's ``pretrained`` / ``checkpoint`` keywords (the
    architecture is the same; e.g. to count FLOPs without fetching weights)."""
    arch, weighting = spec.arch_spec, spec.weighting_spec
    backbone, backbone_kwargs = spec.resolve_backbone(data.backbone, data.backbone_kwargs)
    if not load_weights:
        backbone_kwargs = {k: v for k, v in backbone_kwargs.items() if k not in WEIGHT_KWARGS}
    encoder_class = partial(build_backbone, backbone, in_channels=data.input_shape[0],
                            input_shape=data.input_shape, **backbone_kwargs)
    # the width does not depend on the weights: the probe loads none
    probe = encoder_class(**{k: None for k in WEIGHT_KWARGS if k in backbone_kwargs})
    out_channels = int(probe.out_channels)
    del probe

    def decoder_factory(task: TaskSpec) -> nn.Module:
        return make_decoder(task, out_channels, data.input_shape)

    decoders = nn.ModuleDict({t.name: decoder_factory(t) for t in data.tasks})
    mixed = type(f"{arch.cls.__name__}x{weighting.cls.__name__}", (arch.cls, weighting.cls), {})
    kwargs = {
        **spec.resolved_arch_kwargs(),
        "tasks": data.tasks,
        "input_shape": data.input_shape,
        "shared_label_space": data.shared_label_space,
        "decoder_factory": decoder_factory,
        "encoder_channels": out_channels,
    }
    model = mixed(data.task_names, encoder_class, decoders, spec.rep_grad, data.multi_input,
                  torch.device(device), **kwargs)
    network = {name for name, _ in model.named_parameters()}
    model.init_param()
    #: the weighting's own parameters (e.g. log-variances): loss scaling treats them apart
    model.weighting_parameter_names = tuple(
        name for name, _ in model.named_parameters() if name not in network)
    return model.to(device)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

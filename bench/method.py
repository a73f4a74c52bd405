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

from bench.backbones import build_backbone
from bench.compat import ArchitectureSpec, WeightingSpec
from bench.heads import ClassificationHead, DenseHead
from bench.registry import UnknownNameError, architectures, methods, weightings
from bench.scenario import HETEROGENEITY_LABELS, Scenario, ScenarioData, TaskSpec


class IncompatibleError(ValueError):
    """A method that cannot run on a scenario; raised at planning time, before any training."""


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
        """Apply ``{"arch.rank": 8, "weighting.calpha": 0.4, "train.lr": 1e-3}`` overrides."""
        if not overrides:
            return self
        arch, weight, train = dict(self.arch_kwargs), dict(self.weighting_kwargs), dict(
            self.training_overrides)
        for key, value in overrides.items():
            group, _, name = key.partition(".")
            target = {"arch": arch, "weighting": weight, "train": train}.get(group)
            if target is None or not name:
                raise ValueError(
                    f"override {key!r}: use arch.NAME, weighting.NAME or train.NAME")
            target[name] = value
        return replace(self, arch_kwargs=arch, weighting_kwargs=weight, training_overrides=train)

    def identity(self) -> dict[str, Any]:
        """Everything about the method that changes results (part of the run's config hash)."""
        return {
            "architecture": self.architecture,
            "weighting": self.weighting,
            "arch_kwargs": self.resolved_arch_kwargs(),
            "weighting_kwargs": self.resolved_weighting_kwargs(),
            "rep_grad": self.rep_grad,
            "training_overrides": dict(self.training_overrides),
        }


def register_architecture(
    name: str, cls: type, *, description: str = "", **spec: Any
) -> type:
    architectures.add(name, ArchitectureSpec(cls=cls, description=description, **spec), description)
    return cls


def register_weighting(name: str, cls: type, *, description: str = "", **spec: Any) -> type:
    weightings.add(name, WeightingSpec(cls=cls, description=description, **spec), description)
    return cls


def register_method(name: str, *, architecture: str, weighting: str, description: str,
                    paper: str = "", **kwargs: Any) -> MethodSpec:
    spec = MethodSpec(name=name, architecture=architecture, weighting=weighting,
                      description=description, paper=paper, **kwargs)
    methods.add(name, spec, description)
    return spec


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


def check_compatible(spec: MethodSpec, scenario: Scenario) -> None:
    """Raise :class:`IncompatibleError` when ``spec`` cannot run on ``scenario``."""
    arch = spec.arch_spec
    weighting = spec.weighting_spec
    if arch.scenarios is not None and scenario.heterogeneity not in arch.scenarios:
        kinds = ", ".join(HETEROGENEITY_LABELS[k] for k in arch.scenarios)
        raise IncompatibleError(
            f"method {spec.name!r} cannot run on scenario {scenario.name!r} "
            f"({HETEROGENEITY_LABELS[scenario.heterogeneity]}): architecture "
            f"{spec.architecture!r} supports only {kinds}")
    if spec.rep_grad not in weighting.rep_grad:
        raise IncompatibleError(
            f"method {spec.name!r}: weighting {spec.weighting!r} does not support "
            f"rep_grad={spec.rep_grad}")
    backbone = arch.backbone or getattr(scenario, "backbone", "resnet")
    if arch.needs_encoder in ("staged", "conv") and backbone not in ("resnet", "resnet18",
                                                                     "timm_resnet18"):
        raise IncompatibleError(
            f"method {spec.name!r} needs a convolutional staged encoder (ResNet-shaped), but "
            f"scenario {scenario.name!r} uses backbone {backbone!r}")


def make_decoder(task: TaskSpec, in_channels: int, input_shape: tuple[int, int, int]) -> nn.Module:
    if task.kind == "classification":
        return ClassificationHead(in_channels, task.num_outputs)
    return DenseHead(in_channels, task.num_outputs, input_shape[1:])


def build_model(spec: MethodSpec, data: ScenarioData, device: torch.device | str = "cpu"
                ) -> nn.Module:
    """Instantiate ``architecture x weighting`` as LibMTL's Trainer does (one mixed class)."""
    arch, weighting = spec.arch_spec, spec.weighting_spec
    backbone = arch.backbone or data.backbone
    backbone_kwargs = {**data.backbone_kwargs, **arch.backbone_kwargs} if arch.backbone is None \
        else dict(arch.backbone_kwargs)
    encoder_class = partial(build_backbone, backbone, in_channels=data.input_shape[0],
                            input_shape=data.input_shape, **backbone_kwargs)
    probe = encoder_class()
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
    model.init_param()
    return model.to(device)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

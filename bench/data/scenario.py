"""What a scenario declares: tasks, metrics and direction, splits, backbone, training setup.

A scenario plugin (one file in ``datasets/``) subclasses :class:`Scenario` and registers it with
``@register_scenario("name")``. ``load(profile)`` returns :class:`ScenarioData` holding in-memory
tensors with a fixed train/val/test split (independent of the run's seed).

Model selection rule (all scenarios): the run reports test metrics at the epoch with the lowest
validation score ``mean_t L_t / L_t(first epoch)`` (see :mod:`bench.run.engine`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from bench.data import settings
from bench.data.kinds import HETEROGENEITY_LABELS, Heterogeneity  # noqa: F401
from bench.data.metrics import LOSS_VARIANTS, METRICS
from bench.data.search import OPTIMISER_SPACE, Distribution

TaskKind = Literal["classification", "segmentation", "regression", "multilabel", "depth",
                   "normals", "saliency"]
#: task kinds predicted once per sample (a vector), not per pixel
GLOBAL_KINDS = ("classification", "multilabel")


def is_dense(kind: str) -> bool:
    """Whether a task kind predicts a map (per pixel) rather than one vector per sample."""
    return kind not in GLOBAL_KINDS


class DataMissingError(ValueError):
    """A scenario's data is missing or malformed; the message is one line naming what is
    missing, the expected layout and where to get it (the CLI prints it, exit code 2)."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: its kind, output size (classes or channels) and metrics (primary first)."""

    name: str
    kind: TaskKind
    num_outputs: int
    metrics: tuple[str, ...]
    label: str = ""
    #: a named training loss instead of the kind's default (``bench.data.metrics.LOSS_VARIANTS``)
    loss: str = ""
    #: the factor of this task's loss in training (a scenario's fixed task weights)
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(
                f"task {self.name!r}: unknown metrics {unknown}; known: {list(METRICS)}")
        if self.loss and self.loss not in LOSS_VARIANTS:
            raise ValueError(f"task {self.name!r}: unknown loss {self.loss!r}; known: "
                             f"{', '.join(LOSS_VARIANTS)}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "kind": self.kind,
            "num_outputs": self.num_outputs,
            "metrics": [
                {"name": m, "label": METRICS[m].label,
                 "higher_is_better": METRICS[m].higher_is_better}
                for m in self.metrics
            ],
            **({"loss": self.loss} if self.loss else {}),
            **({"loss_weight": self.loss_weight} if self.loss_weight != 1.0 else {}),
        }


PositiveInt = Annotated[int, Field(ge=1, le=10**6)]
Count = Annotated[int, Field(ge=0, le=10**6)]


@pydantic_dataclass(frozen=True, config=ConfigDict(strict=True, allow_inf_nan=False,
                                                   extra="forbid"))
class TrainingSetup:
    """Optimisation settings of a scenario profile (methods may override some: ``train.*``).

    Each field's type and range is declared here, once; a scenario's setup and every
    ``--set train.KEY=VALUE`` are validated against them (:meth:`with_overrides`)."""

    epochs: PositiveInt
    #: per task in multi-input scenarios, unless ``sampling`` is "pooled"
    batch_size: PositiveInt
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    #: per epoch: "cosine" to ``min_lr``; "step" = × ``gamma`` every ``step_size`` epochs
    scheduler: Literal["none", "cosine", "step"] = "none"
    eval_batch_size: PositiveInt = 512
    #: multi-input scenarios: "fused" = all tasks' batches in one forward pass (default, for
    #: every method alike); "per_task" = one forward per task, as LibMTL's Trainer does
    forward: Literal["fused", "per_task"] = "fused"
    #: linear warm-up from lr/1000 over this many epochs before the schedule (MTLoRA: 20)
    warmup_epochs: Count = 0
    min_lr: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    step_size: Count = 0
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    #: clip the gradients' global norm to this before each step (0: off; MTLoRA: 5)
    grad_clip: Annotated[float, Field(ge=0.0)] = 0.0
    #: multi-input batches: "per_task" = ``batch_size`` samples of every task per step, an
    #: epoch as long as the largest task (LibMTL); "pooled" = ``batch_size`` samples drawn from
    #: all tasks' samples together, an epoch = one pass over them (MoLA's reference)
    sampling: Literal["per_task", "pooled"] = "per_task"
    #: scale each task's mean loss by its share of the batch, so that the losses sum to the
    #: batch's mean loss (MoLA's reference on MedMNIST and RadImageNet)
    loss_share: bool = False
    #: numeric precision of the forward pass: "fp32", or autocast to "bf16" / "fp16" (losses,
    #: parameters and gradients stay float32; fp16 with a gradient scaler, on CUDA only)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: data parallelism: one run on this many processes (torch.distributed), each taking a
    #: shard of every global batch (:mod:`bench.run.parallel`)
    ddp: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSetup:
        if self.scheduler == "step" and self.step_size < 1:
            raise ValueError("scheduler 'step' needs train.step_size >= 1 (epochs between "
                             "decays)")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr={self.min_lr} is above train.lr={self.lr}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs} is more than "
                             f"train.epochs={self.epochs}")
        if self.ddp > self.batch_size:
            raise ValueError(f"train.ddp={self.ddp} is more than train.batch_size="
                             f"{self.batch_size}: every process needs a sample of each batch")
        return self

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> TrainingSetup:
        """The setup a run config's ``training`` describes (inverse of :meth:`to_dict`)."""
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The settings as the run config records them; the fields added after the first
        records are left out while at their defaults, so those records keep their keys."""
        out = asdict(self)
        for name, default in LATER_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    def with_overrides(self, overrides: dict[str, Any], owner: str) -> TrainingSetup:
        """This setup with ``train.*`` overrides, validated against the declared types and
        ranges; :class:`~bench.data.settings.SettingsError` (one line) names the first problem."""
        if not overrides:
            return self
        fields = self.__pydantic_fields__  # type: ignore[attr-defined]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise settings.unknown_key(unknown[0], sorted(fields), "train", owner)
        try:
            return replace(self, **overrides)
        except ValidationError as err:
            raise settings.explain(err, fields, overrides, "train", owner,
                                   current=asdict(self)) from None


#: TrainingSetup fields added after records existed, with their defaults
LATER_DEFAULTS: dict[str, Any] = {"warmup_epochs": 0, "min_lr": 0.0, "step_size": 0,
                                  "gamma": 0.5, "grad_clip": 0.0, "sampling": "per_task",
                                  "loss_share": False, "precision": "fp32", "ddp": 1}


@dataclass
class Split:
    """Inputs and per-task targets of one split.

    Multi-input: ``inputs[task]`` and ``targets[task]`` are aligned per task.
    Single-input: ``inputs`` is one tensor and every ``targets[task]`` is aligned with it.
    """

    inputs: torch.Tensor | dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    def size(self, task: str) -> int:
        x = self.inputs[task] if isinstance(self.inputs, dict) else self.inputs
        return int(x.shape[0])


class TaskSet:
    """What :class:`ScenarioData` and :class:`ScenarioShape` derive from their ``tasks`` and
    ``heterogeneity``."""

    tasks: tuple[TaskSpec, ...]
    heterogeneity: Heterogeneity

    @property
    def multi_input(self) -> bool:
        """Each task has its own inputs (domain and multi-input task heterogeneity)."""
        return self.heterogeneity != "single_input"

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


@dataclass
class ScenarioData(TaskSet):
    name: str
    heterogeneity: Heterogeneity
    tasks: tuple[TaskSpec, ...]
    input_shape: tuple[int, int, int]
    train: Split
    val: Split
    test: Split
    training: TrainingSetup
    backbone: str = "resnet"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    #: all tasks share one label space (domain heterogeneity): Uniform uses one head
    shared_label_space: bool = False
    description: str = ""


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ScenarioShape(TaskSet):
    """What a run's cost depends on, without the data: tasks, input shape, encoder, and the
    number of samples of each split and task (``sizes[split][task]``).

    ``nominal`` shapes come from published dataset sizes because the data are not present."""

    name: str
    heterogeneity: Heterogeneity
    tasks: tuple[TaskSpec, ...]
    input_shape: tuple[int, int, int]
    backbone: str
    backbone_kwargs: dict[str, Any]
    shared_label_space: bool
    sizes: dict[str, dict[str, int]]
    nominal: bool = False

    @classmethod
    def of(cls, data: ScenarioData) -> ScenarioShape:
        """The shape of loaded data."""
        sizes = {split: {t: getattr(data, split).size(t) for t in data.task_names}
                 for split in SPLITS}
        return cls(data.name, data.heterogeneity, data.tasks, tuple(data.input_shape),
                   data.backbone, dict(data.backbone_kwargs), data.shared_label_space, sizes)


class Scenario:
    """Base class of scenario plugins."""

    name: str = ""
    description: str = ""
    heterogeneity: Heterogeneity = "domain"
    profiles: tuple[str, ...] = ("smoke", "default")
    #: where the data comes from, shown by ``bench list scenarios``
    source: str = ""

    #: bump when the data a profile produces changes (part of every run's config hash)
    data_version: str = "1"
    #: the backbone the scenario's models use (known before loading, for planning checks);
    #: :meth:`backbone_of` when it depends on the profile
    backbone: str = "resnet"

    def backbone_of(self, profile: str | None = None) -> str:
        """The backbone of ``profile``'s models (known before loading, for planning checks)."""
        return self.backbone

    def backbone_kwargs_of(self, profile: str | None = None) -> dict[str, Any]:
        """Backbone keywords known before loading that planning checks (e.g. ``pretrained``:
        :func:`bench.models.backbones.weights_problem`)."""
        return {}

    def search_space(self, profile: str) -> dict[str, Distribution]:
        """The optimiser's search distributions (``train.*`` keys) for equal-budget search
        (``run --search N``): :data:`bench.data.search.OPTIMISER_SPACE` unless a scenario
        declares its own."""
        return dict(OPTIMISER_SPACE)

    def setup(self, profile: str) -> TrainingSetup:
        """The training setup of ``profile`` (known without loading the data)."""
        raise NotImplementedError

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        raise NotImplementedError

    #: whether the scenario reads files from the data root (real datasets)
    needs_data: bool = False

    def check_data(self, profile: str, data_root: Path | None = None) -> None:
        """Raise :class:`DataMissingError` when the files ``profile`` needs are absent (a cheap
        layout check, run before planning any training; checksums are ``bench data check``'s)."""

    def check_profile(self, profile: str) -> None:
        if profile not in self.profiles:
            raise ValueError(
                f"scenario {self.name!r} has no profile {profile!r}; "
                f"choose one of {', '.join(self.profiles)}"
            )

    def shape(self, profile: str, data_root: Path | None = None) -> ScenarioShape | None:
        """Tasks, input shape, encoder and split sizes of ``profile`` (for cost estimates); None
        when unknown. This default loads the data (cheap for the embedded scenarios)."""
        return ScenarioShape.of(self.load(profile, data_root))

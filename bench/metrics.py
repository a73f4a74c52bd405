"""Per-task losses and metrics, keyed by name; each metric declares its direction.

A scenario's task lists metric names from :data:`METRICS`; the first one is the task's primary
metric. Accumulators are updated batch by batch and computed once, so evaluation never holds all
predictions in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


class Accumulator:
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(Accumulator):
    """Top-1 accuracy in percent (classification)."""

    def __init__(self, num_classes: int) -> None:
        self.correct = 0
        self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += int((pred.argmax(1) == target).sum())
        self.total += int(target.numel())

    def compute(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)


class ConfusionMatrix(Accumulator):
    """Confusion matrix over valid pixels; base of mIoU and pixel accuracy (segmentation)."""

    def __init__(self, num_classes: int) -> None:
        self.n = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = pred.argmax(1).reshape(-1)
        target = target.reshape(-1)
        valid = target != IGNORE_INDEX
        idx = target[valid] * self.n + labels[valid]
        self.mat += torch.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n).cpu()


class MeanIoU(ConfusionMatrix):
    """Mean intersection-over-union in percent over the classes present (as LibMTL's NYUv2)."""

    def compute(self) -> float:
        mat = self.mat.double()
        inter = mat.diag()
        union = mat.sum(0) + mat.sum(1) - inter
        present = union > 0
        return float(100.0 * (inter[present] / union[present]).mean()) if present.any() else 0.0


class PixelAccuracy(ConfusionMatrix):
    """Fraction of valid pixels labelled correctly, in percent."""

    def compute(self) -> float:
        return float(100.0 * self.mat.diag().sum() / self.mat.sum().clamp(min=1))


class AbsError(Accumulator):
    """Mean absolute error over all target values (dense regression, e.g. depth)."""

    def __init__(self, num_classes: int = 0) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.sum += float((pred - target).abs().sum())
        self.count += target.numel()

    def compute(self) -> float:
        return self.sum / max(self.count, 1)


class RelError(AbsError):
    """Mean of |pred - target| / target over target values > 0 (depth relative error)."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target > 0
        self.sum += float(((pred - target).abs()[valid] / target[valid]).sum())
        self.count += int(valid.sum())


@dataclass(frozen=True)
class MetricDef:
    name: str
    higher_is_better: bool
    factory: Callable[[int], Accumulator]
    label: str


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef("accuracy", True, Accuracy, "Acc"),
        MetricDef("miou", True, MeanIoU, "mIoU"),
        MetricDef("pixel_accuracy", True, PixelAccuracy, "Pix Acc"),
        MetricDef("abs_err", False, AbsError, "Abs Err"),
        MetricDef("rel_err", False, RelError, "Rel Err"),
    )
}


def task_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss of a task kind: cross-entropy, per-pixel cross-entropy, or L1."""
    if kind == "classification":
        return F.cross_entropy(pred, target)
    if kind == "segmentation":
        return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)
    if kind == "regression":
        return F.l1_loss(pred, target)
    raise ValueError(f"unknown task kind {kind!r}")

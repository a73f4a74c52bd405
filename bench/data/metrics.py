"""Per-task losses and metrics, keyed by name; each metric declares its direction.

A scenario's task lists metric names from :data:`METRICS`; the first one is the task's primary
metric. Accumulators are updated batch by batch and computed once, so evaluation never holds all
predictions in memory.

Task kinds (:data:`bench.data.scenario.TaskKind`) and their losses:

* ``classification`` — cross-entropy; ``segmentation`` — per-pixel cross-entropy (ignore -1);
  ``regression`` — L1;
* ``multilabel`` — K independent binary labels (MedMNIST ChestMNIST: 14 findings), BCE with
  logits; metrics as MedMNIST v2 defines them (Yang et al., Sci. Data 2023, §"Evaluation"): the
  mean over labels of the ROC AUC and of the accuracy at threshold 0.5. When a model returns more
  columns than labels (Uniform's union head, own classes first), the first K are the task's;
* ``depth`` — L1 over valid pixels (target > 0; NYUv2's missing depth is 0), as LibMTL's NYUv2;
* ``normals`` — 1 − cosine similarity between the L2-normalised prediction and the target over
  valid pixels (target ≠ 0), as LibMTL's NYUv2; metrics: mean / median angle error in degrees
  and the percentage of pixels within 11.25°, 22.5°, 30° (MoLA Table 5, MTLoRA Table 1);
* ``saliency`` — one-channel per-pixel BCE with logits (ignore 255/-1); metrics as MTLoRA
  evaluates saliency (per-image IoU, precision and recall at 15 thresholds, averaged over
  images, best threshold: ``sal_iou`` and ``max_f``).

A task may name another loss (``TaskSpec.loss``, :data:`LOSS_VARIANTS`: MTLoRA's PASCAL-Context
trains normals with ``normals_l1`` and saliency with ``balanced_bce``) and a weight
(``TaskSpec.loss_weight``) that scales its loss in training.
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
        # max(1).indices == argmax(1) (the first maximum on ties), ~5x faster on a CPU for
        # (N, C, H, W) logits: it was a third of a digits_scene evaluation
        labels = pred.max(1).indices.reshape(-1)
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


class MaskedAbsError(AbsError):
    """Mean absolute error over valid target values (> 0; NYUv2 depth)."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target > 0
        self.sum += float((pred - target).abs()[valid].sum())
        self.count += int(valid.sum())


def _own_columns(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's columns of a multi-label prediction (the first K; see the module docstring)."""
    return pred[:, : target.shape[1]]


class MultiLabelAccuracy(Accumulator):
    """Mean over labels of the accuracy at probability 0.5, in percent (MedMNIST's ACC)."""

    def __init__(self, num_labels: int) -> None:
        self.correct = torch.zeros(num_labels, dtype=torch.long)
        self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        hit = (_own_columns(pred, target) > 0) == (target > 0.5)
        self.correct += hit.sum(0).cpu()
        self.total += int(target.shape[0])

    def compute(self) -> float:
        return float(100.0 * (self.correct.double() / max(self.total, 1)).mean())


class MultiLabelAUC(Accumulator):
    """Mean over labels of the ROC AUC, in percent (MedMNIST's AUC); keeps the scores."""

    def __init__(self, num_labels: int) -> None:
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.scores.append(_own_columns(pred, target).detach().float().cpu())
        self.targets.append(target.detach().cpu())

    def compute(self) -> float:
        if not self.scores:
            return 0.0
        scores, targets = torch.cat(self.scores), torch.cat(self.targets) > 0.5
        aucs = [binary_auc(scores[:, k], targets[:, k]) for k in range(targets.shape[1])]
        valid = [a for a in aucs if a is not None]
        return 100.0 * sum(valid) / len(valid) if valid else 0.0


def binary_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties; ``None``
    when only one class is present."""
    n_pos = int(positive.sum())
    n_neg = int(positive.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = scores.double().argsort()
    sorted_scores = scores.double()[order]
    ranks = torch.empty_like(sorted_scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True,
                                                  return_counts=True)
    # average rank of each tie group
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


#: angle histogram resolution for the median (degrees per bin)
ANGLE_BIN = 0.05


def _angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle errors in degrees over valid pixels (target ≠ 0) of ``(N, 3, H, W)`` normals."""
    valid = target.abs().sum(1) > 0
    p = F.normalize(pred, dim=1)
    t = F.normalize(target, dim=1)
    cos = (p * t).sum(1)[valid].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos.double()))


class AngleStats(Accumulator):
    """Histogram of angle errors (0.05° bins): the mean is exact, the median to 0.05°."""

    bins = int(180 / ANGLE_BIN) + 1

    def __init__(self, num_outputs: int = 3) -> None:
        self.hist = torch.zeros(self.bins, dtype=torch.float64)
        self.sum = 0.0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        ang = _angles(pred, target).cpu()
        self.sum += float(ang.sum())
        self.count += int(ang.numel())
        idx = (ang / ANGLE_BIN).long().clamp(0, self.bins - 1)
        self.hist += torch.bincount(idx, minlength=self.bins).double()


class MeanAngle(AngleStats):
    def compute(self) -> float:
        return self.sum / max(self.count, 1)


class MedianAngle(AngleStats):
    def compute(self) -> float:
        if self.count == 0:
            return 0.0
        cdf = self.hist.cumsum(0)
        idx = int(torch.searchsorted(cdf, torch.tensor(self.count / 2, dtype=torch.float64)))
        return (idx + 0.5) * ANGLE_BIN


class WithinAngle(Accumulator):
    """Percentage of valid pixels whose angle error is below a threshold."""

    threshold = 11.25

    def __init__(self, num_outputs: int = 3) -> None:
        self.hit = 0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        ang = _angles(pred, target)
        self.hit += int((ang < self.threshold).sum())
        self.count += int(ang.numel())

    def compute(self) -> float:
        return 100.0 * self.hit / max(self.count, 1)


def _within(deg: float) -> type[WithinAngle]:
    return type(f"Within{deg}", (WithinAngle,), {"threshold": deg})


#: thresholds on the predicted saliency probability (MTLoRA's / ASTMT's evaluation)
SALIENCY_THRESHOLDS = torch.linspace(0.2, 0.9, 15)


class MaxFMeasure(Accumulator):
    """Saliency as MTLoRA evaluates it (its ASTMT-derived meter): for each image and each
    threshold of :data:`SALIENCY_THRESHOLDS`, the foreground IoU (1 when neither the prediction
    nor the ground truth has foreground), precision ``tp/(tp+fp)`` and recall ``tp/(tp+fn)``,
    each averaged over images. This metric: the max over thresholds of ``2PR/(P+R)`` of the
    mean precision and recall (β² = 1), in percent; :class:`MaxIoU`: the max of the mean IoU."""

    def __init__(self, num_outputs: int = 1) -> None:
        n = len(SALIENCY_THRESHOLDS)
        self.iou = torch.zeros(n, dtype=torch.float64)
        self.precision = torch.zeros(n, dtype=torch.float64)
        self.recall = torch.zeros(n, dtype=torch.float64)
        self.images = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        prob = torch.sigmoid(pred[:, 0].float()).cpu()
        tgt = target.reshape(prob.shape).float().cpu()
        valid = (tgt >= 0) & (tgt <= 1)
        gt = (tgt > 0.5) & valid
        for i, threshold in enumerate(SALIENCY_THRESHOLDS):
            positive = (prob > threshold) & valid
            tp = (positive & gt).sum((1, 2)).double()
            fp = (positive & ~gt).sum((1, 2)).double()
            fn = (~positive & gt).sum((1, 2)).double()
            union = tp + fp + fn
            self.iou[i] += torch.where(union > 0, tp / union.clamp(min=1), 1.0).sum()
            self.precision[i] += (tp / (tp + fp + 1e-12)).sum()
            self.recall[i] += (tp / (tp + fn + 1e-12)).sum()
        self.images += prob.shape[0]

    def compute(self) -> float:
        p = self.precision / max(self.images, 1)
        r = self.recall / max(self.images, 1)
        return float(100.0 * (2 * p * r / (p + r + 1e-12)).max())


class MaxIoU(MaxFMeasure):
    """Saliency "mIoU" of MTLoRA Table 1: the max over thresholds of the per-image foreground
    IoU averaged over images, in percent (see :class:`MaxFMeasure`)."""

    def compute(self) -> float:
        return float(100.0 * (self.iou / max(self.images, 1)).max())


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
        MetricDef("depth_abs_err", False, MaskedAbsError, "Abs Err"),
        MetricDef("ml_accuracy", True, MultiLabelAccuracy, "Acc"),
        MetricDef("ml_auc", True, MultiLabelAUC, "AUC"),
        MetricDef("angle_mean", False, MeanAngle, "Angle Mean"),
        MetricDef("angle_median", False, MedianAngle, "Angle Median"),
        MetricDef("within_11", True, _within(11.25), "Within 11.25"),
        MetricDef("within_22", True, _within(22.5), "Within 22.5"),
        MetricDef("within_30", True, _within(30.0), "Within 30"),
        MetricDef("max_f", True, MaxFMeasure, "maxF"),
        MetricDef("sal_iou", True, MaxIoU, "IoU"),
    )
}


def task_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, variant: str = ""
              ) -> torch.Tensor:
    """The training loss of a task kind (see the module docstring), or the named ``variant``
    a scenario's task declares (:data:`LOSS_VARIANTS`)."""
    if variant:
        if variant not in LOSS_VARIANTS:
            raise ValueError(f"unknown loss {variant!r}; known: {', '.join(LOSS_VARIANTS)}")
        return LOSS_VARIANTS[variant](pred, target)
    if kind == "classification":
        return F.cross_entropy(pred, target)
    if kind == "segmentation":
        return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)
    if kind == "regression":
        return F.l1_loss(pred, target)
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(_own_columns(pred, target), target.float())
    if kind == "depth":
        valid = target > 0
        return (pred - target).abs()[valid].mean() if valid.any() else pred.sum() * 0.0
    if kind == "normals":
        valid = target.abs().sum(1) > 0
        cos = (F.normalize(pred, dim=1) * target).sum(1)
        return 1.0 - cos[valid].mean() if valid.any() else pred.sum() * 0.0
    if kind == "saliency":
        tgt = target.float()
        valid = (tgt >= 0) & (tgt <= 1)
        logits = pred[:, 0]
        if not valid.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[valid], tgt[valid])
    raise ValueError(f"unknown task kind {kind!r}")


def normals_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the L2-normalised predicted normals and the target over valid pixels
    (target ≠ 0), averaged over their components (MTLoRA's / ATRC's PASCAL normals loss)."""
    valid = (target.abs().sum(1, keepdim=True) > 0).expand_as(target)
    if not valid.any():
        return pred.sum() * 0.0
    return (F.normalize(pred, dim=1, eps=1e-12) - target).abs()[valid].mean()


def balanced_bce_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE with logits (HED; MTLoRA's saliency loss): positives weighted by the
    batch's share of negatives ``w``, negatives by ``1 − w``, summed and divided by the number
    of pixels (valid: target in [0, 1])."""
    logits, tgt = pred[:, 0], target.float()
    valid = (tgt >= 0) & (tgt <= 1)
    if not valid.any():
        return logits.sum() * 0.0
    logits, tgt = logits[valid], tgt[valid]
    w = 1.0 - tgt.mean()
    per_pixel = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
    return (w * tgt * per_pixel + (1.0 - w) * (1.0 - tgt) * per_pixel).sum() / tgt.numel()


#: losses a task may name instead of its kind's default (``TaskSpec.loss``)
LOSS_VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "normals_l1": normals_l1_loss,
    "balanced_bce": balanced_bce_loss,
}

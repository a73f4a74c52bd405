"""Domain-generalisation building blocks (MoLA Tables 2–3's baselines, DomainBed's algorithms).

The domain-heterogeneity scenarios give every domain its own task over **one** label space
(``ScenarioData.shared_label_space``). The DG methods of ``methods/`` are built from:

* :class:`DomainInvariantArchitecture` — DomainBed's network (``domainbed/algorithms.py``,
  ``ERM``): a featurizer (the scenario's encoder + global average pooling) and **one**
  classifier for all domains (as ``methods/uniform.py``), with a feature-level penalty over the
  step's rows of every domain, returned by ``auxiliary_loss()`` (the engine backpropagates it
  before the task losses). Subclasses (DANN, CORAL, MMD-AAE, SelfReg) implement
  :meth:`DomainInvariantArchitecture.penalty`.
* loss functions: :func:`grad_reverse` (Ganin et al.'s gradient-reversal layer) and
  :func:`dann_lambda` (its schedule), :func:`mmd` (DomainBed's Gaussian-kernel mixture),
  :func:`coral` (DomainBed's mean + covariance distance), :func:`pairwise_mean` (DomainBed's
  average over domain pairs), :func:`kde_quantile` (EQRM's α-quantile of the risks' kernel
  density estimate, with its implicit gradient).
* :class:`TrainingProgress` — schedules over training (DANN's λ ramp, VREx's penalty anneal,
  EQRM's burn-in): the engine sets ``total_training_steps`` before the first step; without it
  (a FLOP count, a unit test) the length is DomainBed's 5,000 steps.

**Scale of a penalty.** DomainBed minimises ``mean_d L_d + γ·penalty``; the benchmark's losses
are summed over domains (``ew``: ``Σ_d L_d``). Each penalty is therefore multiplied by the number
of domains in the batch, which keeps DomainBed's ratio between the classification loss and the
penalty (with equal per-domain batches).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.compat import CompatArchitecture

#: DomainBed's training length (``N_STEPS = 5001`` in ``domainbed/datasets.py``): the schedules'
#: reference when the engine does not announce the run's length
DOMAINBED_STEPS = 5000
#: DomainBed's Gaussian-kernel bandwidths (``AbstractMMD.gaussian_kernel``)
MMD_GAMMAS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


class TrainingProgress:
    """Mixin of methods scheduled over training. The engine sets ``total_training_steps`` (the
    run's optimiser steps) before training; ``None`` falls back to DomainBed's 5,000."""

    total_training_steps: int | None = None

    def training_length(self) -> int:
        return int(self.total_training_steps or DOMAINBED_STEPS)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Ganin et al.'s gradient-reversal layer (JMLR 2016, §3.4, Eq. 14): the identity forward,
    the gradient multiplied by ``-scale`` backward."""
    return _GradReverse.apply(x, float(scale))


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s adaptation-factor schedule (JMLR 2016, §5.2.2):
    ``λ_p = 2 / (1 + exp(-γ·p)) - 1`` for training progress ``p`` in [0, 1], γ = 10."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xx = x.pow(2).sum(dim=-1, keepdim=True)
    yy = y.pow(2).sum(dim=-1, keepdim=True)
    return (xx + yy.transpose(-2, -1) - 2.0 * x @ y.transpose(-2, -1)).clamp_min(1e-30)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor,
                    gammas: Sequence[float] = MMD_GAMMAS) -> torch.Tensor:
    """``Σ_γ exp(-γ ||x_i - y_j||²)`` (DomainBed's kernel mixture)."""
    dists = _sq_dists(x, y)
    return sum(torch.exp(-g * dists) for g in gammas)  # type: ignore[return-value]


def mmd(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = MMD_GAMMAS) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples ``x`` (n, d) and ``y`` (m, d): the biased
    estimate ``mean K(x,x) + mean K(y,y) - 2 mean K(x,y)`` with DomainBed's kernel mixture
    (``AbstractMMD.mmd``, ``gaussian=True``). Zero for identical samples."""
    return (gaussian_kernel(x, x, gammas).mean() + gaussian_kernel(y, y, gammas).mean()
            - 2.0 * gaussian_kernel(x, y, gammas).mean())


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased sample covariance of the rows of ``x`` (n ≥ 2, d)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.t() @ centred / (x.shape[0] - 1)


def coral(x: torch.Tensor, y: torch.Tensor, mean_term: bool = True) -> torch.Tensor:
    """Deep CORAL's distance (Sun & Saenko, ECCV-W 2016, Eq. 1) as DomainBed computes it
    (``AbstractMMD.mmd``, ``gaussian=False``): ``mean((C_x - C_y)²)`` over the d×d entries of the
    two covariance matrices, plus ``mean((μ_x - μ_y)²)`` with ``mean_term`` (DomainBed's). The
    paper's ``||C_x - C_y||²_F / (4d²)`` is the covariance term divided by 4."""
    loss = (covariance(x) - covariance(y)).pow(2).mean()
    if mean_term:
        loss = loss + (x.mean(dim=0) - y.mean(dim=0)).pow(2).mean()
    return loss


def pairwise_mean(features: torch.Tensor, domains: torch.Tensor,
                  distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  min_rows: int = 1) -> torch.Tensor | None:
    """``distance`` averaged over every pair of domains present with at least ``min_rows`` rows
    (DomainBed: ``penalty / (n (n - 1) / 2)``); ``None`` with fewer than two such domains."""
    groups = [features[domains == d] for d in torch.unique(domains)]
    groups = [g for g in groups if g.shape[0] >= min_rows]
    pairs = list(itertools.combinations(groups, 2))
    if not pairs:
        return None
    return sum(distance(a, b) for a, b in pairs) / len(pairs)  # type: ignore[return-value]


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def kde_bandwidth(risks: torch.Tensor) -> torch.Tensor:
    """DomainBed's EQRM bandwidth (``estimate_bandwidth``, "Gauss-optimal", Silverman's normal
    reference rule): ``1.06 · std · n^(-1/5)`` (unbiased std)."""
    return 1.06 * risks.std(unbiased=True) * risks.shape[0] ** (-0.2)


def kde_quantile(risks: torch.Tensor, alpha: float, steps: int = 64) -> torch.Tensor:
    """EQRM's objective (Eastwood et al., NeurIPS 2022, Alg. 1): the ``alpha``-quantile of a
    Gaussian kernel density estimate of the per-domain ``risks`` (n ≥ 2; bandwidth
    :func:`kde_bandwidth`). The quantile ``q*`` solves ``F(q*) = alpha`` for the KDE's CDF
    ``F(q) = mean_i Φ((q - r_i) / h)``; it is found by bisection between
    ``min r + h Φ⁻¹(alpha)`` and ``max r + h Φ⁻¹(alpha)`` (DomainBed's ``Nonparametric.icdf``).

    Gradient: the implicit-function derivative ``dq*/dr = -(∂F/∂r) / f(q*)`` (f the KDE's
    density), returned as ``q* - (F(q*) - alpha) / f(q*)`` with ``q*`` and ``f`` held constant.
    DomainBed differentiates through the bisection's end points instead, so its gradient reaches
    only the smallest and largest risk and the bandwidth. With one risk, or equal risks (no
    spread), the quantile is their mean."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"EQRM's quantile must be in (0, 1), got {alpha}")
    r = risks.double()
    if r.numel() < 2 or not bool(r.std(unbiased=True) > 0):
        return risks.mean()
    h = kde_bandwidth(r)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(alpha, dtype=torch.float64))
    with torch.no_grad():
        rd, hd = r.detach(), h.detach()
        lo, hi = rd.min() + hd * z, rd.max() + hd * z
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            if _normal_cdf((mid - rd) / hd).mean() > alpha:
                hi = mid
            else:
                lo = mid
        q = 0.5 * (lo + hi)
        density = (torch.exp(-0.5 * ((q - rd) / hd) ** 2) / (hd * math.sqrt(2 * math.pi))).mean()
    cdf = _normal_cdf((q - r) / h).mean()
    return (q - (cdf - alpha) / density).to(risks.dtype)


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """DomainBed's ``networks.MLP`` (its DANN discriminator): ``depth`` linear layers of width
    ``width`` with ReLU (and dropout) between them."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int = 256, depth: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("an MLP needs depth >= 2 (input and output layers)")
        self.input = nn.Linear(n_inputs, width)
        self.hiddens = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 2))
        self.output = nn.Linear(width, n_outputs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dropout(self.input(x)))
        for layer in self.hiddens:
            x = F.relu(self.dropout(layer(x)))
        return self.output(x)


Rows = dict[str, torch.Tensor]


class DomainInvariantArchitecture(TrainingProgress, CompatArchitecture):
    """DomainBed's featurizer + classifier for domains sharing one label space, with a penalty.

    ``forward`` computes the pooled features of every row (``represent``), one classifier's
    logits, and routes each domain's rows to its task; in training it keeps the step's features,
    logits and domain ids (all domains of the fused batch, or the per-task forwards of a step
    concatenated). ``auxiliary_loss()`` returns ``(domains in the batch) × penalty(...)`` and
    forgets them. Labels, for penalties that need them, come from ``observe_targets`` (the
    engine passes each training batch's targets).
    """

    #: whether :meth:`penalty` reads the rows' class labels
    needs_labels: bool = False

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        tasks = kwargs["tasks"]
        if not kwargs.get("shared_label_space") or not multi_input:
            raise ValueError(f"{type(self).__name__} needs domains with their own inputs and one "
                             "label space (a domain-heterogeneity scenario)")
        if any(t.kind != "classification" for t in tasks):
            raise ValueError(f"{type(self).__name__} supports classification domains only")
        self.encoder = self.encoder_class()
        self.feature_dim = int(kwargs["encoder_channels"])
        self.num_classes = int(tasks[0].num_outputs)
        self.head = self.make_head(kwargs)
        self.decoders = nn.ModuleDict()  # one classifier for all domains (DomainBed, Uniform)
        self._rows: list[Rows] = []
        self._targets: list[dict[str, torch.Tensor]] = []
        self.aux_steps = 0

    def make_head(self, kwargs: dict[str, Any]) -> nn.Module:
        return kwargs["decoder_factory"](kwargs["tasks"][0])

    def train(self, mode: bool = True) -> DomainInvariantArchitecture:
        """Switching mode forgets rows of a step whose auxiliary loss was never taken."""
        self._rows, self._targets = [], []
        return super().train(mode)  # type: ignore[return-value]

    def represent(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Rows]:
        """The rows' features for the classifier, and extra per-row tensors for the penalty."""
        rep = self.encoder(inputs)
        return (rep.mean(dim=(2, 3)) if rep.dim() == 4 else rep), {}

    def forward(self, inputs: torch.Tensor, task_name: str | None = None,
                task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if task_name is not None:
            task_ids = torch.full((inputs.shape[0],), self.task_name.index(task_name),
                                  dtype=torch.long, device=inputs.device)
        features, extra = self.represent(inputs)
        logits = self.head(features)
        if self.training and torch.is_grad_enabled() and task_ids is not None:
            self._rows.append({"features": features, "logits": logits, "domains": task_ids,
                               **extra})
        out: dict[str, torch.Tensor] = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None and task != task_name:
                continue
            if task_name is None and task_ids is not None:
                rows = task_ids == tn
                if not bool(rows.any()):  # absent from a pooled batch
                    continue
                out[task] = logits[rows]
            else:
                out[task] = logits
        return out

    def observe_targets(self, targets: dict[str, torch.Tensor]) -> None:
        if self.training and torch.is_grad_enabled():
            self._targets.append(targets)

    def _labels(self, rows: list[Rows], targets: list[dict[str, torch.Tensor]]
                ) -> torch.Tensor | None:
        """The class label of every stored row: task ``t``'s rows take ``targets[t]`` in order
        (the fused batch, or the per-task forwards of one step, in the order they ran)."""
        if not targets:
            return None
        batch = targets[-1]
        offsets = dict.fromkeys(self.task_name, 0)
        labels = []
        for chunk in rows:
            ids = chunk["domains"]
            y = torch.empty_like(ids)
            for tn, task in enumerate(self.task_name):
                mask = ids == tn
                count = int(mask.sum())
                if count:
                    y[mask] = batch[task][offsets[task]:offsets[task] + count].to(y.device)
                    offsets[task] += count
            labels.append(y)
        return torch.cat(labels)

    def penalty(self, rows: Rows, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The method's penalty on the step's rows (``features``, ``logits``, ``domains`` and
        the extras of :meth:`represent`, concatenated); ``None`` when it does not apply."""
        raise NotImplementedError

    def progress(self) -> float:
        """Training progress in [0, 1] of the current step (its auxiliary-loss call)."""
        return min(1.0, max(0, self.aux_steps - 1) / max(1, self.training_length()))

    def auxiliary_loss(self) -> torch.Tensor | None:
        rows, self._rows = self._rows, []
        targets, self._targets = self._targets, []
        if not rows:
            return None
        self.aux_steps += 1
        merged = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
        labels = self._labels(rows, targets) if self.needs_labels else None
        if self.needs_labels and labels is None:
            raise RuntimeError(f"{type(self).__name__} needs the batch's labels: the engine "
                               "passes them through observe_targets() before the forward")
        loss = self.penalty(merged, labels)
        if loss is None or not loss.requires_grad:
            return None
        return int(torch.unique(merged["domains"]).numel()) * loss

    def get_share_params(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------
# weightings over the domains' risks
# --------------------------------------------------------------------------------------------


def present(losses: torch.Tensor, batch_tasks: Sequence[bool] | None = None) -> torch.Tensor:
    """Which domains have rows in the batch: ``batch_tasks`` when the engine announces it (one
    bool per task), else the losses that are not exactly 0 (the engine gives a domain absent
    from a pooled batch the loss 0, ``bench.run.engine.batch_losses``; a present domain's
    cross-entropy is positive)."""
    if batch_tasks is not None:
        return torch.tensor([bool(b) for b in batch_tasks], device=losses.device)
    return losses.detach() != 0


def backward_through(objective: Callable[[torch.Tensor], torch.Tensor], losses: torch.Tensor
                     ) -> torch.Tensor:
    """Backpropagate ``objective(losses)`` and return its weights ``d objective / d L_t``
    (the coefficient of each task's gradient in the update; 0 for absent domains).

    The objective is evaluated on a detached copy of the losses to read its weights, then
    ``Σ_t w_t L_t`` is backpropagated: the same gradient by the chain rule."""
    leaf = losses.detach().clone().requires_grad_(True)
    (weights,) = torch.autograd.grad(objective(leaf), leaf)
    (weights.to(losses.dtype) * losses).sum().backward()
    return weights.detach()

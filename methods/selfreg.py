"""SelfReg — self-supervised contrastive regularisation of same-class pairs (Kim et al., ICCV 2021).

Kim, Yoo, Park, Kim and Lee, "SelfReg: Self-supervised Contrastive Regularization for Domain
Generalization", ICCV 2021 (§3, Eq. 1–6) — one of MoLA's domain baselines (Tables 2–3). Written
after the authors' DomainBed implementation (``domainbed/algorithms.py``, ``SelfReg``), whose
constants are hard-coded there (DomainBed's ``hparams_registry.py`` has no SelfReg entry).

* Network: featurizer (the scenario's encoder + global average pooling) ``z``, one classifier
  for all domains (logits ``o``), and the class-different projection layer CDPL: linear–BN–ReLU,
  linear–BN–ReLU, linear–BN of widths 2d, 2d, d (d the feature width; 2d → d when d = 2048).
* Positive pairs: every row of the step (all domains) is paired with a random row of the **same
  class** (a permutation within each class: "in-class" pairs, mostly across domains, possibly
  the row itself, as the reference), twice; the second partner is mixed with the first by
  mixup, ``λ ~ Beta(0.5, 0.5)``.
* Loss: ``CE + C·(λ·(L_ind^logit + 0.3·L_ind^feat) + (1−λ)·(L_hdl^logit + 0.3·L_hdl^feat))``,
  where ``L_ind^logit = MSE(o, o_pair)``, ``L_ind^feat = MSE(z, CDPL(z)_pair)``, the ``hdl``
  terms use the mixed pair, and ``C = min(CE, 1)`` (the pooled cross-entropy's value, no
  gradient). The benchmark's ``Σ_d L_d`` replaces the CE, the regulariser is multiplied by the
  number of domains in the batch (see :mod:`bench.models.dg`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import register_architecture, register_method
from bench.models.dg import DomainInvariantArchitecture


def same_class_partners(labels: torch.Tensor) -> torch.Tensor:
    """For every row, the index of a random row of the same class (a random permutation within
    each class; a row may be its own partner). Uses the global torch generator."""
    partners = torch.arange(labels.shape[0], device=labels.device)
    for cls in torch.unique(labels):
        rows = (labels == cls).nonzero(as_tuple=True)[0]
        partners[rows] = rows[torch.randperm(rows.shape[0]).to(rows.device)]
    return partners


def selfreg_regulariser(features: torch.Tensor, projected: torch.Tensor, logits: torch.Tensor,
                        labels: torch.Tensor, mix: float, feature_weight: float = 0.3
                        ) -> torch.Tensor:
    """SelfReg's regulariser before its ``C`` factor: individual (one same-class partner) and
    heterogeneous (two partners mixed with weight ``mix``) logit and feature MSE terms."""
    first, second = same_class_partners(labels), same_class_partners(labels)
    logits_2, proj_2 = logits[first], projected[first]
    logits_3 = mix * logits_2 + (1 - mix) * logits[second]
    proj_3 = mix * proj_2 + (1 - mix) * projected[second]
    individual = F.mse_loss(logits, logits_2) + feature_weight * F.mse_loss(features, proj_2)
    heterogeneous = F.mse_loss(logits, logits_3) + feature_weight * F.mse_loss(features, proj_3)
    return mix * individual + (1 - mix) * heterogeneous


class SelfReg(DomainInvariantArchitecture):
    """Featurizer + classifier + CDPL, with the in-class self-supervised regulariser."""

    needs_labels = True

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, *,
                 mixup_alpha: float = 0.5, feature_weight: float = 0.3, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        d = self.feature_dim
        hidden = d if d == 2048 else 2 * d
        self.cdpl = nn.Sequential(
            nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, d), nn.BatchNorm1d(d))
        self.mixup_alpha = float(mixup_alpha)
        self.feature_weight = float(feature_weight)

    def penalty(self, rows: dict[str, torch.Tensor], labels: torch.Tensor | None
                ) -> torch.Tensor | None:
        features, logits = rows["features"], rows["logits"]
        if labels is None or features.shape[0] < 2:  # BatchNorm needs two rows
            return None
        mix = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        scale = min(float(F.cross_entropy(logits.detach(), labels)), 1.0)
        return scale * selfreg_regulariser(features, self.cdpl(features), logits, labels, mix,
                                           self.feature_weight)


register_architecture(
    "selfreg", SelfReg,
    description="one classifier, in-class feature/logit self-supervised regulariser with mixup",
    defaults={"mixup_alpha": 0.5, "feature_weight": 0.3}, scenarios=("domain",),
    supports_rep_grad=False)
register_method(
    "selfreg", architecture="selfreg", weighting="ew",
    description="SelfReg: same-class feature and logit alignment across domains, with mixup",
    paper="Kim et al., SelfReg, ICCV 2021 (§3); the authors' DomainBed implementation",
    family="domain_generalisation")

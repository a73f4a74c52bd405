"""CORAL — Deep CORAL's covariance alignment between domains (Sun & Saenko, ECCV-W 2016).

Sun and Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016
Workshops, Eq. 1; applied to domain generalisation as DomainBed's ``CORAL`` (Gulrajani & Lopez-Paz,
ICLR 2021): every pair of training domains is aligned.

* Network: featurizer (the scenario's encoder + global average pooling) and one classifier for
  all domains (DomainBed's ``ERM`` network).
* Loss: ``Σ_d L_d + T·γ·mean_{d<e} D(f_d, f_e)`` with DomainBed's distance
  ``D = mean((C_d - C_e)²) + mean((μ_d - μ_e)²)`` (the d×d covariance entries and the feature
  means; :func:`bench.models.dg.coral`) averaged over the pairs of domains present with at least
  two rows; γ = 1 (DomainBed's ``mmd_gamma``). Deep CORAL's own loss is the covariance term
  alone divided by 4 (``||C_S - C_T||²_F / 4d²``): ``--set arch.mean_term=false`` drops the mean
  term.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.api import LogUniform, register_architecture, register_method
from bench.models.dg import DomainInvariantArchitecture, coral, pairwise_mean


class CORAL(DomainInvariantArchitecture):
    """Featurizer + classifier with the CORAL distance between every pair of domains."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, *,
                 coral_weight: float = 1.0, mean_term: bool = True, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.coral_weight = float(coral_weight)
        self.mean_term = bool(mean_term)

    def penalty(self, rows: dict[str, torch.Tensor], labels: torch.Tensor | None
                ) -> torch.Tensor | None:
        loss = pairwise_mean(rows["features"], rows["domains"],
                             lambda a, b: coral(a, b, self.mean_term), min_rows=2)
        return None if loss is None else self.coral_weight * loss


register_architecture(
    "coral", CORAL, description="one classifier, CORAL distance between domains' features",
    defaults={"coral_weight": 1.0, "mean_term": True}, scenarios=("domain",),
    search={"coral_weight": LogUniform("DomainBed's mmd_gamma (CORAL): 10^U(-1, 1)", 0.1,
                                       10.0)},
    supports_rep_grad=False)
register_method(
    "coral", architecture="coral", weighting="ew",
    description="CORAL: align the domains' feature means and covariances",
    paper="Sun & Saenko, Deep CORAL, ECCV-W 2016 (Eq. 1); DomainBed's CORAL (mmd_gamma = 1)",
    family="domain_generalisation")

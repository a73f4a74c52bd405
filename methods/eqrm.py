"""EQRM — the α-quantile of the domains' risk distribution (Eastwood et al., NeurIPS 2022).

Eastwood, Robey, Singh, von Kügelgen, Hassani, Pappas and Schölkopf, "Probable Domain
Generalization via Quantile Risk Minimization", NeurIPS 2022, Algorithm 1 (Empirical QRM), as
DomainBed's ``EQRM``: after an ERM burn-in (the mean of the domains' risks), the loss is the
α-quantile of a Gaussian kernel density estimate of the per-domain risks of the batch
(bandwidth ``1.06·std·n^(-1/5)``; :func:`bench.models.dg.kde_quantile`).

Defaults (DomainBed's ``hparams_registry.py``): α = 0.75 (``eqrm_quantile``); burn-in 2,500 of
DomainBed's 5,000 steps (``eqrm_burnin_iters``), here half of the run's steps
(``burnin_fraction`` = 0.5). State on the weighting: its step count. Domains absent from a
pooled batch (loss 0) are left out; with fewer than two risks the quantile is their mean.
A domain is absent when the engine's ``batch_tasks`` says so, or else when its loss is 0.

Differences from DomainBed: (i) the quantile's gradient is the implicit-function derivative of
the KDE quantile (all risks receive it), where DomainBed backpropagates through the bisection's
end points; (ii) DomainBed restarts Adam at ``eqrm_lr`` = 1e-6 after the burn-in; here the run's
optimiser and learning-rate schedule continue (one optimiser for every method). The method
trains DomainBed's network, one classifier for all domains (``uniform``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.dg import TrainingProgress, backward_through, kde_quantile, present


def eqrm_objective(losses: torch.Tensor, quantile: float, burn_in: bool,
                   here: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the present domains' risks during burn-in, else their KDE α-quantile;
    ``here`` marks the present domains (default: the losses that are not 0)."""
    risks = losses[present(losses) if here is None else here]
    if risks.numel() == 0:
        return losses.sum()
    return risks.mean() if burn_in else kde_quantile(risks, quantile)


class EQRM(TrainingProgress, CompatWeighting):
    """ERM burn-in, then the α-quantile of the domains' risks."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, quantile: float = 0.75,
                 burnin_fraction: float = 0.5, **kwargs: Any) -> np.ndarray:
        step = self.__dict__.get("_eqrm_steps", 0)
        self.__dict__["_eqrm_steps"] = step + 1
        burn_in = step < round(burnin_fraction * self.training_length())
        here = present(losses, getattr(self, "batch_tasks", None))
        weights = backward_through(
            lambda risks: eqrm_objective(risks, quantile, burn_in, here), losses)
        return weights.cpu().numpy()


register_weighting("eqrm", EQRM, defaults={"quantile": 0.75, "burnin_fraction": 0.5},
                   scenarios=("domain",),
                   description="EQRM: α-quantile (KDE) of the domains' risks after ERM burn-in")
register_method(
    "eqrm", architecture="uniform", weighting="eqrm",
    description="EQRM: minimise the 0.75-quantile of the domains' risks (after ERM burn-in)",
    paper="Eastwood et al., Probable Domain Generalization via Quantile Risk Minimization, "
          "NeurIPS 2022 (Alg. 1); DomainBed's eqrm_quantile / eqrm_burnin_iters",
    family="domain_generalisation")

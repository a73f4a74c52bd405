"""VREx — variance risk extrapolation over the domains (Krueger et al., ICML 2021).

Krueger, Caballero, Jacobsen, Zhang, Binas, Zhang, Le Priol and Courville, "Out-of-Distribution
Generalization via Risk Extrapolation (REx)", ICML 2021, Eq. 8 (V-REx), as DomainBed's ``VREx``:

    loss = mean_d L_d + λ · var_d L_d      (population variance over the domains in the batch)

with λ = 1 during an annealing period and λ = 10 after it (DomainBed's ``vrex_lambda`` = 10,
``vrex_penalty_anneal_iters`` = 500 of its 5,000 steps: here the first 10 % of the run's steps,
``anneal_fraction``). State on the weighting: its step count. Domains absent from a pooled batch
(loss 0) are left out of the mean and the variance. A domain is absent when the engine's
``batch_tasks`` says so, or else when its loss is exactly 0.

Simplification: DomainBed restarts Adam when the penalty weight jumps; here the run's optimiser
keeps its moments (one optimiser for every method). The method trains DomainBed's network, one
classifier for all domains (``uniform``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, LogUniform, register_method, register_weighting
from bench.models.dg import TrainingProgress, backward_through, present


def vrex_objective(losses: torch.Tensor, penalty_weight: float,
                   here: torch.Tensor | None = None) -> torch.Tensor:
    """``mean + penalty_weight · variance`` of the present domains' losses (Eq. 8); ``here``
    marks them (default: the losses that are not 0)."""
    risks = losses[present(losses) if here is None else here]
    if risks.numel() == 0:
        return losses.sum()
    mean = risks.mean()
    return mean + penalty_weight * ((risks - mean) ** 2).mean()


class VREx(TrainingProgress, CompatWeighting):
    """Mean of the domains' risks plus λ times their variance, λ annealed from 1."""

    needs_task_gradients = False

    def penalty_weight(self, step: int, vrex_lambda: float, anneal_fraction: float) -> float:
        anneal = round(anneal_fraction * self.training_length())
        return float(vrex_lambda) if step >= anneal else 1.0

    def backward(self, losses: torch.Tensor, vrex_lambda: float = 10.0,
                 anneal_fraction: float = 0.1, **kwargs: Any) -> np.ndarray:
        step = self.__dict__.get("_vrex_steps", 0)
        self.__dict__["_vrex_steps"] = step + 1
        weight = self.penalty_weight(step, vrex_lambda, anneal_fraction)
        here = present(losses, getattr(self, "batch_tasks", None))
        weights = backward_through(lambda risks: vrex_objective(risks, weight, here), losses)
        return weights.cpu().numpy()


register_weighting("vrex", VREx, defaults={"vrex_lambda": 10.0, "anneal_fraction": 0.1},
                   search={"vrex_lambda": LogUniform("DomainBed's vrex_lambda: 10^U(-1, 5)",
                                                     1e-1, 1e5)},
                   scenarios=("domain",),
                   description="V-REx: mean + λ·variance of the domains' losses")
register_method(
    "vrex", architecture="uniform", weighting="vrex",
    description="V-REx: penalise the variance of the domains' risks (λ = 10 after 10 % of steps)",
    paper="Krueger et al., Out-of-Distribution Generalization via Risk Extrapolation, ICML 2021 "
          "(Eq. 8); DomainBed's vrex_lambda / vrex_penalty_anneal_iters",
    family="domain_generalisation")

"""GroupDRO — worst-group risk by exponentiated-gradient group weights (Sagawa et al., ICLR 2020).

Sagawa, Koh, Hashimoto and Liang, "Distributionally Robust Neural Networks for Group Shifts",
ICLR 2020, Algorithm 1, with the domains as groups (DomainBed's ``GroupDRO``). State kept on the
weighting: the group weights ``q`` (uniform at the start). At every step

    q_d ← q_d · exp(η · L_d),   q ← q / Σ q,   loss = Σ_d q_d L_d

with η = 0.01 (DomainBed's ``groupdro_eta``). A domain absent from a pooled batch has loss 0,
so its weight is only renormalised, as in the authors' code (absent groups' losses are 0 there
too). The method trains DomainBed's network, one classifier for all domains (``uniform``); the
weighting combines with other architectures (``hps+groupdro``) on domain scenarios.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, LogUniform, register_method, register_weighting


def groupdro_update(q: torch.Tensor, losses: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step on the group weights (Algorithm 1, line 6)."""
    q = q * torch.exp(eta * losses.detach().to(q.dtype))
    return q / q.sum()


class GroupDRO(CompatWeighting):
    """``Σ_d q_d L_d`` with ``q`` updated towards the domains of highest loss."""

    needs_task_gradients = False

    def group_weights(self, device: torch.device) -> torch.Tensor:
        q = self.__dict__.get("_groupdro_q")
        if q is None:
            q = torch.full((self.task_num,), 1.0 / self.task_num, dtype=torch.float64)
        return q.to(device)

    def backward(self, losses: torch.Tensor, eta: float = 0.01, **kwargs: Any) -> np.ndarray:
        q = groupdro_update(self.group_weights(losses.device), losses, float(eta))
        self.__dict__["_groupdro_q"] = q
        (q.to(losses.dtype) * losses).sum().backward()
        return q.cpu().numpy()


register_weighting("groupdro", GroupDRO, defaults={"eta": 0.01}, scenarios=("domain",),
                   search={"eta": LogUniform("DomainBed's groupdro_eta: 10^U(-3, -1)", 1e-3,
                                             1e-1)},
                   description="GroupDRO: exponentiated-gradient weights on the domains' losses")
register_method(
    "groupdro", architecture="uniform", weighting="groupdro",
    description="GroupDRO: minimise the worst domain's risk (online group weights, η = 0.01)",
    paper="Sagawa et al., Distributionally Robust Neural Networks, ICLR 2020 (Alg. 1); "
          "DomainBed's groupdro_eta",
    family="domain_generalisation")

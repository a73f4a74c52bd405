"""GLS — geometric loss strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, §3.2,
Eq. 2).

``L = (prod_t L_t)^{1/T} = exp(mean_t log L_t)``: the geometric mean of the task losses, whose
gradient weights task ``t`` by ``L / (T L_t)`` (a scale-invariant balance). No hyper-parameter.

Own implementation (LibMTL 1.1.5's ``GLS`` and torchjd's ``GeometricMean`` compute the same
value — tested against torchjd): an absent task (loss exactly 0) would make the product 0 and
its gradient ``0/0 = NaN``, so the mean runs over the present tasks only
(``exp(mean_{t present} log L_t)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.torchjd_weighting import present_losses


class GLS(CompatWeighting):
    """Geometric mean of the present tasks' losses."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        present = present_losses(losses)
        weights = np.zeros(self.task_num)
        if not bool(present.any()):
            losses.sum().backward()
            return weights
        loss = torch.exp(torch.log(losses[present]).mean())
        loss.backward()
        count = int(present.sum())
        weights[present.cpu().numpy()] = (loss.detach() / (count * losses[present].detach())
                                          ).double().cpu().numpy()
        return weights


register_weighting("gls", GLS, description="GLS: geometric mean of the task losses",
                   defaults={}, rep_grad=(False,))
register_method("gls", architecture="hps", weighting="gls",
                description="hard parameter sharing with the geometric mean of the losses",
                paper="Chennupati et al., MultiNet++, CVPR Workshops 2019",
                family="loss_weighting")

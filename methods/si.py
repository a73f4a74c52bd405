"""SI — the scale-invariant baseline: the sum of the log task losses, ``L = sum_t log L_t``.

Its gradient ``sum_t grad L_t / L_t`` is invariant to a rescaling of any task's loss. Reported as
"SI" by Navon et al. ("Multi-Task Learning as a Bargaining Game", ICML 2022, §6, baselines) and
by Lin et al. ("Dual-Balancing for Multi-Task Learning", 2023, the loss-balance part of DB-MTL,
Eq. 3). No hyper-parameter.

Own implementation. An absent task (loss exactly 0) is left out of the sum (its ``log 0`` would
be ``-inf`` with a NaN gradient).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.torchjd_weighting import present_losses


class ScaleInvariant(CompatWeighting):
    """``sum_t log L_t`` over the present tasks."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        present = present_losses(losses)
        weights = np.zeros(self.task_num)
        if not bool(present.any()):
            losses.sum().backward()
            return weights
        torch.log(losses[present]).sum().backward()
        weights[present.cpu().numpy()] = (1.0 / losses[present].detach()).double().cpu().numpy()
        return weights


register_weighting("si", ScaleInvariant, description="SI: sum of the log task losses",
                   defaults={}, rep_grad=(False,))
register_method("si", architecture="hps", weighting="si",
                description="hard parameter sharing with the sum of log losses (scale-invariant)",
                paper="Navon et al., ICML 2022 (baseline SI); Lin et al., 2023",
                family="loss_weighting")

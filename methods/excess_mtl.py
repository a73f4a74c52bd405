"""ExcessMTL — robust multi-task learning with excess risks (He et al., ICML 2024, §3,
Eq. 6-9, Algorithm 1).

Task weights follow the tasks' estimated *excess* risks (distance to their optimum) rather than
their losses, so that noisy tasks with a high irreducible loss do not take over:

* excess-risk proxy (Eq. 6-7): ``r_t = g_t^T H_t^{-1} g_t`` with the AdaGrad-style diagonal
  ``H_t = sqrt(sum_{steps} g_t^2 + 1e-7)``;
* scale processing (§3.2): ``r_t / r_t^0``, with ``r_t^0`` the task's first proxy;
* exponentiated-gradient update (Eq. 9): ``w_t <- w_t exp(eta r_t / r_t^0)``, normalised;
  the update is ``d = sum_t w_t g_t``.

As the official code (yifei-he/ExcessMTL, a LibMTL fork, and LibMTL's ``ExcessMTL``) the weights
start at 1, the first step only sets ``r^0`` (no weight update) and the weights are normalised to
**sum to T** (torchjd's ``ExcessMTL`` normalises them to the simplex and starts at ``1/T``: our
update is ``T`` times torchjd's with ``n_warmup_steps = 1`` — tested). Default
``robust_step_size = 1e-2`` (official code / LibMTL; torchjd's default is 1.0).

Own implementation, because torchjd's state (``T x D`` squared gradients, one baseline per task)
is updated for every row: an absent task (zero gradient row) would get a zero baseline and an
exploding ratio. Here an absent task's state is untouched, its baseline is set at its first
presence, and it takes no part in the step. State lives on the weighting object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TaskGradientWeighting, present_rows


class ExcessMTL(TaskGradientWeighting):
    """Exponentiated-gradient task weights from excess-risk proxies (weights sum to T)."""

    def aggregate_tasks(self, matrix: torch.Tensor, losses: torch.Tensor,
                        kwargs: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
        eta = float(kwargs["robust_step_size"])
        num = len(matrix)
        state = self.__dict__.setdefault("_excess_mtl", {"sq": None, "base": None, "w": None})
        if state["sq"] is None:
            state["sq"] = torch.zeros_like(matrix, dtype=torch.float64)
            state["base"] = torch.full((num,), float("nan"), dtype=torch.float64)
            state["w"] = torch.ones(num, dtype=torch.float64)
        present = present_rows(matrix)
        grads = matrix.detach().double()
        state["sq"][present] += grads[present] ** 2  # Eq. 7
        proxy = ((grads ** 2) / torch.sqrt(state["sq"] + 1e-7)).sum(dim=1).cpu()  # Eq. 6
        mask = present.cpu()
        first = mask & torch.isnan(state["base"])
        state["base"][first] = proxy[first]
        step = mask & ~first
        if bool(step.any()):  # Eq. 9, in log space; the weights keep summing to T
            logw = torch.log(state["w"])
            logw[step] += eta * proxy[step] / state["base"][step].clamp_min(1e-12)
            state["w"] = num * torch.softmax(logw, 0)
        weights = torch.where(mask, state["w"], torch.zeros_like(state["w"]))
        return weights.to(matrix) @ matrix, weights.numpy()


register_weighting("excess_mtl", ExcessMTL,
                   description="ExcessMTL: task weights from excess-risk estimates",
                   defaults={"robust_step_size": 1e-2}, rep_grad=(False,))
register_method("excess_mtl", architecture="hps", weighting="excess_mtl",
                description="hard parameter sharing trained with ExcessMTL",
                paper="He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024",
                family="gradient")

"""DB-MTL — dual-balancing multi-task learning (Lin et al., "Dual-Balancing for Multi-Task
Learning", arXiv:2308.12029, 2023, §3, Eq. 3-5, Algorithm 1).

* Loss balance (Eq. 3): every task loss goes through a logarithm, ``log(L_t + eps)``, which makes
  its gradient ``grad L_t / L_t`` invariant to the loss scale.
* Gradient balance (Eq. 4-5): an EMA of each task's gradient of ``log L_t``,
  ``g^_t <- beta_k g^_t + (1 - beta_k) grad log L_t`` (``beta_k = beta / k^beta_sigma``, from
  ``g^_t = 0``), then every task gets the largest norm:
  ``d = max_i ||g^_i|| sum_t g^_t / ||g^_t||``.

Defaults ``beta = 0.9``, ``beta_sigma = 0`` (the paper's, LibMTL's ``DB_beta`` /
``DB_beta_sigma``), ``eps = 1e-8`` (LibMTL). Task-specific parameters get ``grad log L_t``
(as LibMTL). Own implementation: torchjd has no DB-MTL. The EMA is kept on the weighting object;
an absent task (zero gradient row) keeps its EMA and takes no part in the step (``max`` and the
sum over present tasks). Colinear gradients are harmless (no inversion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TaskGradientWeighting, present_rows


class DBMTL(TaskGradientWeighting):
    """Log losses, EMA of their gradients, every task scaled to the largest norm."""

    def task_losses(self, losses: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        return torch.log(losses + float(kwargs["eps"]))

    def aggregate_tasks(self, matrix: torch.Tensor, losses: torch.Tensor,
                        kwargs: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
        state = self.__dict__.setdefault("_db_mtl", {"k": 0, "ema": None})
        state["k"] += 1
        if state["ema"] is None:
            state["ema"] = torch.zeros_like(matrix)
        present = present_rows(matrix)
        weights = np.zeros(len(matrix))
        if not bool(present.any()):
            return torch.zeros_like(matrix[0]), weights
        beta = float(kwargs["beta"]) / state["k"] ** float(kwargs["beta_sigma"])
        ema = state["ema"]
        ema[present] = matrix[present] + beta * (ema[present] - matrix[present])  # Eq. 4
        norms = ema[present].norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)  # Eq. 5
        weights[present.cpu().numpy()] = alpha.double().cpu().numpy()
        return alpha @ ema[present], weights


register_weighting("db_mtl", DBMTL,
                   description="DB-MTL: log losses and EMA gradients scaled to the largest norm",
                   defaults={"beta": 0.9, "beta_sigma": 0.0, "eps": 1e-8}, rep_grad=(False,))
register_method("db_mtl", architecture="hps", weighting="db_mtl",
                description="hard parameter sharing trained with DB-MTL",
                paper="Lin et al., Dual-Balancing for Multi-Task Learning, arXiv:2308.12029, "
                      "2023",
                family="loss_weighting")

"""MoCo — multi-objective gradient correction (Fernando et al., "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023, §3, Algorithm 1).

MoCo tracks every task gradient with a moving average ``Y`` (``T x D``) to remove the bias of
stochastic MGDA weights, and moves the task weights ``lambda`` by one step on the MGDA objective:

1. ``Y_k = Y_{k-1} - beta_k (Y_{k-1} - G_k)``,          ``beta_k = beta / k^beta_sigma``  (Eq. 6a)
2. ``lambda_k = P(lambda_{k-1} - gamma_k (Y_k Y_k^T + rho I) lambda_{k-1})``,
   ``gamma_k = gamma / k^gamma_sigma``                                                     (Eq. 6b)
3. update ``d = Y_k^T lambda_k``                                                            (Eq. 6c)

``P`` is the projection onto the simplex in Algorithm 1 (``lambda_update="projection"``); the
authors' multi-task code (as shipped in LibMTL's ``MoCo``, "implemented based on the author's
sharing code") uses a softmax instead and first rescales every task gradient to the length of its
loss, ``g_t <- L_t g_t / ||g_t||`` — the defaults here (``lambda_update="softmax"``,
``normalize="loss"``), so that the method is the one whose multi-task results were published.
``normalize="none"`` keeps the raw gradients. Defaults ``beta = 0.5``, ``beta_sigma = 0.5``,
``gamma = 0.1``, ``gamma_sigma = 0.5``, ``rho = 0`` (LibMTL's ``MoCo_*``, from the authors' code).

Own implementation: torchjd has no MoCo. State (``Y``, ``lambda``, ``k``) lives on the weighting
object. An absent task (zero gradient row) keeps its ``Y`` row and its ``lambda`` entry and takes
no part in the step: steps 2-3 run on the present tasks, with their ``lambda`` renormalised to sum
to 1 and scaled back after the step. Colinear gradients are harmless (no inversion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TaskGradientWeighting, present_rows


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, descending=True)
    cssv = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - cssv / ind > 0).max())
    return (v - cssv[rho] / (rho + 1)).clamp_min(0.0)


class MoCo(TaskGradientWeighting):
    """MoCo's tracked gradients ``Y`` and weights ``lambda`` (Algorithm 1)."""

    def aggregate_tasks(self, matrix: torch.Tensor, losses: torch.Tensor,
                        kwargs: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
        kind, update_rule = str(kwargs["normalize"]), str(kwargs["lambda_update"])
        if kind not in ("loss", "none") or update_rule not in ("softmax", "projection"):
            raise ValueError("MoCo: normalize must be 'loss' or 'none', lambda_update 'softmax' "
                             f"or 'projection'; got {kind!r}, {update_rule!r}")
        state = self.__dict__.setdefault("_moco", {"k": 0, "y": None, "lambda": None})
        state["k"] += 1
        k = state["k"]
        grads = matrix.detach()
        if kind == "loss":
            grads = grads / (grads.norm(dim=1, keepdim=True) + 1e-8) * losses.to(grads)[:, None]
        if state["y"] is None:
            state["y"] = torch.zeros_like(grads)
            state["lambda"] = torch.full((len(grads),), 1.0 / len(grads), dtype=grads.dtype,
                                         device=grads.device)
        present = present_rows(matrix)
        if not bool(present.any()):
            return torch.zeros_like(grads[0]), np.zeros(len(grads))
        beta = float(kwargs["beta"]) / k ** float(kwargs["beta_sigma"])
        gamma = float(kwargs["gamma"]) / k ** float(kwargs["gamma_sigma"])
        y, lam = state["y"], state["lambda"]
        y[present] = y[present] - beta * (y[present] - grads[present])  # Eq. 6a
        y_p = y[present]
        mass = float(lam[present].sum())
        lam_p = lam[present] / mass if mass > 0 else torch.full_like(lam[present],
                                                                     1.0 / int(present.sum()))
        eye = torch.eye(len(y_p), dtype=y.dtype, device=y.device)
        step = lam_p - gamma * (y_p @ y_p.T + float(kwargs["rho"]) * eye) @ lam_p  # Eq. 6b
        lam_p = torch.softmax(step, 0) if update_rule == "softmax" else project_simplex(step)
        lam[present] = lam_p * (mass if mass > 0 else 1.0)
        weights = np.zeros(len(grads))
        weights[present.cpu().numpy()] = lam_p.double().cpu().numpy()
        return y_p.T @ lam_p, weights  # Eq. 6c


register_weighting("moco", MoCo,
                   description="MoCo: tracked task gradients and MGDA weights (bias-corrected)",
                   defaults={"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5,
                             "rho": 0.0, "normalize": "loss", "lambda_update": "softmax"},
                   rep_grad=(False,))
register_method("moco", architecture="hps", weighting="moco",
                description="hard parameter sharing trained with MoCo",
                paper="Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: "
                      "A Provably Convergent Approach, ICLR 2023",
                family="gradient")

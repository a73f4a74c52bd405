"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018).

The shared update is the min-norm element of the convex hull of the task gradients (§3.1, Eq. 3):
``alpha* = argmin_{alpha in simplex} || sum_t alpha_t g_t ||^2``, solved with the Frank-Wolfe
method of Algorithm 2 (exact line search between the iterate and the best vertex, started from
the best pair of tasks as the official code does). Our solver works on the Gram matrix and, unlike
LibMTL 1.1.5's ``_find_min_norm_element`` (fix 10 of :mod:`bench.models.compat`: its loop counter is
never incremented, so a non-converging problem loops forever), stops after 250 iterations and
returns the last iterate.

* ``mgda`` (``rep_grad=False``): ``g_t`` = gradient of ``L_t`` w.r.t. the shared parameters.
* ``mgda_ub`` (``rep_grad=True``): ``g_t`` = gradient w.r.t. the shared representation ``Z``
  (§3.3, Eq. 6-7, the upper bound). As in the paper's code the whole ``(batch x features)``
  gradient is one vector (LibMTL 1.1.5 instead sums it over the batch). When tasks have their own
  representation tensors (per-task forward, MMoE gates), ``Z`` is their concatenation, so the Gram
  matrix is diagonal.

``mgda_gn`` normalises the gradients before solving (official code, LibMTL): ``none`` (default),
``l2`` (``||g_t||``), ``loss`` (``L_t``), ``loss+`` (``L_t ||g_t||``); the update is
``sum_t alpha_t g_t / n_t`` (normalised gradients, as LibMTL's non-rep path; in both modes).

Tasks absent from a pooled batch (a zero gradient row) are left out of the min-norm problem (the
zero vertex would make the update exactly zero); they get weight 0
(:class:`bench.models.compat.CompatWeighting`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from bench.api import Choice, CompatWeighting, Settings, register_method, register_weighting

MAX_ITER = 250
STOP_CRIT = 1e-5


def _line_search(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """``argmin_{gamma in [0,1]} ||gamma v1 + (1-gamma) v2||^2`` and its value (Algorithm 1)."""
    if v1v2 >= v1v1:
        return 1.0, v1v1
    if v1v2 >= v2v2:
        return 0.0, v2v2
    gamma = (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def min_norm_weights(gram: np.ndarray, max_iter: int = MAX_ITER, tol: float = STOP_CRIT
                     ) -> tuple[np.ndarray, int, bool]:
    """Frank-Wolfe for ``min_{a in simplex} a^T G a``: ``(a, iterations, converged)``.

    Never returns ``None``: without convergence after ``max_iter`` steps, the last iterate.
    """
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    if n == 1:
        return np.ones(1), 0, True
    best = (np.inf, 0, 1, 0.5)
    for i in range(n):
        for j in range(i + 1, n):
            gamma, cost = _line_search(gram[i, i], gram[i, j], gram[j, j])
            if cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    sol = np.zeros(n)
    sol[i], sol[j] = gamma, 1.0 - gamma
    if n == 2:
        return sol, 0, True
    for it in range(1, max_iter + 1):
        t = int(np.argmin(gram @ sol))  # vertex minimising the linearisation
        v1v1 = float(sol @ gram @ sol)
        v1v2 = float(sol @ gram[:, t])
        v2v2 = float(gram[t, t])
        gamma, _ = _line_search(v1v1, v1v2, v2v2)
        new = gamma * sol
        new[t] += 1.0 - gamma
        change = float(np.abs(new - sol).sum())
        sol = new
        if change < tol:
            return sol, it, True
    return sol, max_iter, False


def gradient_normalizers(norms: torch.Tensor, losses: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "none":
        return torch.ones_like(losses)
    if kind == "l2":
        return norms
    if kind == "loss":
        return losses
    if kind == "loss+":
        return losses * norms
    raise ValueError(f"MGDA: mgda_gn must be none, l2, loss or loss+, got {kind!r}")


class MGDA(CompatWeighting):
    """MGDA (``rep_grad=False``) or MGDA-UB (``rep_grad=True``)."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        kind = str(kwargs.get("mgda_gn", "none"))
        loss_data = torch.stack([loss.detach() for loss in losses]).to(self.device)
        if not self.rep_grad:
            self._compute_grad_dim()
            grads = self._compute_grad(losses, mode="backward")  # (T, D)
            # tasks absent from a pooled batch (zero rows) would make the min-norm point 0
            rows, present = self.present_rows(grads)
            gn = gradient_normalizers(rows.norm(dim=1), loss_data[present], kind).clamp_min(1e-12)
            rows = rows / gn[:, None]
            alpha, _, _ = min_norm_weights((rows @ rows.t()).double().cpu().numpy())
            weights = torch.as_tensor(alpha, dtype=rows.dtype, device=rows.device)
            self._reset_grad(weights @ rows)
            return self.full_weights(alpha, present)
        per_grads = self._compute_grad(losses, mode="backward", rep_grad=True)
        if isinstance(self.rep, dict):  # one representation tensor per task: block-diagonal G
            flat = [g.reshape(-1) for g in per_grads]
            norms = torch.stack([f.norm() for f in flat])
            gn = gradient_normalizers(norms, loss_data, kind).clamp_min(1e-12)
            gram = torch.diag((norms / gn) ** 2)
        else:
            flat_mat = per_grads.reshape(self.task_num, -1)
            gn = gradient_normalizers(flat_mat.norm(dim=1), loss_data, kind).clamp_min(1e-12)
            flat_mat = flat_mat / gn[:, None]
            gram = flat_mat @ flat_mat.t()
        alpha, _, _ = min_norm_weights(gram.double().cpu().numpy())
        scale = [float(a) / float(g) for a, g in zip(alpha, gn)]
        if isinstance(self.rep, dict):
            for tn, task in enumerate(self.task_name):
                self.rep[task].backward(scale[tn] * per_grads[tn].to(self.rep[task].device),
                                        retain_graph=tn + 1 < self.task_num)
        else:
            coef = torch.tensor(scale, dtype=per_grads.dtype, device=per_grads.device)
            self.rep.backward(torch.einsum("t,t...->...", coef, per_grads))
        return alpha


class MGDASettings(Settings):
    mgda_gn: Literal["none", "l2", "loss", "loss+"] = Field(
        "none", description="gradient normalisation before solving")


register_weighting("mgda", MGDA, description="MGDA: min-norm element of the task gradients",
                   settings=MGDASettings, rep_grad=(False, True),
                   search={"mgda_gn": Choice("the gradient normalisations of Sener & Koltun's "
                                             "code (LibMTL's mgda_gn)",
                                             ("none", "l2", "loss", "loss+"))})
register_method("mgda", architecture="hps", weighting="mgda", rep_grad=False,
                family="gradient",
                description="hard parameter sharing trained with MGDA (shared-parameter grads)",
                paper="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, "
                      "NeurIPS 2018")
register_method("mgda_ub", architecture="hps", weighting="mgda", rep_grad=True,
                family="gradient",
                description="MGDA-UB: MGDA on gradients w.r.t. the shared representation",
                paper="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, "
                      "NeurIPS 2018, §3.3")

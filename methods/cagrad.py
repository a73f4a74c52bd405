"""CAGrad — conflict-averse gradient descent (Liu et al., NeurIPS 2021), for any number of tasks.

Paper §3, Eq. (4)-(5) and Algorithm 1, with the official code's conventions (as LibMTL 1.1.5):
``g_0 = mean_t g_t`` and ``c = calpha * ||g_0||``.

1. dual problem: ``w* = argmin_{w in simplex} g_w . g_0 + c ||g_w||`` with ``g_w = sum_t w_t g_t``;
2. update ``d = g_0 + (c / ||g_w*||) g_w*``;
3. rescale (LibMTL's ``rescale``): 0 — ``d``; 1 — ``d / (1 + calpha^2)``; 2 — ``d / (1 + calpha)``.

Fix 4 of :mod:`bench.models.compat`: LibMTL's ``CAGrad.backward`` hard-codes three tasks
(``x.reshape(1, 3)``); :func:`cagrad_weights` works on the ``T x T`` Gram matrix for any ``T``.
The dual is solved with SLSQP as in the official code, but with the analytic gradient of the
objective and tight tolerances. Only ``rep_grad=False`` (as the paper and LibMTL). Tasks absent
from a pooled batch are left out of ``g_0`` and of the dual (weight 0;
:class:`bench.models.compat.CompatWeighting`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import minimize

from bench.api import CompatWeighting, Settings, Uniform, register_method, register_weighting

RESCALE = {0: lambda a: 1.0, 1: lambda a: 1.0 + a**2, 2: lambda a: 1.0 + a}


def cagrad_weights(gram: np.ndarray, calpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Solve the CAGrad dual for a Gram matrix ``G = g g^T`` of any size ``T``.

    Returns ``(w*, coef)`` where ``coef`` are the task coefficients of the update direction
    ``d = sum_t coef_t g_t = g_0 + (c / ||g_w*||) g_w*`` (before rescaling).
    """
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    mean = np.full(n, 1.0 / n)
    g0_norm = float(np.sqrt(max(mean @ gram @ mean, 0.0) + 1e-8))
    c = calpha * g0_norm + 1e-8
    b = gram @ mean  # g_t . g_0

    def objective(w: np.ndarray) -> float:
        return float(w @ b + c * np.sqrt(max(w @ gram @ w, 0.0) + 1e-8))

    def jac(w: np.ndarray) -> np.ndarray:
        return b + c * (gram @ w) / np.sqrt(max(w @ gram @ w, 0.0) + 1e-8)

    res = minimize(objective, mean.copy(), jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                   constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(),
                                 "jac": lambda w: -np.ones_like(w)},),
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else mean
    gw_norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
    coef = mean + (c / (gw_norm + 1e-8)) * w
    return w, coef


class CAGrad(CompatWeighting):
    """CAGrad on the gradients of the shared parameters."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        calpha = float(kwargs.get("calpha", 0.5))
        rescale = int(kwargs.get("rescale", 1))
        if rescale not in RESCALE:
            raise ValueError(f"CAGrad: rescale must be 0, 1 or 2, got {rescale}")
        if self.rep_grad:
            raise ValueError("CAGrad supports only rep_grad=False")
        self._compute_grad_dim()
        grads = self._compute_grad(losses, mode="backward")  # (T, D)
        rows, present = self.present_rows(grads)  # g_0 and the dual over the present tasks
        gram = (rows @ rows.t()).double().cpu().numpy()
        w, coef = cagrad_weights(gram, calpha)
        coef_t = torch.as_tensor(coef, dtype=rows.dtype, device=rows.device)
        self._reset_grad((coef_t @ rows) / RESCALE[rescale](calpha))
        return self.full_weights(w, present)


class CAGradSettings(Settings):
    calpha: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.5, description="c in [0, 1), the radius of the ball around the mean gradient (§3.2)")
    rescale: Literal[0, 1, 2] = Field(1, description="0: none, 1: / (1 + c²), 2: / (1 + c)")


register_weighting("cagrad", CAGrad, description="CAGrad: conflict-averse gradient descent",
                   settings=CAGradSettings, rep_grad=(False,),
                   search={"calpha": Uniform(
                       "c in [0.1, 0.9]: inside the paper's admissible c in [0, 1) (§3.2), "
                       "around its reported choice 0.4 on NYUv2", 0.1, 0.9)})
register_method("cagrad", architecture="hps", weighting="cagrad",
                family="gradient",
                description="hard parameter sharing trained with CAGrad (any number of tasks)",
                paper="Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, "
                      "NeurIPS 2021")

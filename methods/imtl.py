"""IMTL — impartial multi-task learning (Liu et al., ICLR 2021): IMTL-L (§3.2, Eq. 5, learnt loss
scales ``e^s_t L_t - s_t``) with IMTL-G (§3.1, Eq. 4: weights making the aggregated gradient's
projections on every task's unit gradient equal), as LibMTL 1.1.5's ``IMTL``, with two changes:

* LibMTL's closed form ``α = g_1 Uᵀ (D Uᵀ)⁻¹`` (``D_t = g_1 - g_t``, ``U_t = u_1 - u_t`` with
  unit gradients ``u``) is kept where ``D Uᵀ`` is invertible; with rank-deficient task gradients
  (two colinear tasks) LibMTL raises ``LinAlgError`` or returns NaN, and IMTL-G's condition has
  a family of solutions: we then take torchjd's ``IMTLGWeighting`` (the pseudo-inverse
  generalisation of Quinton & Rey, 2024; equal to IMTL-G on full-rank gradients,
  ``tests/test_torchjd_crosscheck.py``). A task whose gradient is exactly zero has no direction
  to project on and gets weight 0;
* only the tasks present in the batch take part (pooled batches may leave tasks out; their
  gradient row is zero and their unit gradient undefined): IMTL-G solves on the present tasks'
  gradients, absent tasks get weight 0, and an absent task's loss scale is not trained on that
  step (:class:`bench.models.compat.CompatWeighting`).

No hyper-parameter. ``rep_grad=True`` (IMTL on representation gradients) is supported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting


def imtl_weights(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's task weights (summing to 1) for the gradient rows ``grads`` (k, D): LibMTL's
    closed form where it is defined, torchjd's pseudo-inverse form where ``D Uᵀ`` is singular.
    A row that is exactly zero has no direction to project on: it is left out (weight 0)."""
    norms = grads.norm(dim=1)
    flat = norms == 0
    if bool(flat.any()) and not bool(flat.all()):
        weights = grads.new_zeros(grads.shape[0])
        weights[~flat] = imtl_weights(grads[~flat])
        return weights
    if grads.shape[0] == 1 or bool(flat.all()):
        return grads.new_full((grads.shape[0],), 1.0 / grads.shape[0])
    unit = grads / norms[:, None]
    diff = grads[0:1] - grads[1:]
    unit_diff = unit[0:1] - unit[1:]
    system = diff @ unit_diff.t()
    # directions closer than ~sqrt(eps) in unit-vector terms count as one direction: the
    # rounding noise of parallel gradients must not be inverted
    cutoff = torch.finfo(grads.dtype).eps ** 0.5 * float(diff.norm()) * grads.shape[0]
    if int(torch.linalg.matrix_rank(system, atol=cutoff)) == system.shape[0]:
        alpha = torch.linalg.solve(system.t(), unit_diff @ grads[0])
        weights = torch.cat(((1 - alpha.sum()).unsqueeze(0), alpha))
        if bool(torch.isfinite(weights).all()):
            return weights
    from torchjd.aggregation import IMTLGWeighting  # imported when used (~0.9 s)

    return IMTLGWeighting()(grads @ grads.t()).to(grads)


class IMTL(CompatWeighting):
    """IMTL-L and IMTL-G on the present tasks' gradients."""

    needs_task_gradients = True

    def init_param(self) -> None:
        self.loss_scale = torch.nn.Parameter(torch.zeros(self.task_num, device=self.device))

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        # absent tasks run no backward pass (CompatWeighting._compute_grad), so their scale
        # receives no gradient this step
        scaled = self.loss_scale.exp() * losses - self.loss_scale
        grads = self._get_grads(scaled, mode="backward")
        per_grads = None
        if self.rep_grad:
            per_grads, grads = grads
        rows, present = self.present_rows(grads)
        alpha = self.full_weights(imtl_weights(rows), present)
        weights = torch.as_tensor(alpha, dtype=grads.dtype, device=grads.device)
        if self.rep_grad:
            self._backward_new_grads(weights, per_grads=per_grads)
        else:
            self._backward_new_grads(weights, grads=grads)
        return alpha


register_weighting(
    "imtl", IMTL,
    description="IMTL: impartial gradient weights (IMTL-G) and learnt loss scales (IMTL-L)",
    rep_grad=(False, True))
register_method(
    "imtl", architecture="hps", weighting="imtl", rep_grad=False,
    family="gradient",
    description="hard parameter sharing with IMTL",
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021")

"""IMTL — impartial multi-task learning (Liu et al., ICLR 2021): IMTL-L (§3.2, Eq. 5, learnt loss
scales ``e^s_t L_t - s_t``) with IMTL-G (§3.1, Eq. 4: weights making the aggregated gradient's
projections on every task's unit gradient equal), as LibMTL 1.1.5's ``IMTL``, through the compat
layer. No hyper-parameter. ``rep_grad=True`` (IMTL on representation gradients) is supported.

Where LibMTL's closed form fails we keep its result otherwise unchanged:

* an absent task (pooled batch: loss exactly 0, zero gradient row) has a zero unit gradient
  (``0/0``: NaN weights) and its IMTL-L scale would drift (``d/ds (e^s 0 - s) = -1``): its
  regulariser is left out and IMTL-G runs on the non-zero gradient rows;
* colinear task gradients make LibMTL's ``D U^T`` singular (``torch.inverse`` raises or returns
  inf): then the weights are torchjd's ``IMTLGWeighting`` (the pseudo-inverse generalisation of
  Quinton & Rey, 2024, equal to IMTL-G on full-rank gradients).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchjd.aggregation import IMTLGWeighting

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.IMTL import IMTL as LibMTLIMTL  # noqa: E402


class IMTL(CompatWeighting, LibMTLIMTL):
    """LibMTL's IMTL with the compat fixes first in the MRO."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        present = (losses.detach() != 0).to(losses.dtype)  # the regulariser of absent tasks
        scaled = self.loss_scale.exp() * losses - self.loss_scale * present
        grads = self._get_grads(scaled, mode="backward")
        per_grads = None
        if self.rep_grad:
            per_grads, grads = grads[0], grads[1]
        alpha = imtl_g_weights(grads)
        if self.rep_grad:
            self._backward_new_grads(alpha, per_grads=per_grads)
        else:
            self._backward_new_grads(alpha, grads=grads)
        return alpha.detach().cpu().numpy()


def imtl_g_weights(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights (Eq. 4) as LibMTL 1.1.5 computes them, on the non-zero rows of
    ``grads``; torchjd's pseudo-inverse form where LibMTL's inverse fails."""
    present = (grads != 0).any(dim=1)
    alpha = torch.zeros(len(grads), dtype=grads.dtype, device=grads.device)
    sub = grads[present]
    if len(sub) <= 1:
        alpha[present] = 1.0
        return alpha
    unit = sub / torch.norm(sub, p=2, dim=-1, keepdim=True)
    d = sub[0:1].repeat(len(sub) - 1, 1) - sub[1:]
    u = unit[0:1].repeat(len(sub) - 1, 1) - unit[1:]
    try:
        rest = torch.matmul(torch.matmul(sub[0], u.t()), torch.inverse(torch.matmul(d, u.t())))
        weights = torch.cat((1 - rest.sum().unsqueeze(0), rest), dim=0)
    except RuntimeError:  # torch.linalg.LinAlgError: singular D U^T
        weights = torch.full((len(sub),), float("nan"), dtype=grads.dtype, device=grads.device)
    if not bool(torch.isfinite(weights).all()):
        weights = IMTLGWeighting()(sub @ sub.t()).to(grads)
    alpha[present] = weights
    return alpha


register_weighting(
    "imtl", IMTL,
    description="IMTL: impartial gradient weights (IMTL-G) and learnt loss scales (IMTL-L)",
    defaults={}, rep_grad=(False, True))
register_method(
    "imtl", architecture="hps", weighting="imtl", rep_grad=False,
    description="hard parameter sharing with IMTL",
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021")

"""IMTL — impartial multi-task learning (Liu et al., ICLR 2021): IMTL-L (§3.2, Eq. 5, learnt loss
scales ``e^s_t L_t - s_t``) with IMTL-G (§3.1, Eq. 4: weights making the aggregated gradient's
projections on every task's unit gradient equal), as LibMTL 1.1.5's ``IMTL``, through the compat
layer. No hyper-parameter. ``rep_grad=True`` (IMTL on representation gradients) is supported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.IMTL import IMTL as LibMTLIMTL  # noqa: E402


class IMTL(CompatWeighting, LibMTLIMTL):
    """LibMTL's IMTL with the compat fixes first in the MRO."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        return LibMTLIMTL.backward(self, losses, **kwargs)


register_weighting(
    "imtl", IMTL,
    description="IMTL: impartial gradient weights (IMTL-G) and learnt loss scales (IMTL-L)",
    defaults={}, rep_grad=(False, True))
register_method(
    "imtl", architecture="hps", weighting="imtl", rep_grad=False,
    family="gradient",
    description="hard parameter sharing with IMTL",
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021")

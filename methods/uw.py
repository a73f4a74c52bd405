"""UW — uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018, §3.2, Eq. 7-10).

``L = sum_t L_t / (2 sigma_t^2) + log sigma_t``, learnt ``s_t = log sigma_t^2`` (LibMTL's
``loss_scale``, initialised at -0.5): ``L = sum_t L_t / (2 exp(s_t)) + s_t / 2``. No
hyper-parameter. LibMTL 1.1.5's ``UW`` through the compat layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.UW import UW as LibMTLUW  # noqa: E402


class UW(CompatWeighting, LibMTLUW):
    """LibMTL's UW with the compat fixes first in the MRO."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        return LibMTLUW.backward(self, losses, **kwargs)


register_weighting(
    "uw", UW,
    description="uncertainty weighting: learnt homoscedastic task uncertainties",
    rep_grad=(False,))
register_method(
    "uw", architecture="hps", weighting="uw", rep_grad=False,
    family="loss_weighting",
    description="hard parameter sharing with uncertainty loss weighting",
    paper="Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses "
          "for Scene Geometry and Semantics, CVPR 2018")

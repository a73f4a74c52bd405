"""GradVac — gradient vaccine (Wang et al., ICLR 2021, §3.2, Eq. 5-6, Algorithm 1).

For each pair of tasks whose cosine similarity ``phi_ij`` falls below its EMA target ``phi^_ij``,
``g_i <- g_i + g_j ||g_i|| (phi^ sqrt(1-phi^2) - phi sqrt(1-phi^^2)) / (||g_j|| sqrt(1-phi^^2))``
and ``phi^_ij <- (1 - beta) phi^_ij + beta phi_ij``. ``beta = 0.5``: LibMTL's documented default
(LibMTL 1.1.5 reads ``kwargs['beta']`` with no default: fix 5); the paper uses ``1e-2``.
LibMTL 1.1.5's ``GradVac`` through the compat layer, shared-parameter gradients only. Note:
LibMTL updates the EMA target ``phi^_ij`` only for pairs it adjusts (``phi_ij < phi^_ij``), so
from ``phi^ = 0`` the targets can only decrease; the paper's Algorithm 1 (and torchjd) update it
for every pair. We keep LibMTL's behaviour (the MoLA baselines are LibMTL's).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from bench.api import CompatWeighting, LogUniform, Settings, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.GradVac import GradVac as LibMTLGradVac  # noqa: E402


class GradVac(CompatWeighting, LibMTLGradVac):
    """LibMTL's GradVac with the compat fixes first in the MRO."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        return LibMTLGradVac.backward(self, losses, **kwargs)


class GradVacSettings(Settings):
    beta: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="EMA rate of the cosine targets")


register_weighting(
    "gradvac", GradVac,
    description="GradVac: align task gradients towards EMA cosine targets",
    settings=GradVacSettings, rep_grad=(False,),
    search={"beta": LogUniform("Wang et al. 2021 use beta = 0.01, LibMTL documents 0.5: the "
                               "log-range between 1e-3 and 0.5", 1e-3, 0.5)})
register_method(
    "gradvac", architecture="hps", weighting="gradvac", rep_grad=False,
    family="gradient",
    description="hard parameter sharing with GradVac",
    paper="Wang et al., Gradient Vaccine, ICLR 2021")

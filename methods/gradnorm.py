"""GradNorm — gradient normalisation (Chen et al., ICML 2018, §3, Eq. 1-2).

Learnt loss weights ``w_t`` (LibMTL: ``T softmax(loss_scale)``) are trained with
``L_grad = sum_t | ||w_t g_t|| - mean_i ||w_i g_i|| * r_t^alpha |`` where ``r_t`` is task ``t``'s
inverse training rate (loss relative to its first-epoch mean, over the mean of the tasks).
``alpha = 1.5`` (the paper's NYUv2 value, LibMTL's default). Equal weights in the first epoch.

LibMTL 1.1.5's ``GradNorm`` through the compat layer; ``self.epoch`` and
``self.train_loss_buffer`` come from :class:`bench.models.compat.EpochLossTracker` (fix 12).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from bench.api import CompatWeighting, Settings, Uniform, register_method, register_weighting
from bench.models.compat import EpochLossTracker, import_libmtl

import_libmtl()
from LibMTL.weighting.GradNorm import GradNorm as LibMTLGradNorm  # noqa: E402


class GradNorm(EpochLossTracker, CompatWeighting, LibMTLGradNorm):
    """LibMTL's GradNorm with the compat fixes first in the MRO."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        self.record_losses(losses)
        return LibMTLGradNorm.backward(self, losses, **kwargs)


class GradNormSettings(Settings):
    alpha: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        1.5, description="asymmetry: strength of the pull towards equal training rates")


register_weighting(
    "gradnorm", GradNorm,
    description="GradNorm: learnt weights balancing the task gradient norms",
    settings=GradNormSettings, rep_grad=(False, True),
    search={"alpha": Uniform("Chen et al. 2018 (§3.2, §5) use alpha between 0.12 and 1.5 and "
                             "report alpha in [0, 3]: that interval", 0.0, 3.0)})
register_method(
    "gradnorm", architecture="hps", weighting="gradnorm", rep_grad=False,
    family="gradient",
    description="hard parameter sharing with GradNorm",
    paper="Chen et al., GradNorm, ICML 2018")

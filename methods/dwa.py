"""DWA — dynamic weight average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, §3.3, Eq. 7).

``lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T)`` with the loss descent rate
``w_k(t-1) = L_k(t-1) / L_k(t-2)`` of each task's mean training loss over the two previous epochs;
equal weights for the first two epochs. Temperature ``T = 2`` (the paper's value, LibMTL's default).

LibMTL 1.1.5's ``DWA`` through the compat layer; it reads ``self.epoch`` and
``self.train_loss_buffer`` from LibMTL's Trainer, which
:class:`bench.models.compat.EpochLossTracker`
provides (fix 12). Only the summed weighted loss is needed, so multi-input batches are fused.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from bench.api import Choice, CompatWeighting, Settings, register_method, register_weighting
from bench.models.compat import EpochLossTracker, import_libmtl

import_libmtl()
from LibMTL.weighting.DWA import DWA as LibMTLDWA  # noqa: E402


class DWA(EpochLossTracker, CompatWeighting, LibMTLDWA):
    """LibMTL's DWA with the compat fixes first in the MRO."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        self.record_losses(losses)
        return LibMTLDWA.backward(self, losses, **kwargs)


class DWASettings(Settings):
    T: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        2.0, description="temperature of the softmax over loss descent rates")


register_weighting(
    "dwa", DWA,
    description="dynamic weight average: weights from the tasks' loss descent rates",
    settings=DWASettings, rep_grad=(False,),
    search={"T": Choice("Liu et al. 2019 use T = 2 and give no range: 1, 2, 5 around it",
                        (1.0, 2.0, 5.0))})
register_method(
    "dwa", architecture="hps", weighting="dwa", rep_grad=False,
    family="loss_weighting",
    description="hard parameter sharing with DWA loss weighting",
    paper="Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019")

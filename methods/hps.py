"""HPS — hard parameter sharing with equal loss weights (Caruana, ICML 1993).

One shared encoder, one decoder per task; the total loss is ``L = sum_t L_t`` (LibMTL's EW).
This file also registers the ``hps`` architecture and the ``ew`` weighting that other methods
combine with (``hps+pcgrad`` is PCGrad).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import (
    CompatArchitecture,
    CompatWeighting,
    register_architecture,
    register_method,
    register_weighting,
)


class HPS(CompatArchitecture):
    """Hard parameter sharing: ``encoder`` shared by all tasks (MoLA's "HPS"/"HSP" row)."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = self.encoder_class()


class EW(CompatWeighting):
    """Equal weighting: ``L = sum_t L_t``."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        losses.sum().backward()
        return np.ones(self.task_num)


register_architecture("hps", HPS, description="hard parameter sharing: one shared encoder")
register_weighting("ew", EW, description="equal weighting, L = sum of task losses",
                   rep_grad=(False, True))
register_method("hps", architecture="hps", weighting="ew",
                family="baseline",
                description="hard parameter sharing, equal loss weights",
                paper="Caruana, Multitask Learning, ICML 1993")

"""IMTL-L — the loss-balance part of impartial multi-task learning (Liu et al., "Towards
Impartial Multi-task Learning", ICLR 2021, §3.2, Eq. 5).

Every task loss gets a learnt scale ``e^{s_t}``; the regulariser ``-s_t`` keeps it from
collapsing: ``L = sum_t (e^{s_t} L_t - s_t)``. At the optimum in ``s_t``, ``e^{s_t} L_t = 1``: all
scaled losses are equal. The scales ``s`` (initialised at 0, as LibMTL's ``IMTL`` and torchjd's
``IMTLL``) are model parameters, trained by the run's optimizer with the network. No
hyper-parameter. (``imtl`` is IMTL-L with IMTL-G; this is IMTL-L alone, on the summed loss.)

Own implementation (torchjd's ``torchjd.scalarization.IMTLL`` gives the same loss and gradients
when every task is present — tested): an absent task (loss exactly 0) would still get the
gradient ``-1`` on ``s_t`` from its regulariser and its scale would grow while it is absent, so
its term is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.torchjd_weighting import present_losses


class IMTLL(CompatWeighting):
    """``sum_t (e^{s_t} L_t - s_t)`` over the present tasks, learnt ``s``."""

    needs_task_gradients = False

    def init_param(self) -> None:
        self.loss_scale = nn.Parameter(torch.zeros(self.task_num, device=self.device))

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        present = present_losses(losses)
        scale = self.loss_scale.to(losses.device)
        terms = torch.exp(scale) * losses - scale
        (terms * present.to(terms.dtype)).sum().backward()
        weights = torch.exp(scale.detach()) * present.to(scale.dtype)
        return weights.double().cpu().numpy()


register_weighting("imtl_l", IMTLL,
                   description="IMTL-L: learnt loss scales e^s L - s",
                   defaults={}, rep_grad=(False,))
register_method("imtl_l", architecture="hps", weighting="imtl_l",
                description="hard parameter sharing with IMTL-L loss balancing",
                paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021, §3.2",
                family="loss_weighting")

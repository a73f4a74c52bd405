"""STCH — smooth Tchebycheff scalarization (Lin et al., "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024, §3, Eq. 5; multi-task setting of §5 and the official
STCH_MTL code).

``g_mu(x | lambda) = mu log sum_t exp(lambda_t (f_t(x) - z*_t) / mu)`` is a smooth upper bound of
the Tchebycheff scalarization ``max_t lambda_t (f_t - z*_t)`` (tight as ``mu -> 0``). For deep
multi-task learning the official code (Xi-L/STCH, STCH_MTL; the same in LibMTL's ``STCH``) uses
``f_t = log(L_t / n_t + 1e-20)`` with ``n_t`` a nadir estimate, ``z* = 0`` and ``lambda = 1``,
times ``T``:

* epochs ``< warmup_epochs``: ``L = sum_t log(L_t + 1e-20)`` (the SI baseline);
* epoch ``== warmup_epochs``: the same loss, and ``n_t`` = the mean of ``L_t`` over that epoch;
* later epochs: ``L = T mu log sum_t exp(log(L_t / n_t + 1e-20) / mu)`` (computed with the
  maximum subtracted, as the official code).

Defaults ``mu = 1.0``, ``warmup_epochs = 4`` (LibMTL's ``STCH_mu``, ``STCH_warmup_epoch``). The
epoch comes from :class:`bench.models.compat.EpochLossTracker` (fix 12); the nadir sums and
counts live on the weighting object. Own implementation (torchjd's
``torchjd.scalarization.STCH`` with ``weights = 1`` gives ``1/T`` of our loss on the same ``f``
— tested). An absent task (loss exactly 0) is left out of the sums and out of its nadir mean; a
task absent for the whole nadir epoch gets ``n_t = 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.compat import EpochLossTracker
from bench.models.torchjd_weighting import present_losses


class STCH(EpochLossTracker, CompatWeighting):
    """Log-loss warm-up, nadir estimate, then the smooth Tchebycheff loss."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        self.record_losses(losses)
        mu, warmup = float(kwargs["mu"]), int(kwargs["warmup_epochs"])
        state = self.__dict__.setdefault("_stch", {"sum": None, "count": None, "nadir": None})
        present = present_losses(losses)
        weights = np.zeros(self.task_num)
        if not bool(present.any()):
            losses.sum().backward()
            return weights
        mask = present.cpu().numpy()
        if self.epoch <= warmup:
            if self.epoch == warmup:  # the nadir epoch
                values = losses.detach().double().cpu()
                if state["sum"] is None:
                    state["sum"] = torch.zeros(self.task_num, dtype=torch.float64)
                    state["count"] = torch.zeros(self.task_num, dtype=torch.float64)
                state["sum"][present.cpu()] += values[present.cpu()]
                state["count"][present.cpu()] += 1
            torch.log(losses[present] + 1e-20).sum().backward()
            weights[mask] = (1.0 / (losses[present].detach() + 1e-20)).double().cpu().numpy()
            return weights
        if state["nadir"] is None:
            if state["sum"] is None:  # no nadir epoch was seen (e.g. warmup_epochs < 0)
                state["nadir"] = torch.ones(self.task_num, dtype=torch.float64)
            else:
                count = state["count"]
                state["nadir"] = torch.where(count > 0, state["sum"] / count.clamp_min(1),
                                             torch.ones_like(count))
        nadir = state["nadir"].to(losses)[present]
        f = torch.log(losses[present] / nadir + 1e-20)
        top = f.detach().max()
        loss = self.task_num * (mu * torch.log(torch.exp((f - top) / mu).sum()) + top)
        loss.backward()
        soft = torch.softmax(f.detach() / mu, 0)
        weights[mask] = (self.task_num * soft / (losses[present].detach() + 1e-20 * nadir)
                         ).double().cpu().numpy()
        return weights


register_weighting("stch", STCH,
                   description="STCH: smooth Tchebycheff scalarization of nadir-normalised "
                               "log losses", defaults={"mu": 1.0, "warmup_epochs": 4},
                   rep_grad=(False,))
register_method("stch", architecture="hps", weighting="stch",
                description="hard parameter sharing with smooth Tchebycheff scalarization",
                paper="Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective "
                      "Optimization, ICML 2024",
                family="loss_weighting")

"""RLW — random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning", TMLR 2022; arXiv:2111.10603, §3, Eq. 3).

At every step the loss weights are ``softmax(lambda)`` with ``lambda`` drawn from a distribution;
default ``dist="Normal"`` (standard normal, the paper's main variant and LibMTL's default). Other
options (LibMTL): ``Uniform``, ``Dirichlet``, ``Bernoulli``, ``constrained_Bernoulli``.

LibMTL 1.1.5's ``RLW`` through the compat layer (draws from torch's global RNG, seeded per run).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from bench.api import Choice, CompatWeighting, Settings, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.RLW import RLW as LibMTLRLW  # noqa: E402


class RLW(CompatWeighting, LibMTLRLW):
    """LibMTL's RLW with the compat fixes first in the MRO."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        return LibMTLRLW.backward(self, losses, **kwargs)


class RLWSettings(Settings):
    # LibMTL 1.1.5's 'constrained_Bernoulli' branch cannot run (it uses an unimported module)
    dist: Literal["Normal", "Uniform", "Dirichlet", "Bernoulli"] = Field(
        "Normal", description="distribution the loss weights are drawn from")


register_weighting(
    "rlw", RLW,
    description="random loss weighting: softmax of normal samples each step",
    settings=RLWSettings, rep_grad=(False,),
    search={"dist": Choice("the weight distributions Lin et al. 2022 compare (§3; LibMTL's "
                           "constrained Bernoulli cannot run)",
                           ("Normal", "Uniform", "Dirichlet", "Bernoulli"))})
register_method(
    "rlw", architecture="hps", weighting="rlw", rep_grad=False,
    family="loss_weighting",
    description="hard parameter sharing with random loss weights",
    paper="Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022")

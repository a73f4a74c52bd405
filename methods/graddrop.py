"""GradDrop — gradient sign dropout (Chen et al., "Just Pick a Sign", NeurIPS 2020, §3, Eq. 1-3).

On the gradients w.r.t. the shared representation: positive sign purity
``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` per unit, keep the positive or the negative gradients
according to ``P > U``, ``U ~ Uniform(0, 1)``; ``leak`` in ``[0, 1]`` lets a fraction of every
gradient through (default 0.0, LibMTL's default). Only ``rep_grad=True`` (as LibMTL: the method
acts on representation gradients). LibMTL 1.1.5's ``GradDrop`` through the compat layer.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from bench.api import CompatWeighting, Settings, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.GradDrop import GradDrop as LibMTLGradDrop  # noqa: E402


class GradDrop(CompatWeighting, LibMTLGradDrop):
    """LibMTL's GradDrop with the compat fixes first in the MRO."""

    needs_task_gradients = True

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        return LibMTLGradDrop.backward(self, losses, **kwargs)


class GradDropSettings(Settings):
    leak: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.0, description="fraction of each gradient passed through unmasked")


register_weighting(
    "graddrop", GradDrop,
    description="GradDrop: sign-consistent dropout of representation gradients",
    settings=GradDropSettings, rep_grad=(True,))
register_method(
    "graddrop", architecture="hps", weighting="graddrop", rep_grad=True,
    family="gradient",
    description="hard parameter sharing with GradDrop (representation gradients)",
    paper="Chen et al., Just Pick a Sign: Gradient Sign Dropout, NeurIPS 2020")

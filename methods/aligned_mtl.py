"""Aligned-MTL and Aligned-MTL-UB — independent component alignment (Senushkin et al.,
"Independent Component Alignment for Multi-Task Learning", CVPR 2023, §4, Algorithm 1).

With the Gram matrix ``M = G G^T = V Lambda V^T`` of the task gradients (rows of ``G``), keep
its ``R`` eigenvalues above ``max(Lambda) T eps`` (rank-deficient ``G``: the null space is
dropped), form the balance transformation ``B = sqrt(lambda_R) V Lambda^{-1/2} V^T``
(``lambda_R``: the smallest kept eigenvalue, ``scale_mode="min"``) and update along
``sum_t w_t g^_t`` with the aligned gradients ``G^ = B G`` (condition number 1), i.e. task
weights ``alpha = B w``. ``w`` = ones, as the official code (SamsungLabs/MTL,
``grads.sum(-1)``) and LibMTL (``B.sum(0)``).

* ``aligned_mtl`` (``rep_grad=False``): ``G`` = gradients of the shared parameters.
* ``aligned_mtl_ub`` (``rep_grad=True``, §4 "Aligned-MTL-UB"): ``G`` = gradients w.r.t. the
  shared representation, the whole (batch x features) gradient as one vector per task (as our
  MGDA-UB); ``sum_t alpha_t dL_t/dZ`` is backpropagated through the encoder.

Implementation: torchjd 0.18's ``AlignedMTL`` with ``pref_vector = ones`` (torchjd's default is
the mean, ``1/T``: ``T`` times shorter, same direction) and ``scale_mode = "min"`` (the paper's
and the official default). Absent tasks (zero rows) are left out of ``G``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import AlignedMTL as TorchJDAlignedMTL


class AlignedMTL(TorchJDWeighting):
    """``(B 1) @ G`` with the balance transformation ``B`` (torchjd's ``AlignedMTL``)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> TorchJDAlignedMTL:
        from torchjd.aggregation import (
            AlignedMTL as TorchJDAlignedMTL,  # imported when used (~0.9 s)
        )

        return TorchJDAlignedMTL(pref_vector=torch.ones(rows),
                                 scale_mode=str(kwargs["scale_mode"]))  # type: ignore[arg-type]


register_weighting("aligned_mtl", AlignedMTL,
                   description="Aligned-MTL: task gradients aligned to condition number 1",
                   defaults={"scale_mode": "min"}, rep_grad=(False, True))
register_method("aligned_mtl", architecture="hps", weighting="aligned_mtl", rep_grad=False,
                description="hard parameter sharing trained with Aligned-MTL (torchjd)",
                paper="Senushkin et al., Independent Component Alignment for Multi-Task "
                      "Learning, CVPR 2023",
                family="gradient")
register_method("aligned_mtl_ub", architecture="hps", weighting="aligned_mtl", rep_grad=True,
                description="Aligned-MTL-UB: Aligned-MTL on representation gradients",
                paper="Senushkin et al., Independent Component Alignment for Multi-Task "
                      "Learning, CVPR 2023, §4",
                family="gradient")

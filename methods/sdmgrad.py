"""SDMGrad — stochastic direction-oriented multi-objective gradient descent (Xiao, Ban & Ji,
"Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
NeurIPS 2023, §4, Algorithm 1).

The update ``d = G^T (w + lambda w~) / (1 + lambda)`` stays close to the target direction
``G^T w~`` (``w~ = 1/T``: the mean gradient) while improving every task:
``w = argmin_{w in simplex} 1/2 ||G^T (w + lambda w~)||^2``, solved by ``n_iter`` steps of
projected SGD with momentum on the simplex, warm-started from the previous step's ``w``; the
matrix ``G G^T`` is first divided by the squared mean gradient norm (§6.1).

Implementation: torchjd 0.18's ``SDMGradWeighting`` (adapted from the official code,
OptMN-Lab/SDMGrad) composed with the Gramian; defaults ``lambda = 0.3`` (the official
experiments, LibMTL's ``SDMGrad_lamda``), ``n_iter = 20`` (LibMTL), inner ``lr = 10`` and
``momentum = 0.5`` (torchjd, from the official code). **Deviation:** the paper estimates
``G G^T`` from two independent mini-batches (``G(x; xi) G(x; xi')^T``) and the update from a
third (LibMTL's version asks its trainer for three batches); our engine has one batch per step,
so all three come from it (the deterministic variant). The warm-started ``w`` is kept on the
weighting object, one state per set of present tasks; absent tasks (zero rows) are left out
(a zero row would attract all of ``w``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import WeightedAggregator


def _gramian(matrix: torch.Tensor) -> torch.Tensor:
    return matrix @ matrix.T


class SDMGrad(TorchJDWeighting):
    """``G^T (w + lambda/T) / (1 + lambda)``, ``w`` by projected SGD (torchjd's weighting)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> WeightedAggregator:
        from torchjd.aggregation import (  # imported when used (~0.9 s)
            SDMGradWeighting,
            WeightedAggregator,
        )

        weighting = SDMGradWeighting(lr=float(kwargs["lr"]), momentum=float(kwargs["momentum"]),
                                     n_iter=int(kwargs["n_iter"]),
                                     lambda_=float(kwargs["lambda_"]))
        return WeightedAggregator(weighting << _gramian)


register_weighting("sdmgrad", SDMGrad,
                   description="SDMGrad: direction-oriented multi-objective gradient",
                   defaults={"lambda_": 0.3, "n_iter": 20, "lr": 10.0, "momentum": 0.5},
                   rep_grad=(False,))
register_method("sdmgrad", architecture="hps", weighting="sdmgrad",
                description="hard parameter sharing trained with SDMGrad (torchjd, one batch)",
                paper="Xiao, Ban & Ji, Direction-oriented Multi-objective Learning, NeurIPS 2023",
                family="gradient")

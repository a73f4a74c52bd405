"""FairGrad — fair resource allocation in multi-task learning (Ban & Ji, ICML 2024, §4,
Eq. 4 and Algorithm 1).

alpha-fair utility maximisation over the task "utilities" ``g_i . d`` gives the update
``d = G^T w`` with ``w > 0`` solving ``G G^T w = w^{-1/alpha}`` (elementwise); ``alpha = 0`` is
linear scalarisation, ``alpha = 1`` proportional fairness (Nash-MTL's condition), ``alpha -> inf``
max-min fairness. The system is solved by non-negative least squares
(``scipy.optimize.least_squares`` from ``w = 1/T``), as the official code (OptMN-Lab/fairgrad).

Implementation: torchjd 0.18's ``FairGrad`` (adapted from the official code, same solver);
default ``alpha = 1.0`` (LibMTL's ``FairGrad_alpha``). Absent tasks (zero rows) are left out
(their equation ``0 = w^{-1/alpha}`` has no solution).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import FairGrad as TorchJDFairGrad


class FairGrad(TorchJDWeighting):
    """``G^T w`` with ``G G^T w = w^{-1/alpha}`` (torchjd's ``FairGrad``)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> TorchJDFairGrad:
        from torchjd.aggregation import FairGrad as TorchJDFairGrad  # imported when used (~0.9 s)

        max_iters = kwargs.get("max_iters")
        return TorchJDFairGrad(alpha=float(kwargs["alpha"]),
                               max_iters=None if max_iters is None else int(max_iters))


register_weighting("fairgrad", FairGrad,
                   description="FairGrad: alpha-fair allocation of the update to the tasks",
                   defaults={"alpha": 1.0, "max_iters": None}, rep_grad=(False,))
register_method("fairgrad", architecture="hps", weighting="fairgrad",
                description="hard parameter sharing trained with FairGrad (torchjd)",
                paper="Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024",
                family="gradient")

"""DualProj — the mean gradient projected onto the dual cone of the task gradients (Lopez-Paz &
Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11; as the
"DualProj" aggregator of Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
arXiv:2406.16232, 2024).

``A_DualProj(J) = pi_J((1/T) sum_i g_i)``: the closest vector to the mean gradient that conflicts
with no task (``J x >= 0``), via the dual quadratic program ``min_v v^T G v  s.t.  v >= 1/T``.

Implementation: torchjd 0.18's ``DualProj``; defaults: mean preference, quadprog with
``norm_eps = reg_eps = 1e-4`` (torchjd's defaults). Absent tasks (zero rows) are left out of
``J``; rank-deficient ``J`` is handled by ``reg_eps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import DualProj as TorchJDDualProj


class DualProj(TorchJDWeighting):
    """``pi_J(mean_i g_i)`` (torchjd's ``DualProj``)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> TorchJDDualProj:
        from torchjd.aggregation import DualProj as TorchJDDualProj  # imported when used (~0.9 s)
        from torchjd.linalg import QuadprogProjector

        return TorchJDDualProj(projector=QuadprogProjector(norm_eps=float(kwargs["norm_eps"]),
                                                           reg_eps=float(kwargs["reg_eps"])))


register_weighting("dualproj", DualProj,
                   description="DualProj: mean gradient projected onto the dual cone",
                   defaults={"norm_eps": 1e-4, "reg_eps": 1e-4}, rep_grad=(False,))
register_method("dualproj", architecture="hps", weighting="dualproj",
                description="hard parameter sharing trained with DualProj (torchjd)",
                paper="Lopez-Paz & Ranzato, Gradient Episodic Memory, NeurIPS 2017 (Eq. 11); "
                      "Quinton & Rey, arXiv:2406.16232, 2024",
                family="gradient")

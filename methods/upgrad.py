"""UPGrad — unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", arXiv:2406.16232, 2024, §3).

Every task gradient ``g_i`` (row ``i`` of the Jacobian ``J``) is projected onto the dual cone
``{x : J x >= 0}`` of the rows (``pi_J``, Eq. 3; computed through the dual quadratic program of
Proposition 1, ``min_v v^T G v  s.t.  v >= e_i`` with ``G = J J^T``) and the projections are
averaged: ``A_UPGrad(J) = (1/T) sum_i pi_J(g_i)``. The update conflicts with no task
(``J A(J) >= 0``).

Implementation: torchjd 0.18's ``UPGrad`` (the authors' library) through
:class:`bench.models.torchjd_weighting.TorchJDWeighting`. Defaults: the preference vector is
the mean (the paper's definition); quadprog with ``norm_eps = reg_eps = 1e-4`` (torchjd's
defaults, also LibMTL's ``UPGrad_norm_eps`` / ``UPGrad_reg_eps``). Absent tasks (zero rows) are
left out of ``J``; colinear and rank-deficient ``J`` are handled by ``reg_eps`` (the Gramian is
regularised before the QP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import UPGrad as TorchJDUPGrad


class UPGrad(TorchJDWeighting):
    """``(1/T) sum_i pi_J(g_i)`` (torchjd's ``UPGrad``)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> TorchJDUPGrad:
        from torchjd.aggregation import UPGrad as TorchJDUPGrad  # imported when used (~0.9 s)
        from torchjd.linalg import QuadprogProjector

        return TorchJDUPGrad(projector=QuadprogProjector(norm_eps=float(kwargs["norm_eps"]),
                                                         reg_eps=float(kwargs["reg_eps"])))


register_weighting("upgrad", UPGrad,
                   description="UPGrad: mean of the task gradients projected onto the dual cone",
                   defaults={"norm_eps": 1e-4, "reg_eps": 1e-4}, rep_grad=(False,))
register_method("upgrad", architecture="hps", weighting="upgrad",
                description="hard parameter sharing trained with UPGrad (torchjd)",
                paper="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, "
                      "arXiv:2406.16232, 2024",
                family="gradient")

"""ConFIG — conflict-free inverse gradients (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free
Training of Physics Informed Neural Networks", ICLR 2025, arXiv:2408.11104, Eq. 2).

With unit task gradients ``u_i = g_i / ||g_i||`` (rows of ``U``), the direction is
``g_u = normalize(U^+ 1)`` (the pseudo-inverse solves ``u_i . g_u = const`` for all ``i``: equal
cosine with every task) and its length the sum of the projections:
``g_ConFIG = (sum_i g_i . g_u) g_u``.

Implementation: torchjd 0.18's ``ConFIG`` (adapted from the official code, tum-pbs/ConFIG:
equal weights, projection length); no hyper-parameter. ``U^+`` is a pseudo-inverse, so colinear
and rank-deficient gradients are fine; absent tasks (zero rows) are left out. Not a weighted
combination of the rows: ``backward`` returns ``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import ConFIG as TorchJDConFIG


class ConFIG(TorchJDWeighting):
    """``(sum_i g_i . g_u) g_u`` with ``g_u = normalize(U^+ 1)`` (torchjd's ``ConFIG``)."""

    def make_aggregator(self, rows: int, **kwargs: Any) -> TorchJDConFIG:
        from torchjd.aggregation import ConFIG as TorchJDConFIG  # imported when used (~0.9 s)

        return TorchJDConFIG()


register_weighting("config", ConFIG,
                   description="ConFIG: equal-cosine direction from the pseudo-inverse of unit "
                               "task gradients", defaults={}, rep_grad=(False,))
register_method("config", architecture="hps", weighting="config",
                description="hard parameter sharing trained with ConFIG (torchjd)",
                paper="Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of Physics "
                      "Informed Neural Networks, ICLR 2025",
                family="gradient")

"""Nash-MTL — multi-task learning as a bargaining game (Navon et al., ICML 2022, §3-4,
Algorithm 1).

The update is ``d = G^T alpha`` where ``alpha > 0`` solves ``G G^T alpha = 1 / alpha`` (the Nash
bargaining solution, §3.2, Theorem 3.2). §4 solves it by a sequence of convex problems (CCP):
``min_alpha sum_i beta_i(alpha) + phi~(alpha)  s.t.  -phi_i(alpha) <= 0`` with
``phi_i = log alpha_i + log (G G^T alpha)_i``, warm-started from the previous step's ``alpha``.
The official code (AvivNavon/nash-mtl) then clips the shared update to norm ``max_norm``.

Implementation: torchjd 0.18's ``NashMTL`` (adapted from the official code: cvxpy + ECOS, the
same CCP, stopping rule and norm clipping); defaults ``update_weights_every = 1``,
``optim_niter = 20``, ``max_norm = 1.0`` (official code and LibMTL's ``Nash_MTL``). The warm start
is the aggregator's state, kept on the weighting object across steps — one aggregator per set
of present tasks: an absent task (zero row) would make the problem infeasible
(``(G G^T alpha)_i = 0``), so its row is left out. When ECOS fails (e.g. opposite colinear
gradients, where no ``alpha > 0`` exists) torchjd keeps the previous ``alpha`` (ones at the
start). Task-specific parameters get ``grad L_t`` (the official code weights them by
``alpha_t``; see :mod:`bench.models.torchjd_weighting`).

cvxpy and ECOS are an install extra (``pip install -e ".[nash-mtl]"``, in ``test`` too): without
them planning refuses the method in one line naming it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import torch

from bench.api import register_method, register_weighting
from bench.models.torchjd_weighting import TorchJDWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import WeightedAggregator


class NashMTL(TorchJDWeighting):
    """``G^T alpha`` with ``G G^T alpha = 1 / alpha`` (torchjd's ``NashMTL``).

    One present task: torchjd's cvxpy problem cannot be built for one task; the solution is
    closed-form, ``alpha = 1 / ||g||`` (then the norm clipping), so ``d = g / ||g||``.
    """

    quiet_warnings = ("You are solving a parameterized problem that is not DPP",
                      "divide by zero", "invalid value")

    def make_aggregator(self, rows: int, **kwargs: Any) -> WeightedAggregator:
        from torchjd.aggregation import NashMTL as TorchJDNashMTL  # imported when used (~0.9 s)

        if rows == 1:
            return _one_task_aggregator()(float(kwargs["max_norm"]))
        return TorchJDNashMTL(n_tasks=rows, max_norm=float(kwargs["max_norm"]),
                              update_weights_every=int(kwargs["update_weights_every"]),
                              optim_niter=int(kwargs["optim_niter"]))


@cache
def _one_task_aggregator() -> type:
    """The aggregator class of one present task (defined on first use: torchjd is imported by
    the runs that use it)."""
    from torchjd.aggregation import WeightedAggregator, Weighting

    class OneTaskWeighting(Weighting):
        def __init__(self, max_norm: float) -> None:
            super().__init__()
            self.max_norm = max_norm

        def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
            norm = matrix.norm()
            alpha = 1.0 / norm if float(norm) > 0 else torch.zeros((), dtype=matrix.dtype)
            if self.max_norm > 0 and float(alpha * norm) > self.max_norm:  # the same clipping
                alpha = alpha * self.max_norm / (alpha * norm)
            return alpha.reshape(1).to(matrix)

    class OneTask(WeightedAggregator):
        def __init__(self, max_norm: float) -> None:
            super().__init__(OneTaskWeighting(max_norm))

    return OneTask


register_weighting("nash_mtl", NashMTL,
                   description="Nash-MTL: Nash bargaining solution of the task gradients",
                   defaults={"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20},
                   rep_grad=(False,), requires=("cvxpy", "ecos"), extra="nash-mtl")
register_method("nash_mtl", architecture="hps", weighting="nash_mtl",
                description="hard parameter sharing trained with Nash-MTL (torchjd)",
                paper="Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022",
                family="gradient")

"""PCGrad — projecting conflicting gradients (Yu et al., "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020, Algorithm 1).

For every task ``i``, in a random order of the other tasks ``j``: if ``g_i^PC . g_j < 0`` then
``g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j``; the shared update is ``sum_i g_i^PC``.

We use LibMTL 1.1.5's implementation (``LibMTL.weighting.PCGrad``) unchanged, with the fixes of
:class:`bench.models.compat.CompatWeighting` first in the MRO (fix 3: ``_reset_grad`` on ``None``
grads, fix 11: ``_grad2vec`` device, fix 7: ``backward`` is a method). Only ``rep_grad=False``:
PCGrad projects gradients of the shared parameters, as in the paper.
"""

from __future__ import annotations

from bench.api import CompatWeighting, register_method, register_weighting
from bench.models.compat import import_libmtl

import_libmtl()
from LibMTL.weighting.PCGrad import PCGrad as LibMTLPCGrad  # noqa: E402


class PCGrad(CompatWeighting, LibMTLPCGrad):
    """LibMTL's PCGrad with the compat fixes (``CompatWeighting`` precedes it in the MRO)."""

    needs_task_gradients = True
    backward = LibMTLPCGrad.backward  # the algorithm is LibMTL's; CompatWeighting's is abstract


register_weighting("pcgrad", PCGrad, description="PCGrad: project conflicting task gradients",
                   rep_grad=(False,))
register_method("pcgrad", architecture="hps", weighting="pcgrad",
                family="gradient",
                description="hard parameter sharing trained with PCGrad gradient surgery",
                paper="Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020")

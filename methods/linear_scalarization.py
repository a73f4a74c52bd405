"""Linear scalarization — fixed task weights, ``L = sum_t w_t L_t``.

The classical weighted-sum scalarization of multi-objective optimization; sweeping ``w`` traces
the convex part of the Pareto front, the reference Xin et al. ("Do Current Multi-Task
Optimization Methods in Deep Learning Even Help?", NeurIPS 2022) compare every method against.
``--set weighting.weights=[w_1,...,w_T]`` sets the weights (one per task, in the scenario's task
order, non-negative); the default ``null`` means all ones (``hps``'s equal weighting). Absent
tasks need nothing: their zero loss contributes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import CompatWeighting, register_method, register_weighting


def task_weights(weights: Any, task_num: int) -> np.ndarray:
    """The ``weights`` keyword as ``T`` floats (``None``: ones); a clear error otherwise."""
    if weights is None:
        return np.ones(task_num)
    try:
        values = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.full(0, np.nan)
    if values.shape != (task_num,) or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"linear_scalarization: weighting.weights must be {task_num} "
                         f"non-negative numbers (one per task), got {weights!r}")
    return values


class LinearScalarization(CompatWeighting):
    """``sum_t w_t L_t`` with the fixed ``weights``."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        weights = task_weights(kwargs.get("weights"), self.task_num)
        (torch.as_tensor(weights, dtype=losses.dtype, device=losses.device) * losses
         ).sum().backward()
        return weights


register_weighting("linear_scalarization", LinearScalarization,
                   description="fixed task weights (--set weighting.weights=[...], default ones)",
                   defaults={"weights": None}, rep_grad=(False,))
register_method("linear_scalarization", architecture="hps", weighting="linear_scalarization",
                description="hard parameter sharing with fixed task weights",
                paper="weighted-sum scalarization; Xin et al., NeurIPS 2022",
                family="loss_weighting")

"""One adapter from torchjd's aggregators (``torchjd.aggregation``, 0.18) to our weighting contract.

A torchjd :class:`~torchjd.aggregation.Aggregator` maps the ``T x D`` matrix of per-task gradients
(the Jacobian) to one update vector. :class:`TorchJDWeighting` is a :class:`CompatWeighting` that

1. computes that matrix with LibMTL's ``_compute_grad`` (one backward pass per task; with
   ``rep_grad=True`` the gradients w.r.t. the shared representation, flattened per task);
2. drops the rows of **absent tasks** (:func:`present_rows`: a row that is exactly zero, which is
   what the engine's ``0 * (...)`` loss of a task with no sample in a pooled batch gives), so that
   no aggregator sees a zero gradient — MGDA-like solvers would put all their weight on it and
   return a zero update, Nash-MTL's problem would be infeasible, UPGrad/DualProj would constrain
   nothing with it. With no row left (every gradient is zero) the update is zero;
3. calls the aggregator built by :meth:`TorchJDWeighting.make_aggregator` for the number of
   present tasks — one instance per set of present tasks and per hyper-parameters, kept on the
   weighting object, so that stateful aggregators (Nash-MTL's warm start, SDMGrad's weights) keep
   their state across steps for the same set of tasks;
4. writes the direction into the shared parameters' ``.grad`` with ``_reset_grad`` (or, with
   ``rep_grad=True``, backpropagates it from the representation), and returns the task weights
   (the coefficients of the task gradients in the update, 0 for absent tasks) when the aggregator
   is a weighted one, else ``None``.

Task-specific parameters (decoders) keep the gradient of their own unweighted loss ``L_t``, as for
every gradient weighting of LibMTL 1.1.5 (``_compute_grad(mode="backward")`` accumulates them).

For weighted aggregators (UPGrad, DualProj, Aligned-MTL, FairGrad, Nash-MTL, SDMGrad, IMTL-G,
MGDA, CAGrad, PCGrad) the weights come from the aggregator's own weighting on the matrix as given
(float32, like torchjd and the official codes: rank cut-offs such as Aligned-MTL's
``max(lambda) T eps`` and pseudo-inverses depend on the dtype's epsilon, and a float64 Gramian of
float32 gradients would keep their rounding noise as a direction) and the update is
``weights @ matrix``, exactly what torchjd's ``WeightedAggregator.forward`` computes.

Also here: :func:`present_losses`, the same absent-task rule for weightings that see only losses.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.models.compat import CompatWeighting

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


def present_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the rows with a non-zero entry (tasks present in the batch)."""
    return (matrix != 0).any(dim=1)


def present_losses(losses: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the tasks whose loss is not exactly 0 (the engine's absent-task loss)."""
    return losses.detach() != 0


def aggregate(aggregator: Aggregator, matrix: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(update, weights)`` of ``aggregator`` on ``matrix``; ``weights`` is ``None`` for
    aggregators that are not a weighted combination of the rows (ConFIG, GradDrop)."""
    from torchjd.aggregation import WeightedAggregator  # imported by the runs that use it

    with torch.no_grad():
        if isinstance(aggregator, WeightedAggregator):  # and GramianWeightedAggregator
            weights = aggregator.weighting(matrix).to(matrix.dtype)
            return weights @ matrix, weights
        return aggregator(matrix), None


class TaskGradientWeighting(CompatWeighting):
    """A weighting that combines the ``T x D`` matrix of task gradients into one update.

    :meth:`backward` computes the matrix (steps 1 and 4 of the module docstring); subclasses
    implement :meth:`aggregate_tasks` (own implementations: MoCo, DB-MTL, ExcessMTL) and may
    transform the losses first with :meth:`task_losses` (DB-MTL differentiates ``log L_t``).
    """

    needs_task_gradients = True

    def task_losses(self, losses: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        return losses

    def aggregate_tasks(self, matrix: torch.Tensor, losses: torch.Tensor,
                        kwargs: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray | None]:
        """The update for the ``T x D`` task-gradient ``matrix`` and the length-``T`` weights."""
        raise NotImplementedError

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray | None:
        losses = self.task_losses(losses, kwargs)
        loss_data = losses.detach()
        if not self.rep_grad:
            self._compute_grad_dim()
            matrix = self._compute_grad(losses, mode="backward")  # (T, D)
            update, weights = self.aggregate_tasks(matrix, loss_data, kwargs)
            self._reset_grad(update)
            return weights
        per_grads = self._compute_grad(losses, mode="backward", rep_grad=True)
        if not isinstance(self.rep, dict):  # one representation shared by all tasks
            matrix = per_grads.reshape(self.task_num, -1)
            update, weights = self.aggregate_tasks(matrix, loss_data, kwargs)
            self.rep.backward(update.reshape(self.rep.shape).to(self.rep.dtype))
            return weights
        # one representation tensor per task (multi-input rows): a block matrix, zero off-block
        flat = [g.reshape(-1).to(self.device) for g in per_grads]
        sizes = [f.numel() for f in flat]
        matrix = torch.zeros(self.task_num, sum(sizes), device=self.device)
        offset = 0
        for tn, f in enumerate(flat):
            matrix[tn, offset:offset + sizes[tn]] = f
            offset += sizes[tn]
        update, weights = self.aggregate_tasks(matrix, loss_data, kwargs)
        for tn, (task, part) in enumerate(zip(self.task_name, update.split(sizes))):
            rep = self.rep[task]
            rep.backward(part.reshape(rep.shape).to(rep.dtype), retain_graph=tn + 1 < self.task_num)
        return weights


class TorchJDWeighting(TaskGradientWeighting):
    """A weighting whose update is a torchjd aggregator of the task gradients (steps 2-3).

    Subclasses implement :meth:`make_aggregator`; the registered defaults are its keywords.
    """

    #: warnings the aggregator's solver emits at every step (e.g. cvxpy's "not DPP"), silenced
    quiet_warnings: tuple[str, ...] = ()

    def make_aggregator(self, rows: int, **kwargs: Any) -> Aggregator:
        raise NotImplementedError

    def _aggregator_for(self, present: torch.Tensor, kwargs: dict[str, Any]) -> Aggregator:
        # kept outside nn.Module registration: not parameters, not in the state dict
        cache: dict[tuple, Aggregator] = self.__dict__.setdefault("_torchjd_aggregators", {})
        key = (tuple(bool(p) for p in present),
               tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = self.make_aggregator(int(present.sum()), **kwargs)
        return cache[key]

    def aggregate_tasks(self, matrix: torch.Tensor, losses: torch.Tensor,
                        kwargs: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray | None]:
        present = present_rows(matrix)
        weights = np.zeros(matrix.shape[0])
        if not bool(present.any()):
            return torch.zeros_like(matrix[0]), weights
        aggregator = self._aggregator_for(present, kwargs)
        with warnings.catch_warnings():
            for message in self.quiet_warnings:
                warnings.filterwarnings("ignore", message=message)
            update, sub_weights = aggregate(aggregator, matrix[present])
        if sub_weights is None:
            return update, None
        weights[present.cpu().numpy()] = sub_weights.double().cpu().numpy()
        return update, weights

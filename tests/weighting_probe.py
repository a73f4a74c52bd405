"""A tiny model for testing weightings on given task gradients (no network, no data).

``Probe(cls, T, D)`` mixes a weighting class into a module with one shared parameter ``p``
(``D`` zeros, or ones for representation probes). :func:`step` builds the task losses
``L_t = g_t . p + v_t`` — gradients exactly the rows ``g_t`` of ``grads``, values ``v_t`` (1 by
default) — calls ``backward`` and returns ``(p.grad, backward's result)``. A task whose row is
zero and whose value is 0 gets the engine's absent-task loss: an exact 0 attached to the graph.
With ``rep_grad=True`` the shared representation is ``Z = p`` as one sample (``1 x D``), so the
representation gradients are the rows too and ``p.grad`` is the backpropagated update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def make_probe(weighting_cls: type, num_tasks: int, dim: int, rep_grad: bool = False) -> Any:
    class Probe(weighting_cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            nn.Module.__init__(self)
            init = torch.ones(dim) if rep_grad else torch.zeros(dim)
            self.p = nn.Parameter(init)
            self.task_name = [f"t{i}" for i in range(num_tasks)]
            self.task_num = num_tasks
            self.rep_grad = rep_grad
            self.multi_input = False
            self.device = torch.device("cpu")
            if rep_grad:
                self.rep_tasks: dict[str, torch.Tensor] = {}

        def get_share_params(self) -> list[nn.Parameter]:
            return [self.p]

        def zero_grad_share_params(self) -> None:
            if self.p.grad is not None:
                self.p.grad.zero_()

    model = Probe()
    model.init_param()
    return model


def probe_losses(model: Any, grads: torch.Tensor, values: torch.Tensor | None = None
                 ) -> torch.Tensor:
    grads = grads.to(torch.float32)
    if values is None:
        values = torch.ones(len(grads))
    present = (grads != 0).any(dim=1) | (values != 0)
    if model.rep_grad:
        rep = model.p.unsqueeze(0) * 1.0
        model.rep = rep
        parts = []
        for t, task in enumerate(model.task_name):
            copy = rep.detach().clone().requires_grad_(True)
            model.rep_tasks[task] = copy
            parts.append((copy[0] * grads[t]).sum() - (grads[t] @ model.p.detach()) + values[t])
        losses = torch.stack(parts)
    else:
        losses = grads @ model.p + values
    return losses * present.to(losses.dtype)  # absent: an exact 0 on the graph


def step(model: Any, grads: torch.Tensor, values: torch.Tensor | None = None,
         **kwargs: Any) -> tuple[torch.Tensor, Any]:
    model.p.grad = None
    result = model.backward(probe_losses(model, grads, values), **kwargs)
    grad = model.p.grad
    return (torch.zeros_like(model.p) if grad is None else grad.detach().clone()), result

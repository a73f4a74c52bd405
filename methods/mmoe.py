"""MMoE — multi-gate mixture-of-experts (Ma et al., KDD 2018, §4.2, Eq. 5-6).

``num_experts`` shared experts ``f_e`` (each a full copy of the scenario's encoder) and one softmax
gate per task: ``f^k(x) = sum_e g^k(x)_e f_e(x)`` with ``g^k(x) = softmax(W_gk x)`` (Eq. 6).
As in LibMTL 1.1.5's ``MMoE``, the gate is a linear layer on the flattened raw input.

Defaults: ``num_experts=3`` (small, so that the CPU profiles stay fast; the experts dominate the
parameter count, ``num_experts`` x encoder). Shared parameters (for gradient-surgery weightings)
are the experts, as in LibMTL; the gates are task-specific.

Multi-input scenarios: ``encode`` runs every expert once on all rows and returns one gated
representation per task for all rows (the base class keeps each task's rows), so the fused pass
of :mod:`bench.run.engine` works.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from bench.api import Choice, CompatArchitecture, Settings, register_architecture, register_method


def mix(experts: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``experts`` ``(E, N, ...)`` mixed by ``gates`` ``(N, E)`` -> ``(N, ...)``."""
    return torch.einsum("en...,ne->n...", experts, gates)


class MMoE(CompatArchitecture):
    """Shared experts, one softmax gate per task on the flattened input."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.num_experts = int(kwargs.get("num_experts", 3))
        if self.num_experts < 1:
            raise ValueError("MMoE: num_experts must be >= 1")
        self.input_size = math.prod(kwargs["input_shape"])
        self.experts_shared = nn.ModuleList([encoder_class() for _ in range(self.num_experts)])
        self.gate_specific = nn.ModuleDict({
            task: nn.Linear(self.input_size, self.num_experts) for task in task_name})

    def gate(self, task: str, inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate_specific[task](inputs.flatten(1)), dim=-1)

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        shared = torch.stack([e(inputs) for e in self.experts_shared])
        return [mix(shared, self.gate(task, inputs)) for task in self.task_name]

    def get_share_params(self):
        return list(self.experts_shared.parameters())


class MMoESettings(Settings):
    num_experts: Annotated[int, Field(ge=1, le=64)] = 3


register_architecture("mmoe", MMoE, description="multi-gate mixture of experts (shared experts, "
                      "per-task softmax gates on the input)", settings=MMoESettings,
                      search={"num_experts": Choice("expert counts around the default 3 (Ma "
                                                    "et al. 2018 vary 2-8 experts)",
                                                    (2, 3, 4, 6))})
register_method("mmoe", architecture="mmoe", weighting="ew",
                family="architecture",
                description="MMoE: shared expert encoders mixed by per-task gates",
                paper="Ma et al., Modeling Task Relationships in Multi-task Learning with "
                      "Multi-gate Mixture-of-Experts, KDD 2018")

"""CGC — customized gate control (Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020,
§4.2, Eq. 2-4): the single-level building block of PLE.

Shared experts plus task-specific experts; task ``k``'s gate mixes the shared experts and *its own*
experts only: ``y^k(x) = sum_e g^k(x)_e S^k(x)_e`` with ``S^k = [E_k,1..m_k, E_s,1..m_s]`` and
``g^k(x) = softmax(W_gk x)`` (Eq. 2-3). As in LibMTL 1.1.5's ``CGC``, the gate is a linear layer on
the flattened raw input and every expert is a copy of the scenario's encoder.

Defaults: ``num_shared_experts=1`` and ``num_specific_experts=1`` (per task): the smallest CGC that
has both kinds of expert; with ``T`` tasks the model has ``T + 1`` encoders. Shared parameters (for
gradient-surgery weightings) are the shared experts.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from bench.api import Choice, CompatArchitecture, Settings, register_architecture, register_method


class CGC(CompatArchitecture):
    """Shared + task-specific experts, one softmax gate per task."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.num_shared = int(kwargs.get("num_shared_experts", 1))
        self.num_specific = int(kwargs.get("num_specific_experts", 1))
        if self.num_shared < 1 or self.num_specific < 0:
            raise ValueError("CGC: need >= 1 shared expert and >= 0 specific experts")
        input_size = math.prod(kwargs["input_shape"])
        self.experts_shared = nn.ModuleList([encoder_class() for _ in range(self.num_shared)])
        self.experts_specific = nn.ModuleDict({
            task: nn.ModuleList([encoder_class() for _ in range(self.num_specific)])
            for task in task_name})
        self.gate_specific = nn.ModuleDict({
            task: nn.Linear(input_size, self.num_shared + self.num_specific)
            for task in task_name})

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        shared = [e(inputs) for e in self.experts_shared]
        reps = []
        for t, task in enumerate(self.task_name):
            rows = inputs
            if self.multi_input and task_ids is not None:
                # specific experts only see their task's rows (the other rows are never decoded
                # for this task); a task without rows in the batch is not computed at all
                mask = task_ids == t
                if not bool(mask.any()):
                    reps.append(torch.zeros_like(shared[0]))
                    continue
                rows = inputs[mask]
            specific = [e(rows) for e in self.experts_specific[task]]
            if rows is not inputs and specific:
                full = []
                for rep in specific:
                    padded = rep.new_zeros((inputs.shape[0], *rep.shape[1:]))
                    padded[task_ids == t] = rep
                    full.append(padded)
                specific = full
            experts = torch.stack(specific + shared)
            gates = torch.softmax(self.gate_specific[task](inputs.flatten(1)), dim=-1)
            reps.append(torch.einsum("en...,ne->n...", experts, gates))
        return reps

    def get_share_params(self):
        return list(self.experts_shared.parameters())


Experts = Annotated[int, Field(ge=1, le=64)]


class CGCSettings(Settings):
    num_shared_experts: Experts = 1
    num_specific_experts: Experts = Field(1, description="per task")


register_architecture("cgc", CGC, description="customized gate control: shared + task-specific "
                      "experts, per-task gates", settings=CGCSettings,
                      search={"num_shared_experts": Choice("1 or 2 (Tang et al. 2020 use "
                                                           "1-2 per group)", (1, 2)),
                              "num_specific_experts": Choice("1 or 2 (Tang et al. 2020 use "
                                                             "1-2 per group)", (1, 2))})
register_method("cgc", architecture="cgc", weighting="ew",
                family="architecture",
                description="CGC (single-level PLE): shared and task-specific expert encoders",
                paper="Tang et al., Progressive Layered Extraction (PLE), RecSys 2020")

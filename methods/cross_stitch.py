"""Cross-Stitch networks (Misra et al., CVPR 2016, §3, Eq. 1) on any staged encoder.

One column (a full copy of the scenario's encoder) per task. After every stage ``s`` of the
staged-encoder protocol (:mod:`bench.models.backbones`), a cross-stitch unit mixes the columns'
feature maps with a learnt ``T x T`` matrix: ``x~_i = sum_j alpha^s_ij x_j`` (the paper's Eq. 1
for ``T`` tasks). Initialisation as the paper's best setting (§4.1, Table 2 "0.9/0.1"):
``alpha_ii = 0.9``, ``alpha_ij = 0.1 / (T - 1)``, so each row sums to one.

Fix 6 of :mod:`bench.models.compat`: LibMTL 1.1.5's ``Cross_stitch`` needs a ResNet-shaped encoder
(``conv1``, ``layer1..4``) and mixes the columns with one shared vector; this version needs only
``stem`` + ``stages`` and has one full matrix per stage. Registered with ``needs_encoder="staged"``.
Every column processes every row (single- and multi-input); shared parameters for
gradient-surgery weightings are all columns and all cross-stitch units (each is influenced by every
task's loss).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from bench.api import Choice, CompatArchitecture, Settings, register_architecture, register_method


def stitch_init(num_tasks: int, self_weight: float = 0.9) -> torch.Tensor:
    if num_tasks == 1:
        return torch.ones(1, 1)
    alpha = torch.full((num_tasks, num_tasks), (1.0 - self_weight) / (num_tasks - 1))
    alpha.fill_diagonal_(self_weight)
    return alpha


class CrossStitchEncoder(nn.Module):
    """``T`` staged columns with a cross-stitch unit after each stage; returns ``T`` outputs."""

    def __init__(self, columns: list[nn.Module], self_weight: float = 0.9) -> None:
        super().__init__()
        for col in columns:
            if not (hasattr(col, "stem") and isinstance(getattr(col, "stages", None),
                                                        nn.ModuleList)):
                raise TypeError("Cross-Stitch needs a staged encoder (stem + stages ModuleList), "
                                f"got {type(col).__name__}")
        self.columns = nn.ModuleList(columns)
        n_stages = len(columns[0].stages)
        self.alpha = nn.ParameterList([
            nn.Parameter(stitch_init(len(columns), self_weight)) for _ in range(n_stages)])

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        xs = [col.stem(inputs) for col in self.columns]
        for s, alpha in enumerate(self.alpha):
            stacked = torch.stack([col.stages[s](x) for col, x in zip(self.columns, xs)])
            mixed = torch.einsum("ij,j...->i...", alpha, stacked)
            xs = list(mixed.unbind(0))
        return xs


class CrossStitch(CompatArchitecture):
    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = CrossStitchEncoder([encoder_class() for _ in task_name],
                                          float(kwargs.get("self_weight", 0.9)))

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        return self.encoder(inputs)


class CrossStitchSettings(Settings):
    self_weight: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.9, description="initial weight of a column on itself (the rest shared equally)")


register_architecture("cross_stitch", CrossStitch,
                      description="one encoder column per task, T x T cross-stitch units after "
                      "every stage", settings=CrossStitchSettings, needs_encoder="staged",
                      search={"self_weight": Choice("Misra et al. 2016 Table 2's initialisations "
                                                    "(0.5/0.5, 0.9/0.1, 1/0)", (0.5, 0.9, 1.0))})
register_method("cross_stitch", architecture="cross_stitch", weighting="ew",
                family="architecture",
                description="Cross-Stitch: task columns mixed by learnt T x T units per stage",
                paper="Misra et al., Cross-stitch Networks for Multi-task Learning, CVPR 2016")

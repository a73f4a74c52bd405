"""Single-task — one independent network per task (the reference of Δm%, MoLA §5.3).

Each task has its own encoder and decoder and sees only its own data. Training them together with
the summed loss is exactly training them apart: no parameter is shared, so each task's gradient
reaches only its own network (and Adam/SGD act per parameter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.api import CompatArchitecture, register_architecture, register_method


class SingleTask(CompatArchitecture):
    """``T`` independent encoders; ``encode`` runs encoder ``t`` only on task ``t``'s rows."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = nn.ModuleList([self.encoder_class() for _ in task_name])

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        if not self.multi_input or task_ids is None:
            return [enc(inputs) for enc in self.encoder]
        reps: list[torch.Tensor] = []
        for t, enc in enumerate(self.encoder):
            rows = task_ids == t
            if not bool(rows.any()):
                reps.append(inputs.new_zeros(0))
                continue
            rep = enc(inputs[rows])
            full = rep.new_zeros((inputs.shape[0], *rep.shape[1:]))
            full[rows] = rep
            reps.append(full)
        return reps


register_architecture("single_task", SingleTask,
                      description="one independent encoder per task (no sharing)")
register_method("single_task", architecture="single_task", weighting="ew",
                family="baseline",
                description="one network per task, trained on its own data (Δm% reference)",
                paper="MoLA (ICML 2024) Appendix A, baseline (1)")

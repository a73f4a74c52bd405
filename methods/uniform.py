"""Uniform — one network for all data, pooled, with no task-specific parameter (MoLA App. A).

The baseline that ignores heterogeneity: one encoder and **one** output layer shared by all tasks.

* one label space (domain heterogeneity): the single head predicts it for every domain;
* different label spaces (multi-input tasks): the head predicts the union of all label spaces and
  a sample's prediction is the argmax over the union, with no task identifier. Task ``t`` receives
  the union logits with its own classes moved first, so cross-entropy and accuracy on its labels
  are exactly those of the union problem;
* single-input dense tasks: one dense head outputs every task's channels; a classification task
  reads its channels averaged over pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.api import CompatArchitecture, TaskSpec, register_architecture, register_method
from bench.data.scenario import is_dense


class Uniform(CompatArchitecture):
    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = self.encoder_class()
        tasks: tuple[TaskSpec, ...] = kwargs["tasks"]
        make = kwargs["decoder_factory"]
        self.dense = any(is_dense(t.kind) for t in tasks)
        if kwargs["shared_label_space"]:
            self.head = make(tasks[0])
            self.blocks = {t.name: slice(0, t.num_outputs) for t in tasks}
            total = tasks[0].num_outputs
        else:
            offsets, total = {}, 0
            for t in tasks:
                offsets[t.name] = slice(total, total + t.num_outputs)
                total += t.num_outputs
            self.blocks = offsets
            kind = "segmentation" if self.dense else "classification"
            self.head = make(TaskSpec("union", kind, total, ("accuracy",)))
        self.total_outputs = total
        self.kinds = {t.name: t.kind for t in tasks}
        self.shared = bool(kwargs["shared_label_space"])
        self.decoders = nn.ModuleDict()  # the one head replaces the per-task decoders

    def _task_output(self, union: torch.Tensor, task: str) -> torch.Tensor:
        block = self.blocks[task]
        if self.shared:
            return union
        if self.dense:
            out = union[:, block]
            return out.mean(dim=(2, 3)) if not is_dense(self.kinds[task]) else out
        # own classes first, then every other class: CE/argmax equal those over the union
        order = list(range(block.start, block.stop)) + [
            i for i in range(self.total_outputs) if not block.start <= i < block.stop]
        return union[:, order]

    def forward(self, inputs: torch.Tensor, task_name: str | None = None,
                task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        union = self.head(self.encoder(inputs))
        out = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None and task != task_name:
                continue
            rows = union
            if self.multi_input and task_ids is not None and task_name is None:
                rows = union[task_ids == tn]
            out[task] = self._task_output(rows, task)
        return out

    def get_share_params(self):
        return list(self.encoder.parameters()) + list(self.head.parameters())


register_architecture("uniform", Uniform,
                      description="one network and one output layer for all tasks, data pooled",
                      supports_rep_grad=False)
register_method("uniform", architecture="uniform", weighting="ew",
                family="baseline",
                description="one network, one shared output layer, all data pooled",
                paper="MoLA (ICML 2024) Appendix A, domain-heterogeneity baseline (1)")

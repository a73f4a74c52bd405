"""PLE — Progressive Layered Extraction (Tang, Liu, Zhao & Gong, RecSys 2020, §4.3, Fig. 4,
Eq. 5-6): CGC extraction networks stacked into levels, on any staged encoder.

Level ``j`` has ``m_k`` experts per task ``k``, ``m_s`` shared experts, one gate per task and (below
the last level) one shared gate. Task ``k``'s experts take task ``k``'s previous output, the shared
experts the shared module's previous output (at level 1 both are the input ``x``); each gate is a
softmax over a linear map of its path's previous output (Eq. 5):

    g^{k,j} = w^{k,j}(g^{k,j-1}) · [E_k^j(g^{k,j-1}), E_s^j(g^{s,j-1})]      (task k: own + shared)
    g^{s,j} = w^{s,j}(g^{s,j-1}) · [E_1^j(g^{1,j-1}), ..., E_T^j(g^{T,j-1}), E_s^j(g^{s,j-1})]

and task ``k``'s decoder reads ``g^{k,N}`` (Eq. 6). With one level PLE is CGC (``methods/cgc.py``,
same parameter count, a test).

Adaptation (as LibMTL 1.1.5's PLE, fix 6 of :mod:`bench.models.compat`): an expert is a
*piece* of a copy of the scenario's encoder; the staged encoder is cut at stage boundaries into
``num_levels`` consecutive groups of stages (the stem belongs to the first), so each expert
"column" is a full encoder split across the levels. ``num_levels=None`` gives one level per stage
(4 on a ResNet; LibMTL makes the stem a fifth level of its own). Gates are linear layers on the
flattened input of their level (LibMTL's, and the paper's ``w(x) = softmax(W x)``); the sizes come
from one probe forward. Unlike LibMTL 1.1.5 — which runs the shared experts once per task on that
task's features and has no shared gate — the shared module here is the paper's: one shared path
with its own gate over all experts of the level. ``needs_encoder="staged"``.

Defaults: ``num_shared_experts=1``, ``num_specific_experts=1`` (per task), as ``cgc`` here, so that
the two differ only by the levels; ``num_levels=None`` (one per stage). With ``T`` tasks the model
holds ``T + 1`` encoders' worth of experts.

Gradients: the last level's task experts and task gates receive only their task's loss; a
lower level's task experts and gates also feed the shared path, so — as the paper intends —
every task's loss reaches them. Shared parameters for gradient weightings: the shared experts
and the shared gates (LibMTL: the shared experts). Multi-input scenarios: every path runs on
every row (the shared gate mixes all tasks' experts for every sample), so the fused forward is
exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.api import CompatArchitecture, register_architecture, register_method


def level_groups(num_stages: int, num_levels: int | None) -> list[list[int]]:
    """Stage indices of each level: ``num_levels`` consecutive groups, as even as possible
    (earlier levels get the extra stage)."""
    levels = num_stages if num_levels is None else int(num_levels)
    if not 1 <= levels <= num_stages:
        raise ValueError(f"PLE: num_levels must be between 1 and the encoder's {num_stages} "
                         f"stages, got {num_levels}")
    base, extra = divmod(num_stages, levels)
    groups, start = [], 0
    for j in range(levels):
        size = base + (1 if j < extra else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def split_levels(encoder: nn.Module, groups: list[list[int]]) -> nn.ModuleList:
    """The pieces of one staged encoder, one ``nn.Sequential`` per level (stem in the first)."""
    if not (hasattr(encoder, "stem") and isinstance(getattr(encoder, "stages", None),
                                                    nn.ModuleList)):
        raise TypeError("PLE needs a staged encoder (stem + stages ModuleList), got "
                        f"{type(encoder).__name__}")
    pieces = []
    for j, group in enumerate(groups):
        modules = ([encoder.stem] if j == 0 else []) + [encoder.stages[s] for s in group]
        pieces.append(nn.Sequential(*modules))
    return nn.ModuleList(pieces)


def mix(experts: list[torch.Tensor], gates: torch.Tensor) -> torch.Tensor:
    """Experts (each ``(N, ...)``) mixed by per-sample ``gates`` ``(N, E)``."""
    return torch.einsum("en...,ne->n...", torch.stack(experts), gates)


class PLE(CompatArchitecture):
    """Stacked extraction networks: task + shared experts per level, task and shared gates."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.num_shared = int(kwargs.get("num_shared_experts", 1))
        self.num_specific = int(kwargs.get("num_specific_experts", 1))
        if self.num_shared < 1 or self.num_specific < 1:
            raise ValueError("PLE: need >= 1 shared and >= 1 task-specific expert")
        shared = [encoder_class() for _ in range(self.num_shared)]
        if not isinstance(getattr(shared[0], "stages", None), nn.ModuleList):
            raise TypeError("PLE needs a staged encoder (stem + stages ModuleList), got "
                            f"{type(shared[0]).__name__}")
        self.groups = level_groups(len(shared[0].stages), kwargs.get("num_levels"))
        sizes = self._probe(shared[0], tuple(kwargs["input_shape"]))
        levels = len(self.groups)
        # experts_shared[e][j]: level j of shared expert column e (likewise per task)
        self.experts_shared = nn.ModuleList([split_levels(e, self.groups) for e in shared])
        self.experts_specific = nn.ModuleDict({
            task: nn.ModuleList([split_levels(encoder_class(), self.groups)
                                 for _ in range(self.num_specific)]) for task in task_name})
        width = self.num_specific + self.num_shared
        self.gate_specific = nn.ModuleDict({
            task: nn.ModuleList([nn.Linear(sizes[j], width) for j in range(levels)])
            for task in task_name})
        all_experts = len(task_name) * self.num_specific + self.num_shared
        self.gate_shared = nn.ModuleList([nn.Linear(sizes[j], all_experts)
                                          for j in range(levels - 1)])

    @property
    def num_levels(self) -> int:
        return len(self.groups)

    @torch.no_grad()
    def _probe(self, encoder: nn.Module, input_shape: tuple[int, ...]) -> list[int]:
        """Flattened size of each level's input (eval mode: no BatchNorm statistic changes)."""
        was_training = encoder.training
        encoder.eval()
        x = torch.zeros(1, *input_shape)
        sizes = []
        for piece in split_levels(encoder, self.groups):
            sizes.append(x.numel())
            x = piece(x)
        encoder.train(was_training)
        return sizes

    def gates(self, inputs: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Every gate's weights: ``(task gates [task][level], shared gates [level])``."""
        return self._run(inputs)[1:]

    def _run(self, inputs: torch.Tensor
             ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[torch.Tensor]]:
        tasks = list(self.task_name)
        task_in = [inputs] * len(tasks)
        shared_in = inputs
        task_gates: list[list[torch.Tensor]] = [[] for _ in tasks]
        shared_gates: list[torch.Tensor] = []
        for j in range(self.num_levels):
            shared_out = [col[j](shared_in) for col in self.experts_shared]
            specific_out = [[col[j](task_in[t]) for col in self.experts_specific[task]]
                            for t, task in enumerate(tasks)]
            new_in = []
            for t, task in enumerate(tasks):
                gate = torch.softmax(self.gate_specific[task][j](task_in[t].flatten(1)), dim=-1)
                task_gates[t].append(gate)
                new_in.append(mix(specific_out[t] + shared_out, gate))
            if j < self.num_levels - 1:
                gate = torch.softmax(self.gate_shared[j](shared_in.flatten(1)), dim=-1)
                shared_gates.append(gate)
                shared_in = mix([o for outs in specific_out for o in outs] + shared_out, gate)
            task_in = new_in
        return task_in, task_gates, shared_gates

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        return self._run(inputs)[0]

    def get_share_params(self):
        return list(self.experts_shared.parameters()) + list(self.gate_shared.parameters())


_DEFAULTS: dict[str, Any] = {"num_shared_experts": 1, "num_specific_experts": 1,
                             "num_levels": None}

register_architecture(
    "ple", PLE, description="progressive layered extraction: stacked CGC levels (task and shared "
    "experts = encoder pieces, task and shared gates)", defaults=_DEFAULTS, needs_encoder="staged",
    supports_rep_grad=True, supports_fused_multi_input=True)
register_method(
    "ple", architecture="ple", weighting="ew",
    description="PLE: multi-level extraction networks over encoder pieces, equal weights",
    paper="Tang et al., Progressive Layered Extraction (PLE), RecSys 2020 (§4.3, Eq. 5-6)",
    family="architecture")

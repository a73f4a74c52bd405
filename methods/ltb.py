"""LTB — Learning to Branch (Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning",
ICML 2020, §3): a tree of shared and task-specific layers whose branching is learnt with
Gumbel-softmax, on any staged encoder, branching at stage boundaries.

The design space is a super-graph of layers of nodes. Layer 0 is the root (the encoder's stem,
shared by every task); layer ``s = 1..S`` holds ``n_s`` nodes, each a copy of the encoder's stage
``s``; the last layer has one node per task (the leaves; leaf ``t`` feeds task ``t``'s decoder).
Every node ``i`` of layer ``s >= 2`` chooses one parent among the ``n_{s-1}`` nodes of layer
``s-1`` with a learnt categorical distribution ``p_i = softmax(θ_i)`` (the nodes of layer 1 all
hang from the root). Training samples one tree per forward pass with the straight-through
Gumbel-softmax, ``d_i = one_hot(argmax(θ_i + g)) - sg(y) + y``, ``y = softmax((θ_i + g) / τ)``,
``g ~ Gumbel(0, 1)``, and feeds node ``i`` the input ``sum_j d_ij x_j`` (exactly its sampled
parent's output in the forward pass; ``θ`` gets the relaxed gradient). Network weights and
branching logits are learnt jointly by the same optimiser. In evaluation mode each node takes
its most probable parent: the derived tree (``tree()``).

Temperature: ``τ_e = tau0 / sqrt(e + 1)`` at epoch ``e`` (LibMTL's LTB schedule, whose
``tau0 = epochs / 20`` is about 1 for the embedded scenarios' 20-25 epochs: our default
``tau0=1.0``; ``--set arch.tau0=10`` is LibMTL's value for 200 epochs). Epochs are counted by the
model going back to training mode after an evaluation, as the engine does once per epoch. With
``hard=True`` the forward sample does not depend on ``τ``; it scales the relaxed gradient.

Defaults and adaptation (fix 6 of :mod:`bench.models.compat`: LibMTL's LTB exists only on its
GitHub head and reaches into a torchvision ResNet): ``nodes=None`` puts ``T`` nodes in every
layer (LibMTL's super-graph; ``--set arch.nodes=[1,2,2,4]`` narrows it, the last entry must be
``T``); the stem is one shared root (LibMTL gives every column its own stem and lets layer 1
choose among them); ``warmup_epochs=0`` (LibMTL feeds every node the *sum* of all parents during
its first ``epochs/100`` epochs; ``warmup_epochs=E`` feeds the mean for ``E`` epochs); the
logits start at zero (uniform ``p``). Not reproduced: the paper's separate phase that retrains
the derived tree; here the derived tree is the one the super-graph's weights were trained in.

Gradients: in a sampled tree a node receives only the losses of the tasks below it (the others'
straight-through weight is exactly zero); a leaf only its task's. Shared parameters for gradient
weightings: the root, the non-leaf layers and the branching logits. Multi-input scenarios: every
node runs on every row (one fused pass); the base class keeps each task's rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import CompatArchitecture, register_architecture, register_method


class LTB(CompatArchitecture):
    """A Gumbel-softmax-learnt tree over a staged encoder's stages."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        first = encoder_class()
        if not (hasattr(first, "stem") and isinstance(getattr(first, "stages", None),
                                                      nn.ModuleList)):
            raise TypeError("LTB needs a staged encoder (stem + stages ModuleList), got "
                            f"{type(first).__name__}")
        num_stages, num_tasks = len(first.stages), len(task_name)
        nodes = kwargs.get("nodes")
        nodes = [num_tasks] * num_stages if nodes is None else [int(n) for n in nodes]
        if len(nodes) != num_stages or nodes[-1] != num_tasks or min(nodes) < 1:
            raise ValueError(f"LTB: nodes must give >= 1 node for each of the {num_stages} "
                             f"stages and end with the {num_tasks} tasks, got {nodes}")
        self.nodes = nodes
        self.tau0 = float(kwargs.get("tau0", 1.0))
        self.warmup_epochs = int(kwargs.get("warmup_epochs", 0))
        columns = [first] + [encoder_class() for _ in range(max(nodes) - 1)]
        self.root = first.stem
        self.layers = nn.ModuleList([
            nn.ModuleList([columns[i].stages[s] for i in range(nodes[s])])
            for s in range(num_stages)])
        # branch_logits[s - 1]: (n_s, n_{s-1}) logits of the parents (in stage s - 1) of the
        # nodes of stage s, s >= 1 (the nodes of stage 0 hang from the root)
        self.branch_logits = nn.ParameterList([
            nn.Parameter(torch.zeros(nodes[s], nodes[s - 1])) for s in range(1, num_stages)])
        self._ltb_epoch = 0

    def train(self, mode: bool = True):  # type: ignore[override]
        if mode and not self.training:
            self._ltb_epoch += 1  # back to training after an evaluation: the next epoch
        return super().train(mode)

    @property
    def temperature(self) -> float:
        return self.tau0 / math.sqrt(self._ltb_epoch + 1)

    def branch_probabilities(self) -> list[torch.Tensor]:
        """Per stage ``s >= 1``, the ``(n_s, n_{s-1})`` parent distribution of each node."""
        return [torch.softmax(logits, dim=-1) for logits in self.branch_logits]

    def sample_tree(self) -> list[torch.Tensor]:
        """One hard tree: per stage ``s >= 1``, one-hot parent choices (straight-through)."""
        return [F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
                for logits in self.branch_logits]

    def tree(self) -> list[list[int]]:
        """The derived tree: each node's most probable parent, per stage ``s >= 1``."""
        return [logits.argmax(dim=-1).tolist() for logits in self.branch_logits]

    def _choices(self) -> list[torch.Tensor]:
        if not self.training:
            return [F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
                    for logits in self.branch_logits]
        if self._ltb_epoch < self.warmup_epochs:
            return [torch.full_like(logits, 1.0 / logits.shape[-1])
                    for logits in self.branch_logits]
        return self.sample_tree()

    def forward_tree(self, inputs: torch.Tensor, choices: list[torch.Tensor]
                     ) -> list[torch.Tensor]:
        """The leaves' outputs with the given parent weights per stage ``s >= 1``."""
        h = self.root(inputs)
        xs = [node(h) for node in self.layers[0]]
        for layer, weights in zip(self.layers[1:], choices):
            mixed = torch.einsum("ij,j...->i...", weights, torch.stack(xs))
            xs = [node(x) for node, x in zip(layer, mixed.unbind(0))]
        return xs

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        return self.forward_tree(inputs, self._choices())

    def get_share_params(self):
        inner = [p for layer in self.layers[:-1] for p in layer.parameters()]
        return list(self.root.parameters()) + inner + list(self.branch_logits.parameters())


_DEFAULTS: dict[str, Any] = {"nodes": None, "tau0": 1.0, "warmup_epochs": 0}

register_architecture(
    "ltb", LTB, description="learning to branch: a tree over the encoder's stages, parents "
    "chosen by Gumbel-softmax", defaults=_DEFAULTS, needs_encoder="staged",
    supports_rep_grad=True, supports_fused_multi_input=True)
register_method(
    "ltb", architecture="ltb", weighting="ew",
    description="LTB: Gumbel-softmax-learnt branching tree over the encoder stages, equal "
                "weights",
    paper="Guo, Lee & Ulbricht, Learning to Branch for Multi-Task Learning, ICML 2020 (§3)",
    family="architecture")

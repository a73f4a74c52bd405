"""DSelect-k — differentiable top-k expert selection (Hazimeh et al., "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021, §3).

A multi-gate mixture of experts (as MMoE, ``methods/mmoe.py``) whose per-task gates are the
paper's per-example DSelect-k gates. With ``n`` experts and ``m = ceil(log2 n)``, a gate holds
``k`` single-expert selectors; selector ``i`` has ``m`` binary-encoding logits ``z^(i)`` and
selects expert ``l`` with weight

    r(z)_l = prod_b [ S(z_b) if bit b of l is 1 else 1 - S(z_b) ],
    S(t)   = 0 (t <= -γ/2),  -2 t³/γ³ + 3 t/(2γ) + 1/2 (|t| < γ/2),  1 (t >= γ/2)  (smooth-step)

and the gate is ``q = sum_i softmax(α)_i r(z^(i))``: non-negative, summing to one (``n`` a power
of two), with at most ``k`` non-zeros once every ``z`` has left ``(-γ/2, γ/2)`` — the smooth-step
reaches 0 and 1 exactly, so selection becomes exactly sparse during training. Per-example gating
(§3, "example-conditioned" in the reference): ``z = W_z x`` and ``α = W_α x`` are linear in the
flattened input, one pair per task. Task ``t``'s representation is ``sum_l q^t(x)_l f_l(x)``.

Regularisers (added through the engine's ``auxiliary_loss()``): the optional entropy penalty
``λ sum_i H(r(z^(i)))`` that speeds up convergence to binary selectors (``entropy_reg = λ``,
off by default as in the reference's ``DSelectKGate``; LibMTL 1.1.5 always adds 1e-6), and — only
when ``n`` is not a power of two — the reference's ``sum 1 / sum_l r(z^(i))_l``, which keeps a
selector from putting its mass on the ``2^m - n`` codes that name no expert.

Defaults, and their source: ``gamma=1.0`` (reference implementation and LibMTL ``--kgamma``),
``num_nonzeros=k=2`` (LibMTL ``--num_nonzeros``; the reference's README example), initial ``z``
weights and biases ~ U(-γ/100, γ/100) and ``α`` ~ U(-0.05, 0.05) (the reference's initialisers);
``num_experts=4`` experts, each a copy of the scenario's encoder (the smallest power of two with
``k < n``; ``mmoe`` here uses 3), ``entropy_reg=0.0``.

Reference implementation: google-research/dselect_k_moe (``DSelectKGate``); LibMTL 1.1.5's
``DSelect_k`` follows it. Multi-input scenarios: every expert runs on every row (one fused pass),
each task's gate is applied to all rows and the base class keeps each task's rows; regularisers
count only the rows a gate is decoded for. Shared parameters (gradient weightings): the experts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.api import CompatArchitecture, register_architecture, register_method

EPSILON = 1e-6  # the reference's


def smooth_step(t: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """The cubic smooth-step: 0 below -γ/2, 1 above γ/2, C¹ in between."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t),
                       torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    """Per-example DSelect-k gate over ``num_experts`` experts with ``k`` selectors."""

    def __init__(self, input_size: int, num_experts: int, k: int, gamma: float = 1.0) -> None:
        super().__init__()
        if num_experts < 2 or k < 1:
            raise ValueError("DSelect-k: need num_experts >= 2 and num_nonzeros >= 1")
        self.num_experts, self.k, self.gamma = num_experts, k, float(gamma)
        self.num_binary = math.ceil(math.log2(num_experts))
        self.power_of_2 = num_experts == 2**self.num_binary
        self.z_logits = nn.Linear(input_size, k * self.num_binary)
        self.w_logits = nn.Linear(input_size, k)
        with torch.no_grad():
            for p in self.z_logits.parameters():
                p.uniform_(-self.gamma / 100, self.gamma / 100)
            for p in self.w_logits.parameters():
                p.uniform_(-0.05, 0.05)
        codes = np.array([list(np.binary_repr(v, width=self.num_binary))
                          for v in range(num_experts)]) == "1"
        self.register_buffer("codes", torch.from_numpy(codes), persistent=False)  # (n, m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(expert weights (N, n), selector outputs (N, k, n))`` for inputs ``(N, ...)``."""
        flat = x.flatten(1)
        z = self.z_logits(flat).view(-1, self.k, 1, self.num_binary)
        s = smooth_step(z, self.gamma)
        selectors = torch.where(self.codes, s, 1 - s).prod(dim=3)  # (N, k, n)
        weights = torch.softmax(self.w_logits(flat), dim=1)  # (N, k)
        return torch.einsum("nk,nke->ne", weights, selectors), selectors

    def regulariser(self, selectors: torch.Tensor, entropy_reg: float) -> torch.Tensor | None:
        """The reference's training penalties for these selector outputs (None: none apply)."""
        terms = []
        if entropy_reg > 0:
            terms.append(entropy_reg * -(selectors * torch.log(selectors + EPSILON)).sum())
        if not self.power_of_2:
            terms.append((1.0 / selectors.sum(dim=-1)).sum())
        return sum(terms) if terms else None


class DSelectK(CompatArchitecture):
    """Shared experts mixed by one DSelect-k gate per task."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.num_experts = int(kwargs.get("num_experts", 4))
        self.k = int(kwargs.get("num_nonzeros", 2))
        self.entropy_reg = float(kwargs.get("entropy_reg", 0.0))
        gamma = float(kwargs.get("gamma", 1.0))
        input_size = math.prod(kwargs["input_shape"])
        self.experts_shared = nn.ModuleList([encoder_class() for _ in range(self.num_experts)])
        self.gate_specific = nn.ModuleDict({
            task: DSelectKGate(input_size, self.num_experts, self.k, gamma)
            for task in task_name})
        self._penalties: list[torch.Tensor] = []

    def gate(self, task: str, inputs: torch.Tensor) -> torch.Tensor:
        return self.gate_specific[task](inputs)[0]

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        experts = torch.stack([e(inputs) for e in self.experts_shared])
        reps = []
        for t, task in enumerate(self.task_name):
            gate = self.gate_specific[task]
            weights, selectors = gate(inputs)
            if self.training:
                rows = selectors if task_ids is None else selectors[task_ids == t]
                if rows.shape[0]:
                    penalty = gate.regulariser(rows, self.entropy_reg)
                    if penalty is not None:
                        self._penalties.append(penalty)
            reps.append(torch.einsum("en...,ne->n...", experts, weights))
        return reps

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The gates' penalties over the step's forwards (then forgets them)."""
        penalties, self._penalties = self._penalties, []
        return sum(penalties) if penalties else None  # type: ignore[return-value]

    def get_share_params(self):
        return list(self.experts_shared.parameters())


_DEFAULTS: dict[str, Any] = {"num_experts": 4, "num_nonzeros": 2, "gamma": 1.0,
                             "entropy_reg": 0.0}

register_architecture(
    "dselect_k", DSelectK, description="shared experts, per-task DSelect-k gates (differentiable "
    "top-k selection by smooth-step binary encoding)", defaults=_DEFAULTS,
    supports_rep_grad=True, supports_fused_multi_input=True)
register_method(
    "dselect_k", architecture="dselect_k", weighting="ew",
    description="DSelect-k: shared experts with sparse differentiable per-task gates, equal "
                "weights",
    paper="Hazimeh et al., DSelect-k: Differentiable Selection in the Mixture of Experts with "
          "Applications to Multi-Task Learning, NeurIPS 2021 (§3)",
    family="architecture")

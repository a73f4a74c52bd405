"""MoLA-Router — target-agnostic Mixture of Low-rank Adapters (Zhou et al., ICML 2024, §3.5).

The encoder is MoLA-Grad's (adapters on the block convolutions of Block4, not the 1x1 shortcut;
rank 4, alpha 16), but the mixing weights come
from one router shared by all MoLA layers, applied to the raw input: a CIFAR-style ResNet (stem
conv in→16, three stages of three basic blocks with 16/32/64 channels, strides 1/2/2, zero-padded
identity shortcuts), global average pooling and a linear layer to K scores; α = softmax(scores)
(Eq. 3) and sample ``n`` is computed with ``W + Σ_k α_{n,k} ΔW_k`` (Eq. 1).

Task-wise Decorrelation (Eq. 4–5): the K scores are mapped by a trainable linear layer to d = 32
dimensions (Table 10) and L2-normalised; the loss is supervised-contrastive with tasks as classes
and τ = 1 (:func:`bench.models.mola.twd_loss`). Total loss ``Σ_t L_t + λ·L_TwD`` with λ = 0.1; the
engine backpropagates ``auxiliary_loss()``. Task identifiers are read only to build that loss (in
training mode); the representation never depends on them, at training or at inference.
With gradient weightings the engine runs one forward per task, so the router outputs and task ids
of all forwards of a step are accumulated and consumed by ``auxiliary_loss()``.

Number of adapters K: Table 11 shows the best K depends on the dataset (of K ∈ {2, 3, 4}, K = 4
is best on Officehome and K = 3 on VLCS, both with 4 domains), and the reference's MedMNIST setup
uses K = 9. We default to K = T (the number of tasks; 4 on Officehome, where it is the best of
Table 11); ``arch.num_adapters`` overrides it.

Single-input scenarios (every sample serves every task, so a sample has no task label): by
default (``single_input_mode="per_task"``) the router's linear layer outputs T·K scores, one
K-mixture per task; task ``t``'s head gets the representation computed with its own mixture
(un-adapted prefix computed once, as in MoLA-Grad), and TwD treats the T mixtures of a sample as
T samples labelled by their task — it pushes the mixtures of different tasks apart, as it does for
multi-input data. No task id is needed at inference: the head index is known by construction.
The adapted stages' BatchNorm layers are shared by the T paths (their running statistics average
over the paths). ``single_input_mode="shared"`` uses one mixture per sample for all tasks; TwD
then has no classes and is disabled (the mixture differs between samples, never between tasks).

Transformer backbone (§5.5, Table 8): ``backbone.name=swin_embedded`` puts the adapters on the
last Swin stage's linear layers (:class:`bench.models.mola.MoLALinear`); the router stays the CIFAR
ResNet on the raw input.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from bench.api import Choice, register_architecture, register_method
from bench.models.mola import (
    CifarResNetRouter,
    MoLAArchitecture,
    MoLARouterSettings,
    mixture,
    twd_loss,
)


class MoLARouter(MoLAArchitecture):
    """MoLA-Router: K adapters mixed by a router on the raw input; TwD loss on the scores."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, *,
                 twd_weight: float = 0.1, twd_dim: int = 32, temperature: float = 1.0,
                 router_blocks: int = 3,
                 single_input_mode: Literal["per_task", "shared"] = "per_task",
                 twd_input: Literal["scores", "gates"] = "scores", **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        if single_input_mode not in ("per_task", "shared"):
            raise ValueError("single_input_mode must be 'per_task' or 'shared'")
        if kwargs.get("path") == "split":
            raise ValueError("path 'split' needs one-hot α; MoLA-Router's α is soft")
        if twd_input not in ("scores", "gates"):
            raise ValueError("twd_input must be 'scores' or 'gates'")
        self.per_task = not multi_input and single_input_mode == "per_task"
        self.twd_weight = float(twd_weight)
        self.temperature = float(temperature)
        self.twd_input = twd_input
        in_channels = int(kwargs["input_shape"][0])
        outputs = self.num_adapters * (len(task_name) if self.per_task else 1)
        self.router = CifarResNetRouter(in_channels, outputs, blocks=router_blocks)
        self.twd_head = torch.nn.Linear(self.num_adapters, twd_dim)
        self._twd_store: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def twd_enabled(self) -> bool:
        return self.twd_weight > 0 and (self.multi_input or self.per_task)

    def _store(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        if self.training and torch.is_grad_enabled() and self.twd_enabled:
            self._twd_store.append((scores, labels))

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> torch.Tensor | list[torch.Tensor]:
        scores = self.router(inputs)
        h = self.shared_prefix(inputs)
        if not self.per_task:
            if self.multi_input and task_ids is not None:  # for the TwD loss only
                self._store(scores, task_ids)
            with mixture(self.mola, weights=torch.softmax(scores, dim=1)):
                return self.adapted_suffix(h)
        n, tasks = inputs.shape[0], len(self.task_name)
        scores = scores.view(n, tasks, self.num_adapters)
        labels = torch.arange(tasks, device=inputs.device).repeat(n)
        self._store(scores.reshape(n * tasks, self.num_adapters), labels)
        # T tagged copies through the adapted stages in one pass, so that BatchNorm normalises
        # the T paths together in training exactly as its running statistics do at test time
        gates = torch.softmax(scores, dim=2).transpose(0, 1).reshape(tasks * n, self.num_adapters)
        with mixture(self.mola, weights=gates):
            out = self.adapted_suffix(h.repeat(tasks, *([1] * (h.dim() - 1))))
        return list(out.split(n))

    def twd_features(self, scores: torch.Tensor) -> torch.Tensor:
        x = torch.softmax(scores, dim=1) if self.twd_input == "gates" else scores
        return self.twd_head(x)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """``λ·L_TwD`` over the router outputs of the step's forwards (then forgets them)."""
        store, self._twd_store = self._twd_store, []
        if not store or not self.twd_enabled:
            return None
        scores = torch.cat([s for s, _ in store])
        labels = torch.cat([lab for _, lab in store]).to(scores.device)
        return self.twd_weight * twd_loss(self.twd_features(scores), labels, self.temperature)


register_architecture(
    "mola_router", MoLARouter,
    description="MoLA-Router: shared encoder + K low-rank adapters mixed by a router (TwD loss)",
    settings=MoLARouterSettings, needs_encoder="conv_or_swin",
    legacy={"adapt_shortcut": True},
    search={"rank": Choice("MoLA Table 6's ranks", (1, 4, 8, 16, 64)),
            "num_adapters": Choice("MoLA Table 11's K", (2, 3, 4))})
register_method(
    "mola_router", architecture="mola_router", weighting="ew",
    family="low_rank",
    description="MoLA-Router: router-mixed low-rank adapters with the TwD loss, equal weights",
    paper="Zhou et al., Exploring Training on Heterogeneous Data with Mixture of Low-rank "
          "Adapters, ICML 2024 (§3.5)")

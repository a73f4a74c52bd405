"""Mixture of Low-rank Adapters (MoLA, Zhou et al., ICML 2024) — the shared layers.

* :class:`MoLAConv2d` wraps an ``nn.Conv2d`` of weight ``W`` (C_out, C_in, k, k) with K low-rank
  adapters (§3.3): ``A_k`` (r·k, C_in·k), Kaiming-uniform (a=√5), ``B_k`` (C_out·k, r·k), zeros;
  ``ΔW_k = reshape(B_k A_k) · alpha / r`` (alpha = 16 as the reference). The weight seen by sample
  ``n`` is ``W + Σ_k α_{n,k} ΔW_k`` (Eq. 1). ``α`` is given per forward pass through
  :func:`mixture` as task ids (one-hot α, MoLA-Grad, §3.4), one task for the whole batch, or soft
  weights ``(N, K)`` (MoLA-Router, §3.5).
* Computation paths (all give the same result up to rounding; ``tests/test_mola.py``):

  - ``"grouped"`` — the paper's formulation (§3.4, Eq. 2–3): build the N per-sample weights,
    reshape the input to (1, N·C_in, H, W) and run one convolution with ``groups=N``. Reference.
  - ``"split"`` — one-hot α only: sort the batch by task and run one convolution per task with
    ``W + ΔW_t`` (a single convolution when all rows share one task): a plain conv's FLOPs.
  - ``"sum"`` — ``conv(x, W) + Σ_k α_k ⊙ conv(x, ΔW_k)``, computed as one convolution with the
    stacked weight ``[W; ΔW_1; ...; ΔW_K]`` (the "masked sum" when α is one-hot).
  - ``"auto"`` (default) — ``split`` for one-hot α, ``sum`` for soft α (the faster of ``grouped``
    and ``sum`` in :func:`bench.perf.kernels.mola_conv_benchmark`).
* :class:`MoLALinear` — the same for an ``nn.Linear`` (the Transformer of §5.5, Table 8
  "ResNet vs Transformer"): ``A_k`` (r, C_in), ``B_k`` (C_out, r), ``W + Σ_k α_{n,k} B_k A_k ·
  alpha / r``. Its input may carry any number of token dimensions — ``(N, L, C)``, ``(N, H, W, C)``
  or a Swin's windows ``(N·nW, L, C)`` with the windows of one sample contiguous (timm's
  ``window_partition``): α is given per sample and broadcast over that sample's tokens/windows.
  Paths: ``grouped`` (per-sample weights, one batched matmul: Eq. 2–3), ``split``, ``sum`` (the
  low-rank products ``x A_kᵀ B_kᵀ`` weighted by α) and ``auto``, as for the convolution.
* :func:`add_mola` wraps every block ``Conv2d`` (not the 1x1 projection shortcuts, as the
  reference's ``ResNet50_LoraGrad``; ``adapt_shortcut=True`` wraps them too) — and every
  ``nn.Linear`` whose attribute name is in
  ``linear_targets`` (default ``qkv``, ``proj``, ``fc1``, ``fc2``: a Swin block's attention and MLP,
  not the patch merging's reduction) — of chosen stages of a staged encoder (placement, default
  ``[3]`` = Block4 of a ResNet or the last Swin stage, Table 7; rank 4, Table 6; per-stage ranks
  configurable). An encoder may run a slice of its stages itself (``run_stages(x, start, stop)``;
  the Swin does: its stages pass NHWC tokens and its output is NCHW).
* :class:`CifarResNetRouter` — the router of §3.5; :func:`twd_loss` — the Task-wise Decorrelation
  loss (Eq. 4–5).
* :func:`pc_ratio` — the principal-component ratio of the §4 analysis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.settings import Settings, later
from bench.models.compat import CompatArchitecture

Path = Literal["auto", "grouped", "split", "sum"]
PATHS: tuple[str, ...] = ("auto", "grouped", "split", "sum")


class _MoLALayer(nn.Module):
    """What :class:`MoLAConv2d` and :class:`MoLALinear` share: the mixture state set by
    :func:`mixture`, the choice of path, and the split-by-task path. Subclasses define ``delta``,
    ``forward_single`` (one adapter for all rows), ``forward_sum``, ``forward_grouped`` and how
    rows map to samples (``_samples`` / ``_unsamples``)."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def _init_mixture(self, num_adapters: int, rank: int, alpha: float, path: Path) -> None:
        if path not in PATHS:
            raise ValueError(f"unknown MoLA path {path!r}; choose one of {PATHS}")
        self.num_adapters = num_adapters
        self.rank = rank
        self.scaling = alpha / rank
        self.path: Path = path
        # the mixture of the current forward pass, set by :func:`mixture`
        self.task_ids: torch.Tensor | None = None
        self.task: int | None = None
        self.weights: torch.Tensor | None = None

    def adapter_params_per_adapter(self) -> int:
        return self.lora_A[0].numel() + self.lora_B[0].numel()

    def forward_single(self, x: torch.Tensor, task: int) -> torch.Tensor:
        raise NotImplementedError

    def forward_sum(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_grouped(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _samples(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` with one row per sample of the mixture's ``n`` samples."""
        return x

    def _unsamples(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out

    def forward_split(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """One-hot α: ``forward_single`` once per task present in the batch."""
        first = task_ids[0]
        if bool((task_ids == first).all()):
            return self.forward_single(x, int(first))
        xs = self._samples(x, task_ids.shape[0])
        if bool((task_ids[1:] >= task_ids[:-1]).all()):  # rows already grouped by task
            tasks, counts = torch.unique_consecutive(task_ids, return_counts=True)
            chunks = torch.split(xs, counts.tolist())
            out = torch.cat([self.forward_single(c, int(t)) for c, t in zip(chunks, tasks)])
            return self._unsamples(out, x)
        order = torch.argsort(task_ids, stable=True)
        tasks, counts = torch.unique_consecutive(task_ids[order], return_counts=True)
        chunks = torch.split(xs[order], counts.tolist())
        out = torch.cat([self.forward_single(c, int(t)) for c, t in zip(chunks, tasks)])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return self._unsamples(out[inverse], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.path
        if self.weights is not None:  # soft α (MoLA-Router)
            if path == "grouped":
                return self.forward_grouped(x, self.weights)
            if path == "split":
                raise ValueError("the split path needs one-hot α (task ids)")
            return self.forward_sum(x, self.weights)
        if self.task is not None:
            if path in ("auto", "split"):
                return self.forward_single(x, self.task)
            task_ids = torch.full((x.shape[0],), self.task, dtype=torch.long, device=x.device)
        elif self.task_ids is not None:
            task_ids = self.task_ids
        else:
            raise RuntimeError(f"{type(self).__name__} called outside `with mixture(...)`")
        if path in ("auto", "split"):
            return self.forward_split(x, task_ids)
        one_hot = F.one_hot(task_ids, self.num_adapters).to(x.dtype)
        if path == "grouped":
            return self.forward_grouped(x, one_hot)
        return self.forward_sum(x, one_hot)


class MoLAConv2d(_MoLALayer):
    """A convolution with K low-rank adapters mixed per sample (MoLA Eq. 1)."""

    def __init__(self, conv: nn.Conv2d, num_adapters: int, rank: int = 4, alpha: float = 16.0,
                 path: Path = "auto") -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        if kh != kw or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("MoLAConv2d needs a square kernel, groups=1 and zero padding")
        self._init_mixture(num_adapters, rank, alpha, path)
        self.base = conv
        self.k = kh
        c_out, c_in = conv.out_channels, conv.in_channels
        self.lora_A = nn.Parameter(torch.empty(num_adapters, rank * kh, c_in * kh))
        self.lora_B = nn.Parameter(torch.zeros(num_adapters, c_out * kh, rank * kh))
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"adapters={self.num_adapters}, rank={self.rank}, scaling={self.scaling:g}"

    def delta(self, index: int | torch.Tensor | None = None) -> torch.Tensor:
        """``ΔW`` of one adapter (C_out, C_in, k, k), or of all adapters (K, C_out, C_in, k, k)."""
        w = self.base.weight
        if index is None:
            return (torch.bmm(self.lora_B, self.lora_A) * self.scaling).reshape(
                self.num_adapters, *w.shape)
        return ((self.lora_B[index] @ self.lora_A[index]) * self.scaling).reshape(w.shape)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              groups: int = 1) -> torch.Tensor:
        c = self.base
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, groups)

    # ---- paths -------------------------------------------------------------------------------
    def forward_single(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """All rows use adapter ``task``: one convolution with ``W + ΔW_task``."""
        return self._conv(x, self.base.weight + self.delta(task), self.base.bias)

    def forward_sum(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``conv(x, W) + Σ_k α_k ⊙ conv(x, ΔW_k)`` as one convolution with stacked weights."""
        w = self.base.weight
        stacked = torch.cat([w.unsqueeze(0), self.delta()]).reshape(-1, *w.shape[1:])
        y = self._conv(x, stacked)
        y = y.reshape(x.shape[0], self.num_adapters + 1, w.shape[0], *y.shape[-2:])
        out = y[:, 0] + torch.einsum("nk,nkchw->nchw", weights.to(y.dtype), y[:, 1:])
        if self.base.bias is not None:
            out = out + self.base.bias.view(1, -1, 1, 1)
        return out

    def forward_grouped(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The paper's formulation (§3.4, Eq. 2–3): per-sample weights, one conv, groups = N."""
        n = x.shape[0]
        w = self.base.weight
        per_sample = w.unsqueeze(0) + torch.einsum("nk,koihw->noihw", weights.to(w.dtype),
                                                   self.delta())
        y = self._conv(x.reshape(1, n * x.shape[1], *x.shape[2:]),
                       per_sample.reshape(n * w.shape[0], *w.shape[1:]), groups=n)
        out = y.reshape(n, w.shape[0], *y.shape[-2:])
        if self.base.bias is not None:
            out = out + self.base.bias.view(1, -1, 1, 1)
        return out


def _per_sample(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` (R, ..., C) with ``R = n·m`` rows, the m rows of each sample contiguous, as
    (n, m·L, C): every token of sample ``i`` in row ``i``."""
    if x.shape[0] % n:
        raise ValueError(f"MoLALinear: {x.shape[0]} rows are not a multiple of the mixture's "
                         f"{n} samples")
    return x.reshape(n, -1, x.shape[-1])


class MoLALinear(_MoLALayer):
    """A linear layer with K low-rank adapters mixed per sample (MoLA Eq. 1 for ``nn.Linear``;
    the Transformer of §5.5, Table 8)."""

    def __init__(self, linear: nn.Linear, num_adapters: int, rank: int = 4, alpha: float = 16.0,
                 path: Path = "auto") -> None:
        super().__init__()
        self._init_mixture(num_adapters, rank, alpha, path)
        self.base = linear
        w = linear.weight
        self.lora_A = nn.Parameter(w.new_empty(num_adapters, rank, linear.in_features))
        self.lora_B = nn.Parameter(w.new_zeros(num_adapters, linear.out_features, rank))
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return (f"{self.base.in_features}->{self.base.out_features}, adapters={self.num_adapters},"
                f" rank={self.rank}, scaling={self.scaling:g}")

    def delta(self, index: int | torch.Tensor | None = None) -> torch.Tensor:
        """``ΔW`` of one adapter (C_out, C_in), or of all adapters (K, C_out, C_in)."""
        if index is None:
            return torch.bmm(self.lora_B, self.lora_A) * self.scaling
        return (self.lora_B[index] @ self.lora_A[index]) * self.scaling

    def _samples(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return _per_sample(x, n)

    def _unsamples(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out.reshape(*x.shape[:-1], -1)

    # ---- paths -------------------------------------------------------------------------------
    def forward_single(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """All rows use adapter ``task``: one matmul with ``W + ΔW_task``."""
        return F.linear(x, self.base.weight + self.delta(task), self.base.bias)

    def forward_sum(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ + b + Σ_k α_{n,k} · s · (x A_kᵀ) B_kᵀ`` (the low-rank products, weighted)."""
        xs = _per_sample(x, weights.shape[0])
        low = torch.einsum("nli,kri->nlkr", xs, self.lora_A)
        low = low * weights.to(low.dtype)[:, None, :, None]
        delta = torch.einsum("nlkr,kor->nlo", low, self.lora_B) * self.scaling
        return F.linear(x, self.base.weight, self.base.bias) + delta.reshape(*x.shape[:-1], -1)

    def forward_grouped(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The paper's formulation (§3.4, Eq. 2–3): the per-sample weight
        ``W + Σ_k α_{n,k} ΔW_k`` applied to all tokens of sample ``n`` (one batched matmul)."""
        xs = _per_sample(x, weights.shape[0])
        w = self.base.weight
        per_sample = w.unsqueeze(0) + torch.einsum("nk,koi->noi", weights.to(w.dtype),
                                                   self.delta())
        out = torch.bmm(xs, per_sample.transpose(1, 2))
        if self.base.bias is not None:
            out = out + self.base.bias
        return out.reshape(*x.shape[:-1], -1)


MoLALayer = MoLAConv2d | MoLALinear


def mola_layers(module: nn.Module) -> list[MoLALayer]:
    return [m for m in module.modules() if isinstance(m, (MoLAConv2d, MoLALinear))]


@contextmanager
def mixture(layers: Sequence[MoLALayer], *, task_ids: torch.Tensor | None = None,
            task: int | None = None, weights: torch.Tensor | None = None) -> Iterator[None]:
    """Set the mixture α of every layer for the forward passes inside the block (exactly one of
    ``task_ids`` (N,) one-hot α, ``task`` one adapter for all rows, ``weights`` (N, K) soft α)."""
    if sum(v is not None for v in (task_ids, task, weights)) != 1:
        raise ValueError("give exactly one of task_ids, task, weights")
    for layer in layers:
        layer.task_ids, layer.task, layer.weights = task_ids, task, weights
    try:
        yield
    finally:
        for layer in layers:
            layer.task_ids, layer.task, layer.weights = None, None, None


def _stage_key(item: int | str) -> int | str:
    return item if item == "stem" else int(item)


def resolve_placement(encoder: nn.Module, placement: Sequence[int | str] | str
                      ) -> list[int | str]:
    """``"all"`` = every stage (Block1234); a list of stage indices and/or ``"stem"``."""
    n_stages = len(encoder.stages)  # type: ignore[arg-type]
    if isinstance(placement, str):
        if placement != "all":
            raise ValueError(f"placement {placement!r}: use 'all' or a list of stage indices")
        return list(range(n_stages))
    items = [_stage_key(p) for p in placement]
    for p in items:
        if p != "stem" and not 0 <= int(p) < n_stages:
            raise ValueError(f"placement: stage {p} out of range (encoder has {n_stages})")
    return items


#: ``nn.Linear`` layers :func:`add_mola` wraps, by attribute name: a Swin (ViT) block's attention
#: (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``); the patch merging's ``reduction`` is left alone
LINEAR_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


#: the modules holding a residual block's projection shortcut (ours, torchvision's / timm's)
SHORTCUTS: tuple[str, ...] = ("shortcut", "downsample")


def add_mola(encoder: nn.Module, num_adapters: int, placement: Sequence[int | str] | str = (3,),
             rank: int | Sequence[int] | dict[Any, int] = 4, alpha: float = 16.0,
             path: Path = "auto", linear_targets: Sequence[str] = LINEAR_TARGETS,
             adapt_shortcut: bool = False) -> list[MoLALayer]:
    """Replace every ``Conv2d`` of the residual blocks inside the chosen stages of a staged
    encoder by a :class:`MoLAConv2d` — the block convolutions, not the 1x1 projection shortcuts
    (modules named in :data:`SHORTCUTS`) unless ``adapt_shortcut`` — and every ``nn.Linear``
    named in ``linear_targets`` by a :class:`MoLALinear` (in place); return the new layers.
    ``rank``: one rank, one per placed stage (aligned with ``placement``), or ``{stage: rank}``.
    """
    stages = resolve_placement(encoder, placement)
    if isinstance(rank, dict):
        ranks = {s: int(rank.get(s, rank.get(str(s), 4))) for s in stages}
    elif isinstance(rank, int):
        ranks = {s: rank for s in stages}
    else:
        if len(rank) != len(stages):
            raise ValueError("rank: give one rank per placed stage")
        ranks = dict(zip(stages, (int(r) for r in rank)))
    skip = () if adapt_shortcut else SHORTCUTS
    layers: list[MoLALayer] = []
    for s in stages:
        root = encoder.stem if s == "stem" else encoder.stages[s]  # type: ignore[index]
        layers += _wrap_layers(root, num_adapters, ranks[s], alpha, path, tuple(linear_targets),
                               skip)
    return layers


def _wrap_layers(root: nn.Module, num_adapters: int, rank: int, alpha: float, path: Path,
                 linear_targets: tuple[str, ...], skip: tuple[str, ...] = ()
                 ) -> list[MoLALayer]:
    layers: list[MoLALayer] = []
    for name, child in list(root.named_children()):
        if isinstance(child, (MoLAConv2d, MoLALinear)) or name in skip:
            continue
        layer: MoLALayer
        if isinstance(child, nn.Conv2d):
            layer = MoLAConv2d(child, num_adapters, rank, alpha, path)
        elif isinstance(child, nn.Linear) and name in linear_targets:
            layer = MoLALinear(child, num_adapters, rank, alpha, path)
        else:
            layers += _wrap_layers(child, num_adapters, rank, alpha, path, linear_targets, skip)
            continue
        setattr(root, name, layer)
        layers.append(layer)
    return layers


def adapter_param_count(c_in: int, c_out: int, k: int, rank: int) -> int:
    """Parameters of one adapter of a k×k conv: ``r·k·(C_in·k + C_out·k)``."""
    return rank * k * (c_in * k + c_out * k)


def first_adapted_stage(encoder: nn.Module) -> int:
    """Index of the first stage holding a MoLA layer (``-1``: the stem; ``len(stages)``: none)."""
    if mola_layers(encoder.stem):  # type: ignore[arg-type]
        return -1
    for i, stage in enumerate(encoder.stages):  # type: ignore[arg-type]
        if mola_layers(stage):
            return i
    return len(encoder.stages)  # type: ignore[arg-type]


def run_stages(encoder: nn.Module, x: torch.Tensor, start: int, stop: int | None = None
               ) -> torch.Tensor:
    """Run ``stem`` (when ``start == -1``) and ``stages[max(start,0):stop]`` of a staged encoder
    (the encoder's own ``run_stages`` when it has one, e.g.
    :class:`bench.models.mtlora.SwinBackbone`)."""
    own = getattr(encoder, "run_stages", None)
    if own is not None:
        return own(x, start, stop)
    if start == -1:
        x = encoder.stem(x)  # type: ignore[operator]
        start = 0
    for stage in list(encoder.stages)[start:stop]:  # type: ignore[arg-type]
        x = stage(x)
    return x


Stage = Annotated[int, Field(ge=0, le=15)] | Literal["stem"]
AdapterRank = Annotated[int, Field(ge=1, le=1024)]


class MoLASettings(Settings):
    """``arch.*`` of MoLA-Grad (and the adapters of MoLA-Router)."""

    placement: Annotated[list[Stage], Field(min_length=1)] | Literal["all"] = Field(
        [3], description="stage indices (Block k = k-1) and/or 'stem', or 'all' (MoLA Table 7)")
    rank: AdapterRank | list[AdapterRank] | dict[str, AdapterRank] = Field(
        4, description="one rank, one per placed stage, or {stage: rank} (MoLA Table 6)")
    alpha: Annotated[float, Field(gt=0.0, le=1e4)] = Field(
        16.0, description="adapter scaling alpha / rank")
    path: Literal["auto", "grouped", "split", "sum"] = "auto"
    adapt_shortcut: bool = Field(False, description=(
        "also adapt the 1x1 projection shortcuts (the reference adapts the block convolutions "
        "only)"))
    linear_targets: Annotated[tuple[Annotated[str, Field(min_length=1)], ...],
                              Field(min_length=1)] = later(
        LINEAR_TARGETS, description="Transformer backbones: the nn.Linear names adapted")


class MoLARouterSettings(MoLASettings):
    """``arch.*`` of MoLA-Router: MoLA's adapters, the router and the TwD loss."""

    num_adapters: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="K, default the number of tasks (MoLA Table 11)")
    twd_weight: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        0.1, description="lambda of the TwD loss, 0 = off")
    twd_dim: Annotated[int, Field(ge=1, le=4096)] = Field(
        32, description="d of the TwD feature map (MoLA Table 10)")
    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    router_blocks: Annotated[int, Field(ge=1, le=16)] = 3
    single_input_mode: Literal["per_task", "shared"] = "per_task"
    twd_input: Literal["scores", "gates"] = "scores"


class MoLAArchitecture(CompatArchitecture):
    """Base of the MoLA architectures: one staged encoder (shared ``W``) whose chosen stages carry
    K adapters, and one decoder per task. The encoder is a ResNet (adapters on its convolutions)
    or a Swin Transformer (adapters on the ``linear_targets`` of its blocks; stages = Swin
    layers, MoLA §5.5 Table 8); both are trained in full, like HPS's.

    ``get_share_params`` returns the encoder's parameters *without* the adapters: the adapters
    (and MoLA-Router's router) are not what gradient-surgery weightings (``mola_grad+pcgrad``)
    should project; they receive the plain sum of the task gradients, as the decoders do.
    """

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, *,
                 num_adapters: int | None = None, placement: Sequence[int | str] | str = (3,),
                 rank: int | Sequence[int] | dict[Any, int] = 4, alpha: float = 16.0,
                 path: Path = "auto", linear_targets: Sequence[str] = LINEAR_TARGETS,
                 adapt_shortcut: bool = False, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.num_adapters = int(num_adapters or len(task_name))
        self.encoder = self.encoder_class()
        self.mola = add_mola(self.encoder, self.num_adapters, placement, rank, alpha, path,
                             linear_targets, adapt_shortcut)
        if not self.mola:
            raise ValueError(f"placement {placement!r} wraps no convolution or linear layer")
        self.first_adapted = first_adapted_stage(self.encoder)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.mola for p in (layer.lora_A, layer.lora_B)]

    def get_share_params(self) -> list[nn.Parameter]:
        adapters = {id(p) for p in self.adapter_parameters()}
        return [p for p in self.encoder.parameters() if id(p) not in adapters]

    def shared_prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder up to (not including) the first adapted stage, computed once."""
        if self.first_adapted == -1:
            return inputs
        return run_stages(self.encoder, inputs, -1, self.first_adapted)

    def adapted_suffix(self, h: torch.Tensor) -> torch.Tensor:
        return run_stages(self.encoder, h, self.first_adapted)

    def param_breakdown(self) -> dict[str, int]:
        adapters = sum(p.numel() for p in self.adapter_parameters())
        encoder = sum(p.numel() for p in self.encoder.parameters())
        router = sum(p.numel() for name, p in self.named_parameters()
                     if name.startswith(("router.", "twd_head.")))
        return {"backbone": encoder - adapters, "adapters": adapters, "router": router,
                "decoders": sum(p.numel() for p in self.decoders.parameters())}


# ---- router and TwD (§3.5) -------------------------------------------------------------------
class _RouterBlock(nn.Module):
    """CIFAR ResNet basic block with a zero-padded identity shortcut (option A)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.pad = out_ch - in_ch

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetRouter(nn.Module):
    """MoLA-Router's router (§3.5): stem conv in→16, three stages of ``blocks`` basic blocks
    (16, 32, 64 channels, strides 1, 2, 2), global average pooling, linear to ``num_outputs``
    scores (the gate is their softmax, applied by the caller)."""

    def __init__(self, in_channels: int, num_outputs: int, blocks: int = 3,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for width, stride in zip(widths, (1, 2, 2)):
            for b in range(blocks):
                layers.append(_RouterBlock(in_ch, width, stride if b == 0 else 1))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(in_ch, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.linear(out.mean(dim=(2, 3)))


def twd_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
             ) -> torch.Tensor:
    """Task-wise Decorrelation loss (MoLA Eq. 4–5), supervised-contrastive with tasks as classes.

    ``features`` (N, d) are L2-normalised inside. For every anchor ``i`` and every other sample
    ``j`` of the same task: ``-log(exp(f_i·f_j/τ) / Σ_{m≠i} exp(f_i·f_m/τ))``, averaged over all
    such pairs (zero when there is no pair)."""
    f = F.normalize(features, dim=1)
    sim = f @ f.t() / temperature
    n = f.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    log_den = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~eye
    if not bool(positives.any()):
        return sim.sum() * 0.0
    return -(sim - log_den)[positives].mean()


# ---- §4 analysis ------------------------------------------------------------------------------
def pc_ratio(weight: torch.Tensor, factor: float = 0.99) -> float:
    """Principal-component ratio (§4): the smallest ``k`` with ``Σ_{i≤k} σ_i ≥ factor·Σ σ``,
    divided by the rank of the weight reshaped to (C_out, C_in·k·k)."""
    m = weight.detach().reshape(weight.shape[0], -1).double()
    s = torch.linalg.svdvals(m)
    rank = int(torch.linalg.matrix_rank(m))
    if rank == 0:
        return 0.0
    cum = torch.cumsum(s, 0)
    k = int(torch.searchsorted(cum, factor * cum[-1]).item()) + 1
    return min(k, rank) / rank

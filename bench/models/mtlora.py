"""MTLoRA building blocks: the MTLoRA linear layer, a timm Swin backbone and the HRNet-style head.

Agiza, Neseem and Reda, "MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task
Learning", CVPR 2024 (§3.2-§3.4). Facts not recoverable from the paper text (its equations were
lost in extraction) follow the authors' reference implementation as summarised in
``shared/notes/mola-mtlora-spec.md``:

* :class:`MTLoRALinear` — Eq. 1 and Eq. 2. The shared output is
  ``W x + b + s * B_s A_s drop(x)`` (TA-LoRA, rank ``R``); in task-specific layers the output of
  task ``t`` is ``W x + b + s_t * B_t A_t drop(x_t)`` (TS-LoRA), where ``x`` is the *shared* input
  of the layer and ``x_t`` the task-``t`` input coming from the previous task-specific layer (or
  ``x`` when there is none). As in the reference, the task outputs do not contain the TA-LoRA term.
  ``A`` is Kaiming-uniform (``a = sqrt(5)``), ``B`` zeros, so an untrained adapter changes nothing.
* :class:`SwinBackbone` — a timm ``SwinTransformer`` without classifier and without the final
  LayerNorm (the reference MTL backbone has none); ``swin_embedded`` is a CPU-sized variant for the
  embedded scenarios, ``swin_t`` the paper's Swin-T (448x448 input), ImageNet-1k weights with
  ``pretrained=True`` (MTLoRA §4.1; the ``paper`` profile's default).
* :class:`HRNetHead` — §3.3/§4.1 decoder: per-scale 1x1 conv (no bias) to the HRNet-W18 widths
  (18, 36, 72, 144), bilinear upsampling to the largest scale, concatenation, 1x1 conv to 4x the
  width + BatchNorm + ReLU, 1x1 conv to the task's outputs, bilinear upsampling to the input size.
  Classification tasks average-pool before the last (then linear) layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from bench.data.scenario import TaskSpec, is_dense
from bench.data.settings import Settings, later
from bench.models.backbones import PRETRAINED, backbones, declares, timm_pretrained_state
from bench.models.compat import CompatArchitecture


class MTLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with a shared low-rank update and optional per-task ones.

    ``forward(x)`` returns the shared output, so the layer is a drop-in replacement inside timm's
    blocks. Task-specific layers also expose :meth:`task_delta`, which the MTLoRA block uses to
    build each task's stream as ``base(x) + task_delta(x_t, t)``.
    """

    def __init__(self, base: nn.Linear, rank: int, tasks: Sequence[str] = (), task_rank: int = 4,
                 scale: float = 4.0, task_scale: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.task_rank = int(rank), int(task_rank)
        self.scale, self.task_scale = float(scale), float(task_scale)
        self.tasks = tuple(tasks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        w = base.weight
        self.lora_shared_A = nn.Parameter(w.new_zeros(self.rank, self.in_features))
        self.lora_shared_B = nn.Parameter(w.new_zeros(self.out_features, self.rank))
        self.lora_task_A = nn.ParameterDict({
            t: nn.Parameter(w.new_zeros(self.task_rank, self.in_features)) for t in self.tasks})
        self.lora_task_B = nn.ParameterDict({
            t: nn.Parameter(w.new_zeros(self.out_features, self.task_rank)) for t in self.tasks})
        self.reset_lora()

    def reset_lora(self) -> None:
        if self.rank > 0:
            nn.init.kaiming_uniform_(self.lora_shared_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_shared_B)
        for t in self.tasks if self.task_rank > 0 else ():
            nn.init.kaiming_uniform_(self.lora_task_A[t], a=math.sqrt(5))
            nn.init.zeros_(self.lora_task_B[t])

    def shared_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``s * B_s A_s drop(x)`` (zero once merged)."""
        if self.merged or self.rank == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return F.linear(F.linear(self.dropout(x), self.lora_shared_A), self.lora_shared_B) \
            * self.scale

    def task_delta(self, x_t: torch.Tensor, task: str) -> torch.Tensor:
        """``s_t * B_t A_t drop(x_t)``."""
        return F.linear(F.linear(self.dropout(x_t), self.lora_task_A[task]),
                        self.lora_task_B[task]) * self.task_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.merged and self.rank > 0:
            out = out + self.shared_delta(x)
        return out

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the TA-LoRA update into the frozen weight: ``W <- W + s * B_s A_s``."""
        if self.merged or self.rank == 0:
            return
        if self.tasks:
            raise RuntimeError("task-specific outputs use the pre-trained W; not mergeable")
        self.base.weight += (self.lora_shared_B @ self.lora_shared_A) * self.scale
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight -= (self.lora_shared_B @ self.lora_shared_A) * self.scale
        self.merged = False

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, rank={self.rank}, "
                f"tasks={list(self.tasks)}, task_rank={self.task_rank}, merged={self.merged}")


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


class SwinBackbone(nn.Module):
    """timm Swin Transformer as a feature extractor (NCHW in, NCHW last-stage map out).

    Inputs whose size differs from ``img_size`` are resized bilinearly. ``stage_dims`` are the
    widths of the blocks of each stage; ``feature_dims`` the widths of the multi-scale features
    MTLoRA's decoders fuse (stage outputs after the next stage's patch merging, as in the
    reference: ``2C, 4C, 8C, 8C`` for embed width ``C``).
    """

    def __init__(self, in_channels: int = 3, img_size: int = 32, patch_size: int = 2,
                 window_size: int = 2, embed_dim: int = 24,
                 depths: Sequence[int] = (1, 1, 2, 1), num_heads: Sequence[int] = (1, 2, 4, 8),
                 drop_path_rate: float = 0.0, checkpoint: str | None = None,
                 pretrained: bool | str = False) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.img_size = int(img_size)
        self.model = SwinTransformer(
            img_size=self.img_size, patch_size=patch_size, in_chans=in_channels, num_classes=0,
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, drop_path_rate=drop_path_rate)
        self.model.norm = nn.Identity()  # the reference MTL backbone has no final norm
        if checkpoint:
            self.load_checkpoint(checkpoint)
        elif pretrained:
            self.load_pretrained(PRETRAINED_SWIN if pretrained is True else str(pretrained))
        self.stage_dims = tuple(int(embed_dim * 2 ** i) for i in range(len(depths)))
        self.feature_dims = tuple(self.stage_dims[1:]) + (self.stage_dims[-1],)
        self.out_channels = self.stage_dims[-1]

    def load_checkpoint(self, path: str) -> None:
        """Load a local timm- or Microsoft-format Swin checkpoint (no download)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        self.load_state(state, path)

    def load_pretrained(self, name: str) -> None:
        """Load timm's pretrained weights ``name`` (downloaded from the Hugging Face hub once,
        then read from its cache) into this Swin, whatever its input size."""
        self.load_state(timm_pretrained_state(name), name)

    def load_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a timm- or Microsoft-format Swin state dict (``source`` names it in errors);
        the classifier and the final norm are ignored."""
        from timm.models.swin_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, self.model)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
        missing, _ = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "relative_position_index" not in k
                   and "attn_mask" not in k]
        if missing:
            raise ValueError(f"checkpoint {source} lacks backbone weights: {missing[:5]}...")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.patch_embed(self.prepare(x))
        x = self.model.layers(x)
        return x.permute(0, 3, 1, 2).contiguous()

    # staged-encoder view (bench/backbones.py), used by MoLA's placement and its shared-prefix /
    # adapted-suffix split (bench/mola.py): stem = patch embedding, stages = the Swin layers
    @property
    def stem(self) -> nn.Module:
        return self.model.patch_embed

    @property
    def stages(self) -> nn.Sequential:
        return self.model.layers  # type: ignore[return-value]

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.stage_dims

    def run_stages(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """``stem`` (resize + patch embedding, when ``start == -1``) and ``stages[start:stop]``;
        tokens stay NHWC between stages, the output of the last stage is returned as NCHW."""
        if start == -1:
            x = self.stem(self.prepare(x))
            start = 0
        n = len(self.stages)
        for stage in list(self.stages)[start:stop]:
            x = stage(x)
        if start < n and (stop is None or stop >= n):  # the slice ran the last stage
            x = x.permute(0, 3, 1, 2).contiguous()
        return x


Small = Annotated[int, Field(ge=1, le=64)]


class SwinSettings(Settings):
    """``backbone.*`` of the Swin Transformers (:class:`SwinBackbone`; the embedded one's
    defaults, ``swin_t`` sets Swin-T's)."""

    img_size: Annotated[int, Field(ge=8, le=2048)] | None = Field(
        None, description="default: the input's size (swin_t: 448 or 224)")
    patch_size: Small = 2
    window_size: Small = 2
    embed_dim: Annotated[int, Field(ge=1, le=1024)] = 24
    depths: Annotated[tuple[Small, ...], Field(min_length=1, max_length=8)] = (1, 1, 2, 1)
    num_heads: Annotated[tuple[Small, ...], Field(min_length=1, max_length=8)] = (1, 2, 4, 8)
    drop_path_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    checkpoint: str | None = Field(None, description="a local timm or Microsoft Swin file")
    pretrained: bool | str = Field(False, description="true: timm's ImageNet-1k Swin-T")

    @model_validator(mode="after")
    def _one_entry_per_stage(self) -> SwinSettings:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("backbone.depths and backbone.num_heads need one entry per stage")
        return self


class SwinEmbeddedSettings(SwinSettings):
    """``backbone.*`` of the embedded Swin: the Swin's, and its start (``init``)."""

    init: Literal["scratch", "pretrained"] = Field("scratch", description=(
        "pretrained: the committed fractal-pretrained checkpoint (python -m bench pretrain); "
        "the embedded scenarios' default"))


@backbones.register("swin_embedded", description="CPU-sized timm Swin (32px, window 2)")
@declares(SwinEmbeddedSettings)
def swin_embedded(in_channels: int = 1, input_shape: Any = None, init: str | None = "scratch",
                  **kwargs: Any) -> SwinBackbone:
    """Patch 2, window 2, width 24, depths 1-1-2-1; ``img_size`` defaults to the input's size
    (no resizing: 16x16 inputs give 8x8 tokens, stages at 8, 4, 2, 1). ``init="pretrained"``
    loads the committed checkpoint (:mod:`bench.models.pretrained`)."""
    if "img_size" not in kwargs and input_shape is not None:
        kwargs["img_size"] = max(int(input_shape[-1]), int(input_shape[-2]))
    model = SwinBackbone(in_channels=in_channels, **kwargs)
    if init == "pretrained":
        from bench.models.pretrained import load_pretrained

        load_pretrained(model, "swin_embedded")
    return model


SWIN_T = {"patch_size": 4, "window_size": 7, "embed_dim": 96, "depths": (2, 2, 6, 2),
          "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.2}
#: timm's name of the ImageNet-1k Swin-T weights MTLoRA starts from (§4.1)
PRETRAINED_SWIN = PRETRAINED["swin_t"]


@backbones.register("swin_t", description="Swin-T, 448px on PASCAL-Context (MTLoRA), else 224px")
@declares(SwinSettings)
def swin_t(in_channels: int = 3, input_shape: Any = None, **kwargs: Any) -> SwinBackbone:
    """Swin-T (embed 96, depths 2-2-6-2, window 7). ``img_size`` defaults to MTLoRA's 448 for
    inputs of at least 448 pixels, else ImageNet's 224 (inputs are resized to it);
    ``pretrained=True`` starts from :data:`PRETRAINED_SWIN`."""
    if "img_size" not in kwargs:
        side = max(int(input_shape[-1]), int(input_shape[-2])) if input_shape is not None else 448
        kwargs["img_size"] = 448 if side >= 448 else 224
    return SwinBackbone(in_channels=in_channels, **{**SWIN_T, **kwargs})


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class HRNetHead(nn.Module):
    """HRNet-style multi-scale fusion head of one task (MTLoRA §4.1)."""

    def __init__(self, feature_dims: Sequence[int], channels: Sequence[int], num_outputs: int,
                 out_size: tuple[int, int], dense: bool = True, expansion: int = 4) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(
            nn.Conv2d(d, c, 1, bias=False) for d, c in zip(feature_dims, channels))
        width = sum(channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(width, width * expansion, 1), nn.BatchNorm2d(width * expansion),
            nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width * expansion, num_outputs, 1)
        self.out_size = tuple(out_size)
        self.dense = dense

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [conv(f) for conv, f in zip(self.reduce, feats)]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                            for m in maps[1:]]
        h = self.fuse(torch.cat(maps, dim=1))
        if not self.dense:
            return self.out(h.mean(dim=(2, 3), keepdim=True)).flatten(1)
        out = self.out(h)
        if tuple(out.shape[-2:]) != self.out_size:
            out = F.interpolate(out, size=self.out_size, mode="bilinear", align_corners=False)
        return out


# --------------------------------------------------------------------------------------------
# Swin with TA-/TS-LoRA
# --------------------------------------------------------------------------------------------


def _ranks(rank: int | Sequence[int], n: int) -> list[int]:
    return [int(rank)] * n if isinstance(rank, int) else [int(r) for r in rank]


def _window_attention_pre_proj(attn: nn.Module, x: torch.Tensor,
                               mask: torch.Tensor | None) -> torch.Tensor:
    """timm ``WindowAttention.forward`` up to (excluding) the output projection."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scores = (q * attn.scale) @ k.transpose(-2, -1) + attn._get_rel_pos_bias()
    if mask is not None:
        nw = mask.shape[0]
        scores = scores.view(-1, nw, attn.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        scores = scores.view(-1, attn.num_heads, n, n)
    probs = attn.attn_drop(scores.softmax(dim=-1))
    return (probs @ v).transpose(1, 2).reshape(b, n, -1)


def _block_attention_pre_proj(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``SwinTransformerBlock._attn`` without the projection (B, H, W, C layout).

    The projection is a per-token linear map, so it commutes with window partition and shift:
    applying it afterwards (once per stream) gives timm's result.
    """
    from timm.models.swin_transformer import window_partition, window_reverse

    _, h, w, c = x.shape
    shift = tuple(blk.shift_size)
    win = tuple(blk.window_size)
    has_shift = any(shift)
    shifted = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if has_shift else x
    pad_h = (win[0] - h % win[0]) % win[0]
    pad_w = (win[1] - w % win[1]) % win[1]
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    _, hp, wp, _ = shifted.shape
    windows = window_partition(shifted, win).view(-1, win[0] * win[1], c)
    mask = blk.get_attn_mask(shifted) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
    out = _window_attention_pre_proj(blk.attn, windows, mask)
    out = window_reverse(out.view(-1, win[0], win[1], out.shape[-1]), win, hp, wp)
    out = out[:, :h, :w, :].contiguous()
    return torch.roll(out, shifts=shift, dims=(1, 2)) if has_shift else out


#: the linear layers of a Swin block that MTLoRA adapts (§3.2, Table 2)
LOCATIONS = ("qkv", "proj", "fc1", "fc2")


class MTLoRASwin(nn.Module):
    """A :class:`SwinBackbone` adapted with TA-LoRA everywhere and TS-LoRA in each stage's last
    block (proj, FC1, FC2), returning each task's multi-scale features (§3.2-§3.3).

    ``plus=True`` (MTLoRA+) puts a low-rank module (rank = the stage's shared rank) on each patch
    merging's reduction and keeps the reduction frozen; otherwise the reduction is trained (§3.4).
    Also trained: patch embedding, every LayerNorm, the relative position bias tables.
    """

    def __init__(self, backbone: SwinBackbone, tasks: Sequence[str],
                 rank: int | Sequence[int] = 32, task_rank: int | Sequence[int] = 4,
                 scale: float = 4.0, task_scale: float = 4.0, dropout: float = 0.05,
                 plus: bool = False, locations: Sequence[str] = LOCATIONS) -> None:
        super().__init__()
        unknown = set(locations) - set(LOCATIONS)
        if unknown:
            raise ValueError(f"unknown MTLoRA locations {sorted(unknown)}; choose from "
                             f"{', '.join(LOCATIONS)}")
        self.locations = tuple(locations)
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.plus = plus
        model = backbone.model
        n = len(model.layers)
        ranks, task_ranks = _ranks(rank, n), _ranks(task_rank, n)
        for p in model.parameters():
            p.requires_grad_(False)
        for s, stage in enumerate(model.layers):
            common = {"rank": ranks[s], "scale": scale, "task_scale": task_scale,
                      "dropout": dropout, "task_rank": task_ranks[s]}
            # a location left out (MTLoRA Table 2) keeps its frozen weight: rank 0 everywhere
            off = {**common, "rank": 0, "task_rank": 0}
            at = {loc: common if loc in self.locations else off for loc in LOCATIONS}
            last = len(stage.blocks) - 1
            for i, blk in enumerate(stage.blocks):
                ts = self.tasks if i == last else ()
                blk.attn.qkv = MTLoRALinear(blk.attn.qkv, **at["qkv"])
                blk.attn.proj = MTLoRALinear(blk.attn.proj, tasks=ts, **at["proj"])
                blk.mlp.fc1 = MTLoRALinear(blk.mlp.fc1, tasks=ts, **at["fc1"])
                blk.mlp.fc2 = MTLoRALinear(blk.mlp.fc2, tasks=ts, **at["fc2"])
            if plus and not isinstance(stage.downsample, nn.Identity):
                stage.downsample.reduction = MTLoRALinear(stage.downsample.reduction, **common)
        for name, p in model.named_parameters():
            if self.component(name) not in ("frozen",):
                p.requires_grad_(True)

    def component(self, name: str) -> str:
        """The parameter-count component of backbone parameter ``name`` (see param_breakdown)."""
        if "lora_task" in name:
            return "ts_lora"
        if "lora_shared" in name:
            return "merging_lora" if "downsample" in name else "ta_lora"
        if name.startswith("patch_embed"):
            return "patch_embed"
        if "downsample" in name:
            if "norm" in name:
                return "merging_norm"
            return "frozen" if self.plus else "patch_merging"
        if "relative_position_bias_table" in name:
            return "rel_pos_bias"
        if "norm" in name:
            return "norms"
        return "frozen"

    def merge(self) -> None:
        """Fold TA-LoRA into the frozen weights of every layer without TS-LoRA."""
        for m in self.modules():
            if isinstance(m, MTLoRALinear) and not m.tasks:
                m.merge()

    def unmerge(self) -> None:
        for m in self.modules():
            if isinstance(m, MTLoRALinear):
                m.unmerge()

    def _last_block(self, blk: nn.Module, x: torch.Tensor, rows: dict[str, torch.Tensor | None]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared output and task streams of a stage's last block (reference TS-LoRA block)."""
        proj, fc1, fc2, mlp = blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2, blk.mlp
        a = _block_attention_pre_proj(blk, blk.norm1(x))
        pa = proj.base(a)
        x1 = x + blk.drop_path1(blk.attn.proj_drop(pa + proj.shared_delta(a)))
        h = blk.norm2(x1)
        u = fc1.base(h)
        g = mlp.norm(mlp.drop1(mlp.act(u + fc1.shared_delta(h))))
        v = fc2.base(g)
        out = x1 + blk.drop_path2(mlp.drop2(v + fc2.shared_delta(g)))
        streams: dict[str, torch.Tensor] = {}
        for t, idx in rows.items():
            def sel(z: torch.Tensor, idx: torch.Tensor | None = idx) -> torch.Tensor:
                return z if idx is None else z[idx]

            x1_t = sel(x) + blk.drop_path1(blk.attn.proj_drop(sel(pa) + proj.task_delta(sel(a), t)))
            u_t = sel(u) + fc1.task_delta(blk.norm2(x1_t), t)
            g_t = mlp.norm(mlp.drop1(mlp.act(u_t)))
            streams[t] = x1_t + blk.drop_path2(mlp.drop2(sel(v) + fc2.task_delta(g_t, t)))
        return out, streams

    def forward(self, x: torch.Tensor, rows: dict[str, torch.Tensor | None]
                ) -> dict[str, list[torch.Tensor]]:
        """Per-task multi-scale features (NCHW) for the tasks (and rows; ``None`` = all rows) in
        ``rows``."""
        model = self.backbone.model
        x = model.patch_embed(self.backbone.prepare(x))
        feats: dict[str, list[torch.Tensor]] = {t: [] for t in rows}
        streams: dict[str, torch.Tensor] = {}
        for stage in model.layers:
            x = stage.downsample(x)
            for t in streams:  # previous stage's task streams through this patch merging
                feats[t].append(stage.downsample(streams[t]))
            for blk in stage.blocks[:-1]:
                x = blk(x)
            x, streams = self._last_block(stage.blocks[-1], x, rows)
        for t in streams:
            feats[t].append(streams[t])
        return {t: [f.permute(0, 3, 1, 2) for f in fs] for t, fs in feats.items()}


# --------------------------------------------------------------------------------------------
# Architecture (LibMTL AbsArchitecture contract)
# --------------------------------------------------------------------------------------------

#: defaults for the embedded (CPU-sized, embed width 24) scenarios. The paper's Swin-T (width 96)
#: settings are rank 16/32/64, task rank 4 and decoder widths (18, 36, 72, 144); the shared rank
#: here keeps the paper's middle ratio rank/width = 1/3 (32/96 -> 8/24).
Rank = Annotated[int, Field(ge=0, le=1024)]
Scale = Annotated[float, Field(gt=0.0, le=1e4)]


class MTLoRASettings(Settings):
    """``arch.*`` of MTLoRA (defaults scaled to the embedded Swin; ``paper_scale`` restores
    Table 1's)."""

    rank: Rank = Field(8, description="shared (TA-LoRA) rank, 0 = none")
    task_rank: Rank = Field(4, description="task-specific (TS-LoRA) rank, 0 = none")
    scale: Scale = 4.0
    task_scale: Scale = 4.0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    decoder_channels: Annotated[tuple[Annotated[int, Field(ge=1, le=4096)], ...],
                                Field(min_length=1, max_length=8)] = (8, 16, 32, 64)
    decoder_expansion: Annotated[int, Field(ge=1, le=64)] = 4
    locations: Annotated[tuple[Literal["qkv", "proj", "fc1", "fc2"], ...],
                         Field(max_length=4)] = later(LOCATIONS, description=(
                             "layers with low-rank modules (MTLoRA Table 2)"))
    plus: bool = later(False, description="MTLoRA+: low-rank patch merging")
    precise_bn_samples: Annotated[int, Field(ge=0, le=10**7)] = later(
        0, description="re-estimate the decoders' BatchNorm statistics on this many samples")


class MTLoRAPlusSettings(MTLoRASettings):
    """``arch.*`` of MTLoRA+ (shared rank = task rank = 4, MTLoRA Table 1's 2.57M row)."""

    rank: Rank = Field(4, description="shared (TA-LoRA) rank, 0 = none")
    task_rank: Rank = Field(4, description="task-specific (TS-LoRA) rank, 0 = none")


DEFAULTS: dict[str, Any] = MTLoRASettings.defaults()


#: the encoder of every method on MTLoRA's model (MTLoRA, MTLoRA+ and the parameter-efficient
#: baselines of Table 1, ``bench.models.peft``): ``register_architecture(..., **SWIN_ENCODER)``
#: (its weights keywords, when the embedded Swin gets some, belong here)
SWIN_ENCODER: dict[str, Any] = {"backbone": "swin_embedded", "backbone_kwargs": {},
                                "needs_encoder": "swin"}


def swin_t_scale(**arch: Any) -> dict[str, Any]:
    """MTLoRA's own model (§4.1), applied under ``--profile paper``: the ImageNet-1k Swin-T and
    HRNet-W18 decoder widths, with the architecture keywords ``arch`` (``arch.NAME``)."""
    return {"backbone.name": "swin_t", "backbone.pretrained": True,
            "arch.decoder_channels": (18, 36, 72, 144),
            **{f"arch.{name}": value for name, value in arch.items()}}


def paper_scale(rank: int, task_rank: int = 4) -> dict[str, Any]:
    """MTLoRA's own setup (§4.1, Table 1), applied under ``--profile paper``: the ImageNet-1k
    Swin-T, shared rank ``rank``, task rank ``task_rank``, HRNet-W18 decoder widths."""
    return swin_t_scale(rank=rank, task_rank=task_rank)


class MTLoRA(CompatArchitecture):
    """Swin backbone with TA-/TS-LoRA and one HRNet-style decoder per task."""

    plus: bool = False

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        backbone = self.encoder_class()
        if not isinstance(backbone, SwinBackbone):
            raise TypeError(f"{type(self).__name__} needs a Swin backbone, got "
                            f"{type(backbone).__name__}")
        self.encoder = MTLoRASwin(
            backbone, self.task_name, rank=kwargs.get("rank", DEFAULTS["rank"]),
            task_rank=kwargs.get("task_rank", 4), scale=kwargs.get("scale", 4.0),
            task_scale=kwargs.get("task_scale", 4.0), dropout=kwargs.get("dropout", 0.05),
            plus=kwargs.get("plus", self.plus),
            locations=tuple(kwargs.get("locations", LOCATIONS)))
        tasks: tuple[TaskSpec, ...] = kwargs["tasks"]
        out_size = tuple(kwargs["input_shape"][1:])
        channels = tuple(kwargs.get("decoder_channels", (18, 36, 72, 144)))
        self.decoders = nn.ModuleDict({
            t.name: HRNetHead(backbone.feature_dims, channels, t.num_outputs, out_size,
                              dense=is_dense(t.kind),
                              expansion=int(kwargs.get("decoder_expansion", 4)))
            for t in tasks})
        # off by default: every method of the benchmark is evaluated with the same standard
        # BatchNorm running statistics (``--set arch.precise_bn_samples=1024`` turns it on)
        self.precise_bn_samples = int(kwargs.get("precise_bn_samples", 0))
        self._bn_batches: list[tuple[torch.Tensor, str | None, torch.Tensor | None]] = []

    def train(self, mode: bool = True) -> MTLoRA:
        """Switching from training to evaluation first re-estimates the decoders' BatchNorm
        statistics with the current weights (:meth:`recalibrate_batchnorm`)."""
        if not mode and self.training and self._bn_batches:
            self.recalibrate_batchnorm()
        return super().train(mode)

    @torch.no_grad()
    def recalibrate_batchnorm(self) -> None:
        """"Precise BN": replace the running statistics of every BatchNorm layer by the exact
        average of its batch statistics over the most recent training batches (up to
        ``precise_bn_samples`` inputs), recomputed with the *current* weights.

        The decoders' BatchNorm sits on features of a backbone whose LoRA modules, norms and
        patch embedding move fast while training; the exponential running average (momentum 0.1,
        a ~10-step memory) then lags the weights, and evaluation-mode outputs differ from the
        training-mode outputs the weights were fitted to (on digits_scene the eval-mode depth loss
        on the *training* set was 2x the train-mode one). Training itself is unchanged.
        """
        batches, self._bn_batches = self._bn_batches, []
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        for inputs, task_name, task_ids in batches:
            self._forward(inputs, task_name, task_ids)
        for m, mom in zip(norms, momenta):
            m.momentum = mom

    def forward(self, inputs: torch.Tensor, task_name: str | None = None,
                task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.training and self.precise_bn_samples > 0 and torch.is_grad_enabled():
            self._bn_batches.append((inputs.detach(), task_name,
                                     None if task_ids is None else task_ids.detach()))
            while sum(len(b[0]) for b in self._bn_batches) > self.precise_bn_samples \
                    and len(self._bn_batches) > 1:
                self._bn_batches.pop(0)
        return self._forward(inputs, task_name, task_ids)

    def _forward(self, inputs: torch.Tensor, task_name: str | None = None,
                 task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        rows: dict[str, torch.Tensor | None] = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None:
                if task == task_name:
                    rows[task] = None
            elif self.multi_input and task_ids is not None:
                idx = (task_ids == tn).nonzero(as_tuple=True)[0]
                if len(idx):
                    rows[task] = idx
            else:
                rows[task] = None
        feats = self.encoder(inputs, rows)
        return {t: self.decoders[t](feats[t]) for t in rows}

    def get_share_params(self) -> list[nn.Parameter]:
        """Trainable backbone parameters shared by all tasks (TS-LoRA excluded)."""
        return [p for n, p in self.encoder.named_parameters()
                if p.requires_grad and "lora_task" not in n]

    def merge_lora(self) -> None:
        """Inference: fold TA-LoRA into the frozen weights where no TS-LoRA reads them."""
        self.encoder.merge()

    def unmerge_lora(self) -> None:
        self.encoder.unmerge()

    def param_breakdown(self) -> dict[str, int]:
        """Trainable parameters by component; the components sum to all trainable parameters."""
        out = {k: 0 for k in ("ta_lora", "ts_lora", "merging_lora", "patch_embed",
                              "patch_merging", "merging_norm", "norms", "rel_pos_bias",
                              "decoders")}
        for name, p in self.encoder.backbone.model.named_parameters():
            if p.requires_grad:
                out[self.encoder.component(name)] += p.numel()
        out["decoders"] = sum(p.numel() for p in self.decoders.parameters() if p.requires_grad)
        return out


class MTLoRAPlus(MTLoRA):
    """MTLoRA+: low-rank modules on the (frozen) patch-merging reductions."""

    plus = True

"""The parameter-efficient baselines of MTLoRA Table 1 on MTLoRA's own model.

Every method here is MTLoRA's multi-task model (:mod:`bench.models.mtlora`) with MTLoRA's
adaptation replaced by another one: the same :class:`~bench.models.mtlora.SwinBackbone` (and
whatever weights the scenario or method gives it: ``pretrained``, ``checkpoint``), the same
multi-scale features (each stage's output after the next stage's patch merging, widths 2C, 4C,
8C, 8C), the same :class:`~bench.models.mtlora.HRNetHead` decoders, the same equal-weight loss.
What differs is what is inserted into the Swin and what of it is trained:

==================  ===========================================  ==========================
method              inserted / trained in the backbone           MTLoRA §3.4 modules
==================  ===========================================  ==========================
decoders_only       nothing (frozen backbone)                    frozen
full_finetune       nothing; every backbone weight is trained    trained (all is)
lora_shared         TA-LoRA only (no TS-LoRA) in every block     trained (``unfreeze``)
lora_single_task    one LoRA-adapted Swin copy per task          trained per copy
adapter             Houlsby bottleneck adapters, shared          trained (``unfreeze``)
bitfit              every bias vector (linear and LayerNorm)     frozen (``unfreeze``)
vpt_deep            prompt tokens in every block's attention     trained (``unfreeze``)
==================  ===========================================  ==========================

"MTLoRA §3.4 modules" are what MTLoRA trains besides its low-rank modules — patch embedding,
patch merging, LayerNorms, relative position bias tables (``EXTRAS``); ``arch.unfreeze`` chooses
them (``[]``: the adaptation modules alone, the original papers' recipes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.scenario import TaskSpec, is_dense
from bench.models.compat import CompatArchitecture
from bench.models.mtlora import LOCATIONS, HRNetHead, MTLoRALinear, SwinBackbone

#: what MTLoRA trains besides its low-rank modules (§3.4): the ``arch.unfreeze`` choices
EXTRAS: tuple[str, ...] = ("patch_embed", "patch_merging", "norms", "rel_pos_bias")
#: name fragments of the parameters each adaptation inserts
ADAPTATION_KEYS: tuple[str, ...] = ("lora_", "adapter.", "prompts")


def component(name: str) -> str:
    """The component of backbone parameter ``name`` (a timm Swin's ``named_parameters``):
    ``adaptation`` (inserted modules), an ``EXTRAS`` entry, ``biases`` or ``weights``."""
    if any(key in name for key in ADAPTATION_KEYS):
        return "adaptation"
    if name.startswith("patch_embed"):
        return "patch_embed"
    if "downsample" in name:
        return "norms" if ".norm." in name else "patch_merging"
    if "relative_position_bias_table" in name:
        return "rel_pos_bias"
    if "norm" in name:
        return "norms"
    return "biases" if name.endswith("bias") else "weights"


def multiscale_features(backbone: SwinBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """MTLoRA's multi-scale features of a Swin (NCHW): the input of the blocks of stages 2-4
    (the previous stage's output after patch merging) and the last stage's output — what
    :class:`~bench.models.mtlora.MTLoRASwin` returns per task, here shared by all tasks."""
    model = backbone.model
    x = model.patch_embed(backbone.prepare(x))
    feats = []
    for i, stage in enumerate(model.layers):
        x = stage.downsample(x)
        if i > 0:
            feats.append(x)
        x = stage.blocks(x)
    feats.append(x)
    return [f.permute(0, 3, 1, 2) for f in feats]


class Adapter(nn.Module):
    """Houlsby et al.'s bottleneck adapter (ICML 2019, §2.1): ``h + W_up σ(W_down h)``, weights
    drawn near zero (truncated normal, std 1e-2) so that the layer starts near the identity."""

    def __init__(self, dim: int, bottleneck: int, std: float = 1e-2) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class AdaptedLinear(nn.Module):
    """A (frozen) linear layer followed by an adapter: the sub-layer output the adapter reads."""

    def __init__(self, base: nn.Linear, adapter: Adapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


class PromptedWindowAttention(nn.Module):
    """VPT-deep prompts in a Swin block's window attention (Jia et al., ECCV 2022).

    ``num_prompts`` learnable tokens are prepended to **every window** of the block (the same
    tokens for all windows and both shift modes), and their outputs are dropped after the block
    (VPT-deep: each block gets its own new prompts). A prompt's output never reaches the image
    tokens, so the prompts act as extra keys and values: each window's queries attend over
    ``[prompts; window tokens]``; the prompts are normalised by the block's ``norm1`` as the
    tokens are, have no relative position bias and are never masked (shifted windows).
    """

    def __init__(self, attn: nn.Module, norm: nn.Module, num_prompts: int,
                 patch_size: int = 4) -> None:
        super().__init__()
        self.inner = attn
        self._norm = (norm,)  # the block's norm1, not registered twice
        dim = attn.qkv.in_features
        self.prompts = nn.Parameter(torch.zeros(num_prompts, dim))
        # VPT's initialisation: uniform, xavier-style bound sqrt(6 / (3·patch² + dim))
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
        nn.init.uniform_(self.prompts, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.inner
        b, n, c = x.shape
        heads, p = attn.num_heads, self.prompts.shape[0]
        head_dim = attn.qkv.out_features // (3 * heads)
        q, k, v = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        pk, pv = attn.qkv(self._norm[0](self.prompts)).reshape(p, 3, heads, head_dim) \
            .permute(1, 2, 0, 3)[1:].unbind(0)
        k = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), v], dim=2)
        bias = F.pad(attn._get_rel_pos_bias(), (p, 0))  # (1, heads, n, p + n)
        scores = (q * attn.scale) @ k.transpose(-2, -1) + bias
        if mask is not None:
            windows = mask.shape[0]
            scores = scores.view(-1, windows, heads, n, p + n) \
                + F.pad(mask, (p, 0)).unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, heads, n, p + n)
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b, n, -1)
        return attn.proj_drop(attn.proj(out))


class SwinPEFT(CompatArchitecture):
    """MTLoRA's model with another adaptation: one (adapted) Swin shared by all tasks,
    multi-scale features, one HRNet-style decoder per task.

    Subclasses implement :meth:`adapt` (insert modules into the timm Swin) and
    :meth:`adapts` (which of the inserted/backbone parameters the method trains, besides the
    ``unfreeze`` extras)."""

    #: default of ``arch.unfreeze`` (MTLoRA §3.4 modules trained besides the adaptation)
    default_unfreeze: tuple[str, ...] = EXTRAS

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        unfreeze = kwargs.get("unfreeze")
        self.unfreeze = tuple(self.default_unfreeze if unfreeze is None else unfreeze)
        unknown = set(self.unfreeze) - set(EXTRAS)
        if unknown:
            raise ValueError(f"unknown arch.unfreeze entries {sorted(unknown)}; choose from "
                             f"{', '.join(EXTRAS)}")
        backbone = self.encoder_class()
        if not isinstance(backbone, SwinBackbone):
            raise TypeError(f"{type(self).__name__} needs a Swin backbone, got "
                            f"{type(backbone).__name__}")
        self.encoder = self.build_encoder(backbone, kwargs)
        tasks: tuple[TaskSpec, ...] = kwargs["tasks"]
        out_size = tuple(kwargs["input_shape"][1:])
        channels = tuple(kwargs.get("decoder_channels", (18, 36, 72, 144)))
        self.decoders = nn.ModuleDict({
            t.name: HRNetHead(backbone.feature_dims, channels, t.num_outputs, out_size,
                              dense=is_dense(t.kind),
                              expansion=int(kwargs.get("decoder_expansion", 4)))
            for t in tasks})

    # ------------------------------------------------------------------ adaptation

    def build_encoder(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> nn.Module:
        self.adapt(backbone, kwargs)
        self.set_trainable(backbone)
        return backbone

    def adapt(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> None:
        """Insert the method's modules into ``backbone.model`` (in place)."""

    def adapts(self, name: str) -> bool:
        """Whether backbone parameter ``name`` is trained by the adaptation itself."""
        return component(name) == "adaptation"

    def set_trainable(self, backbone: SwinBackbone) -> None:
        for name, p in backbone.model.named_parameters():
            p.requires_grad_(self.adapts(name) or component(name) in self.unfreeze)

    # ------------------------------------------------------------------ forward

    def _rows(self, task_name: str | None, task_ids: torch.Tensor | None
              ) -> dict[str, torch.Tensor | None]:
        """Task -> its rows of the batch (``None``: all rows), as MTLoRA routes them."""
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
        return rows

    def forward(self, inputs: torch.Tensor, task_name: str | None = None,
                task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = multiscale_features(self.encoder, inputs)
        out = {}
        for task, idx in self._rows(task_name, task_ids).items():
            task_feats = feats if idx is None else [f[idx] for f in feats]
            out[task] = self.decoders[task](task_feats)
        return out

    # ------------------------------------------------------------------ bookkeeping

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.encoder.model.named_parameters())

    def get_share_params(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (empty for decoders-only)."""
        return [p for _, p in self.backbone_parameters() if p.requires_grad]

    def param_breakdown(self) -> dict[str, int]:
        """Trainable parameters by component; they sum to all trainable parameters."""
        out = dict.fromkeys(("adaptation", *EXTRAS, "biases", "weights", "decoders"), 0)
        for name, p in self.backbone_parameters():
            if p.requires_grad:
                out[component(name)] += p.numel()
        out["decoders"] = sum(p.numel() for p in self.decoders.parameters() if p.requires_grad)
        return out


class DecodersOnly(SwinPEFT):
    """MTLoRA Table 1's "MTL - Tuning Decoders Only": the backbone frozen."""

    default_unfreeze = ()

    def adapts(self, name: str) -> bool:
        return False


class FullFinetune(SwinPEFT):
    """MTLoRA Table 1's "MTL - Full Fine Tuning": every backbone weight trained."""

    default_unfreeze = EXTRAS

    def adapts(self, name: str) -> bool:
        return True


class BitFit(SwinPEFT):
    """BitFit (Ben Zaken et al., ACL 2022): only the bias vectors of the backbone (every linear
    layer's and LayerNorm's) are trained, with the decoders."""

    default_unfreeze = ()

    def adapts(self, name: str) -> bool:
        return name.endswith(".bias")


def _wrap_lora(model: nn.Module, locations: Sequence[str], rank: int, scale: float,
               dropout: float) -> None:
    unknown = set(locations) - set(LOCATIONS)
    if unknown:
        raise ValueError(f"unknown LoRA locations {sorted(unknown)}; choose from "
                         f"{', '.join(LOCATIONS)}")
    for stage in model.layers:
        for blk in stage.blocks:
            for loc in locations:
                owner = blk.attn if loc in ("qkv", "proj") else blk.mlp
                setattr(owner, loc, MTLoRALinear(getattr(owner, loc), rank=rank, scale=scale,
                                                 dropout=dropout))


class SharedLoRA(SwinPEFT):
    """One LoRA set shared by all tasks (MTLoRA's TA-LoRA in every block, no TS-LoRA): the
    "task-agnostic only" comparison of MTLoRA Fig. 4, one forward for all tasks."""

    def adapt(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> None:
        _wrap_lora(backbone.model, kwargs.get("locations", LOCATIONS), int(kwargs["rank"]),
                   float(kwargs.get("scale", 4.0)), float(kwargs.get("dropout", 0.05)))


class SingleTaskLoRA(SwinPEFT):
    """One LoRA-adapted copy of the (frozen) Swin per task; task ``t``'s decoder reads copy
    ``t``'s features (Table 1's "LoRA" row: a task-wise module, one inference per task). Every
    copy starts from the same backbone weights."""

    def build_encoder(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> nn.Module:
        copies = nn.ModuleList()
        for _ in self.task_name:
            copy_ = copy.deepcopy(backbone)
            _wrap_lora(copy_.model, kwargs.get("locations", LOCATIONS), int(kwargs["rank"]),
                       float(kwargs.get("scale", 4.0)), float(kwargs.get("dropout", 0.05)))
            self.set_trainable(copy_)
            copies.append(copy_)
        return copies

    def forward(self, inputs: torch.Tensor, task_name: str | None = None,
                task_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for task, idx in self._rows(task_name, task_ids).items():
            x = inputs if idx is None else inputs[idx]
            encoder = self.encoder[self.task_name.index(task)]
            out[task] = self.decoders[task](multiscale_features(encoder, x))
        return out

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for enc in self.encoder for name, p in enc.model.named_parameters()]


class HoulsbyAdapter(SwinPEFT):
    """Houlsby et al.'s adapters (ICML 2019) in every Swin block, shared by all tasks: one after
    the attention projection and one after the MLP, each before its residual addition."""

    def adapt(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> None:
        reduction = float(kwargs.get("reduction", 4))
        for stage in backbone.model.layers:
            for blk in stage.blocks:
                dim = blk.attn.proj.out_features
                width = max(1, round(dim / reduction))
                blk.attn.proj = AdaptedLinear(blk.attn.proj, Adapter(dim, width))
                blk.mlp.fc2 = AdaptedLinear(blk.mlp.fc2, Adapter(dim, width))


class VPTDeep(SwinPEFT):
    """VPT-deep (Jia et al., ECCV 2022): new learnable prompt tokens in every block, shared by all
    tasks, prepended in each attention window (:class:`PromptedWindowAttention`)."""

    def adapt(self, backbone: SwinBackbone, kwargs: dict[str, Any]) -> None:
        patch = backbone.model.patch_embed.proj.kernel_size[0]
        for stage in backbone.model.layers:
            for blk in stage.blocks:
                blk.attn = PromptedWindowAttention(blk.attn, blk.norm1,
                                                   int(kwargs["num_prompts"]), patch)


#: what every PEFT method shares with MTLoRA by default: the decoders of its embedded scale
PEFT_DEFAULTS: dict[str, Any] = {"decoder_channels": (8, 16, 32, 64), "decoder_expansion": 4}


def peft_defaults(cls: type[SwinPEFT], **arch: Any) -> dict[str, Any]:
    """A method's architecture defaults: MTLoRA's decoders, its own ``unfreeze`` (written out,
    so that the run's config records what is trained) and ``arch``."""
    return {**PEFT_DEFAULTS, "unfreeze": list(cls.default_unfreeze), **arch}

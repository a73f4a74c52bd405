"""MTAN — Multi-Task Attention Network (Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019, §3.1-3.2, Fig. 2-3, Eq. 1-2), on any staged encoder.

One shared encoder (the global feature pool) and, for every task ``i``, one soft-attention
module per stage ``j`` (the paper's encoder attention modules). The module's mask is computed
from the shared features ``u^(j)`` at the start of the stage's last block and applied to the
shared features ``p^(j)`` at the end of the stage (Eq. 1, element-wise):

    â^(i)_j = a^(i)_j ⊙ p^(j),   a^(i)_1 = h^(i)_1(g^(i)_1(u^(1))),
    a^(i)_j = h^(i)_j(g^(i)_j([u^(j); pool(f^(j)(â^(i)_{j-1}))]))   (j > 1, Eq. 2)

``g`` = 1x1 conv + BN + ReLU, ``h`` = 1x1 conv + BN + sigmoid, so every mask lies in [0, 1]
(Fig. 3); ``f^(j)`` = 3x3 conv + BN + ReLU, one per stage boundary, **shared by the tasks**, maps
the previous task feature to the next stage's width, and ``pool`` (max pooling) matches the
next stage's resolution. Task ``i``'s decoder reads ``â^(i)`` of the last stage. The paper's
decoder attention (SegNet's up-sampling half) has no counterpart: our decoders are the
benchmark's task heads, as in LibMTL 1.1.5's MTAN.

Adaptation to the staged-encoder protocol (fix 6 of :mod:`bench.models.compat`). LibMTL's MTAN
reaches into a torchvision ResNet (``conv1``, ``layer1..4``) and takes ``u`` = the output of
``layer[:-1]`` and ``p`` = the output of ``layer[-1]``. Here: ``stem`` + ``stages``; ``u`` is the
output of all blocks of a stage but its last one, ``p`` the stage's output — LibMTL's split on
ResNet-18 (two blocks per stage). A stage of one block (the embedded scenarios' narrow ResNet)
has no earlier block, so ``u = p``: the mask is computed from the features it gates. Channel
counts and resolutions are measured with one probe forward, so any stride pattern works (the
pooling is adaptive max pooling to ``u``'s size, 2x2 max pooling on a ResNet).
``needs_encoder="staged"`` refuses other encoders at planning time.

Defaults (no keyword): the attention modules' hidden width is the stage width (LibMTL with basic
blocks, ``ch // expansion``); ``f`` is the paper's 3x3 conv (LibMTL uses a BasicBlock there).

Multi-input scenarios: the shared encoder runs once on all rows (fused forward); task ``i``'s
attention modules run only on task ``i``'s rows, so their BatchNorm statistics are the same in
the fused and the per-task forward. Shared parameters for gradient weightings (``mtan+pcgrad``):
the shared encoder and the ``f`` layers (used by every task; LibMTL counts only the encoder);
the attention modules are task-specific and receive only their task's gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import CompatArchitecture, register_architecture, register_method


def _is_staged(encoder: nn.Module) -> bool:
    return hasattr(encoder, "stem") and isinstance(getattr(encoder, "stages", None), nn.ModuleList)


def split_stage(stage: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, p)``: the features before the stage's last block and the stage's output
    (``u = p`` for a stage of one block, or a stage that is not a sequence of blocks)."""
    if isinstance(stage, nn.Sequential) and len(stage) > 1:
        u = stage[:-1](x)
        return u, stage[-1](u)
    p = stage(x)
    return p, p


def attention_module(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
    """``h(g(.))``: 1x1 conv + BN + ReLU, 1x1 conv + BN + sigmoid (MTAN Fig. 3)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_ch, 1), nn.BatchNorm2d(out_ch), nn.Sigmoid())


def shared_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """``f^(j)``: 3x3 conv + BN + ReLU (MTAN Fig. 3), shared by the tasks."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def task_rows(task_ids: torch.Tensor | None, num_tasks: int) -> list[torch.Tensor | None]:
    """Per task, the boolean row mask of its rows (``None``: every row is the task's)."""
    if task_ids is None:
        return [None] * num_tasks
    return [task_ids == t for t in range(num_tasks)]


class MTAN(CompatArchitecture):
    """Shared staged encoder + per-task attention masks after every stage."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = self.encoder_class()
        if not _is_staged(self.encoder):
            raise TypeError("MTAN needs a staged encoder (stem + stages ModuleList), got "
                            f"{type(self.encoder).__name__}")
        u_ch, p_ch = self._probe(tuple(kwargs["input_shape"]))
        stages = len(p_ch)
        self.attention = nn.ModuleList()  # attention[task][stage]
        for _ in task_name:
            self.attention.append(nn.ModuleList([
                attention_module(u_ch[0] if j == 0 else u_ch[j] + p_ch[j], p_ch[j], p_ch[j])
                for j in range(stages)]))
        # f^(j+1): maps task feature of stage j to stage j+1's width (shared by all tasks)
        self.shared_f = nn.ModuleList([shared_conv(p_ch[j], p_ch[j + 1])
                                       for j in range(stages - 1)])

    @torch.no_grad()
    def _probe(self, input_shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Channels of ``u`` and ``p`` per stage (eval mode: no BatchNorm statistic changes)."""
        was_training = self.encoder.training
        self.encoder.eval()
        x = self.encoder.stem(torch.zeros(1, *input_shape))
        u_ch, p_ch = [], []
        for stage in self.encoder.stages:
            u, p = split_stage(stage, x)
            if u.shape[-2:] != p.shape[-2:]:
                raise ValueError("MTAN: a stage's last block must keep the resolution "
                                 f"(u {tuple(u.shape)} vs p {tuple(p.shape)})")
            u_ch.append(u.shape[1])
            p_ch.append(p.shape[1])
            x = p
        self.encoder.train(was_training)
        return u_ch, p_ch

    def attend(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> tuple[list[torch.Tensor | None], list[list[torch.Tensor]]]:
        """Per task, the attended feature of the last stage (rows of that task only, ``None``
        for a task without rows) and its masks per stage."""
        rows = task_rows(task_ids, len(self.task_name))
        feats: list[torch.Tensor | None] = [None] * len(self.task_name)
        masks: list[list[torch.Tensor]] = [[] for _ in self.task_name]
        x = self.encoder.stem(inputs)
        for j, stage in enumerate(self.encoder.stages):
            u, p = split_stage(stage, x)
            for t in range(len(self.task_name)):
                sel = rows[t]
                if sel is not None and not bool(sel.any()):
                    continue
                ut, pt = (u, p) if sel is None else (u[sel], p[sel])
                if j == 0:
                    a_in = ut
                else:
                    prev = self.shared_f[j - 1](feats[t])
                    if prev.shape[-2:] != ut.shape[-2:]:
                        prev = F.adaptive_max_pool2d(prev, ut.shape[-2:])
                    a_in = torch.cat([ut, prev], dim=1)
                mask = self.attention[t][j](a_in)
                masks[t].append(mask)
                feats[t] = mask * pt
            x = p
        return feats, masks

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> list[torch.Tensor]:
        if not self.multi_input:
            task_ids = None
        feats, _ = self.attend(inputs, task_ids)
        reps = []
        for t, feat in enumerate(feats):
            if task_ids is None:
                reps.append(feat)
                continue
            if feat is None:  # absent from this batch: never decoded
                reps.append(inputs.new_zeros(0))
                continue
            full = feat.new_zeros((inputs.shape[0], *feat.shape[1:]))
            full[task_ids == t] = feat
            reps.append(full)
        return reps

    def get_share_params(self):
        return list(self.encoder.parameters()) + list(self.shared_f.parameters())


_DEFAULTS: dict[str, Any] = {}

register_architecture(
    "mtan", MTAN, description="shared staged encoder + per-task soft-attention masks after "
    "every stage (MTAN)", defaults=_DEFAULTS, needs_encoder="staged",
    supports_rep_grad=True, supports_fused_multi_input=True)
register_method(
    "mtan", architecture="mtan", weighting="ew",
    description="MTAN: per-task attention over a shared encoder, equal weights",
    paper="Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019 "
          "(§3.2, Eq. 1-2)",
    family="architecture")

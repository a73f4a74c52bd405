"""Single-task LoRA — one LoRA-adapted frozen Swin per task (MTLoRA Table 1, "LoRA").

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, as MTLoRA's Table 1
compares it (Agiza et al., CVPR 2024, §4.2): a task-wise module for each task — here every task
has its own copy of MTLoRA's Swin (all copies start from the same weights, frozen) with its own
low-rank adapters (:class:`bench.models.mtlora.MTLoRALinear`, rank 4, scale 4, as Table 1's
LoRA and MTLoRA's task rank; dropout 0.05), and its own HRNet-style decoder on its copy's
multi-scale features. One backbone forward per task (Table 1: no single inference for all).

Differences from Table 1's row, both settable: the adapters sit on MTLoRA's four locations
(QKV, projection, FC1, FC2) where Table 1's LoRA adapts the attention layers only
(``--set arch.locations=[qkv,proj]``); each copy also trains MTLoRA's §3.4 modules (patch
embedding, patch merging, LayerNorms, position bias tables), so that the row differs from
MTLoRA only in how the low-rank modules are shared (``--set arch.unfreeze=[]`` trains LoRA
alone).
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import LOCATIONS, SWIN_ENCODER, swin_t_scale
from bench.models.peft import SingleTaskLoRA, peft_defaults

register_architecture(
    "lora_single_task", SingleTaskLoRA,
    description="one LoRA-adapted copy of MTLoRA's Swin per task (task-wise, T forwards)",
    defaults=peft_defaults(SingleTaskLoRA, rank=4, scale=4.0, dropout=0.05,
                           locations=LOCATIONS),
    **SWIN_ENCODER, paper_scale=swin_t_scale(rank=4), supports_rep_grad=False)
register_method(
    "lora_single_task", architecture="lora_single_task", weighting="ew",
    description="one LoRA-adapted frozen Swin per task, rank 4 (MTLoRA Table 1's LoRA)",
    paper="Hu et al., LoRA, ICLR 2022; Agiza et al., MTLoRA, CVPR 2024 (§4.2, Table 1)",
    family="low_rank")

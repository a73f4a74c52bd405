"""Shared LoRA — one set of low-rank adapters for all tasks on MTLoRA's model (MTLoRA Fig. 4).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, on MTLoRA's model
(Agiza et al., CVPR 2024): MTLoRA without its task-specific modules — the TA-LoRA of MTLoRA
(``W x + b + s·B A drop(x)``, :class:`bench.models.mtlora.MTLoRALinear`) on QKV, projection,
FC1 and FC2 of **every** block including each stage's last (where MTLoRA puts TS-LoRA), no
task-specific module, one forward for all tasks; the features every decoder fuses are shared.
This is the "task-agnostic only" comparison of MTLoRA §4.4 / Fig. 4.

Defaults are MTLoRA's (``bench.models.mtlora.DEFAULTS``): shared rank 8 in the embedded
scenarios (16 under ``--profile paper``, the rank of MTLoRA's 4.95M row), scale 4, dropout 0.05;
trained besides the low-rank modules, as MTLoRA (§3.4): patch embedding, patch merging,
LayerNorms, relative position bias tables (``arch.unfreeze``; ``[]`` trains LoRA alone, Hu et
al.'s recipe). ``arch.locations`` restricts the adapted layers (MTLoRA Table 2).
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import LOCATIONS, SWIN_ENCODER, swin_t_scale
from bench.models.peft import SharedLoRA, peft_defaults

register_architecture(
    "lora_shared", SharedLoRA,
    description="MTLoRA's model with one shared LoRA set in every block (no task-specific LoRA)",
    defaults=peft_defaults(SharedLoRA, rank=8, scale=4.0, dropout=0.05,
                           locations=LOCATIONS),
    **SWIN_ENCODER, paper_scale=swin_t_scale(rank=16), supports_rep_grad=False)
register_method(
    "lora_shared", architecture="lora_shared", weighting="ew",
    description="one LoRA set shared by all tasks on a frozen Swin (MTLoRA without TS-LoRA)",
    paper="Hu et al., LoRA, ICLR 2022; Agiza et al., MTLoRA, CVPR 2024 (§4.4, Fig. 4)",
    family="low_rank")

"""MTLoRA+ — MTLoRA with low-rank modules on patch merging instead of training it (CVPR 2024).

Agiza, Neseem and Reda, "MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task
Learning", CVPR 2024, §3.4 (last paragraph) and Table 1: as MTLoRA (``methods/mtlora.py``), but
each patch-merging reduction stays frozen and gets a low-rank module of the stage's shared rank
(its LayerNorm is still trained). The released MTLoRA+ configurations use the same rank for the
shared and the task-specific modules (4 / 8 / 16 for the 2.57M / 3.15M / 4.29M rows of Table 1);
the embedded default is 4 for both (the backbone is 4x narrower than Swin-T); under
``--profile paper``: the ImageNet-1k Swin-T with ranks 4 / 4 (the 2.57M row).
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, MTLoRAPlus, MTLoRAPlusSettings, paper_scale

register_architecture(
    "mtlora_plus", MTLoRAPlus,
    description="MTLoRA with low-rank patch merging instead of a trained reduction",
    settings=MTLoRAPlusSettings, **SWIN_ENCODER, paper_scale=paper_scale(rank=4))
register_method(
    "mtlora_plus", architecture="mtlora_plus", weighting="ew",
    family="low_rank",
    description="MTLoRA+: MTLoRA with low-rank modules on patch merging",
    paper="Agiza et al., MTLoRA, CVPR 2024 (§3.4, Table 1)")

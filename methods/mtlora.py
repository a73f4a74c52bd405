"""MTLoRA — task-agnostic and task-specific low-rank adaptation of a Swin backbone (CVPR 2024).

Agiza, Neseem and Reda, "MTLoRA: A Low-Rank Adaptation Approach for Efficient Multi-Task
Learning", CVPR 2024. Implemented here:

* §3.2, Eq. 1-2: TA-LoRA (shared, rank ``rank``) on QKV, attention projection, FC1 and FC2 of every
  Swin block; TS-LoRA (per task, rank ``task_rank``) on projection, FC1 and FC2 of the last block
  of each stage (QKV stays shared), see :class:`bench.models.mtlora.MTLoRALinear`;
* §3.3: the task-specific outputs of each stage's last block are the multi-scale features that the
  task's HRNet-style decoder fuses (:class:`bench.models.mtlora.HRNetHead`);
* §3.4: trained besides LoRA: patch embedding, patch merging, LayerNorms, relative position bias
  tables; the pre-trained weights are frozen. MTLoRA+ (``methods/mtlora_plus.py``) replaces the
  trained patch-merging reduction by a low-rank module on it.
* Eq. 4: the loss is the (equal-weight, ``ew``) sum of the task losses.

Scale: the CPU-sized defaults (``bench.models.mtlora.DEFAULTS``: a random frozen 24-wide Swin,
shared rank 8) serve the embedded scenarios; under ``--profile paper`` the method is MTLoRA's own
(§4.1, Table 1): ImageNet-1k Swin-T, shared rank 16 and task rank 4 (the 4.95M row), HRNet-W18
decoders.

Multi-input scenarios run all rows through the shared backbone once; task ``t``'s TS-LoRA stream is
computed on task ``t``'s rows only and its decoder sees only those rows.
"""

from __future__ import annotations

from bench.api import Choice, register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, MTLoRA, MTLoRASettings, paper_scale

register_architecture(
    "mtlora", MTLoRA, description="Swin + TA-LoRA / TS-LoRA, multi-scale task decoders",
    settings=MTLoRASettings, **SWIN_ENCODER, paper_scale=paper_scale(rank=16),
    search={"rank": Choice("MTLoRA Table 1's shared ranks 16/32/64 on Swin-T (width 96), "
                           "scaled to the embedded Swin's width 24", (4, 8, 16))})
register_method(
    "mtlora", architecture="mtlora", weighting="ew",
    family="low_rank",
    description="MTLoRA: shared + task-specific low-rank adapters on a frozen Swin",
    paper="Agiza et al., MTLoRA, CVPR 2024 (§3.2-3.4, Eq. 1-2, 4)")

"""Decoders only — MTLoRA's model with the whole backbone frozen (MTLoRA Table 1).

Agiza et al., MTLoRA, CVPR 2024, §4.2 and Table 1, row "MTL - Tuning Decoders Only" (1.94M
trainable parameters on Swin-T with 4 PASCAL-Context tasks): the Swin backbone of MTLoRA
(whatever weights the run gives it) stays frozen; only the task decoders — MTLoRA's HRNet-style
heads on the same multi-scale features — are trained, with the equal-weight sum of the task
losses (Eq. 4). Under ``--profile paper``: the ImageNet-1k Swin-T and HRNet-W18 decoder widths.
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, swin_t_scale
from bench.models.peft import DecodersOnly, peft_defaults

register_architecture(
    "decoders_only", DecodersOnly,
    description="MTLoRA's model with a frozen Swin: only the HRNet-style task decoders train",
    defaults=peft_defaults(DecodersOnly), **SWIN_ENCODER, paper_scale=swin_t_scale(),
    supports_rep_grad=False)
register_method(
    "decoders_only", architecture="decoders_only", weighting="ew",
    description="frozen Swin backbone, trained task decoders (MTLoRA Table 1)",
    paper="Agiza et al., MTLoRA, CVPR 2024 (§4.2, Table 1: MTL - Tuning Decoders Only)",
    family="low_rank")

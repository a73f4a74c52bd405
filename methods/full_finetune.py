"""Full fine-tuning — MTLoRA's model with every backbone weight trained (MTLoRA Table 1).

Agiza et al., MTLoRA, CVPR 2024, §4.2 and Table 1, row "MTL - Full Fine Tuning" (30.06M
trainable parameters on Swin-T with 4 PASCAL-Context tasks): MTLoRA's Swin backbone (whatever
weights the run gives it) and its HRNet-style task decoders on the multi-scale features, all
trained, with the equal-weight sum of the task losses (Eq. 4). It differs from ``hps`` on the
same Swin only by its decoders (MTLoRA's multi-scale HRNet heads instead of the scenario's heads
on the last feature map). Under ``--profile paper``: the ImageNet-1k Swin-T and HRNet-W18 widths.
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, swin_t_scale
from bench.models.peft import FullFinetune, peft_defaults

register_architecture(
    "full_finetune", FullFinetune,
    description="MTLoRA's model with the whole Swin trained and HRNet-style task decoders",
    defaults=peft_defaults(FullFinetune), **SWIN_ENCODER, paper_scale=swin_t_scale(),
    supports_rep_grad=False)
register_method(
    "full_finetune", architecture="full_finetune", weighting="ew",
    description="the whole Swin and the task decoders trained (MTLoRA Table 1)",
    paper="Agiza et al., MTLoRA, CVPR 2024 (§4.2, Table 1: MTL - Full Fine Tuning)",
    family="low_rank")

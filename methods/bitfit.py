"""BitFit — only the backbone's bias vectors and the decoders are trained (MTLoRA Table 1).

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022, on MTLoRA's model (Agiza et al., CVPR
2024): every bias vector of the Swin backbone — of its linear layers (QKV, projection, FC1, FC2,
patch embedding) and of its LayerNorms — is trained, every weight matrix stays frozen, and the
task decoders (MTLoRA's HRNet-style heads) are trained; one forward for all tasks.

MTLoRA's text describes its BitFit row (Polyhistor's setup) as also training the patch merging
and patch projection layers: ``--set arch.unfreeze=[patch_embed,patch_merging]``. The relative
position bias tables are attention biases but not bias vectors of a layer; they stay frozen
unless ``arch.unfreeze`` lists ``rel_pos_bias``.
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, swin_t_scale
from bench.models.peft import BitFit, peft_defaults

register_architecture(
    "bitfit", BitFit,
    description="MTLoRA's model with only the Swin's bias vectors (and the decoders) trained",
    defaults=peft_defaults(BitFit), **SWIN_ENCODER, paper_scale=swin_t_scale(),
    supports_rep_grad=False)
register_method(
    "bitfit", architecture="bitfit", weighting="ew",
    description="train only the Swin's biases and the task decoders (MTLoRA Table 1)",
    paper="Ben Zaken et al., BitFit, ACL 2022; MTLoRA Table 1",
    family="low_rank")

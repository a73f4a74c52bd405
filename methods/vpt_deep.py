"""VPT-deep — learnable prompt tokens in every Swin block, shared by all tasks (MTLoRA Table 1).

Jia et al., "Visual Prompt Tuning", ECCV 2022 (§3.2, VPT-deep), on MTLoRA's model (Agiza et
al., CVPR 2024, Table 1's "VPT-deep": 50 prompt tokens per layer). Every block gets its own
``num_prompts`` learnable tokens of the block's width; the frozen Swin's weights stay frozen.

Windowed attention: a Swin block attends within local windows, so the block's prompts are
prepended to **every** window (the same tokens for all windows and in shifted blocks) and
dropped after the block, as VPT's Swin variant does (:class:`bench.models.peft.
PromptedWindowAttention`): each window's tokens attend over ``[prompts; window]``, the prompts
are normalised by the block's first LayerNorm like the tokens, carry no relative position bias
and are never masked by the shifted-window mask. Their outputs being dropped, the prompts act as
extra keys and values of every window. Initialisation: VPT's uniform bound
``sqrt(6 / (3·patch² + C))``.

Defaults: 50 prompts per block under ``--profile paper`` (Table 1; a Swin-T window holds 49
tokens); 4 in the embedded scenarios (a 2×2 window holds 4 tokens: the same ratio). Trained
besides the prompts, as MTLoRA (§3.4): patch embedding, patch merging, LayerNorms, relative
position bias tables (``arch.unfreeze``; ``[]`` trains the prompts alone, VPT's recipe).
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, swin_t_scale
from bench.models.peft import VPTDeep, peft_defaults

register_architecture(
    "vpt_deep", VPTDeep,
    description="MTLoRA's model with learnable prompt tokens in every Swin block's windows",
    defaults=peft_defaults(VPTDeep, num_prompts=4), **SWIN_ENCODER,
    paper_scale=swin_t_scale(num_prompts=50), supports_rep_grad=False)
register_method(
    "vpt_deep", architecture="vpt_deep", weighting="ew",
    description="prompt tokens prepended in every block's attention windows, shared (VPT-deep)",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022 (§3.2); MTLoRA Table 1",
    family="low_rank")

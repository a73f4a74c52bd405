"""Adapter — Houlsby bottleneck adapters in every Swin block, shared by all tasks (MTLoRA Table 1).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (§2.1, Fig. 2), on
MTLoRA's model (Agiza et al., CVPR 2024): two adapters per block — after the attention
projection and after the MLP, each before its residual addition — ``h + W_up GELU(W_down h)``
with bottleneck width ``C / reduction`` (C the block's width), initialised near the identity
(truncated normal, std 1e-2; Houlsby et al. §3.6), one set shared by all tasks (a single forward
for all tasks). The frozen Swin's weights stay frozen.

Defaults: reduction 4 (bottleneck C/4: 2.16M adapter parameters on Swin-T, the size of one of
the task-wise adapter sets of Table 1's 11.24M "Adapter" row); trained besides the adapters,
as MTLoRA (§3.4) and as Houlsby et al. train the layer norms: patch embedding, patch merging,
LayerNorms, relative position bias tables (``arch.unfreeze``; ``[norms]`` is Houlsby et al.'s
recipe). The nonlinearity is the Swin MLP's GELU (Houlsby et al. do not fix one).
"""

from __future__ import annotations

from bench.api import register_architecture, register_method
from bench.models.mtlora import SWIN_ENCODER, swin_t_scale
from bench.models.peft import HoulsbyAdapter, peft_defaults

register_architecture(
    "adapter", HoulsbyAdapter,
    description="MTLoRA's model with shared Houlsby bottleneck adapters in every Swin block",
    defaults=peft_defaults(HoulsbyAdapter, reduction=4), **SWIN_ENCODER,
    paper_scale=swin_t_scale(), supports_rep_grad=False)
register_method(
    "adapter", architecture="adapter", weighting="ew",
    description="shared Houlsby adapters (bottleneck C/4) in every block of a frozen Swin",
    paper="Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019 (§2.1); "
          "MTLoRA Table 1",
    family="low_rank")

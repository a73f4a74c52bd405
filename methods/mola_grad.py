"""MoLA-Grad — target-aware Mixture of Low-rank Adapters (Zhou et al., ICML 2024, §3.3–3.4).

One shared ResNet encoder whose block convolutions in the chosen stages (default Block4 =
``stages[3]``, Table 7) carry K = T low-rank adapters of rank 4 (Table 6), alpha = 16
(reference). **Adapted:** both 3x3 convolutions (``conv1``, ``conv2``) of every basic block of
the placed stages; **not** the 1x1 projection shortcut, as the reference's ``ResNet50_LoraGrad``
adapts its blocks' convolutions and leaves the ``downsample`` alone (``arch.adapt_shortcut=true``
adapts it too — what runs recorded before this setting existed did; their records still match
that setting). Sample ``n``
of task ``t`` is computed with ``W + ΔW_t`` (Eq. 1 with α_n = one-hot(t)), so the loss of task
``t`` reaches only adapter ``t`` and the shared weights: explicit gradient separation. The paper's
grouped convolution (Eq. 2–3) is available as ``arch.path=grouped``; the default splits the batch
by task (same result, a plain convolution's cost; see
:func:`bench.perf.kernels.mola_conv_benchmark`).

* Multi-input scenarios (domain and multi-input task heterogeneity): the task id of each row comes
  from the data pipeline (``task_ids``), at training and at test time (target-aware inference).
* Single-input scenarios (every sample serves every task): each task head gets its own adapter
  path — ``encode`` returns one representation per task, task ``t``'s computed with adapter ``t``.
  The un-adapted prefix (stem and the stages before the first adapted one) is computed once; only
  the stages from the first adapted one on are run once per task. This is the only reading of
  "task identifier ⇒ adapter" when a sample has no single task, and keeps the gradient isolation
  (the loss of task ``t`` reaches adapter ``t`` only, up to BatchNorm coupling). The T paths run
  as one batch of T tagged copies through the adapted stages, so their shared BatchNorm layers
  normalise with statistics of all paths in training exactly as their running statistics do at
  test time (running the paths one after another made the running statistics an average that
  no path saw in training, and collapsed the test metrics).

Gradient isolation is exact for the convolution weights; in a training-mode forward of a batch
mixing tasks (the engine's fused multi-input pass, and the reference's mixed batches), BatchNorm's
batch statistics still couple the rows, so the loss of task ``t`` reaches other adapters through
them. With one forward per task (gradient weightings, LibMTL's Trainer) or in eval mode the
isolation is exact (``tests/test_mola.py``).

Any weighting combines with it (``mola_grad+pcgrad``); gradient-surgery weightings act on the
shared parameters only (encoder without adapters, see :class:`bench.models.mola.MoLAArchitecture`).

Transformer backbone (§5.5, Table 8): with ``backbone.name=swin_embedded`` the adapters sit on the
``qkv``, ``proj``, ``fc1`` and ``fc2`` linear layers of the last Swin stage's blocks
(:class:`bench.models.mola.MoLALinear`, α per sample broadcast over its tokens and windows); the
Swin has LayerNorm only, so the isolation is exact in training mode too.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.api import Choice, register_architecture, register_method
from bench.models.mola import MoLAArchitecture, MoLASettings, mixture


class MoLAGrad(MoLAArchitecture):
    """MoLA-Grad: one adapter per task, selected by the task identifier (α one-hot)."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        if kwargs.get("num_adapters") not in (None, len(task_name)):
            raise ValueError("MoLA-Grad has one adapter per task (K = T)")
        kwargs["num_adapters"] = len(task_name)  # K = T (§3.4)
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)

    def encode(self, inputs: torch.Tensor, task_ids: torch.Tensor | None
               ) -> torch.Tensor | list[torch.Tensor]:
        if self.multi_input:
            if task_ids is None:
                raise ValueError("MoLA-Grad is target-aware: it needs the task id of every row")
            h = self.shared_prefix(inputs)
            with mixture(self.mola, task_ids=task_ids):
                return self.adapted_suffix(h)
        # single input: T copies of the prefix features, copy t tagged with task t, run through
        # the adapted stages in ONE pass (BatchNorm sees all T paths together, in training and
        # in eval mode alike), then split back into one representation per task.
        h = self.shared_prefix(inputs)
        num_tasks, n = len(self.task_name), h.shape[0]
        ids = torch.arange(num_tasks, device=h.device).repeat_interleave(n)
        with mixture(self.mola, task_ids=ids):
            out = self.adapted_suffix(h.repeat(num_tasks, *([1] * (h.dim() - 1))))
        return list(out.split(n))


register_architecture(
    "mola_grad", MoLAGrad,
    description="MoLA-Grad: shared encoder + one low-rank adapter per task (task ids)",
    settings=MoLASettings, needs_encoder="conv_or_swin",
    legacy={"adapt_shortcut": True},
    search={"rank": Choice("MoLA Table 6's ranks", (1, 4, 8, 16, 64))})
register_method(
    "mola_grad", architecture="mola_grad", weighting="ew",
    family="low_rank",
    description="MoLA-Grad: per-task low-rank adapters selected by task id, equal weights",
    paper="Zhou et al., Exploring Training on Heterogeneous Data with Mixture of Low-rank "
          "Adapters, ICML 2024 (§3.3-3.4)")

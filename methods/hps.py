"""HPS — hard parameter sharing with equal loss weights (Caruana, ICML 1993).

One shared encoder, one decoder per task; the total loss is ``L = sum_t L_t`` (LibMTL's EW).
This file also registers the ``hps`` architecture and the ``ew`` weighting that other methods
combine with (``hps+pcgrad`` is PCGrad).

MoLA's "HSP" row is this method; there is no separate ``hsp`` (``--method hsp`` suggests ``hps``).
MoLA lists "HSP (Wei et al., 2021)" among its baselines (§5, App. A (2)), but:

* the same slot of the same roster is labelled "HPS" in Tables 2-3 (VLCS, Office-Home) and
  "HSP" in Tables 1, 4, 5; no other hard-parameter-sharing row exists, and §1-2 name the
  category "hard parameter sharing (HPS)";
* the cited work, Wei, Wan, Ye & Min, "HPS-Net: Multi-Task Network for Medical Image Segmentation
  with Predictable Performance" (Symmetry 13(11):2107, 2021), is a *hierarchical predictable
  segmentation* network: a probabilistic U-Net that samples segmentation hypotheses and predicts
  their Dice score, evaluated on LIDC-IDRI and ISIC 2018 (its abstract). It has no form for
  MoLA's classification tasks (RadImageNet, MedMNIST, VLCS, Office-Home), so it cannot have
  produced those rows; the citation matches the acronym, not the model;
* in Table 5 (NYUv2) every weighting row (RLW, DWA, MGDA, PCGrad, CAGrad, Nash-MTL, ...) is
  HPS with another loss weighting, and HSP is their equal-weight base: from the row's own
  metrics our Δm% gives its 4.72 (``tests/test_pipeline.py``).

``bench/report/paper_results.json`` therefore maps MoLA's "HSP" and "HPS" rows to ``hps``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.api import (
    CompatArchitecture,
    CompatWeighting,
    register_architecture,
    register_method,
    register_weighting,
)


class HPS(CompatArchitecture):
    """Hard parameter sharing: ``encoder`` shared by all tasks (MoLA's "HPS"/"HSP" row)."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device,
                 **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device,
                         **kwargs)
        self.encoder = self.encoder_class()


class EW(CompatWeighting):
    """Equal weighting: ``L = sum_t L_t``."""

    needs_task_gradients = False

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> np.ndarray:
        losses.sum().backward()
        return np.ones(self.task_num)


register_architecture("hps", HPS, description="hard parameter sharing: one shared encoder")
register_weighting("ew", EW, description="equal weighting, L = sum of task losses",
                   rep_grad=(False, True))
register_method("hps", architecture="hps", weighting="ew",
                family="baseline",
                description="hard parameter sharing, equal loss weights",
                paper="Caruana, Multitask Learning, ICML 1993")

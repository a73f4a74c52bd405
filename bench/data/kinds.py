"""The three kinds of heterogeneity and their labels (torch-free: ``list scenarios`` shows them
without importing the scenario code)."""

from __future__ import annotations

from typing import Literal

Heterogeneity = Literal["domain", "multi_input", "single_input"]
HETEROGENEITY_LABELS = {
    "domain": "domain heterogeneity",
    "multi_input": "multi-input task heterogeneity",
    "single_input": "single-input task heterogeneity",
}

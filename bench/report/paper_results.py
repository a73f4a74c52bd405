"""The papers' reported numbers (MoLA ICML 2024 Tables 1-5, MTLoRA CVPR 2024 Table 1) as data.

``bench/paper_results.json`` holds, per table: the source (full citation in ``sources``), the
scenario it corresponds to, the column keys (``<task>.<metric>`` or a task name, plus ``avg`` /
``delta_m``), the labels printed in the paper, one list of numbers per method row, and the
mapping from the paper's method names to this benchmark's method names — so that a report can
show them next to measured results.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("paper_results.json")


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    return json.loads(PATH.read_text(encoding="utf-8"))


def tables_for(scenario: str) -> list[dict[str, Any]]:
    """The paper tables reported on ``scenario`` (e.g. ``medmnist_mola``)."""
    return [t for t in load()["tables"] if t["scenario"] == scenario]

"""The papers' reported numbers (MoLA ICML 2024 Tables 1-5, MTLoRA CVPR 2024 Table 1) as data.

``bench/paper_results.json`` holds, per table: the source (full citation in ``sources``), the
scenario it corresponds to, the column keys (``<task>.<metric>`` or a task name, plus ``avg`` /
``delta_m``), the labels printed in the paper, one list of numbers per method row, and the
mapping from the paper's method names to this benchmark's method names — so that a report can
show them next to measured results. Numbers are stored as printed; :func:`our_convention`
converts a table to the leaderboard's Δm% sign convention (MTLoRA's Eq. 3 has the opposite
sign).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


#: columns whose Δm% has the opposite sign to this benchmark's (MTLoRA's Eq. 3 counts an
#: improvement over Single-task as positive; MoLA §5.3 and the leaderboard count a drop)
OPPOSITE_SIGN = ("delta_m_mtlora",)


def our_convention(table: dict[str, Any]
                   ) -> tuple[list[str], Callable[[list[float | None]], list[float | None]]]:
    """The table's column labels and a converter of its rows to the leaderboard's Δm% sign
    convention (lower is better): columns in :data:`OPPOSITE_SIGN` are negated. The JSON keeps
    the numbers as the paper printed them."""
    flip = [key in OPPOSITE_SIGN for key in table["columns"]]
    labels = [f"Δm% ↓ (sign flipped: {label})" if f else label
              for label, f in zip(table["column_labels"], flip)]

    def convert(values: list[float | None]) -> list[float | None]:
        return [None if v is None else (-v if f and v != 0 else v) for v, f in zip(values, flip)]

    return labels, convert


def convention_note(table: dict[str, Any]) -> str | None:
    """A sentence saying which columns were converted, if any."""
    if not any(key in OPPOSITE_SIGN for key in table["columns"]):
        return None
    return ("The paper's Δm% (its Eq. 3) counts an improvement over Single-task as positive; "
            "shown here negated, in this leaderboard's convention (a drop is positive, lower "
            "is better).")

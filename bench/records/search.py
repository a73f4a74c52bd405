"""Which trial of an equal-budget search was chosen: a rule over trial records, read by the search
(to re-run the chosen configuration) and by the report (to show it), so both agree.

Validation only: each trial's validation metrics at its selected epoch are ranked against the
other trials' per task and metric (direction-aware); the lowest mean rank wins, ties to the lower
trial number. Ranks are scale-free, so no task's metric scale decides alone, and the rule needs
no reference run. Test metrics are never read.
"""

from __future__ import annotations

from typing import Any


def _ranks(values: list[float], higher_is_better: bool) -> list[float]:
    """Ranks 1..n of ``values`` (best first; ties share their mean rank)."""
    order = sorted(range(len(values)), key=lambda i: -values[i] if higher_is_better
                   else values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def validation_ranks(records: list[dict[str, Any]]) -> list[float]:
    """Each trial's mean rank over (task, metric) of its validation metrics among ``records``
    (lower is better). Reads ``metrics.val`` and the tasks' directions only."""
    tasks = records[0]["tasks"]
    totals = [0.0] * len(records)
    count = 0
    for task in tasks:
        for metric in task["metrics"]:
            values = [float(r["metrics"]["val"][task["name"]][metric["name"]]) for r in records]
            for i, rank in enumerate(_ranks(values, metric["higher_is_better"])):
                totals[i] += rank
            count += 1
    return [t / count for t in totals]


def select_trial(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial chosen among the ``ok`` trial records of one (method, scenario): the lowest
    mean validation rank, ties to the lower trial number; None when no trial ended ok."""
    ok = sorted((r for r in records if r["status"] == "ok"),
                key=lambda r: r["config"]["search"]["trial"])
    if not ok:
        return None
    ranks = validation_ranks(ok)
    best = min(range(len(ok)), key=lambda i: (ranks[i], i))
    return ok[best]

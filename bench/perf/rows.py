"""What every ``python -m bench perf`` comparison returns: rows of ratio statistics over
interleaved repeats, with their goal, whether it is met, and what limits it where it is not.

No torch here: the report (:mod:`bench.perf.report`) renders rows made anywhere, and the tests
render hand-made ones.
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: the comparisons a goal may use, by the symbol the report prints
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


@dataclass(frozen=True)
class Goal:
    """A bound on a row's median: ``median <op> value`` (``op`` one of <=, <, >=, >)."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in _COMPARE:
            raise ValueError(f"goal operator {self.op!r}; one of {', '.join(_COMPARE)}")

    def met_by(self, median: float) -> bool:
        return _COMPARE[self.op](median, self.value)

    def best(self, minimum: float, maximum: float) -> float:
        """The repeat nearest to meeting the goal: the largest for ``>=``/``>``, else the
        smallest."""
        return maximum if self.op in (">=", ">") else minimum

    def text(self, unit: str = "") -> str:
        suffix = f" {unit}" if unit and unit != "×" else ""
        return f"{_SYMBOL[self.op]} {self.value:g}{suffix}"


@dataclass
class Row:
    """One comparison: ``median [minimum, maximum]`` of a statistic over ``repeats`` interleaved
    repeats — a ratio A/B (``unit`` "×"), or a plain quantity ("s", "MB") — its goal, whether the
    median meets it (``None`` without a goal), and ``limits``: what keeps it from the goal."""

    group: str
    benchmark: str
    compared: str
    median: float
    minimum: float
    maximum: float
    repeats: int
    unit: str = "×"
    goal: Goal | None = None
    limits: str = ""
    #: medians of the quantities behind the statistic (e.g. ``{"A ms": 12.0, "B ms": 10.1}``)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met_by(self.median)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["goal"] = None if self.goal is None else {"op": self.goal.op,
                                                      "value": self.goal.value,
                                                      "text": self.goal.text(self.unit)}
        out["met"] = self.met
        return out


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of ``values`` (at least one)."""
    if not values:
        raise ValueError("no values: at least one repeat is needed")
    return statistics.median(values), min(values), max(values)


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] / b[i]`` of paired, interleaved repeats."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} A repeats against {len(b)} B repeats: pairs are needed")
    return [x / y for x, y in zip(a, b)]


def ratio_row(group: str, benchmark: str, compared: str, a: Sequence[float],
              b: Sequence[float], goal: Goal | None = None, limits: str = "",
              unit_of_times: str = "ms", **details: Any) -> Row:
    """The row of the ratios ``a[i] / b[i]`` of paired, interleaved repeats (times in seconds;
    their medians are kept in ``details`` in ``unit_of_times``)."""
    scale = {"ms": 1000.0, "s": 1.0}[unit_of_times]
    med, low, high = spread(ratios(a, b))
    return Row(group, benchmark, compared, med, low, high, len(a), "×", goal, limits,
               {f"A {unit_of_times}": statistics.median(a) * scale,
                f"B {unit_of_times}": statistics.median(b) * scale, **details})


def interleaved_times(cases: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True,
                      number: int = 1) -> dict[str, list[float]]:
    """Wall time in seconds of every case, ``repeats`` rounds of each case in turn (A B C A B C
    ...), so that all cases see the same machine load; one untimed warm-up round first. Each
    sample is the mean of ``number`` calls in a row (as ``timeit``'s ``number``): a call of a few
    milliseconds timed alone is at the mercy of one preemption on a shared machine."""
    if warmup:
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return times


def explain(row: Row, cause: str) -> Row:
    """``row`` with its ``limits`` filled in when its median misses the goal: ``cause`` (what
    the compared code does beyond its reference), and whether the best repeat meets the goal
    (then the spread of a noisy machine moves the median)."""
    if row.met is not False or row.goal is None:
        return row
    best = row.goal.best(row.minimum, row.maximum)
    if row.goal.met_by(best):
        row.limits = (f"noise: the best of {row.repeats} repeats meets the goal "
                      f"({best:.2f}); otherwise {cause}")
    else:
        row.limits = f"even the best of {row.repeats} repeats misses it: {cause}"
    return row

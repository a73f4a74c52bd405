"""Model-selection rules: which epoch of a run its reported test metrics come from.

Modelled on DomainBed's ``model_selection.py``: every rule is a named object, and a run is
reported under each of them. Here the rules are applied *during* training — the engine keeps
each rule's running best and evaluates the full test split once per distinct chosen epoch — and
the record stores, per rule, the epoch and the metrics there (``record["selection"]``).

A rule scores every epoch from that epoch's entry of the run's history and from the first
epoch's entry (its reference); the lowest score wins, ties going to the earliest epoch. A rule
sees only the history fields it declares in ``reads`` (:meth:`SelectionRule.score` passes it
nothing else), so a validation rule cannot read test metrics.

History entries (one per epoch) hold ``epoch``, ``val_task_losses`` (one mean loss per task),
``val_metrics`` and ``oracle_metrics`` (``{task: {metric: value}}``: the validation split and a
fixed subset of the test split). Task descriptions are the records' ``tasks`` (each metric with
its ``higher_is_better``).

Rules (:data:`RULES`):

* ``val_loss`` (default) — the lowest ``mean_t L_t(epoch) / L_t(first epoch)`` on validation
  (the MoLA reference selects the lowest validation loss; normalising each task's loss keeps one
  loss scale from deciding alone).
* ``val_metric`` — the best validation score: the Avg (mean of the tasks' primary metrics) where
  the tables report one, else a Δm%-like score computable without Single-task records: the mean
  over tasks of the mean over their metrics of the direction-signed change relative to the
  first epoch, ``100/T Σ_t 1/N_t Σ_j (−1)^{l_tj} (M_tj(e) − M_tj(0)) / |M_tj(0)|`` (lower is
  better; a metric that is 0 at the first epoch counts its absolute change).
* ``last`` — the last epoch (what MTLoRA reports).
* ``oracle`` — ``val_metric``'s score on a fixed subset of the *test* split (DomainBed's
  test-domain validation): an upper bound on what any validation rule can pick, never a
  result. The subset costs little every epoch; the chosen epoch is then reported on the full
  test split like every rule.

Pure Python (no torch): the engine uses it while training and the report to name and caption
the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Entry = dict[str, Any]
Tasks = Sequence[dict[str, Any]]

DEFAULT = "val_loss"


def reports_average(tasks: Tasks) -> bool:
    """"Avg" (the mean of the tasks' primary metrics) is meaningful when every task's primary
    metric is the same higher-is-better metric (``tasks`` as stored in records)."""
    primaries = [t["metrics"][0] for t in tasks]
    return all(m["higher_is_better"] for m in primaries) and len(
        {m["name"] for m in primaries}) == 1


def average(metrics: dict[str, dict[str, float]], tasks: Tasks) -> float:
    """The mean over tasks of each task's primary metric."""
    return math.fsum(metrics[t["name"]][t["metrics"][0]["name"]] for t in tasks) / len(tasks)


def relative_change(metrics: dict[str, dict[str, float]],
                    reference: dict[str, dict[str, float]], tasks: Tasks) -> float:
    """``100/T Σ_t 1/N_t Σ_j (−1)^{l_tj} (M_tj − R_tj) / |R_tj|``: the mean relative drop
    against ``reference`` (lower is better; a reference value of 0 divides by 1)."""
    per_task = []
    for task in tasks:
        terms = []
        for metric in task["metrics"]:
            m = metrics[task["name"]][metric["name"]]
            r = reference[task["name"]][metric["name"]]
            sign = -1.0 if metric["higher_is_better"] else 1.0
            terms.append(sign * (m - r) / (abs(r) if r else 1.0))
        per_task.append(math.fsum(terms) / len(terms))
    return 100.0 * math.fsum(per_task) / len(per_task)


def _val_loss(entry: Entry, first: Entry, tasks: Tasks) -> float:
    losses, reference = entry["val_task_losses"], first["val_task_losses"]
    return math.fsum(v / max(r, 1e-12) for v, r in zip(losses, reference)) / len(losses)


def _metric_score(key: str) -> Callable[[Entry, Entry, Tasks], float]:
    def score(entry: Entry, first: Entry, tasks: Tasks) -> float:
        if reports_average(tasks):
            return -average(entry[key], tasks)
        return relative_change(entry[key], first[key], tasks)

    return score


def _last(entry: Entry, first: Entry, tasks: Tasks) -> float:
    return -float(entry["epoch"])


@dataclass(frozen=True)
class SelectionRule:
    """A named way to choose a run's epoch: the lowest :meth:`score` over the history."""

    name: str
    #: what a caption says about the rule
    description: str
    #: the history fields the rule reads (it is given no other)
    reads: tuple[str, ...]
    scorer: Callable[[Entry, Entry, Tasks], float]
    #: chooses with test data: shown as an upper bound, never as a result
    upper_bound: bool = False
    #: always chooses the latest epoch (the engine keeps no model state for it)
    latest: bool = False

    def _view(self, entry: Entry) -> Entry:
        return {k: entry[k] for k in self.reads}

    def score(self, history: Sequence[Entry], index: int, tasks: Tasks) -> float:
        """The score of epoch ``history[index]`` (lower is better)."""
        value = self.scorer(self._view(history[index]), self._view(history[0]), tasks)
        return value if math.isfinite(value) else math.inf

    def select(self, history: Sequence[Entry], tasks: Tasks) -> int:
        """The chosen epoch (its ``epoch`` field): the lowest score, the earliest on ties."""
        best = min(range(len(history)), key=lambda i: (self.score(history, i, tasks), i))
        return int(history[best]["epoch"])


RULES: dict[str, SelectionRule] = {rule.name: rule for rule in (
    SelectionRule(
        "val_loss",
        "the epoch with the lowest validation loss (mean over tasks of each task's loss "
        "relative to its first-epoch value)",
        ("val_task_losses",), _val_loss),
    SelectionRule(
        "val_metric",
        "the epoch with the best validation score (the Avg where the table reports one, else "
        "the Δm%-like mean relative change of every metric against the run's first epoch)",
        ("val_metrics",), _metric_score("val_metrics")),
    SelectionRule("last", "the last epoch", ("epoch",), _last, latest=True),
    SelectionRule(
        "oracle",
        "the epoch with the best score (as val_metric's) on a fixed subset of the test split",
        ("oracle_metrics",), _metric_score("oracle_metrics"), upper_bound=True),
)}


def get(name: str) -> SelectionRule:
    """The rule called ``name``; a ``KeyError`` naming the rules otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown selection rule {name!r}; rules: {', '.join(RULES)}") from None


class RunningBest:
    """Each rule's best epoch so far, updated once per epoch (what the engine keeps)."""

    def __init__(self, rules: Sequence[SelectionRule], tasks: Tasks) -> None:
        self.rules = list(rules)
        self.tasks = tasks
        self.history: list[Entry] = []
        self.best: dict[str, tuple[float, int]] = {}

    def update(self, entry: Entry) -> list[str]:
        """Add one epoch's entry; returns the rules whose choice is now this epoch."""
        self.history.append(entry)
        improved = []
        for rule in self.rules:
            score = rule.score(self.history, len(self.history) - 1, self.tasks)
            if rule.name not in self.best or score < self.best[rule.name][0]:
                self.best[rule.name] = (score, int(entry["epoch"]))
                improved.append(rule.name)
        return improved

    def chosen(self) -> dict[str, int]:
        """Each rule's chosen epoch."""
        return {name: epoch for name, (_, epoch) in self.best.items()}

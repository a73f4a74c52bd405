"""Formatting shared by the markdown, LaTeX and CSV writers: numbers, intervals, p-values,
the numeric columns of a table, best and second-best rows, comparison cells and captions."""

from __future__ import annotations

import math
from typing import Any

from bench.records import selection as sel
from bench.report.stats import ALPHA, CONFIDENCE, Interval
from bench.report.tables import REFERENCE_LABELS, Summary, Table


def _decimals(value: float) -> int:
    return 2 if abs(value) >= 10 else 3


def fmt(value: float, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return "nan"
    text = f"{value:.{_decimals(value) if decimals is None else decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def fmt_interval(value: Interval, pm: str = " ± ") -> str:
    """``mean ± half-width`` (the mean alone when there is no interval: one seed)."""
    decimals = _decimals(value.mean)
    if math.isnan(value.half):
        return fmt(value.mean, decimals)
    return f"{fmt(value.mean, decimals)}{pm}{fmt(value.half, decimals)}"


def fmt_params(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def columns(table: Table) -> list[tuple[str, Any, bool]]:
    """``(header, value of a row, higher is better)`` of the table's numeric columns."""
    out: list[tuple[str, Any, bool]] = []
    for t in table.tasks:
        for m in t["metrics"]:
            arrow = "↑" if m["higher_is_better"] else "↓"
            out.append((f"{t['label']} {m['label']} {arrow}",
                        lambda r, k=(t["name"], m["name"]): r.cells.get(k),
                        m["higher_is_better"]))
    if table.report_average:
        out.append(("Avg ↑", lambda r: r.avg, True))
    out.append(("Δm% ↓", lambda r: r.delta, False))
    return out


def ranked(table: Table, key: Any, higher: bool) -> tuple[set[str], set[str]]:
    """Labels of the best and the second-best rows of a column, as shown: every row whose mean
    reads the same as the best at the shown precision is best (ties are not broken by name), the
    rows of the next shown value second. Empty sets when fewer than two rows have a value; no
    second when fewer than three."""
    values = [(key(r).mean, r.label) for r in table.rows
              if key(r) is not None and math.isfinite(key(r).mean)]
    if len(values) < 2:
        return set(), set()
    order = sorted({v for v, _ in values}, reverse=higher)
    shown: list[str] = []
    for value in order:
        text = fmt(value)
        if text not in shown:
            shown.append(text)
    best = {label for v, label in values if fmt(v) == shown[0]}
    second = ({label for v, label in values if fmt(v) == shown[1]}
              if len(values) > 2 and len(shown) > 1 else set())
    return best, second


def comparison_cell(table: Table, row: Any, key: str) -> str:
    """The Holm-adjusted p of the row against a reference, with ▲ / ▼ when significant; ``ref``
    in the reference's own row; ``-`` without a test."""
    if row.label == table.reference_rows.get(key, key) and table.main_like:
        return "ref"
    comparison = row.comparisons.get(key)
    if comparison is None or math.isnan(comparison.p_holm):
        return "-"
    return f"{comparison.mark} {fmt_p(comparison.p_holm)}".strip()


def caption(table: Table, markdown: bool = True) -> str:
    """What the table shows, how it was selected and tested."""
    rule = sel.get(table.rule)
    code = (lambda s: f"`{s}`") if markdown else (lambda s: s)
    bound = (" **An upper bound, not a result: the epoch is chosen with test data.**"
             if markdown else " An upper bound, not a result: the epoch is chosen with test "
             "data.") if rule.upper_bound else ""
    order = ("Rows in the preset's order." if not table.main_like else
             f"Rows grouped by family, sorted by {table.headline_label} within a family.")
    names = [REFERENCE_LABELS[k] for k in table.references]
    refs = ", ".join(names[:-1]) + " and " + names[-1]
    where = " of the main table" if not table.main_like else ""
    return (f"Selection {code(rule.name)}: test metrics at {rule.description}.{bound} "
            f"Cells: mean ± half-width of the {CONFIDENCE * 100:g} % t-interval over the n seeds "
            f"(one seed: the mean alone). {order} vs {refs}: paired two-sided t-test over the "
            f"seeds both ran (scipy.stats.ttest_rel) on {table.headline_label} against the "
            f"{refs} runs{where}, Holm-corrected over the {table.tests} tests of this table; "
            f"cells give the Holm-adjusted p, ▲ / ▼ a significantly better / worse method "
            f"(α = {ALPHA:g}).")


def summary_caption(summary: Summary, tables: list[Table], markdown: bool = True) -> str:
    heads = ", ".join(f"{t.headline_label} on {t.scenario}" for t in tables
                      if t.profile == summary.profile and t.ablation is None)
    seeds = ", ".join(str(s) for s in summary.seeds) or "none"
    rule = sel.get(summary.rule)
    bound = " (an upper bound)" if rule.upper_bound else ""
    name = f"`{rule.name}`" if markdown else rule.name
    return (f"Mean rank (MR, 1 = best, ties share the mean rank) of each method's headline "
            f"score ({heads}) over the {len(summary.scenarios)} scenarios, among the methods "
            f"run on all of them; MR over seeds: the mean, range and standard deviation of "
            f"the MR computed seed by seed (seeds {seeds}); mean Δm% over the scenarios. "
            f"Selection {name}{bound}.")


def rank_spread(values: list[float]) -> tuple[str, str]:
    """``mean (min–max)`` and the standard deviation of per-seed mean ranks."""
    import statistics

    if not values:
        return "-", "-"
    text = (f"{statistics.fmean(values):.2f} ({min(values):.2f}–{max(values):.2f})"
            if len(values) > 1 else f"{values[0]:.2f}")
    return text, f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"

"""Records -> paper-style tables, Δm%, statistics and figures -> ``leaderboard.md``.

Reads result records only (never imports training code), so a leaderboard can be rebuilt on a
laptop from records produced elsewhere. The same records always give byte-identical output.

Δm% (MoLA §5.3, following Aligned-MTL): for method m against the Single-task baseline b,

    Δm% = 100/T · Σ_t 1/N_t · Σ_j (−1)^{l_tj} (M_m,t,j − M_b,t,j) / M_b,t,j,

with l_tj = 1 when higher is better for metric j of task t (so a *drop* is positive and lower
Δm% is better). M_b is the Single-task mean over seeds; Δm% is computed per seed of m. Tables,
statistics and the cross-scenario summary: :mod:`bench.report.tables`; LaTeX and CSV:
:mod:`bench.report.export`; figures: :mod:`bench.report.plots`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.records import BadRecord, load_records
from bench.records import selection as sel
from bench.records.selection import reports_average
from bench.report import families
from bench.report.tables import (
    BASELINE,
    REFERENCE_LABELS,
    TUNED,
    SelectionMissingError,
    Summary,
    Table,
    build,
    delta_m,
)
from bench.report.text import (
    caption,
    columns,
    comparison_cell,
    fmt,
    fmt_interval,
    fmt_params,
    rank_spread,
    ranked,
    summary_caption,
)

FORMATS = ("md", "latex", "csv")
DEFAULT_OUTPUTS = {"md": "leaderboard.md", "latex": "leaderboard.tex", "csv": "leaderboard.csv"}

__all__ = ["FORMATS", "SelectionMissingError", "delta_m", "render", "reports_average"]


def markdown_table(table: Table) -> list[str]:
    cols = columns(table)
    chosen = table.ablation == TUNED
    header = (["Method"] + [c[0] for c in cols]
              + [f"vs {REFERENCE_LABELS[k]}" for k in table.references] + ["Trainable params", "n"]
              + (["Chosen hyper-parameters"] if chosen else []))
    best = [ranked(table, key, higher)[0] for _, key, higher in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    family = None
    for row in table.rows:
        if table.main_like and row.family != family:
            family = row.family
            lines.append(f"| *{families.label(family)}* |" + " |" * (len(header) - 1))
        cells = [row.label + (" †" if row.excluded else "")]
        for (_, key, _), best_label in zip(cols, best):
            value = key(row)
            if value is None:
                cells.append("-")
                continue
            text = fmt_interval(value)
            cells.append(f"**{text}**" if row.label in best_label else text)
        cells += [comparison_cell(table, row, k) for k in table.references]
        cells += [fmt_params(row.trainable), str(len(row.seeds))]
        if chosen:
            cells.append(row.note or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table_notes(table: Table) -> list[str]:
    notes = [f"{r.label}: {', '.join(r.excluded)}" for r in table.rows if r.excluded]
    out = [line for note in table.notes for line in ("", note)]
    if notes:
        out += ["", "† excluded from the means: " + "; ".join(notes) + "."]
    if table.stale:
        out += ["", f"{table.stale} record(s) of an older data version of `{table.scenario}` "
                    "(other evaluation splits) left out."]
    if table.missing:
        out += ["", f"{table.missing} ok run(s) predate the selection rules and hold no "
                    f"`{table.rule}` choice: left out of this table."]
    if not table.has_baseline:
        out += ["", "Δm% needs Single-task records of this scenario and profile."]
    elif all(r.delta is None for r in table.rows if r.label != BASELINE):
        out += ["", "Δm% undefined: a Single-task metric is 0 on this scenario."]
    if not any(r.comparisons for r in table.rows):
        out += ["", "No paired test: the table needs HPS and Single-task runs (of the main "
                    "table) with at least two seeds in common."]
    return out


def markdown_summary(summary: Summary) -> list[str]:
    lines = ["| Method | Family | MR ↓ | MR over seeds: mean (min–max) | sd | mean Δm% ↓ "
             "| Scenarios |", "|---|---|---|---|---|---|---|"]
    for row in summary.rows:
        spread, sd = rank_spread(row.rank_by_seed)
        lines.append(f"| {row.label} | {families.label(row.family)} | "
                     f"{'-' if row.mean_rank is None else f'{row.mean_rank:.2f}'} | {spread} | "
                     f"{sd} | {'-' if row.mean_delta is None else fmt(row.mean_delta)} | "
                     f"{row.scenarios} |")
    return lines


def render(results_dir: Path, output: Path, plots_dir: Path | None = None,
           rule: str = sel.DEFAULT, fmt: str = "md") -> tuple[str, list[BadRecord]]:
    """Build the leaderboard from the records under ``results_dir`` with selection ``rule``,
    as markdown (with figures), LaTeX or CSV, and write it to ``output`` (``-``: nothing is
    written, the text is returned)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    records, bad = load_records(results_dir)
    records, inconsistent = consistent(records)
    bad = [*bad, *inconsistent]
    tables, summaries = build(records, rule)
    if fmt == "latex":
        from bench.report.export import latex

        text = latex(tables, summaries, records, rule)
    elif fmt == "csv":
        from bench.report.export import tidy_csv

        text = tidy_csv(tables, rule)
    else:
        text = _markdown(tables, summaries, records, Path(results_dir), Path(output),
                         Path(plots_dir) if plots_dir else Path(results_dir) / "plots", rule)
    if str(output) != "-":
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text)
        tmp.replace(output)
    return text, bad


def consistent(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """The records whose tasks and metrics are those of the other ``ok`` records of their
    scenario and profile (the first one, by path, sets them), and the others as warnings."""
    reference: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {}
    kept, dropped = [], []
    for rec in records:
        if rec["status"] != "ok":
            kept.append(rec)
            continue
        shape = [(t["name"], tuple(m["name"] for m in t["metrics"])) for t in rec["tasks"]]
        expected = reference.setdefault((rec["profile"], rec["scenario"]), shape)
        if shape == expected:
            kept.append(rec)
        else:
            dropped.append(BadRecord(Path(rec["_path"]), f"its tasks and metrics differ from "
                                     f"the other records of {rec['scenario']} "
                                     f"({rec['profile']}): {[n for n, _ in shape]}"))
    return kept, dropped


def _markdown(tables: list[Table], summaries: dict[str, Summary], records: list[dict],
              results_dir: Path, output: Path, plots_dir: Path, rule: str) -> str:
    the_rule = sel.get(rule)
    bound = (f" **`{rule}` chooses epochs with test data: an upper bound on what a validation "
             "rule can reach, not a result.**" if the_rule.upper_bound else "")
    lines = [
        "# Leaderboard",
        "",
        f"Generated by `python -m bench leaderboard` from {len(records)} records in "
        f"`{_rel(results_dir, output)}`; do not edit by hand. Model selection `{rule}`: test "
        f"metrics at {the_rule.description}.{bound} Cells: mean ± half-width of the 95 % "
        "t-interval over seeds; n = seeds. Δm% (MoLA §5.3): mean relative performance *drop* "
        "against Single-task over each task's metrics, lower is better. Best value of each "
        "column in bold. vs HPS / vs Single-task: Holm-adjusted p of a paired t-test over "
        "seeds on the table's headline score (Avg, or Δm% where tasks have different "
        "metrics); ▲ significantly better, ▼ significantly worse (α = 0.05).",
        "",
    ]
    suffix = "" if rule == sel.DEFAULT else f"_{rule}"
    profile = None
    pending: Summary | None = None  # shown after the profile's main tables
    for table in tables:
        if pending is not None and (table.profile != profile or table.ablation):
            lines += _summary_section(pending, tables)
            pending = None
        if table.profile != profile:
            profile = table.profile
            pending = summaries.get(profile)
            lines += [f"## Profile `{profile}`", ""]
        lines += [f"### {table.title}", "", caption(table), ""]
        lines += markdown_table(table)
        lines += table_notes(table)
        if profile == "paper" and table.ablation is None:
            lines += _paper_tables(table.scenario, {r.label for r in table.rows})
        lines += ["", f"{table.runs} runs, {table.wall_s / 60:.1f} min of training in total."]
        if table.ablation is None:
            from bench.report.plots import param_plot, pareto_plot

            by_label: dict[str, list[dict[str, Any]]] = {}
            for rec in table.records:
                by_label.setdefault(rec.get("label", rec["method"]), []).append(rec)
            png = plots_dir / f"pareto_{profile}_{table.scenario}{suffix}.png"
            if pareto_plot(table, png):
                lines += ["", f"![{table.headline_label} vs trainable parameters, "
                              f"{table.scenario}]({_rel(png, output)})"]
            png = plots_dir / f"params_{profile}_{table.scenario}.png"
            if param_plot(by_label, png, f"{table.scenario}: trainable parameters vs tasks"):
                lines += ["", f"![trainable parameters vs number of tasks, {table.scenario}]"
                              f"({_rel(png, output)})"]
        lines.append("")
    if pending is not None:
        lines += _summary_section(pending, tables)
    if not records:
        lines += ["No records yet: run `python -m bench run --all`.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _summary_section(summary: Summary, tables: list[Table]) -> list[str]:
    return [f"### Across scenarios — profile `{summary.profile}`", "",
            summary_caption(summary, tables), "", *markdown_summary(summary), ""]


def _paper_tables(scenario: str, labels: set[str]) -> list[str]:
    """The papers' reported numbers (``bench/report/paper_results.json``) for the methods we
    ran, with every Δm% in this leaderboard's sign convention."""
    from bench.report import paper_results

    out: list[str] = []
    sources = paper_results.load()["sources"]
    for table in paper_results.tables_for(scenario):
        rows = [(name, values) for name, values in table["rows"].items()
                if table["methods"].get(name) in labels]
        if not rows:
            continue
        column_labels, converted = paper_results.our_convention(table)
        out += ["", f"Reported in {table['table']} of {sources[table['source']]['citation']} "
                    f"({table['caption']}):", "",
                "| Method (paper) | " + " | ".join(column_labels) + " |",
                "|" + "---|" * (len(column_labels) + 1)]
        for name, values in rows:
            cells = ["-" if v is None else f"{v:g}" for v in converted(values)]
            out.append(f"| {table['methods'][name]} ({name}) | " + " | ".join(cells) + " |")
        note = paper_results.convention_note(table)
        if note:
            out += ["", note]
    return out


def _rel(path: Path, output: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(output).resolve().parent)

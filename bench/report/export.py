"""The leaderboard as LaTeX (booktabs) and as a tidy CSV.

* LaTeX: one ``table`` per leaderboard table and one per cross-scenario summary, with
  ``\\toprule``/``\\midrule``/``\\bottomrule`` (package ``booktabs``) and the marks as
  ``$\\blacktriangle$`` / ``$\\blacktriangledown$`` (package ``amssymb``); the best value of a
  column in bold, the second underlined; the caption states the selection rule and the test.
* CSV: one row per (run, task, metric) — the test metric at the epoch the selection rule chose,
  with the run's seed, config hash, family and the rule — for readers who compute their own
  statistics. Runs that did not end ``ok`` have no metrics and no rows.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from bench.report import families
from bench.report.tables import REFERENCE_LABELS, Summary, Table, natural, selected
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

CSV_FIELDS = ("profile", "scenario", "ablation", "label", "method", "family", "seed",
              "config_hash", "selection", "epoch", "task", "metric", "higher_is_better", "value")

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"Δm%": r"$\Delta$m\%", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
                  "±": r"$\pm$", "▲": r"$\blacktriangle$", "▼": r"$\blacktriangledown$",
                  "α": r"$\alpha$", "–": "--", "—": "---", "†": r"$\dagger$", "<": r"$<$",
                  "×": r"$\times$", "%": r"\%"}


def tex(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and the tables' symbols in math."""
    out = []
    i = 0
    while i < len(text):
        for symbol, code in _LATEX_SYMBOLS.items():
            if text.startswith(symbol, i):
                out.append(code)
                i += len(symbol)
                break
        else:
            char = text[i]
            out.append(_LATEX_ESCAPES.get(char, char))
            i += 1
    return "".join(out)


def _untick(text: str) -> str:
    return text.replace("`", "").replace("**", "")


def latex_table(table: Table) -> list[str]:
    cols = columns(table)
    heads = ([c[0] for c in cols] + [f"vs {REFERENCE_LABELS[k]}" for k in table.references]
             + ["Params", "n"])
    best = [ranked(table, key, higher) for _, key, higher in cols]
    width = 1 + len(heads)
    label = f"tab:{table.profile}-{table.scenario}" + (f"-{table.ablation}" if table.ablation
                                                       else "")
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex(_untick(f"{table.title}. {caption(table, markdown=False)}"))
             + "}",
             r"\label{" + label.replace("_", "-") + "}",
             r"\begin{tabular}{l" + "r" * len(cols) + "cc" + "rr" + "}", r"\toprule",
             " & ".join(["Method"] + [tex(h) for h in heads]) + r" \\", r"\midrule"]
    family = None
    for row in table.rows:
        if table.main_like and row.family != family:
            if family is not None:
                lines.append(r"\midrule")
            family = row.family
            lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{"
                         f"{tex(families.label(family))}}}}}" + r" \\")
        cells = [tex(row.label + (" †" if row.excluded else ""))]
        for (_, key, _), (first, second) in zip(cols, best):
            value = key(row)
            if value is None:
                cells.append("--")
                continue
            text = tex(fmt_interval(value))
            if row.label in first:
                text = rf"\textbf{{{text}}}"
            elif row.label in second:
                text = rf"\underline{{{text}}}"
            cells.append(text)
        cells += [tex(comparison_cell(table, row, k)) for k in table.references]
        cells += [tex(fmt_params(row.trainable)), str(len(row.seeds))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return lines


def latex_summary(summary: Summary, tables: list[Table]) -> list[str]:
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex(_untick(f"Across scenarios, profile {summary.profile}. "
                                        f"{summary_caption(summary, tables, markdown=False)}"))
             + "}",
             r"\label{tab:" + f"{summary.profile}-summary" + "}",
             r"\begin{tabular}{llrlrrr}", r"\toprule",
             r"Method & Family & MR $\downarrow$ & MR over seeds: mean (min--max) & sd & "
             r"mean $\Delta$m\% $\downarrow$ & Scenarios \\", r"\midrule"]
    for row in summary.rows:
        spread, sd = rank_spread(row.rank_by_seed)
        lines.append(" & ".join([
            tex(row.label), tex(families.label(row.family)),
            "--" if row.mean_rank is None else f"{row.mean_rank:.2f}", tex(spread), tex(sd),
            "--" if row.mean_delta is None else tex(fmt(row.mean_delta)), str(row.scenarios),
        ]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return lines


def latex(tables: list[Table], summaries: dict[str, Summary], records: list[dict[str, Any]],
          rule: str) -> str:
    lines = [f"% Generated by `python -m bench leaderboard --format latex --selection {rule}` "
             f"from {len(records)} records; do not edit by hand.",
             r"% Needs \usepackage{booktabs} and \usepackage{amssymb}.", ""]
    profile = None
    pending: Summary | None = None  # after the profile's main tables
    for table in tables:
        if pending is not None and (table.profile != profile or table.ablation):
            lines += latex_summary(pending, tables)
            pending = None
        if table.profile != profile:
            profile = table.profile
            pending = summaries.get(profile)
        lines += latex_table(table)
    if pending is not None:
        lines += latex_summary(pending, tables)
    return "\n".join(lines).rstrip() + "\n"


def tidy_csv(tables: list[Table], rule: str) -> str:
    """One row per (run, task, metric) of every ok run holding ``rule``, sorted by profile,
    scenario, ablation, label, seed, task and metric order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table in tables:
        for rec in sorted(table.records, key=lambda r: (natural(r.get("label", r["method"])),
                                                         r["seed"])):
            chosen = selected(rec, rule) if rec["status"] == "ok" else None
            if chosen is None:
                continue
            for task in table.tasks:
                for metric in task["metrics"]:
                    value = chosen["test"][task["name"]][metric["name"]]
                    writer.writerow([
                        table.profile, table.scenario, table.ablation or "",
                        rec.get("label", rec["method"]), rec["method"],
                        families.family_of(rec), rec["seed"], rec["config_hash"], rule,
                        "" if chosen.get("epoch") is None else chosen["epoch"],
                        task["name"], metric["name"], str(metric["higher_is_better"]).lower(),
                        repr(float(value)) if math.isfinite(value) else "nan",
                    ])
    return buf.getvalue()

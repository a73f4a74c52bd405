"""Records -> paper-style tables, Δm% and parameter-count plots -> ``leaderboard.md``.

Reads result records only (never imports training code), so a leaderboard can be rebuilt on a
laptop from records produced elsewhere. The same records always give byte-identical output.

Δm% (MoLA §5.3, following Aligned-MTL): for method m against the Single-task baseline b,

    Δm% = 100/T · Σ_t 1/N_t · Σ_j (−1)^{l_tj} (M_m,t,j − M_b,t,j) / M_b,t,j,

with l_tj = 1 when higher is better for metric j of task t (so a *drop* is positive and lower
Δm% is better). M_b is the Single-task mean over seeds; Δm% is computed per seed of m and
reported as mean ± std.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records import BadRecord, load_records

BASELINE = "single_task"
HETEROGENEITY_TITLES = {
    "domain": "Domain heterogeneity",
    "multi_input": "Multi-input task heterogeneity",
    "single_input": "Single-input task heterogeneity",
}


def reports_average(tasks: list[dict[str, Any]]) -> bool:
    """"Avg" (the mean of the tasks' primary metrics) is meaningful when every task's primary
    metric is the same higher-is-better metric (``tasks`` as stored in records)."""
    primaries = [t["metrics"][0] for t in tasks]
    return all(m["higher_is_better"] for m in primaries) and len(
        {m["name"] for m in primaries}) == 1


def delta_m(metrics: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
            tasks: list[dict[str, Any]]) -> float:
    """Δm% of ``metrics`` against ``baseline`` (``{task: {metric: value}}``); lower is better."""
    per_task = []
    for task in tasks:
        terms = []
        for metric in task["metrics"]:
            name = metric["name"]
            m, b = metrics[task["name"]][name], baseline[task["name"]][name]
            if b == 0:
                raise ZeroDivisionError(f"baseline {task['name']}/{name} is 0: Δm% undefined")
            sign = -1.0 if metric["higher_is_better"] else 1.0
            terms.append(sign * (m - b) / b)
        per_task.append(sum(terms) / len(terms))
    return 100.0 * sum(per_task) / len(per_task)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; ``nan`` (shown as such) when a value is not finite
    or the sums overflow, never an exception."""
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    try:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    except OverflowError:
        return math.nan, math.nan


def _mean(values: Any) -> float:
    return _mean_std(list(values))[0]


def _decimals(value: float) -> int:
    return 2 if abs(value) >= 10 else 3


def _fmt(value: float, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.{_decimals(value) if decimals is None else decimals}f}"


def _fmt_params(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


@dataclass
class Row:
    label: str
    seeds: list[int]
    cells: dict[tuple[str, str], tuple[float, float]]  # (task, metric) -> mean, std
    avg: tuple[float, float] | None
    delta: tuple[float, float] | None
    trainable: float | None
    excluded: list[str]


def _consistent(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[BadRecord]]:
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


def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], dict[str, list]]:
    groups: dict[tuple[str, str, str | None], dict[str, list]] = defaultdict(
        lambda: defaultdict(list))
    for rec in records:
        key = (rec["profile"], rec["scenario"], rec.get("ablation"))
        groups[key][rec.get("label") or rec["method"]].append(rec)
    return groups


def _rows(by_label: dict[str, list[dict[str, Any]]], baseline_records: list[dict[str, Any]],
          tasks: list[dict[str, Any]], report_average: bool) -> list[Row]:
    ok_base = [r for r in baseline_records if r["status"] == "ok"]
    baseline = None
    if ok_base:
        baseline = {t["name"]: {m["name"]: _mean(
            r["metrics"]["test"][t["name"]][m["name"]] for r in ok_base) for m in t["metrics"]}
            for t in tasks}
    rows = []
    for label in sorted(by_label, key=_natural):
        recs = sorted(by_label[label], key=lambda r: r["seed"])
        ok = [r for r in recs if r["status"] == "ok"]
        excluded = [f"seed {r['seed']}: {r['status']}" for r in recs if r["status"] != "ok"]
        if not ok:
            rows.append(Row(label, [], {}, None, None, None, excluded))
            continue
        cells = {}
        for t in tasks:
            for m in t["metrics"]:
                vals = [r["metrics"]["test"][t["name"]][m["name"]] for r in ok]
                cells[(t["name"], m["name"])] = _mean_std(vals)
        avg = None
        if report_average:
            avg = _mean_std([_mean(
                r["metrics"]["test"][t["name"]][t["metrics"][0]["name"]] for t in tasks)
                for r in ok])
        delta = None
        if baseline is not None:
            try:
                delta = _mean_std([delta_m(r["metrics"]["test"], baseline, tasks) for r in ok])
            except ZeroDivisionError:
                delta = None  # a baseline metric is 0: Δm% undefined (footnoted)
        rows.append(Row(label, [r["seed"] for r in ok], cells, avg, delta,
                        _mean(r["trainable_params"] for r in ok), excluded))
    return rows


def _natural(label: str) -> list[Any]:
    """Sort key putting ``r=4`` before ``r=16`` (numbers compared as numbers)."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", label)]


def _bold(rows: list[Row], key: Any, higher: bool) -> set[str]:
    """The rows to bold in a column: every row whose mean, at the precision the best one is
    shown with, equals the best (ties are all bold; nothing when there is one row)."""
    values = [(key(r)[0], r.label) for r in rows if key(r) is not None and math.isfinite(key(r)[0])]
    if len(rows) < 2 or not values:
        return set()
    best = max(v for v, _ in values) if higher else min(v for v, _ in values)
    shown = _fmt(best)
    return {label for value, label in values if _fmt(value, _decimals(best)) == shown}


def _table(rows: list[Row], tasks: list[dict[str, Any]], report_average: bool,
           baseline_label: str) -> list[str]:
    header = ["Method"]
    columns: list[tuple[Any, bool]] = []
    for t in tasks:
        for m in t["metrics"]:
            arrow = "↑" if m["higher_is_better"] else "↓"
            header.append(f"{t['label']} {m['label']} {arrow}")
            columns.append(((lambda r, k=(t["name"], m["name"]): r.cells.get(k)),
                            m["higher_is_better"]))
    if report_average:
        header.append("Avg ↑")
        columns.append(((lambda r: r.avg), True))
    header.append("Δm% ↓")
    columns.append(((lambda r: r.delta if r.label != baseline_label else None), False))
    header += ["Trainable params", "Seeds"]
    bold = [_bold(rows, key, higher) for key, higher in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label + (" †" if row.excluded else "")]
        for (key, _), bold_labels in zip(columns, bold):
            value = key(row)
            if value is None:
                cells.append("-")
                continue
            decimals = _decimals(value[0])
            text = f"{_fmt(value[0], decimals)} ± {_fmt(value[1], decimals)}"
            cells.append(f"**{text}**" if row.label in bold_labels else text)
        cells += [_fmt_params(row.trainable), str(len(row.seeds))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _close(a: list[tuple[int, int]], b: list[tuple[int, int]], rel: float = 0.01) -> bool:
    """Same task counts and parameter counts within ``rel`` (e.g. a few loss-scale weights)."""
    return [x for x, _ in a] == [x for x, _ in b] and all(
        abs(u - v) <= rel * max(u, v) for (_, u), (_, v) in zip(a, b))


def _param_plot(by_label: dict[str, list[dict[str, Any]]], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    # one curve per architecture (MoLA Fig. 5): weightings do not change the parameter count
    curves: dict[str, list[tuple[int, int]]] = {}
    users: dict[str, list[str]] = defaultdict(list)
    for label in sorted(by_label):
        recs = sorted(by_label[label], key=lambda r: r["seed"])
        scaling = next((r.get("param_scaling") for r in recs if r.get("param_scaling")), None)
        if not scaling:
            continue
        arch = str((recs[0]["config"].get("method_identity") or {}).get("architecture", label))
        points = sorted((int(k), v) for k, v in scaling.items())
        key = arch if _close(curves.get(arch, points), points) else label
        curves[key] = points
        users[key].append(label)
    if not curves:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = sns.color_palette("tab10", len(curves))
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D", "v"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (color, (key, points)) in enumerate(zip(palette, curves.items())):
        shared = users[key]
        name = key if shared == [key] else f"{key} ({len(shared)} methods)" if len(
            shared) > 3 else f"{key}: {', '.join(shared)}"
        ax.plot([p[0] for p in points], [p[1] / 1e6 for p in points], color=color,
                linestyle=styles[i % len(styles)], marker=markers[i % len(markers)], ms=4,
                label=name)
    ax.set_xlabel("number of tasks T")
    ax.set_ylabel("trainable parameters (M)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def render(results_dir: Path, output: Path, plots_dir: Path | None = None
           ) -> tuple[str, list[BadRecord]]:
    """Build the leaderboard markdown (and plots) from the records under ``results_dir``."""
    records, bad = load_records(results_dir)
    records, inconsistent = _consistent(records)
    bad = sorted(bad + inconsistent, key=lambda b: str(b.path))
    output = Path(output)
    plots_dir = Path(plots_dir) if plots_dir else Path(results_dir) / "plots"
    lines = [
        "# Leaderboard",
        "",
        f"Generated by `python -m bench leaderboard` from {len(records)} records in "
        f"`{_rel(results_dir, output)}`; do not edit by hand. Test metrics at the epoch with the "
        "lowest validation score (mean over tasks of the validation loss relative to its "
        "first-epoch value); mean ± std over seeds. Δm% (MoLA §5.3): mean relative "
        "performance *drop* against Single-task over each task's metrics, lower is better. "
        "Best value of each column in bold (every row equal to it at the shown precision).",
        "",
    ]
    groups = _group(records)
    profiles = sorted({k[0] for k in groups}, key=lambda p: (p != "default", p))
    for profile in profiles:
        keys = sorted((k for k in groups if k[0] == profile),
                      key=lambda k: (k[2] is not None, k[2] or "", _scenario_order(groups[k]),
                                     k[1]))
        lines += [f"## Profile `{profile}`", ""]
        for key in keys:
            by_label = groups[key]
            any_rec = next(r for recs in by_label.values() for r in recs)
            ok_any = [r for recs in by_label.values() for r in recs if r["status"] == "ok"]
            if not ok_any:
                continue
            tasks = ok_any[0]["tasks"]
            heterogeneity = any_rec["config"].get("heterogeneity", "")
            title = HETEROGENEITY_TITLES.get(heterogeneity, heterogeneity)
            ablation = key[2]
            if ablation:
                lines += [f"### Ablation `{ablation}` — `{key[1]}`", ""]
                base_records = groups.get((profile, key[1], None), {}).get(BASELINE, [])
            else:
                lines += [f"### {title} — `{key[1]}`", ""]
                base_records = by_label.get(BASELINE, [])
            report_average = reports_average(tasks)
            rows = _rows(by_label, base_records, tasks, report_average)
            lines += _table(rows, tasks, report_average, BASELINE if not ablation else "")
            notes = [f"{r.label}: {', '.join(r.excluded)}" for r in rows if r.excluded]
            if notes:
                lines += ["", "† excluded from the means: " + "; ".join(notes) + "."]
            if not base_records:
                lines += ["", "Δm% needs Single-task records of this scenario and profile."]
            elif all(r.delta is None for r in rows if r.label != BASELINE):
                lines += ["", "Δm% undefined: a Single-task metric is 0 on this scenario."]
            if profile == "paper" and not ablation:
                lines += _paper_tables(key[1], set(by_label))
            wall = sum(r["wall_time_s"] or 0 for recs in by_label.values() for r in recs)
            lines += ["", f"{sum(len(v) for v in by_label.values())} runs, "
                          f"{wall / 60:.1f} min of training in total."]
            if not ablation:
                png = plots_dir / f"params_{profile}_{key[1]}.png"
                if _param_plot(by_label, png, f"{key[1]}: trainable parameters vs tasks"):
                    lines += ["", f"![trainable parameters vs number of tasks, {key[1]}]"
                                  f"({_rel(png, output)})"]
            lines.append("")
    if not records:
        lines += ["No records yet: run `python -m bench run --all`.", ""]
    text = "\n".join(lines).rstrip() + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    return text, bad


def _paper_tables(scenario: str, labels: set[str]) -> list[str]:
    """The papers' reported numbers (``bench/paper_results.json``) for the methods we ran."""
    from bench.report import paper_results

    out: list[str] = []
    sources = paper_results.load()["sources"]
    for table in paper_results.tables_for(scenario):
        rows = [(name, values) for name, values in table["rows"].items()
                if table["methods"].get(name) in labels]
        if not rows:
            continue
        out += ["", f"Reported in {table['table']} of {sources[table['source']]['citation']} "
                    f"({table['caption']}):", "",
                "| Method (paper) | " + " | ".join(table["column_labels"]) + " |",
                "|" + "---|" * (len(table["column_labels"]) + 1)]
        for name, values in rows:
            cells = ["-" if v is None else f"{v:g}" for v in values]
            out.append(f"| {table['methods'][name]} ({name}) | " + " | ".join(cells) + " |")
    return out


def _scenario_order(by_label: dict[str, list[dict[str, Any]]]) -> int:
    rec = next(r for recs in by_label.values() for r in recs)
    order = list(HETEROGENEITY_TITLES)
    h = rec["config"].get("heterogeneity", "")
    return order.index(h) if h in order else len(order)


def _rel(path: Path, output: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), Path(output).resolve().parent)

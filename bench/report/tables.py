"""Records → tables: one :class:`Table` per (profile, scenario, ablation) under one selection
rule, with confidence intervals, paired tests against HPS and Single-task, and a cross-scenario
summary per profile. The markdown, LaTeX and CSV writers all read these objects.

* A run contributes the test metrics at the epoch its selection rule chose
  (``record["selection"][rule]``; records written before the rules existed hold only the
  default rule's, as ``metrics`` and ``best_epoch``).
* Headline score: the Avg (mean of the tasks' primary metrics) where every task's primary
  metric is the same higher-is-better metric, else Δm% against Single-task.
* Cells: mean and 95 % t-interval over seeds. Comparisons: paired two-sided t-test over the
  seeds both methods ran, on the headline score, Holm-corrected over every test of the table.
* Main tables: rows grouped by family and sorted by the headline score within a family.
  Ablation tables keep the preset's parameter order (r = 4, 8, 16...), which is what they
  vary; their comparisons are against the HPS and Single-task runs of the main table.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.records import selection as sel
from bench.records.search import select_trial, validation_ranks
from bench.report import families
from bench.report.stats import ALPHA, Interval, holm, paired_t_test, ranks, t_interval

BASELINE = "single_task"
HPS = "hps"
REFERENCES = (HPS, BASELINE)
#: the best fixed task weighting of the scalarization preset, a reference where it was run
FIXED = "fixed"
SCALARIZATION = "scalarization"
REFERENCE_LABELS = {HPS: "HPS", BASELINE: "Single-task", FIXED: "best fixed weights"}
#: the group of an equal-budget search's re-runs (bench.run.search): one table per scenario
TUNED = "tuned"
HETEROGENEITY_TITLES = {
    "domain": "Domain heterogeneity",
    "multi_input": "Multi-input task heterogeneity",
    "single_input": "Single-input task heterogeneity",
}
Metrics = dict[str, dict[str, float]]


class SelectionMissingError(ValueError):
    """No record holds the requested selection rule (one line for the CLI, exit code 2)."""


def delta_m(metrics: Metrics, baseline: Metrics, tasks: list[dict[str, Any]]) -> float:
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


def selected(record: dict[str, Any], rule: str) -> dict[str, Any] | None:
    """``{"epoch", "val", "test"}`` of ``record`` under ``rule``; None when the record predates
    the rule (only the default rule's metrics are in every record)."""
    chosen = (record.get("selection") or {}).get(rule)
    if chosen is not None:
        return chosen
    if rule == sel.DEFAULT and isinstance(record.get("metrics", {}).get("test"), dict):
        return {"epoch": record.get("best_epoch"), "val": record["metrics"].get("val"),
                "test": record["metrics"]["test"]}
    return None


@dataclass
class Comparison:
    """A row against a reference row (HPS or Single-task) on the table's headline score."""

    reference: str
    n: int
    #: mean over paired seeds of (row − reference)
    diff: float
    p: float
    p_holm: float = math.nan
    #: whether the row is better than the reference on average (direction of the headline)
    better: bool = False

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < ALPHA

    @property
    def mark(self) -> str:
        if not self.significant:
            return ""
        return "▲" if self.better else "▼"


@dataclass
class Row:
    label: str
    method: str
    family: str
    seeds: list[int]
    cells: dict[tuple[str, str], Interval]
    avg: Interval | None
    delta: Interval | None
    avg_by_seed: dict[int, float]
    delta_by_seed: dict[int, float]
    trainable: float | None
    excluded: list[str]
    #: records of this row that lack the table's selection rule
    missing: int = 0
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    #: what the row ran with, where a table says it (a tuned row's chosen hyper-parameters)
    note: str = ""


@dataclass
class Table:
    profile: str
    scenario: str
    ablation: str | None
    heterogeneity: str
    tasks: list[dict[str, Any]]
    report_average: bool
    rule: str
    rows: list[Row]
    has_baseline: bool
    runs: int
    wall_s: float
    records: list[dict[str, Any]]
    #: records of an older data version of the scenario, left out (other evaluation splits)
    stale: int = 0
    #: the reference rows the comparisons are against: key -> row label
    reference_rows: dict[str, str] = field(default_factory=dict)
    #: sentences under the table (the best fixed weighting, the search's budget)
    notes: list[str] = field(default_factory=list)

    @property
    def references(self) -> tuple[str, ...]:
        """The comparison columns: HPS and Single-task, and the best fixed weighting where the
        scalarization preset ran."""
        return REFERENCES + ((FIXED,) if FIXED in self.reference_rows else ())

    @property
    def main_like(self) -> bool:
        """A main or a tuned table: rows by family, references inside the table."""
        return self.ablation in (None, TUNED)

    @property
    def headline(self) -> str:
        """``avg`` (higher is better) or ``delta`` (Δm%, lower is better)."""
        return "avg" if self.report_average else "delta"

    @property
    def higher_is_better(self) -> bool:
        return self.report_average

    @property
    def headline_label(self) -> str:
        return "Avg" if self.report_average else "Δm%"

    def score(self, row: Row) -> Interval | None:
        return row.avg if self.report_average else row.delta

    def by_seed(self, row: Row) -> dict[int, float]:
        return row.avg_by_seed if self.report_average else row.delta_by_seed

    @property
    def title(self) -> str:
        if self.ablation == TUNED:
            title = HETEROGENEITY_TITLES.get(self.heterogeneity, self.heterogeneity)
            return f"Tuned (equal-budget search) — {title} — `{self.scenario}`"
        if self.ablation:
            return f"Ablation `{self.ablation}` — `{self.scenario}`"
        title = HETEROGENEITY_TITLES.get(self.heterogeneity, self.heterogeneity)
        return f"{title} — `{self.scenario}`"

    @property
    def tests(self) -> int:
        """Distinct paired tests of the table (what Holm's correction counts)."""
        pairs = {frozenset((r.label, self.reference_rows.get(key, key))) if self.main_like
                 else (r.label, key)
                 for r in self.rows for key, c in r.comparisons.items() if not math.isnan(c.p)}
        return len(pairs)

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.rows)


@dataclass
class SummaryRow:
    label: str
    family: str
    scenarios: int
    mean_rank: float | None
    rank_by_seed: list[float]
    mean_delta: float | None


@dataclass
class Summary:
    profile: str
    scenarios: list[str]
    rule: str
    rows: list[SummaryRow]
    seeds: list[int]


def natural(label: str) -> list[Any]:
    """Sort key putting ``r=4`` before ``r=16`` (numbers compared as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", label)]


def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], dict[str, list]]:
    """Records by (profile, scenario, ablation) and label. A search's trials are left out (they
    only choose); its re-runs form the scenario's :data:`TUNED` group, joined by the default
    runs of the methods whose search chose their defaults (:func:`_tuned_notes`)."""
    groups: dict[tuple[str, str, str | None], dict[str, list]] = defaultdict(
        lambda: defaultdict(list))
    for rec in records:
        search = rec.get("config", {}).get("search") or {}
        if "trial" in search:
            continue
        key = (rec["profile"], rec["scenario"], TUNED if search else rec.get("ablation"))
        groups[key][rec.get("label") or rec["method"]].append(rec)
    return groups


def _join_default_rows(groups: dict[tuple[str, str, str | None], dict[str, list]]) -> None:
    """Give each ablation table the rows its records name as default runs
    (``config["ablation_rows"]``: label -> method), from the scenario's main table."""
    for (profile, scenario, ablation), by_label in list(groups.items()):
        if ablation in (None, TUNED):
            continue
        rows: dict[str, str] = {}
        for recs in by_label.values():
            for rec in recs:
                rows.update(rec.get("config", {}).get("ablation_rows") or {})
        main = groups.get((profile, scenario, None), {})
        for label, method in rows.items():
            if method in main and label not in by_label:
                by_label[label] = list(main[method])


def _fmt_setting(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def search_choices(records: list[dict[str, Any]]
                   ) -> dict[tuple[str, str], dict[str, tuple[int, str, int]]]:
    """Per (profile, scenario) and method: the trial its search chose on validation
    (:func:`bench.records.search.select_trial`), its hyper-parameters as a note, and the
    number of trials."""
    trials: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if "trial" in (rec.get("config", {}).get("search") or {}):
            trials[(rec["profile"], rec["scenario"])][rec["method"]].append(rec)
    out: dict[tuple[str, str], dict[str, tuple[int, str, int]]] = defaultdict(dict)
    for key, by_method in trials.items():
        for method, recs in by_method.items():
            chosen = select_trial(recs)
            if chosen is None:
                continue
            trial = chosen["config"]["search"]["trial"]
            overrides = chosen["config"].get("overrides") or {}
            note = ("defaults" if trial == 0 else ", ".join(
                f"{k.split('.', 1)[-1]}={_fmt_setting(v)}" for k, v in sorted(overrides.items())))
            out[key][method] = (trial, note, len(recs))
    return out


def _scenario_order(by_label: dict[str, list[dict[str, Any]]]) -> int:
    rec = next(r for recs in by_label.values() for r in recs)
    order = list(HETEROGENEITY_TITLES)
    h = rec["config"].get("heterogeneity", "")
    return order.index(h) if h in order else len(order)


def _baseline(records: list[dict[str, Any]], tasks: list[dict[str, Any]], rule: str
              ) -> Metrics | None:
    chosen = [s["test"] for r in records if r["status"] == "ok" and (s := selected(r, rule))]
    if not chosen:
        return None
    return {t["name"]: {m["name"]: statistics.fmean(c[t["name"]][m["name"]] for c in chosen)
                        for m in t["metrics"]} for t in tasks}


def _row(label: str, recs: list[dict[str, Any]], baseline: Metrics | None,
         tasks: list[dict[str, Any]], report_average: bool, rule: str) -> Row:
    recs = sorted(recs, key=lambda r: r["seed"])
    excluded = [f"seed {r['seed']}: {r['status']}" for r in recs if r["status"] != "ok"]
    ok = [r for r in recs if r["status"] == "ok"]
    usable = [(r, s) for r in ok if (s := selected(r, rule)) is not None]
    family = families.family_of(recs[0])
    if not usable:
        return Row(label, recs[0]["method"], family, [], {}, None, None, {}, {}, None, excluded,
                   len(ok))
    cells = {(t["name"], m["name"]): t_interval([s["test"][t["name"]][m["name"]]
                                                 for _, s in usable])
             for t in tasks for m in t["metrics"]}
    avg_by_seed = ({r["seed"]: sel.average(s["test"], tasks) for r, s in usable}
                   if report_average else {})
    delta_by_seed: dict[int, float] = {}
    if baseline is not None:
        try:
            delta_by_seed = {r["seed"]: delta_m(s["test"], baseline, tasks) for r, s in usable}
        except ZeroDivisionError:
            delta_by_seed = {}  # a baseline metric is 0: Δm% undefined (footnoted)
    return Row(label, recs[0]["method"], family, [r["seed"] for r, _ in usable], cells,
               t_interval(list(avg_by_seed.values())) if avg_by_seed else None,
               t_interval(list(delta_by_seed.values())) if delta_by_seed else None,
               avg_by_seed, delta_by_seed,
               statistics.fmean(r["trainable_params"] for r, _ in usable), excluded,
               len(ok) - len(usable))


def _compare(table: Table, references: dict[str, Row]) -> None:
    """Paired tests of every row against each reference row, Holm-corrected over the table's
    distinct tests (HPS against Single-task and Single-task against HPS are one test, shown
    in both rows)."""
    tests: dict[tuple[str, str], Comparison] = {}
    mirrored: list[tuple[Comparison, Comparison]] = []
    for row in table.rows:
        for key, ref in references.items():
            if row.label == ref.label and table.main_like:
                continue
            mine, theirs = table.by_seed(row), table.by_seed(ref)
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                continue
            a, b = [mine[s] for s in seeds], [theirs[s] for s in seeds]
            diff = statistics.fmean(x - y for x, y in zip(a, b))
            comparison = Comparison(REFERENCE_LABELS[key], len(seeds), diff, math.nan,
                                    better=diff > 0 if table.higher_is_better else diff < 0)
            row.comparisons[key] = comparison
            twin = tests.get((ref.label, row.label)) if table.main_like else None
            if twin is not None:
                mirrored.append((comparison, twin))
                continue
            comparison.p = paired_t_test(a, b)
            tests[(row.label, ref.label)] = comparison
    unique = list(tests.values())
    for comparison, adjusted in zip(unique, holm([c.p for c in unique])):
        comparison.p_holm = adjusted
    for comparison, twin in mirrored:
        comparison.p, comparison.p_holm = twin.p, twin.p_holm


def _sort(table: Table) -> None:
    if not table.main_like:
        table.rows.sort(key=lambda r: natural(r.label))
        return

    def key(row: Row) -> tuple[Any, ...]:
        score = table.score(row)
        value = math.inf if score is None else (-score.mean if table.higher_is_better
                                                else score.mean)
        return (families.order(row.family), value, natural(row.label))

    table.rows.sort(key=key)


def _best_fixed(by_label: dict[str, list[dict[str, Any]]], baseline: Metrics | None,
                tasks: list[dict[str, Any]], report_average: bool, rule: str) -> Row | None:
    """The scalarization preset's fixed weighting with the best validation metrics (mean over
    its seeds, then the mean per-task rank among the weightings, as a search chooses), as a
    reference row; None when the preset was not run on the scenario."""
    candidates = []
    for label, recs in sorted(by_label.items(), key=lambda kv: natural(kv[0])):
        vals = [s["val"] for r in recs if r["status"] == "ok" and (s := selected(r, rule))
                and s.get("val")]
        if vals and all(t["name"] in v for v in vals for t in tasks):
            mean = {t["name"]: {m["name"]: statistics.fmean(v[t["name"]][m["name"]] for v in vals)
                                for m in t["metrics"]} for t in tasks}
            candidates.append((label, {"tasks": tasks, "metrics": {"val": mean}}))
    if not candidates:
        return None
    ranks_ = validation_ranks([c[1] for c in candidates])
    best = min(range(len(candidates)), key=lambda i: (ranks_[i], i))
    label = candidates[best][0]
    row = _row(f"{REFERENCE_LABELS[FIXED]} {label.removeprefix('ls')}", by_label[label], baseline,
               tasks, report_average, rule)
    row.family = "baseline"
    row.note = f"the best on validation of {len(candidates)} fixed weightings"
    return row


def _fixed_note(row: Row) -> str:
    return (f"Reference row *{row.label}*: linear scalarization with fixed task weights — "
            f"{row.note} of the `scalarization` preset (the simplex's corners, its centre and "
            "Dirichlet draws; Xin et al., NeurIPS 2022), chosen on validation metrics only; "
            "column *vs best fixed weights* tests every method against it.")


def newest_data_version(records: list[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str | None], int]]:
    """The records of each (profile, scenario)'s newest data version, and how many older ones
    each table leaves out: a results folder that kept the records of earlier evaluation splits
    (a bumped ``data_version``) never mixes them into one row."""
    def version(rec: dict[str, Any]) -> list[Any]:
        return natural(str(rec.get("config", {}).get("scenario_data_version", "")))

    newest: dict[tuple[str, str], list[Any]] = {}
    for rec in records:
        key = (rec["profile"], rec["scenario"])
        newest[key] = max(newest.get(key, version(rec)), version(rec))
    kept, stale = [], defaultdict(int)
    for rec in records:
        if version(rec) == newest[(rec["profile"], rec["scenario"])]:
            kept.append(rec)
        else:
            stale[(rec["profile"], rec["scenario"], rec.get("ablation"))] += 1
    return kept, dict(stale)


def build(records: list[dict[str, Any]], rule: str = sel.DEFAULT
          ) -> tuple[list[Table], dict[str, Summary]]:
    """The tables of ``records`` under selection ``rule`` (profiles: ``default`` first; per
    profile the main tables in heterogeneity order, then the ablations by name), and each
    profile's cross-scenario summary. Raises :class:`SelectionMissingError` when records exist
    but none holds ``rule``."""
    sel.get(rule)
    if records and rule != sel.DEFAULT and not any(
            r["status"] == "ok" and selected(r, rule) for r in records):
        raise SelectionMissingError(
            f"no record holds selection rule {rule!r}: records written before the selection "
            f"rules existed hold only {sel.DEFAULT!r} (use --selection {sel.DEFAULT}, or run "
            "again)")
    records, stale = newest_data_version(records)
    groups = _group(records)
    _join_default_rows(groups)
    choices = search_choices(records)
    for (profile, scenario), chosen in choices.items():
        main = groups.get((profile, scenario, None), {})
        for method, (trial, _, _) in chosen.items():
            if trial == 0 and method in main:  # the defaults won: the default runs are its rows
                groups[(profile, scenario, TUNED)][method] = list(main[method])
    profiles = sorted({k[0] for k in groups}, key=lambda p: (p != "default", p))
    tables: list[Table] = []
    summaries: dict[str, Summary] = {}
    for profile in profiles:
        keys = sorted((k for k in groups if k[0] == profile),  # main, tuned, then ablations
                      key=lambda k: ({None: 0, TUNED: 1}.get(k[2], 2), k[2] or "",
                                     _scenario_order(groups[k]), k[1]))
        mains: dict[str, Table] = {}
        for key in keys:
            by_label = groups[key]
            ok_any = [r for recs in by_label.values() for r in recs if r["status"] == "ok"]
            if not ok_any:
                continue
            tasks = ok_any[0]["tasks"]
            report_average = sel.reports_average(tasks)
            ablation = key[2]
            main = groups.get((profile, key[1], None), {})
            base_records = main.get(BASELINE, [])
            baseline = _baseline(base_records, tasks, rule)
            rows = [_row(label, recs, baseline, tasks, report_average, rule)
                    for label, recs in by_label.items()]
            all_recs = [r for recs in by_label.values() for r in recs]
            table = Table(profile, key[1], ablation,
                          ok_any[0]["config"].get("heterogeneity", ""), tasks, report_average,
                          rule, rows, bool(base_records), len(all_recs),
                          sum(r["wall_time_s"] or 0 for r in all_recs), all_recs,
                          stale.get(key, 0))
            if ablation == TUNED:
                base_records = groups.get((profile, key[1], TUNED), {}).get(BASELINE, [])
                table.has_baseline = bool(base_records)
                chosen = choices.get((profile, key[1]), {})
                for row in rows:
                    if row.method in chosen:
                        row.note = chosen[row.method][1]
                budgets = sorted({n for _, _, n in chosen.values()})
                table.notes.append(
                    f"Each method's configuration chosen on validation among "
                    f"{' / '.join(map(str, budgets)) or '?'} trials of an equal-budget random "
                    "search (the first trial is its defaults; `run --search N`), then re-run on "
                    "the seeds shown; the chosen hyper-parameters are listed.")
            if ablation in (None, TUNED):
                references = {k: r for r in rows for k in REFERENCES if r.label == k}
                fixed = _best_fixed(groups.get((profile, key[1], SCALARIZATION), {}), baseline,
                                    tasks, report_average, rule)
                if fixed is not None:
                    rows.append(fixed)
                    references[FIXED] = fixed
                    table.notes.append(_fixed_note(fixed))
                table.reference_rows = {k: r.label for k, r in references.items()}
                if ablation is None:
                    mains[key[1]] = table
            else:
                parent = mains.get(key[1])
                references = ({k: r for r in parent.rows for k in REFERENCES if r.label == k}
                              if parent else {})
            _compare(table, references)
            _sort(table)
            if FIXED in references:
                better = [r.label for r in table.rows
                          if (c := r.comparisons.get(FIXED)) and c.significant and c.better]
                table.notes.append(
                    "Significantly better than the best fixed weighting: "
                    + (", ".join(better) if better else "no method") + ".")
            tables.append(table)
        if len(mains) >= 2:
            summaries[profile] = summarize(profile, list(mains.values()), rule)
    return tables, summaries


def summary_label(row: Row) -> str:
    """A row's name across scenarios: its label, except that each scenario's best fixed
    weighting (whose weights differ from scenario to scenario) is one row."""
    fixed = REFERENCE_LABELS[FIXED]
    return f"{fixed} (each scenario's)" if row.label.startswith(f"{fixed} ") else row.label


def summarize(profile: str, mains: list[Table], rule: str) -> Summary:
    """Mean rank (MR) of each method over the main tables, by their headline scores, with the
    spread of the per-seed MR; and the mean Δm% over the tables. Ranks are taken among the
    methods present in every table (others are listed without a rank)."""
    scored = [{summary_label(r): r for r in t.rows if t.score(r) is not None} for t in mains]
    common = sorted(set.intersection(*(set(s) for s in scored)), key=natural)
    mean_rank: dict[str, float] = {}
    for table, rows in zip(mains, scored):
        if not common:
            break
        values = ranks([table.score(rows[label]).mean for label in common],  # type: ignore
                       table.higher_is_better)
        for label, value in zip(common, values):
            mean_rank[label] = mean_rank.get(label, 0.0) + value / len(mains)
    seeds = sorted(set.intersection(*(set(table.by_seed(rows[label]))
                                      for table, rows in zip(mains, scored)
                                      for label in common))) if common else []
    by_seed: dict[str, list[float]] = defaultdict(list)
    for seed in seeds:
        totals = dict.fromkeys(common, 0.0)
        for table, rows in zip(mains, scored):
            values = ranks([table.by_seed(rows[label])[seed] for label in common],
                           table.higher_is_better)
            for label, value in zip(common, values):
                totals[label] += value / len(mains)
        for label in common:
            by_seed[label].append(totals[label])
    labels = sorted({label for rows in scored for label in rows}, key=natural)
    out = []
    for label in labels:
        rows = [rows[label] for rows in scored if label in rows]
        deltas = [r.delta.mean for r in rows if r.delta is not None]
        out.append(SummaryRow(label, rows[0].family, len(rows), mean_rank.get(label),
                              by_seed.get(label, []),
                              statistics.fmean(deltas) if len(deltas) == len(mains) else None))
    out.sort(key=lambda r: (r.mean_rank is None, r.mean_rank or 0.0, natural(r.label)))
    return Summary(profile, [t.scenario for t in mains], rule, out, seeds)

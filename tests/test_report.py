"""The leaderboard's statistics and exports, on synthetic records with known effects and on the
committed records: t-intervals, paired tests with Holm's correction, marks, family groups, the
cross-scenario mean rank, selection rules, LaTeX, CSV, Pareto figures, determinism."""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import write_json_atomic
from bench.report import render
from bench.report import stats as st
from bench.report.tables import build

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3, 4)
CLS_TASKS = [{"name": t, "label": t.upper(), "kind": "classification", "num_outputs": 10,
              "metrics": [{"name": "accuracy", "label": "Acc", "higher_is_better": True}]}
             for t in ("a", "b", "c", "d")]
DENSE_TASKS = [
    {"name": "seg", "label": "Seg", "kind": "segmentation", "num_outputs": 3,
     "metrics": [{"name": "miou", "label": "mIoU", "higher_is_better": True}]},
    {"name": "depth", "label": "Depth", "kind": "regression", "num_outputs": 1,
     "metrics": [{"name": "abs_err", "label": "Abs", "higher_is_better": False}]},
]
#: per seed: a shared seed effect, and each method's deviation from HPS. ``big`` is 10 points
#: better than HPS (with a little noise), ``null`` is HPS plus zero-mean noise
SEED_EFFECT = (70.0, 72.0, 69.0, 71.0, 73.0)
DEVIATION = {
    "hps": (0.0, 0.0, 0.0, 0.0, 0.0),
    "single_task": (0.5, -0.4, 0.3, -0.3, 0.1),
    "big": (10.2, 9.9, 10.3, 10.0, 9.8),
    "null": (0.8, -0.6, 0.4, -0.9, 0.3),
}
FAMILY = {"big": "low_rank", "null": "loss_weighting"}  # hps, single_task: the known table


def _record(root: Path, label: str, seed: int, scenario: str, tasks: list, test: dict,
            heterogeneity: str, oracle_shift: float | None = 1.0, profile: str = "default",
            ablation: str | None = None) -> dict:
    record = {
        "kind": "run", "method": label.split("[")[0], "label": label, "scenario": scenario,
        "seed": seed, "profile": profile, "ablation": ablation,
        "config": {"heterogeneity": heterogeneity}, "config_hash": f"{scenario}-{label}-{seed}",
        "status": "ok", "tasks": tasks, "best_epoch": 3,
        "metrics": {"val": test, "test": test},
        "trainable_params": int({"hps": 8e4, "single_task": 3e5, "big": 1.1e5}.get(label, 9e4)),
        "total_params": 1, "wall_time_s": 1.0, "versions": {},
    }
    if label in FAMILY:
        record["family"] = FAMILY[label]
    if oracle_shift is not None:  # every rule but val_loss sees other numbers
        shifted = {t: {m: v + oracle_shift for m, v in ms.items()} for t, ms in test.items()}
        record["selection"] = {
            "val_loss": {"epoch": 3, "val": test, "test": test},
            "val_metric": {"epoch": 2, "val": test, "test": test},
            "last": {"epoch": 4, "val": test, "test": test},
            "oracle": {"epoch": 1, "val": test, "test": shifted},
        }
    write_json_atomic(root / profile / scenario / label / f"seed{seed}.json", record)
    return record


def synthetic(root: Path, oracle_shift: float | None = 1.0) -> Path:
    """Four methods × 5 seeds on a classification scenario (headline Avg) and a dense one
    (headline Δm%), with a known large effect (``big``) and a known null effect (``null``)."""
    for label, deviation in DEVIATION.items():
        for seed, base, dev in zip(SEEDS, SEED_EFFECT, deviation):
            cls = {t["name"]: {"accuracy": base + dev + i} for i, t in enumerate(CLS_TASKS)}
            _record(root, label, seed, "synthetic_cls", CLS_TASKS, cls, "domain", oracle_shift)
            dense = {"seg": {"miou": base / 2 + dev / 2},
                     "depth": {"abs_err": 1.0 - dev / 100}}
            _record(root, label, seed, "synthetic_dense", DENSE_TASKS, dense, "single_input",
                    oracle_shift)
    return root


def _rows(text: str, heading: str) -> dict[str, list[str]]:
    """The cells of each method row of the table under ``heading``."""
    lines = text.split(heading, 1)[1].split("\n### ", 1)[0].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("| ") and not line.startswith("| *")]
    header = rows[0]
    return {r[0]: dict(zip(header, r)) for r in rows[1:]}  # type: ignore[misc]


# ---------------------------------------------------------------- statistics


def test_holm_against_a_hand_computed_case() -> None:
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = st.holm([0.5, math.nan, 0.6])
    assert adjusted[0] == pytest.approx(1.0) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(1.0)
    assert st.holm([]) == []


def test_t_interval_and_paired_test() -> None:
    interval = st.t_interval([1.0, 2.0, 3.0])
    assert (interval.mean, interval.n, interval.std) == (2.0, 3, 1.0)
    assert interval.half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(st.t_interval([5.0]).half)
    from scipy import stats

    a, b = [1.0, 2.5, 2.0, 4.0], [0.5, 2.0, 2.1, 3.0]
    assert st.paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert st.paired_t_test(a, a) == 1.0
    assert st.paired_t_test([2.0, 3.0], [1.0, 2.0]) == 0.0  # constant difference
    assert math.isnan(st.paired_t_test([1.0], [2.0]))
    assert st.ranks([3.0, 1.0, 2.0, 2.0], higher_is_better=True) == [1.0, 4.0, 2.5, 2.5]


# ---------------------------------------------------------------- tables on synthetic records


def test_exactly_the_large_effect_is_marked_significant(tmp_path: Path) -> None:
    text, _ = render(synthetic(tmp_path / "r"), tmp_path / "lb.md")
    for heading in ("`synthetic_cls`", "`synthetic_dense`"):
        rows = _rows(text, heading)
        marked = {(label, ref) for label, row in rows.items()
                  for ref in ("vs HPS", "vs Single-task") if row[ref][:1] in "▲▼"}
        assert marked == {("big", "vs HPS"), ("big", "vs Single-task")}, heading
        assert rows["big"]["vs HPS"].startswith("▲")
        assert rows["hps"]["vs HPS"] == "ref" and rows["single_task"]["vs Single-task"] == "ref"
        assert rows["null"]["n"] == "5"
        # HPS against Single-task is one test, shown in both rows
        assert rows["hps"]["vs Single-task"] == rows["single_task"]["vs HPS"] != "-"
    assert "Holm-corrected over the 5 tests of this table" in text
    assert "paired two-sided t-test" in text and "Selection `val_loss`" in text


def test_rows_are_grouped_by_family_and_sorted_by_the_headline(tmp_path: Path) -> None:
    text, _ = render(synthetic(tmp_path / "r"), tmp_path / "lb.md")
    section = text.split("`synthetic_cls`", 1)[1].split("\n### ", 1)[0]
    firsts = [line.split("|")[1].strip() for line in section.splitlines()
              if line.startswith("| ") and not line.startswith("| Method")]
    assert firsts == ["*Baselines*", "single_task", "hps", "*Loss weightings*", "null",
                      "*Low-rank / PEFT*", "big"]


def test_cells_are_mean_and_t_interval(tmp_path: Path) -> None:
    text, _ = render(synthetic(tmp_path / "r"), tmp_path / "lb.md")
    values = [base + dev for base, dev in zip(SEED_EFFECT, DEVIATION["big"])]
    expected = st.t_interval(values)
    cell = _rows(text, "`synthetic_cls`")["big"]["A Acc ↑"]
    assert cell == f"**{expected.mean:.2f} ± {expected.half:.2f}**"  # the mean's decimals


def test_cross_scenario_summary_ranks_the_large_effect_first(tmp_path: Path) -> None:
    _, summaries = build(_load(synthetic(tmp_path / "r")))
    summary = summaries["default"]
    first = summary.rows[0]
    assert (first.label, first.mean_rank, first.rank_by_seed) == ("big", 1.0, [1.0] * 5)
    assert summary.seeds == list(SEEDS)
    assert {r.label for r in summary.rows} == set(DEVIATION)
    text, _ = render(tmp_path / "r", tmp_path / "lb.md")
    assert "### Across scenarios — profile `default`" in text


def _load(root: Path) -> list[dict]:
    from bench.records import load_records

    return load_records(root)[0]


def test_selection_oracle_reads_the_oracle_choice_and_says_upper_bound(tmp_path: Path) -> None:
    synthetic(tmp_path / "r", oracle_shift=1.0)
    assert main(["leaderboard", "--results-dir", str(tmp_path / "r"), "--output",
                 str(tmp_path / "oracle.md"), "--selection", "oracle"]) == 0
    text = (tmp_path / "oracle.md").read_text()
    default, _ = render(tmp_path / "r", tmp_path / "lb.md")
    hps_default = _rows(default, "`synthetic_cls`")["hps"]["Avg ↑"].strip("*").split(" ±")[0]
    hps_oracle = _rows(text, "`synthetic_cls`")["hps"]["Avg ↑"].strip("*").split(" ±")[0]
    assert float(hps_oracle) == pytest.approx(float(hps_default) + 1.0)
    assert text.count("An upper bound, not a result") >= 2  # every table's caption
    assert (tmp_path / "r" / "plots" / "pareto_default_synthetic_cls_oracle.png").exists()


def test_latex_export(tmp_path: Path) -> None:
    synthetic(tmp_path / "r")
    out = tmp_path / "lb.tex"
    assert main(["leaderboard", "--results-dir", str(tmp_path / "r"), "--output", str(out),
                 "--format", "latex"]) == 0
    text = out.read_text()
    assert text.count(r"\begin{table}") == 3  # two tables and the summary
    for needle in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"\underline{",
                   r"$\blacktriangle$", r"\caption{", "paired two-sided t-test",
                   r"\multicolumn{11}{l}{\textit{Low-rank / PEFT}}"):
        assert needle in text, needle
    body = [line for line in text.splitlines() if not line.startswith(r"\caption")]
    assert sum(line.count(r"$\blacktriangle$") for line in body) == 4  # big vs both, twice
    assert not any(r"$\blacktriangledown$" in line for line in body)
    assert "single\\_task" in text and "_task" not in text.replace("\\_task", "")


def test_tidy_csv_export(tmp_path: Path, capsys) -> None:
    synthetic(tmp_path / "r")
    assert main(["leaderboard", "--results-dir", str(tmp_path / "r"), "--output", "-",
                 "--format", "csv", "--selection", "last"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 * 5 * (4 + 2)  # methods x seeds x (task, metric) pairs
    first = rows[0]
    assert set(first) == {"profile", "scenario", "ablation", "label", "method", "family",
                          "seed", "config_hash", "selection", "epoch", "task", "metric",
                          "higher_is_better", "value"}
    assert {r["selection"] for r in rows} == {"last"} and {r["epoch"] for r in rows} == {"4"}
    big = [r for r in rows if r["label"] == "big" and r["scenario"] == "synthetic_dense"]
    assert {r["family"] for r in big} == {"low_rank"}
    assert {r["config_hash"] for r in big} == {f"synthetic_dense-big-{s}" for s in SEEDS}
    assert {r["higher_is_better"] for r in big} == {"true", "false"}


def test_unknown_rule_or_format_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    synthetic(tmp_path / "r")
    base = ["leaderboard", "--results-dir", str(tmp_path / "r"), "--output", "-"]
    assert main([*base, "--selection", "best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val_loss, val_metric, last, oracle" in err[0]
    assert main([*base, "--format", "html"]) == 2
    assert "md, latex, csv" in capsys.readouterr().err


def test_records_without_a_rule_are_left_out_with_a_footnote(tmp_path: Path) -> None:
    synthetic(tmp_path / "r")
    old = tmp_path / "r" / "default" / "synthetic_cls" / "null" / "seed4.json"
    record = __import__("json").loads(old.read_text())
    del record["selection"]  # written before the rules existed
    write_json_atomic(old, record)
    text, _ = render(tmp_path / "r", tmp_path / "lb.md", rule="val_metric")
    assert "1 ok run(s) predate the selection rules" in text
    assert _rows(text, "`synthetic_cls`")["null"]["n"] == "4"
    text, _ = render(tmp_path / "r", tmp_path / "lb.md")  # val_loss: every record
    assert _rows(text, "`synthetic_cls`")["null"]["n"] == "5"


def test_pareto_front() -> None:
    from bench.report.plots import pareto_front

    points = [(10.0, 70.0), (20.0, 75.0), (20.0, 72.0), (30.0, 74.0), (5.0, 60.0)]
    assert pareto_front(points, higher_is_better=True) == [4, 0, 1]
    assert pareto_front([(1.0, 2.0), (2.0, 1.0)], higher_is_better=False) == [0, 1]


def test_families_of_records_and_the_report_table_agree_with_the_registrations() -> None:
    import re

    from bench import registry
    from bench.models.method import FAMILIES
    from bench.report import families

    built_in = [name for path in sorted((REPO / "methods").glob("*.py"))
                for name in re.findall(r'register_method\(\s*"(\w+)"', path.read_text())]
    assert families.LABELS == FAMILIES
    assert families.KNOWN_FAMILIES == {m: registry.methods.get(m).family for m in built_in}
    assert families.family_of({"method": "pcgrad"}) == "gradient"  # an old record
    assert families.family_of({"method": "hps+pcgrad"}) == "gradient"
    assert families.family_of({"method": "mmoe+pcgrad"}) == "architecture"
    assert families.family_of({"method": "mine", "family": "low_rank"}) == "low_rank"
    assert families.family_of({"method": "unknown_plugin"}) == "other"
    assert len({families.color(f) for f in families.LABELS}) == len(families.LABELS)


def test_papers_delta_m_is_shown_in_the_leaderboards_sign_convention() -> None:
    from bench.report import paper_results
    from bench.report.leaderboard import _paper_tables

    table = paper_results.tables_for("pascal_context")[0]
    labels, convert = paper_results.our_convention(table)
    column = table["columns"].index("delta_m_mtlora")
    assert labels[column].startswith("Δm% ↓")
    assert convert(table["rows"]["MTL - Tuning Decoders Only"])[column] == 9.95  # printed -9.95
    lines = "\n".join(_paper_tables("pascal_context", {"hps", "mtlora"}))
    assert "shown here negated" in lines
    mola = paper_results.tables_for("nyuv2")[0]
    assert paper_results.our_convention(mola)[1]([4.72] * len(mola["columns"]))[-1] == 4.72


# ---------------------------------------------------------------- the committed records


def _committed_copy(tmp_path: Path) -> Path:
    """A copy of ``results/`` beside an output file, so relative links match the repo's."""
    shutil.copytree(REPO / "results", tmp_path / "results",
                    ignore=shutil.ignore_patterns("plots"))
    return tmp_path / "results"


def test_committed_leaderboard_is_regenerated_byte_identically(tmp_path: Path) -> None:
    results = _committed_copy(tmp_path)
    first, bad = render(results, tmp_path / "leaderboard.md")
    assert not bad
    pngs = {p.name: p.read_bytes() for p in sorted((results / "plots").glob("*.png"))}
    assert {"pareto_default_digits_domains.png", "params_default_digits_scene.png"} <= set(pngs)
    second, _ = render(results, tmp_path / "leaderboard.md")
    assert first == second
    assert {p.name: p.read_bytes() for p in sorted((results / "plots").glob("*.png"))} == pngs
    assert first == (REPO / "leaderboard.md").read_text(), \
        "leaderboard.md is stale: python -m bench leaderboard"
    for name, data in pngs.items():
        assert (REPO / "results" / "plots" / name).read_bytes() == data, name


def test_committed_records_export_to_latex_and_csv(tmp_path: Path, capsys) -> None:
    results = _committed_copy(tmp_path)
    assert main(["leaderboard", "--results-dir", str(results), "--format", "latex",
                 "--output", str(tmp_path / "lb.tex")]) == 0
    assert (tmp_path / "lb.tex").read_text().count(r"\begin{table}") >= 3
    assert main(["leaderboard", "--results-dir", str(results), "--format", "csv",
                 "--output", str(tmp_path / "lb.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "lb.csv").open()))
    assert rows and {r["selection"] for r in rows} == {"val_loss"}
    # the committed records hold every selection rule: each renders, the oracle as a bound
    for rule in ("val_metric", "last", "oracle"):
        assert main(["leaderboard", "--results-dir", str(results), "--selection", rule,
                     "--output", str(tmp_path / f"{rule}.md")]) == 0
        assert f"`{rule}`" in (tmp_path / f"{rule}.md").read_text()
    assert "upper bound" in (tmp_path / "oracle.md").read_text()


def test_records_of_an_older_data_version_are_left_out(tmp_path: Path) -> None:
    """A results folder that kept the records of earlier evaluation splits: a table shows the
    newest data version only, and says how many it left out."""
    import json

    root = synthetic(tmp_path / "r")
    for path in sorted(root.rglob("seed*.json")):
        record = json.loads(path.read_text())
        record["config"]["scenario_data_version"] = "10"
        write_json_atomic(path, record)
        if "synthetic_cls" in str(path) and record["label"] == "big":
            record["config"]["scenario_data_version"] = "9"  # older: "9" < "10"
            record["metrics"]["test"] = {t: {"accuracy": 0.0} for t in record["metrics"]["test"]}
            write_json_atomic(path.with_name(f"old-{path.name}"), record)
    text, _ = render(root, tmp_path / "lb.md")
    assert _rows(text, "`synthetic_cls`")["big"]["n"] == "5"
    assert "5 record(s) of an older data version of `synthetic_cls`" in text
    assert "older data version of `synthetic_dense`" not in text


def test_a_figure_drawn_from_unchanged_data_is_not_drawn_again(tmp_path: Path,
                                                               monkeypatch) -> None:
    """A figure records a digest of what it is drawn from (PNG text chunk): the next render
    with the same data keeps the file without importing pyplot; other data draw it again."""
    from bench.report import plots

    records = {"hps": [{"seed": 0, "param_scaling": {"2": 100, "3": 150},
                        "config": {"method_identity": {"architecture": "hps"}}}]}
    png = tmp_path / "params.png"
    assert plots.param_plot(records, png, "title")
    first = png.read_bytes()
    assert plots.drawn_from(png) is not None

    def no_drawing() -> None:
        raise AssertionError("drawn again")

    monkeypatch.setattr(plots, "_pyplot", no_drawing)
    assert plots.param_plot(records, png, "title")
    assert png.read_bytes() == first
    with pytest.raises(AssertionError, match="drawn again"):
        plots.param_plot(records, png, "another title")

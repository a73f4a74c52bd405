"""Figures of the leaderboard: trainable parameters against the number of tasks (MoLA Fig. 5)
and, per scenario, the headline score against trainable parameters (MTLoRA Fig. 1), one colour
per method family — the same colour in every figure (:data:`bench.report.families.COLORS`).

Written with matplotlib's Agg backend and ``metadata={"Software": None}``: the same records give
byte-identical PNG files.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.report import families
from bench.report.tables import REFERENCES, Table


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _digest(*inputs: Any) -> str:
    """What a figure is drawn from: its data, this module's and the families' source, and
    matplotlib's version (read without importing it)."""
    import hashlib
    import json
    from importlib.metadata import version

    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=repr).encode())
    for module in (__file__, families.__file__):
        digest.update(Path(module).read_bytes())
    digest.update(version("matplotlib").encode())
    return f"bench-figure {digest.hexdigest()[:32]}"


def drawn_from(path: Path) -> str | None:
    """The digest a figure of this module records in its PNG ``Comment`` text chunk (None: no
    such file or chunk). A figure whose digest is unchanged is not drawn again."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    pos = 8  # after the PNG signature: chunks of length, type, data, CRC
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            if key == b"Comment":
                return value.decode("latin-1")
        pos += 12 + length
    return None


def _save(fig: Any, path: Path, digest: str) -> None:
    fig.savefig(path, metadata={"Software": None, "Comment": digest})


def _close(a: list[tuple[int, int]], b: list[tuple[int, int]], rel: float = 0.01) -> bool:
    """Same task counts and parameter counts within ``rel`` (e.g. a few loss-scale weights)."""
    return [x for x, _ in a] == [x for x, _ in b] and all(
        abs(u - v) <= rel * max(u, v) for (_, u), (_, v) in zip(a, b))


def param_plot(by_label: dict[str, list[dict[str, Any]]], path: Path, title: str) -> bool:
    """Trainable parameters for 2...10 tasks, one curve per architecture (weightings do not
    change the count); False when no record has ``param_scaling``."""
    curves: dict[str, list[tuple[int, int]]] = {}
    users: dict[str, list[str]] = defaultdict(list)
    for label in sorted(by_label):
        recs = sorted(by_label[label], key=lambda r: r["seed"])
        scaling = next((r.get("param_scaling") for r in recs if r.get("param_scaling")), None)
        if not scaling:
            continue
        arch = recs[0]["config"].get("method_identity", {}).get("architecture", label)
        points = sorted((int(k), v) for k, v in scaling.items())
        key = arch if _close(curves.get(arch, points), points) else label
        curves[key] = points
        users[key].append(label)
    if not curves:
        return False
    digest = _digest("param_plot", title, curves, users)
    if drawn_from(path) == digest:
        return True
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tab10 = plt.get_cmap("tab10").colors  # seaborn's "tab10" palette, cycled
    palette = [tab10[i % len(tab10)] for i in range(len(curves))]
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
    _save(fig, path, digest)
    plt.close(fig)
    return True


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point dominates (no more parameters and a score at
    least as good, one of them strictly), in order of parameters."""
    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    front = []
    for i, (params, score) in enumerate(points):
        dominated = any(
            (p <= params and not better(score, s) and (p < params or better(s, score)))
            for j, (p, s) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(table: Table, path: Path) -> bool:
    """The table's headline score (mean and 95 % interval over seeds) against its trainable
    parameters, one colour per family, the Pareto front as a step line; the front's methods
    and the references (HPS, Single-task) are named. False when no row has both."""
    from bench.records import selection as sel

    rows = [r for r in table.rows if table.score(r) is not None and r.trainable]
    if not rows:
        return False
    points = [(r.trainable, table.score(r).mean) for r in rows]  # type: ignore[union-attr]
    front = pareto_front(points, table.higher_is_better)
    named = set(front) | {i for i, r in enumerate(rows) if r.label in REFERENCES}
    drawn = [(r.label, r.family, r.trainable, table.score(r)) for r in rows]
    digest = _digest("pareto_plot", drawn, sorted(named), table.scenario, table.rule,
                     table.headline_label, table.higher_is_better)
    if drawn_from(path) == digest:
        return True
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    seen: set[str] = set()
    for i, row in enumerate(rows):
        score = table.score(row)
        assert score is not None
        family = row.family
        ax.errorbar(row.trainable / 1e3, score.mean,
                    yerr=None if math.isnan(score.half) else score.half,
                    fmt="o", ms=5, color=families.color(family), ecolor=families.color(family),
                    elinewidth=0.8, capsize=2, alpha=0.85,
                    label=None if family in seen else families.label(family))
        seen.add(family)
        if i in named:
            ax.annotate(row.label, (row.trainable / 1e3, score.mean), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.step([points[i][0] / 1e3 for i in front], [points[i][1] for i in front], where="post",
            color="black", lw=0.8, alpha=0.5, label="Pareto front")
    means = [p[1] for p in points]
    pad = 0.08 * (max(means) - min(means) or 1.0)
    ax.set_ylim(min(means) - pad, max(means) + pad)  # the means decide; long bars are cut
    ax.set_xscale("log")
    low, high = min(p[0] for p in points) / 1e3, max(p[0] for p in points) / 1e3
    ticks = [m * 10 ** k for k in range(-1, 8) for m in (1, 2, 3, 5)
             if low / 1.5 <= m * 10 ** k <= high * 1.5]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}K" if v < 1e3
                                               else f"{v / 1e3:g}M"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (log scale)")
    arrow = "higher is better" if table.higher_is_better else "lower is better, axis inverted"
    ax.set_ylabel(f"{table.headline_label} ({arrow})")
    if not table.higher_is_better:
        ax.invert_yaxis()  # better is up in every figure
    bound = ", an upper bound" if sel.get(table.rule).upper_bound else ""
    ax.set_title(f"{table.scenario}: {table.headline_label} (mean, 95 % CI over seeds) vs "
                 f"trainable parameters; selection {table.rule}{bound}", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path, digest)
    plt.close(fig)
    return True

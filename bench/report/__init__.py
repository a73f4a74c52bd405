"""Stage 5 — report: records → tables, Δm%, statistics, figures → ``leaderboard.md``.

* :mod:`~bench.report.tables` — tables under a selection rule: t-intervals, paired tests against
  HPS and Single-task (Holm-corrected), rows grouped by family, the cross-scenario mean rank.
* :mod:`~bench.report.leaderboard` — the markdown leaderboard and :func:`render` (every format).
* :mod:`~bench.report.export` — LaTeX (booktabs) and the tidy CSV.
* :mod:`~bench.report.plots` — parameter-count and Pareto figures, one colour per family.
* :mod:`~bench.report.stats` — t-intervals, the paired t-test, Holm's correction, ranks.
* :mod:`~bench.report.families` — method families (labels, colours, the built-in methods').
* :mod:`~bench.report.paper_results` — the papers' reported numbers (``paper_results.json``).

Reads records only: may import :mod:`bench.records` and this package — never ``bench.data``,
``bench.models`` or ``bench.run`` — so a leaderboard can be rebuilt on a laptop without the
training code (``tests/test_layout.py`` checks it).
"""

from bench.report.leaderboard import (
    FORMATS,
    SelectionMissingError,
    delta_m,
    render,
    reports_average,
)

__all__ = ["FORMATS", "SelectionMissingError", "delta_m", "render", "reports_average"]

"""Stage 5 — report: records → tables, Δm%, plots → ``leaderboard.md``.

* :mod:`~bench.report.leaderboard` — the paper-style tables and :func:`render`.
* :mod:`~bench.report.paper_results` — the papers' reported numbers (``paper_results.json``).

Reads records only: may import :mod:`bench.records` and this package — never ``bench.data``,
``bench.models`` or ``bench.run`` — so a leaderboard can be rebuilt on a laptop without the
training code (``tests/test_layout.py`` checks it).
"""

from bench.report.leaderboard import delta_m, render, reports_average

__all__ = ["delta_m", "render", "reports_average"]

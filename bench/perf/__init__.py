"""``python -m bench perf``: speed and memory comparisons measured side by side in one run.

Every comparison is a function returning :class:`bench.perf.rows.Row` s — a statistic over
interleaved repeats (A B A B ...), its goal, whether the median meets it, and what limits it
where it does not:

* ``kernels`` (:mod:`bench.perf.kernels`): the fused multi-input forward, bf16, MoLA's conv
  paths, streamed batches;
* ``engine`` (:mod:`bench.perf.engine`): a run's ``train()`` against a bare PyTorch loop;
* ``gradients`` (:mod:`bench.perf.gradients`): gradient methods against the T-backward floor;
* ``startup``, ``memory``, ``jobs`` (:mod:`bench.perf.processes`): fresh processes of the
  instant commands, peak memory per method, sweeps on one core and with ``--jobs 1`` against
  ``--jobs 2``.

:mod:`bench.perf.report` writes them as JSON and as ``docs/performance.md``. Nothing here is a
test: no test asserts a speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.perf.rows import Row

#: the groups ``perf`` runs by default, in order (``jobs`` takes minutes: only when asked)
DEFAULT_GROUPS = ("kernels", "engine", "gradients", "startup", "memory")
GROUPS = (*DEFAULT_GROUPS, "jobs")


def check_groups(groups: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any of ``groups`` that is not one of :data:`GROUPS`."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(unknown)}; groups: {', '.join(GROUPS)}")


def _group_runners(repeats: int, threads: int, memory_methods: Sequence[str] | None,
                   results_dir: Path) -> dict[str, Callable[[], list[Row]]]:
    from bench.perf import engine, gradients, kernels, processes

    def kernel_rows() -> list[Row]:
        return [*kernels.multi_input_forward_benchmark(repeats),
                *kernels.precision_benchmark(repeats),
                *kernels.mola_conv_benchmark(repeats, threads=threads),
                *kernels.streaming_benchmark(repeats)]

    methods = tuple(memory_methods or processes.MEMORY_METHODS)
    return {
        "kernels": kernel_rows,
        "engine": lambda: engine.engine_vs_bare_benchmark(repeats),
        "gradients": lambda: gradients.gradient_methods_benchmark(repeats),
        "startup": lambda: processes.startup_benchmark(repeats, results_dir),
        "memory": lambda: processes.memory_benchmark(methods, threads=threads),
        "jobs": lambda: processes.jobs_scaling_benchmark(repeats),
    }


def load_note(before: Sequence[float] | None, after: Sequence[float] | None, cores: int) -> str:
    """A sentence for a missed goal's limits when the machine was busy (a 1-minute load average
    at or above half the cores, before or after), else ``""``."""
    busy = [v[0] for v in (before, after) if v]
    if not busy or max(busy) < cores / 2:
        return ""
    return (f"the machine was loaded by other work (1-min load average {busy[0]:.1f} before, "
            f"{busy[-1]:.1f} after, on {cores} cores)")


def main(repeats: int = 5, groups: Sequence[str] = DEFAULT_GROUPS, threads: int = 1,
         memory_methods: Sequence[str] | None = None, json_path: Path | None = None,
         docs_path: Path | None = None, results_dir: Path = Path("results"),
         argv: Sequence[str] | None = None) -> int:
    """Run ``groups`` in order, print their rows, and write ``json_path`` / ``docs_path``."""
    import os

    import torch

    from bench.perf import report
    from bench.perf.processes import load_average

    check_groups(groups)
    torch.set_num_threads(threads)
    before, start = load_average(), time.perf_counter()
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s), "
          f"{repeats} interleaved repeats, load average {before}", flush=True)
    runners = _group_runners(repeats, threads, memory_methods, results_dir)
    rows: list[Row] = []
    for group in groups:
        group_start = time.perf_counter()
        new = runners[group]()
        print(report.console_table(new), flush=True)
        print(f"  ({group}: {time.perf_counter() - group_start:.0f} s)", flush=True)
        rows += new
    after = load_average()
    note = load_note(before, after, os.cpu_count() or 1)
    for row in rows:
        if row.met is False and note:
            row.limits = f"{row.limits}; {note}" if row.limits else note
    machine = report.machine_info(torch.__version__, threads, before, after, argv)
    if json_path is not None:
        report.write_json(json_path, rows, machine)
        print(f"wrote {json_path}")
    if docs_path is not None:
        docs_path.parent.mkdir(parents=True, exist_ok=True)
        docs_path.write_text(report.render_markdown(rows, machine,
                                                    time.perf_counter() - start))
        print(f"wrote {docs_path}")
    return 0

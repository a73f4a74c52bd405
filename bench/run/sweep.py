"""Execute a plan: skip runs whose record exists, run the rest, one record each.

Each worker writes its own record as soon as its run ends (:func:`bench.run.worker.run_one`), so
interrupting a sweep loses only the runs in flight; running the same command again resumes.
``execute`` runs the pending runs locally or on a distributed engine (:mod:`bench.run.backends`:
Dask, Ray, Slurm through submitit). Locally, ``jobs`` > 1 starts that many long-lived worker
processes (:mod:`bench.run.pool`), each importing torch and the registries once and then taking
one run after another with ``threads`` torch threads (default: the cores split between them); a
worker killed in a run fails that run only (:func:`bench.run.worker.record_lost`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.records import find_record, record_path
from bench.run.backends import get_backend
from bench.run.locks import claim, release
from bench.run.plan import RunSpec
from bench.run.worker import record_lost, run_one


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(jobs: int) -> int:
    """Torch threads per run when ``jobs`` runs share this machine: the cores split between
    them, at least one."""
    return max(1, cores() // max(jobs, 1))


def _init_worker(threads: int, env: dict[str, str]) -> None:
    """A local worker's start: the sweep's environment (the fork server's may be older), torch's
    threads, the registries (plugins) loaded once."""
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    from bench.registry import load_plugins

    load_plugins()
    import bench.run.engine  # noqa: F401  (imported once, before the first run)


@dataclass
class SweepSummary:
    total: int
    already_done: int
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r["status"] == status)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] == "failed"]


def pending(runs: list[RunSpec], results_dir: Path, retry_failed: bool = True
            ) -> list[RunSpec]:
    """The runs without a valid record — and, with ``retry_failed``, those whose record says
    ``failed`` or ``diverged``. A lock left beside a done run's record by a process that is gone
    (``kill -9`` between writing the record and releasing the lock) is removed."""
    todo = []
    for run in runs:
        record = find_record(results_dir, run.profile, run.scenario, run.display, run.seed,
                             run.config_hash)
        if record is None or (retry_failed and record["status"] != "ok"):
            todo.append(run)
        else:
            _remove_stale_lock(record_path(results_dir, run.profile, run.scenario, run.display,
                                           run.seed, run.config_hash))
    return todo


def _remove_stale_lock(record: Path) -> None:
    lock = record.with_name(record.name + ".lock")
    if not lock.exists():
        return
    try:
        if claim(lock):  # taken over only when its owner is gone, then removed
            release(lock)
    except OSError:  # a read-only results folder: nothing to clean from here
        pass


def execute(runs: list[RunSpec], results_dir: Path, jobs: int = 1,
            on_result: Callable[[dict[str, Any]], None] | None = None,
            backend: Any = "local", backend_options: dict[str, Any] | None = None,
            progress_runs: bool = False, retry_failed: bool = True,
            threads: int | None = None) -> SweepSummary:
    """Run every pending run of ``runs``: in this process (``jobs=1``) or in ``jobs`` local
    worker processes (``backend="local"``), or on a distributed engine (``"dask"``, ``"ray"``,
    ``"slurm"`` with ``backend_options``, or a :class:`bench.run.backends.Backend` instance; see
    :mod:`bench.run.backends`). Runs whose record says ``failed`` or ``diverged`` run again
    unless ``retry_failed`` is False. ``threads``: torch threads per local run (default:
    :func:`default_threads` of the workers started: every core with one job, whatever the
    calling process had set)."""
    todo = pending(runs, results_dir, retry_failed)
    summary = SweepSummary(total=len(runs), already_done=len(runs) - len(todo))
    start = time.perf_counter()

    def collect(res: dict[str, Any]) -> None:
        summary.results.append(res)
        if on_result:
            on_result(res)

    if backend != "local":
        engine = (get_backend(backend, jobs=jobs, **(backend_options or {}))
                  if isinstance(backend, str) else backend)
        for res in engine.run(todo, str(Path(results_dir).resolve()), progress_runs):
            collect(res)
    elif jobs <= 1 or len(todo) <= 1:
        import torch

        previous = torch.get_num_threads()
        per_run = threads or default_threads(1)  # all cores, as a Dask or Ray worker of one
        try:
            for run in todo:
                collect(run_one(run, str(results_dir), per_run, progress_runs))
        finally:
            torch.set_num_threads(previous)
    else:
        from bench.run.pool import SWEEP_PRELOAD, serve

        workers = min(jobs, len(todo))
        per_run = threads or default_threads(workers)
        folder = str(results_dir)

        def lost(run: RunSpec, error: str, started_at: float, seconds: float
                 ) -> dict[str, Any]:
            return record_lost(run, folder, error, per_run, started_at, round(seconds, 3))

        task = functools.partial(run_one, results_dir=folder, threads=per_run,
                                 progress=progress_runs)
        with contextlib.closing(serve(todo, task, workers, lost, _init_worker,
                                      (per_run, dict(os.environ)), SWEEP_PRELOAD)) as results:
            for res in results:
                collect(res)
    summary.wall_time_s = time.perf_counter() - start
    return summary

"""Execute a plan: skip runs whose record exists, run the rest (joblib), write one record each.

Each worker writes its own record as soon as its run ends, so interrupting a sweep loses only
the runs in flight; running the same command again resumes. A run is claimed with an atomic lock
file (``O_CREAT | O_EXCL``) so that two sweeps on one results folder never run it twice; a lock
whose process is gone is taken over.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.plan import RunSpec
from bench.records import find_record, record_path, write_json_atomic

REPO = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("LibMTL", "timm", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------- locking
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(lock: Path) -> bool:
    """Atomically create ``lock``; take it over when its owner process is dead."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
            except (OSError, ValueError):
                host, pid = "", "0"
            if host == socket.gethostname() and not _pid_alive(int(pid)):
                try:
                    os.unlink(lock)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return True
    return False


def release(lock: Path) -> None:
    try:
        os.unlink(lock)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- one run
def run_one(run: RunSpec, results_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train one run in this process and write its record; returns a short summary."""
    import torch

    from bench.engine import DivergedError, param_scaling, run_config

    if threads:
        torch.set_num_threads(threads)
    cfg_hash = run.config_hash
    path = record_path(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                       cfg_hash)
    lock = path.with_name(path.name + ".lock")
    if find_record(Path(results_dir), run.profile, run.scenario, run.display, run.seed, cfg_hash):
        return {"status": "skipped", "label": run.display, "scenario": run.scenario}
    if not claim(lock):
        return {"status": "busy", "label": run.display, "scenario": run.scenario}
    try:
        record: dict[str, Any] = {
            "kind": "run",
            "method": run.method,
            "label": run.display,
            "ablation": run.ablation,
            "scenario": run.scenario,
            "seed": run.seed,
            "profile": run.profile,
            "config": run.config,
            "config_hash": cfg_hash,
            "versions": versions(),
            "host": {"platform": platform.platform(), "threads": torch.get_num_threads()},
            "metrics": {},
            "trainable_params": None,
            "total_params": None,
            "wall_time_s": None,
        }
        start = time.perf_counter()
        try:
            result, wall = run_config(run.config)
            record.update(
                status="ok",
                metrics={"val": result.val_metrics, "test": result.test_metrics},
                best_epoch=result.best_epoch,
                epochs=result.epochs,
                steps=result.steps,
                trainable_params=result.trainable_params,
                total_params=result.total_params,
                param_breakdown=result.param_breakdown,
                forward_mode=result.forward_mode,
                history=result.history,
                tasks=result.tasks,
                wall_time_s=round(wall, 3),
                param_scaling=param_scaling(run.config),
            )
        except DivergedError as err:
            record.update(status="diverged", diverged_at_step=err.step, error=str(err),
                          wall_time_s=round(time.perf_counter() - start, 3))
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
            record.update(status="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=20),
                          wall_time_s=round(time.perf_counter() - start, 3))
        write_json_atomic(path, record)
        return {"status": record["status"], "label": run.display, "scenario": run.scenario,
                "seed": run.seed, "error": record.get("error"),
                "wall_time_s": record["wall_time_s"]}
    finally:
        release(lock)


# ---------------------------------------------------------------- a sweep
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


def pending(runs: list[RunSpec], results_dir: Path) -> list[RunSpec]:
    return [r for r in runs if find_record(results_dir, r.profile, r.scenario, r.display, r.seed,
                                           r.config_hash) is None]


def execute(runs: list[RunSpec], results_dir: Path, jobs: int = 1,
            on_result: Callable[[dict[str, Any]], None] | None = None) -> SweepSummary:
    """Run every pending run of ``runs`` with ``jobs`` joblib workers."""
    todo = pending(runs, results_dir)
    summary = SweepSummary(total=len(runs), already_done=len(runs) - len(todo))
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(jobs, 1))
    if jobs <= 1 or len(todo) <= 1:
        import torch

        previous = torch.get_num_threads()
        try:
            for run in todo:
                res = run_one(run, str(results_dir), threads if jobs > 1 else None)
                summary.results.append(res)
                if on_result:
                    on_result(res)
        finally:
            torch.set_num_threads(previous)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
        for res in parallel(delayed(run_one)(run, str(results_dir), threads) for run in todo):
            summary.results.append(res)
            if on_result:
                on_result(res)
    summary.wall_time_s = time.perf_counter() - start
    return summary

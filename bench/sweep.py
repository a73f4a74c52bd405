"""Execute a plan: skip runs whose record exists, run the rest (joblib), write one record each.

Each worker writes its own record as soon as its run ends, so interrupting a sweep loses only
the runs in flight; running the same command again resumes. A run is claimed with an atomic lock
file (created complete with ``os.link``, which fails when the lock exists) so that two sweeps on
one results folder never run it twice; a lock whose process is gone (same host, dead pid or a
reused pid with another start time) is taken over. Whoever holds a run's lock removes the
temporary files an interrupted write of that record left behind.

``execute`` runs the pending runs locally (joblib) or on a distributed engine
(:mod:`bench.backends`: Dask, Ray, Slurm through submitit); every backend calls :func:`run_one`,
which writes the record itself.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
import uuid
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
    """Whether process ``pid`` runs on this host (a zombie, dead but not reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
    except (OSError, ValueError):
        return True


def _start_time(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), "" when unknown: told apart
    from a later process that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return ""


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}".strip()


#: an unreadable lock (not written by this module, which creates it complete) is stale after this
GARBLED_LOCK_GRACE_S = 10.0


def _is_stale(content: str, lock: Path) -> bool:
    parts = content.split()
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        try:
            return time.time() - lock.stat().st_mtime > GARBLED_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return False  # another machine's process: cannot be checked from here
    if not _pid_alive(pid):
        return True
    started = parts[2] if len(parts) == 3 else ""
    return bool(started) and started != _start_time(pid)


def claim(lock: Path) -> bool:
    """Atomically create ``lock`` naming this process; take it over when its owner is dead.

    The lock is written to a private file first and hard-linked into place, so it never exists
    half-written. A stale lock is first renamed to a private name (only one taker succeeds); if
    what was renamed is no longer the stale lock (another process took it over in between), it
    is put back and the claim fails.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = _lock_owner()
    mine = lock.with_name(f"{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        mine.write_text(me)
        for _ in range(3):
            try:
                os.link(mine, lock)
                return True
            except FileExistsError:
                pass
            try:
                content = lock.read_text()
            except FileNotFoundError:
                continue  # released in between: try again
            if not _is_stale(content, lock):
                return False
            tomb = lock.with_name(f"{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
            try:
                os.rename(lock, tomb)
            except FileNotFoundError:
                continue
            if tomb.read_text() != content:  # a fresh lock was taken: give it back
                with contextlib.suppress(FileExistsError):
                    os.link(tomb, lock)
                tomb.unlink()
                return False
            tomb.unlink()
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            mine.unlink()


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    try:
        if lock.read_text() == _lock_owner():
            os.unlink(lock)
    except FileNotFoundError:
        pass


def _remove_orphan_temp_files(path: Path) -> None:
    """Temporary files of ``path`` left by an interrupted write (the caller holds the lock), and
    lock candidates (``<lock>.<pid>.<id>.new|stale``) of dead processes."""
    orphans = list(path.parent.glob(f".{path.name}.*.tmp"))
    for pattern in (f"{path.name}.lock.*.new", f"{path.name}.lock.*.stale"):
        for cand in path.parent.glob(pattern):
            pid = cand.name[len(path.name) + len(".lock."):].split(".")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                orphans.append(cand)
    for tmp in orphans:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# ---------------------------------------------------------------- one run
def run_one(run: RunSpec, results_dir: str, threads: int | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Train one run in this process and write its record; returns a short summary.

    ``threads`` sets torch's intra-op threads; ``progress`` shows a per-run step bar on stderr.
    A record that cannot be written (e.g. a full disk) leaves no partial file; the summary then
    says ``failed`` with the error.
    """
    import torch

    from bench.engine import DivergedError, param_scaling, run_config

    if threads:
        torch.set_num_threads(threads)
    cfg_hash = run.config_hash
    path = record_path(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                       cfg_hash)
    lock = path.with_name(path.name + ".lock")
    short = {"label": run.display, "scenario": run.scenario, "seed": run.seed}

    def done() -> bool:
        return find_record(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                           cfg_hash) is not None

    if done():
        return {"status": "skipped", **short}
    try:
        claimed = claim(lock)
    except OSError as err:  # e.g. a full disk or a read-only results folder
        return {"status": "failed", **short, "wall_time_s": None,
                "error": f"cannot create the run's lock ({type(err).__name__}: {err})"}
    if not claimed:
        return {"status": "busy", **short}
    try:
        if done():  # finished by another sweep between the check and the claim
            return {"status": "skipped", **short}
        _remove_orphan_temp_files(path)
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
            with _step_bar(run, progress) as step_cb:
                result, wall = run_config(run.config, step_cb)
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
        try:
            write_json_atomic(path, record)
        except OSError as err:  # e.g. ENOSPC: nothing partial is left, the sweep goes on
            return {"status": "failed", **short, "wall_time_s": record["wall_time_s"],
                    "error": f"record not written ({type(err).__name__}: {err}); "
                             f"the run itself ended {record['status']}"}
        return {"status": record["status"], **short, "error": record.get("error"),
                "diverged_at_step": record.get("diverged_at_step"),
                "wall_time_s": record["wall_time_s"]}
    finally:
        release(lock)


@contextlib.contextmanager
def _step_bar(run: RunSpec, enabled: bool) -> Any:
    """A tqdm bar of the run's training steps on stderr (``--progress-runs``), else nothing."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=f"{run.display}/{run.scenario}/seed{run.seed}", unit="step", leave=False,
               dynamic_ncols=True, file=sys.stderr)

    def callback(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    try:
        yield callback
    finally:
        bar.close()


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
            on_result: Callable[[dict[str, Any]], None] | None = None,
            backend: Any = "local", backend_options: dict[str, Any] | None = None,
            progress_runs: bool = False) -> SweepSummary:
    """Run every pending run of ``runs``: with ``jobs`` joblib workers (``backend="local"``) or
    on a distributed engine (``"dask"``, ``"ray"``, ``"slurm"`` with ``backend_options``, or a
    :class:`bench.backends.Backend` instance; see :mod:`bench.backends`)."""
    todo = pending(runs, results_dir)
    summary = SweepSummary(total=len(runs), already_done=len(runs) - len(todo))
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(jobs, 1))

    def collect(res: dict[str, Any]) -> None:
        summary.results.append(res)
        if on_result:
            on_result(res)

    if backend != "local":
        from bench.backends import get_backend

        engine = (get_backend(backend, jobs=jobs, **(backend_options or {}))
                  if isinstance(backend, str) else backend)
        for res in engine.run(todo, str(Path(results_dir).resolve()), progress_runs):
            collect(res)
    elif jobs <= 1 or len(todo) <= 1:
        import torch

        previous = torch.get_num_threads()
        try:
            for run in todo:
                collect(run_one(run, str(results_dir), threads if jobs > 1 else None,
                                progress_runs))
        finally:
            torch.set_num_threads(previous)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
        for res in parallel(delayed(run_one)(run, str(results_dir), threads, progress_runs)
                            for run in todo):
            collect(res)
    summary.wall_time_s = time.perf_counter() - start
    return summary

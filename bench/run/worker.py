"""One run in a worker process: claim its lock, train it, write its record atomically.

Every backend (local worker processes, Dask, Ray, Slurm) calls :func:`run_one`, so records,
resume and locking are the same everywhere. A record that cannot be written (e.g. a full disk)
leaves no partial file; the summary then says ``failed`` with the error. A local worker that dies
in a run (``kill -9``, the out-of-memory killer) leaves the run to :func:`record_lost`, called by
the sweep: a ``failed`` record, retried by the next identical command.

``$BENCH_TEST_FAULT`` injects faults at fixed points of a run, for the fault tests only
(:func:`fault_point`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.models.method import method_family
from bench.records import (
    find_record,
    read_record,
    record_path,
    record_problem,
    write_json_atomic,
)
from bench.run.locks import claim, release, remove_orphan_temp_files
from bench.run.plan import RunSpec

REPO = Path(__file__).resolve().parents[2]


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
    out.update(cpu_and_blas())
    return out


def cpu_and_blas() -> dict[str, str]:
    """What floating-point results depend on beyond the versions: the CPU model, the instruction
    set torch dispatches to (``torch.backends.cpu.get_cpu_capability()``) and the BLAS / oneDNN
    builds (``torch.__config__``). Recorded in ``versions``, outside the config hash: on another
    CPU the same config gives close but not identical numbers (README, Reproducibility)."""
    import torch

    config = torch.__config__.show()
    found = re.search(r"\bBLAS_INFO=([\w.-]+)", config)
    blas = found.group(1) if found else "unknown"
    library = next((line.strip(" -") for line in config.splitlines()
                    if "Math Kernel Library" in line or "OpenBLAS" in line), "")
    onednn = next((line.strip(" -") for line in config.splitlines() if "MKL-DNN" in line
                   or "oneDNN" in line), "absent")
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return {"cpu": _cpu_model(), "cpu_capability": capability,
            "blas": f"{blas}: {library}" if library else blas,
            "onednn": onednn.split(" (Git")[0]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_one(run: RunSpec, results_dir: str, threads: int | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Train one run in this process and write its record; returns a short summary.

    ``threads`` sets torch's intra-op threads; ``progress`` shows a per-run step bar on stderr.
    A record that cannot be written (e.g. a full disk) leaves no partial file; the summary then
    says ``failed`` with the error.
    """
    import torch

    from bench.run.engine import DivergedError, param_scaling, run_config

    if threads:
        torch.set_num_threads(threads)
    cfg_hash = run.config_hash
    path = record_path(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                       cfg_hash)
    lock = path.with_name(path.name + ".lock")
    short = {"label": run.display, "scenario": run.scenario, "seed": run.seed}

    def done() -> bool:  # a failed or diverged record is retried (unless not planned)
        found = find_record(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                            cfg_hash)
        return found is not None and found["status"] == "ok"

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
        remove_orphan_temp_files(path)
        record = _record_head(run, torch.get_num_threads(), earlier_attempts(path))
        fault_point("train", run)
        start = time.perf_counter()
        try:
            with _step_bar(run, progress) as step_cb:
                result, wall = run_config(run, step_cb)
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
                selection=result.selection,
                oracle_subset=result.oracle_subset,
                wall_time_s=round(wall, 3),
                param_scaling=param_scaling(run),
            )
        except DivergedError as err:
            record.update(status="diverged", diverged_at_step=err.step, error=str(err),
                          wall_time_s=round(time.perf_counter() - start, 3))
        except Exception as err:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
            record.update(status="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc(limit=20),
                          wall_time_s=round(time.perf_counter() - start, 3))
        problem = record_problem(json.loads(json.dumps(record, default=str)))
        if problem and record["status"] == "ok":  # e.g. a NaN test metric: not a finished run
            record.update(status="failed", error=f"the run's record is invalid: {problem}")
        try:
            write_json_atomic(path, record)
        except OSError as err:  # e.g. ENOSPC: nothing partial is left, the sweep goes on
            return {"status": "failed", **short, "wall_time_s": record["wall_time_s"],
                    "error": f"record not written ({type(err).__name__}: {err}); "
                             f"the run itself ended {record['status']}"}
        fault_point("written", run)
        return {"status": record["status"], **short, "error": record.get("error"),
                "diverged_at_step": record.get("diverged_at_step"),
                "wall_time_s": record["wall_time_s"]}
    finally:
        release(lock)


def _record_head(run: RunSpec, threads: int, attempts: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    """The fields of a run's record known before it trains (``threads``: torch's intra-op
    threads of the run, recorded in ``host``, outside the config hash)."""
    return {
        "kind": "run",
        "method": run.method,
        "label": run.display,
        "ablation": run.ablation,
        "scenario": run.scenario,
        "seed": run.seed,
        "profile": run.profile,
        "config": run.config,
        "config_hash": run.config_hash,
        # outside the config: a family groups rows in tables and never changes a result
        "family": method_family(run.method),
        "versions": versions(),
        "host": {"platform": platform.platform(), "threads": threads},
        "metrics": {},
        "trainable_params": None,
        "total_params": None,
        "wall_time_s": None,
        **({"attempts": attempts} if attempts else {}),
    }


def record_lost(run: RunSpec, results_dir: str, error: str, threads: int,
                started_at: float, wall_time_s: float | None = None) -> dict[str, Any]:
    """Record a run whose worker process died in it (``kill -9``, the out-of-memory killer) and
    return its summary: a ``failed`` record with ``error``, which the next identical command
    retries (keeping it in ``attempts``). Called by the sweep, not in the dead worker: the dead
    process's lock is taken over (:func:`bench.run.locks.claim`) and removed. When the worker
    died after writing the run's record (between the write and the lock's release: the record
    is ``ok`` or newer than ``started_at``, the ``time.time()`` the run was handed to the
    worker), the record stays as it is and its status is returned; only the lock is removed."""
    path = record_path(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                       run.config_hash)
    lock = path.with_name(path.name + ".lock")
    short = {"label": run.display, "scenario": run.scenario, "seed": run.seed}
    try:
        claimed = claim(lock)
    except OSError as err:
        return {"status": "failed", **short, "wall_time_s": wall_time_s,
                "error": f"{error}; no record ({type(err).__name__}: {err})"}
    if not claimed:  # another sweep took the run over meanwhile: it records it
        return {"status": "failed", **short, "wall_time_s": wall_time_s, "error": error}
    try:
        found = find_record(Path(results_dir), run.profile, run.scenario, run.display, run.seed,
                            run.config_hash)
        # file times come from a coarse clock, a few ms behind time.time(): a second's margin
        if found is not None and (found["status"] == "ok" or _mtime(path) > started_at - 1.0):
            return {"status": found["status"], **short, "error": found.get("error"),
                    "diverged_at_step": found.get("diverged_at_step"),
                    "wall_time_s": found["wall_time_s"]}
        remove_orphan_temp_files(path)
        record = _record_head(run, threads, earlier_attempts(path))
        record.update(status="failed", error=error, wall_time_s=wall_time_s)
        try:
            write_json_atomic(path, record)
        except OSError as err:  # e.g. ENOSPC: nothing partial is left, the sweep goes on
            error = f"{error}; record not written ({type(err).__name__}: {err})"
        return {"status": "failed", **short, "error": error, "wall_time_s": wall_time_s}
    finally:
        release(lock)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


#: test-only fault injection (``tests/test_faults.py``): comma-separated
#: ``ACTION:POINT:LABEL:SEED`` items (``*`` matches any label or seed). POINT is ``train`` (the
#: run's lock held, nothing written yet) or ``written`` (its record written, the lock not yet
#: released); ACTION is ``kill`` (SIGKILL this process) or ``block`` (create
#: ``$BENCH_TEST_FAULT_DIR/<pid>-<label>-seed<seed>`` and wait until ``release`` exists there)
FAULT_ENV = "BENCH_TEST_FAULT"
FAULT_DIR_ENV = "BENCH_TEST_FAULT_DIR"


def fault_point(point: str, run: RunSpec) -> None:
    """Apply the ``$BENCH_TEST_FAULT`` items that match ``point`` and ``run`` (none is set
    outside the fault tests)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        action, where, label, seed = (item.split(":") + ["*", "*", "*"])[:4]
        if where != point or label not in ("*", run.display) or seed not in ("*", str(run.seed)):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "block":
            folder = Path(os.environ[FAULT_DIR_ENV])
            (folder / f"{os.getpid()}-{run.display}-seed{run.seed}").touch()
            while not (folder / "release").exists():  # until released, or killed
                time.sleep(0.02)


def earlier_attempts(path: Path) -> list[dict[str, Any]]:
    """What the record this run replaces says: its own earlier attempts, then its status and
    error (a failed or diverged run being retried), or the problem of an invalid record."""
    record, problem = read_record(path)
    if problem:
        return [{"status": "invalid", "error": problem}]
    if record is None:
        return []
    keep = ("status", "error", "traceback", "diverged_at_step", "wall_time_s")
    last = {key: record[key] for key in keep if record.get(key) is not None}
    last["git_commit"] = record["versions"].get("git_commit", "unknown")
    return [*record.get("attempts", []), last]


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

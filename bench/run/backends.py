"""Distributed backends of a sweep: the same plan on Dask, Ray or Slurm (through submitit).

No scheduler of our own: each backend hands one task per pending run to an existing engine and
yields the runs' summaries as they finish. Every task calls :func:`bench.run.worker.run_one`, which
claims the run's lock and writes its record itself, so the one-record-per-run, atomic-write and
lock semantics are those of a local sweep, and the results folder must be on a file system that
all workers see (it is passed to them as an absolute path).

* ``dask`` — ``dask.distributed``: the scheduler at ``--scheduler tcp://host:8786``, or a
  ``LocalCluster`` of ``--jobs`` single-threaded process workers.
* ``ray`` — ``ray.init(address=--scheduler)`` (e.g. ``auto`` or ``ray://host:10001``), or a
  local Ray with ``--jobs`` CPUs; one CPU per task.
* ``slurm`` — a ``submitit`` job array (partition, time limit, GPUs per job, CPUs per task from
  flags or a JSON/TOML config file); ``cluster = "local"`` in the config runs the same jobs with
  submitit's local executor (subprocesses), which is what the tests do.

The packages are optional: ``pip install "mtl-hetero-bench[distributed]"``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.run.plan import RunSpec

BACKENDS = ("local", "dask", "ray", "slurm")
INSTALL_HINT = 'pip install "mtl-hetero-bench[distributed]"'


class BackendUnavailable(ValueError):
    """The backend's package is missing or its options are wrong (a one-line CLI error)."""


def _require(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailable(f"--backend {backend} needs the '{module.split('.')[0]}' "
                                 f"package ({err}); install it with: {INSTALL_HINT}") from None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: environment variables that change how a run loads its data or where it runs; a remote worker
#: gets the submitting process's values (local workers inherit them anyway)
FORWARDED_ENV = ("BENCH_DATA_ROOT", "BENCH_VERIFY_CHECKSUMS", "BENCH_DEVICE", "BENCH_PLUGIN_PATH")


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _apply_env(env: dict[str, str] | None) -> None:
    if env:
        os.environ.update(env)


def _lost(run: RunSpec, backend: str, err: BaseException) -> dict[str, Any]:
    """The summary of a task the engine lost (worker killed, job cancelled): no record."""
    return {"status": "failed", "label": run.display, "scenario": run.scenario,
            "seed": run.seed, "error": f"{backend} task lost ({type(err).__name__}: {err})"}


class Backend:
    """Runs :func:`bench.run.worker.run_one` for each run; ``run`` yields summaries as they end."""

    name = "base"

    def run(self, runs: list[RunSpec], results_dir: str, progress: bool = False
            ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


# ---------------------------------------------------------------- Dask
def _dask_task(run: RunSpec, results_dir: str, threads: int | None, progress: bool,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.run.worker import run_one

    _apply_env(env)
    if threads is None:  # a remote worker: split this machine's cores between its threads
        from dask.distributed import get_worker

        worker = get_worker()
        state = getattr(worker, "state", worker)
        threads = max(1, _cores() // max(1, int(getattr(state, "nthreads", 1))))
    return run_one(run, results_dir, threads, progress)


class DaskBackend(Backend):
    name = "dask"

    def __init__(self, jobs: int = 1, scheduler: str | None = None) -> None:
        self.distributed = _require("dask.distributed", self.name)
        self.jobs = max(1, jobs)
        self.scheduler = scheduler

    def run(self, runs: list[RunSpec], results_dir: str, progress: bool = False
            ) -> Iterator[dict[str, Any]]:
        if not runs:
            return
        dd = self.distributed
        cluster = None
        threads: int | None = None
        if self.scheduler:
            client = dd.Client(self.scheduler)
        else:
            cluster = dd.LocalCluster(n_workers=self.jobs, threads_per_worker=1, processes=True,
                                      dashboard_address=None)
            client = dd.Client(cluster)
            threads = max(1, _cores() // self.jobs)
        try:
            tag = uuid.uuid4().hex[:8]  # unique keys: a long-lived scheduler keeps old ones
            env = forwarded_env()
            futures = {client.submit(_dask_task, run, results_dir, threads, progress, env,
                                     key=f"{run.display}/{run.scenario}/seed{run.seed}-"
                                         f"{run.config_hash[:8]}-{tag}"): run
                       for run in runs}
            for future in dd.as_completed(list(futures)):
                try:
                    yield future.result()
                except Exception as err:  # noqa: BLE001 - a lost task is reported, not fatal
                    yield _lost(futures[future], self.name, err)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


# ---------------------------------------------------------------- Ray
def _ray_task(run: RunSpec, results_dir: str, progress: bool,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.run.worker import run_one

    _apply_env(env)
    return run_one(run, results_dir, 1, progress)  # one CPU per task


class RayBackend(Backend):
    name = "ray"

    def __init__(self, jobs: int = 1, scheduler: str | None = None) -> None:
        self.ray = _require("ray", self.name)
        self.jobs = max(1, jobs)
        self.scheduler = scheduler

    def run(self, runs: list[RunSpec], results_dir: str, progress: bool = False
            ) -> Iterator[dict[str, Any]]:
        if not runs:
            return
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            if self.scheduler:
                ray.init(address=self.scheduler, include_dashboard=False)
            else:
                ray.init(num_cpus=self.jobs, include_dashboard=False, log_to_driver=progress)
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
            env = forwarded_env()
            refs = {task.remote(run, results_dir, progress, env): run for run in runs}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                run = refs.pop(done[0])
                try:
                    yield ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - a lost task is reported, not fatal
                    yield _lost(run, self.name, err)
        finally:
            if started:
                ray.shutdown()


# ---------------------------------------------------------------- Slurm (submitit)
#: config-file keys -> submitit parameters (any key starting with ``slurm_`` passes verbatim)
SLURM_KEYS = {
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "gpus": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
}
#: config-file keys read by the backend itself
SLURM_OWN_KEYS = ("cluster", "log_dir", "time", "poll_s")


def parse_time(value: Any) -> int:
    """Minutes from a Slurm time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S`` (seconds round up)."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text)
    if not match or (match.group(1) is None and text.count(":") > 2):
        raise BackendUnavailable(f"--slurm-time takes minutes or Slurm's [D-]H:M:S, got {text!r}")
    days = int(match.group(1) or 0)
    parts = [int(x) for x in match.group(2).split(":")]
    if match.group(1) is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:  # M
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:  # M:S
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:  # H:M:S
        hours, minutes, seconds = parts
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    return max(1, total)


def load_slurm_config(path: str | Path | None) -> dict[str, Any]:
    """A JSON or TOML (Python >= 3.11) file of Slurm settings, ``{}`` without a path."""
    if not path:
        return {}
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BackendUnavailable(f"--slurm-config: cannot read {path}: {err}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
            data = data.get("slurm", data)
        else:
            data = json.loads(text)
    except (ValueError, ImportError) as err:
        raise BackendUnavailable(f"--slurm-config: {path} is not valid "
                                 f"{path.suffix.lstrip('.') or 'JSON'}: {err}") from None
    if not isinstance(data, dict):
        raise BackendUnavailable(f"--slurm-config: {path} must hold a table of settings")
    unknown = [k for k in data if k not in SLURM_KEYS and k not in SLURM_OWN_KEYS
               and not k.startswith("slurm_")]
    if unknown:
        raise BackendUnavailable(
            f"--slurm-config: unknown setting(s) {sorted(unknown)}; known: "
            f"{', '.join([*SLURM_KEYS, *SLURM_OWN_KEYS])} and any slurm_* parameter of submitit")
    return data


def _slurm_task(run: RunSpec, results_dir: str, threads: int, progress: bool,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.run.worker import run_one

    _apply_env(env)
    return run_one(run, results_dir, threads, progress)


class SlurmBackend(Backend):
    """A submitit job per run (a Slurm job array), ``--jobs`` of them at a time."""

    name = "slurm"

    def __init__(self, jobs: int = 1, partition: str | None = None, time: Any = None,
                 gpus: int | None = None, config: str | Path | None = None) -> None:
        self.submitit = _require("submitit", self.name)
        settings = load_slurm_config(config)
        for key, value in (("partition", partition), ("time", time), ("gpus", gpus)):
            if value is not None:
                settings[key] = value  # flags override the file
        self.cluster = str(settings.pop("cluster", "slurm"))
        if self.cluster not in ("slurm", "local", "debug"):
            raise BackendUnavailable(f"--slurm-config: cluster must be slurm, local or debug, "
                                     f"got {self.cluster!r}")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise BackendUnavailable(
                "--backend slurm: no Slurm here (sbatch not on PATH); set cluster = \"local\" "
                "in --slurm-config to run the same jobs with submitit's local executor")
        self.log_dir = settings.pop("log_dir", None)
        self.poll_s = float(settings.pop("poll_s", 10.0 if self.cluster == "slurm" else 0.5))
        self.jobs = max(1, jobs)
        params: dict[str, Any] = {"name": "mtl-bench", "cpus_per_task": 1}
        if "time" in settings:
            params["timeout_min"] = parse_time(settings.pop("time"))
        for key, value in settings.items():
            params[SLURM_KEYS.get(key, key)] = value
        if params.get("gpus_per_node") is not None:
            params["gpus_per_node"] = int(params["gpus_per_node"])
        self.threads = max(1, int(params["cpus_per_task"]))
        self.params = params

    def _executor(self, results_dir: str) -> Any:
        folder = Path(self.log_dir or Path(results_dir) / ".submitit") / "%j"
        executor = self.submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params = dict(self.params)
        if self.cluster == "slurm":
            params["slurm_array_parallelism"] = self.jobs
        else:  # slurm-only settings mean nothing to the local executor
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        executor.update_parameters(**params)
        return executor

    def run(self, runs: list[RunSpec], results_dir: str, progress: bool = False
            ) -> Iterator[dict[str, Any]]:
        if not runs:
            return
        executor = self._executor(results_dir)
        n = len(runs)
        env = forwarded_env()
        running: list[tuple[Any, RunSpec]] = []
        queue = list(runs)
        if self.cluster == "slurm":  # one array job; Slurm keeps --jobs of its tasks running
            jobs = executor.map_array(_slurm_task, runs, [results_dir] * n, [self.threads] * n,
                                      [progress] * n, [env] * n)
            running, queue = list(zip(jobs, runs)), []
        while running or queue:
            # the local executor starts whatever it is given: keep --jobs in flight ourselves
            while queue and len(running) < self.jobs:
                run = queue.pop(0)
                running.append((executor.submit(_slurm_task, run, results_dir, self.threads,
                                                progress, env), run))
            finished = [item for item in running if item[0].done()]
            if not finished:
                time.sleep(self.poll_s)
                continue
            for item in finished:
                running.remove(item)
                try:
                    yield item[0].result()
                except Exception as err:  # noqa: BLE001 - a lost job is reported, not fatal
                    yield _lost(item[1], self.name, err)


def get_backend(name: str, jobs: int = 1, scheduler: str | None = None,
                **slurm: Any) -> Backend:
    """The backend called ``name`` (not ``local``: :func:`bench.run.sweep.execute` runs that)."""
    if name == "dask":
        return DaskBackend(jobs, scheduler)
    if name == "ray":
        return RayBackend(jobs, scheduler)
    if name == "slurm":
        if scheduler:
            raise BackendUnavailable("--scheduler is for dask and ray; Slurm takes "
                                     "--slurm-partition/--slurm-time/--slurm-gpus/--slurm-config")
        return SlurmBackend(jobs, **slurm)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "DaskBackend", "RayBackend",
           "SlurmBackend", "get_backend", "load_slurm_config", "parse_time"]

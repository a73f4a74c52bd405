"""Faults a sweep must survive: kill -9 and resume, two sweeps on one folder, stale locks,
diverging and raising runs, corrupt records, a full disk; and identical records from the local,
Dask, Ray and submitit backends (all on the smoke profile)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.records import load_records, record_path
from bench.report import render
from bench.run.locks import _lock_owner, _pid_alive, claim
from bench.run.plan import make_run
from bench.run.sweep import execute
from bench.run.worker import run_one

SCENARIO = "digits_domains"
SMOKE = ["--scenario", SCENARIO, "--profile", "smoke", "--no-leaderboard"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """In-process sweeps on one torch thread: on 2 busy cores, 2 threads per run are many times
    slower (spinning OpenMP threads), and the worker processes use 1 thread each anyway."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != registry.PLUGIN_PATH_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # two sweeps (or workers) on 2 cores: no oversubscription
    return env


def _bench_cmd(results: Path, methods: str, seeds: str, jobs: int) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--method", methods, "--seeds", seeds,
            "--jobs", str(jobs), "--results-dir", str(results), *SMOKE]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files, locks and lock candidates: none may survive a finished sweep."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix in (".tmp", ".lock", ".new", ".stale"))


def _one_record_per_run(root: Path, expected: int) -> list[dict]:
    records, bad = load_records(root)
    assert not bad, bad
    keys = [(r["label"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) == expected
    assert len(list(root.rglob("*.json"))) == expected
    assert _leftovers(root) == []
    return records


# ---------------------------------------------------------------- kill -9, concurrency, locks
#: runs a sweep (``python KILLER POINT ARGS...``) that SIGKILLs itself at a fixed point: right
#: after writing its first record, before releasing that run's lock ("after_write"), or with its
#: second record's temporary file written but not yet renamed into place ("mid_write")
KILLER = """
import os, signal, sys
import bench.run.worker as worker

point, argv = sys.argv[1], sys.argv[2:]
if point == "after_write":
    worker.release = lambda lock: os.kill(os.getpid(), signal.SIGKILL)
else:
    real_replace, written = os.replace, []

    def replace(src, dst):
        if str(dst).endswith(".json"):
            written.append(dst)
            if len(written) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    os.replace = replace
from bench.cli import main
sys.exit(main(argv))
"""


@pytest.mark.parametrize("point", ["after_write", "mid_write"])
def test_kill_9_mid_sweep_then_resume(point: str, tmp_path: Path) -> None:
    """Deterministic: the sweep kills itself at a fixed point (no timing), leaving a finished
    record plus a stale lock beside it, or a partial write; the same command resumes, runs
    exactly the missing runs and cleans both."""
    results = tmp_path / "r"
    cmd = _bench_cmd(results, "hps,single_task", "0,1", jobs=1)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = subprocess.run([sys.executable, str(killer), point, *cmd[3:]], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = {p: p.read_bytes() for p in results.rglob("*.json")}
    assert len(finished) == 1
    left = [p.suffix for p in _leftovers(results)]
    assert left == ([".lock"] if point == "after_write" else [".tmp", ".lock"])
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 already done, 3 to run" in resumed.stderr
    records = _one_record_per_run(results, 4)  # no lock, temp file or candidate left
    assert all(r["status"] == "ok" for r in records)
    assert {p: p.read_bytes() for p in finished} == finished  # finished runs untouched


def test_a_stale_lock_beside_a_finished_record_is_removed(tmp_path: Path) -> None:
    run = make_run("hps", SCENARIO, 0, "smoke")
    assert run_one(run, str(tmp_path))["status"] == "ok"
    path = record_path(tmp_path, run.profile, run.scenario, run.display, run.seed,
                       run.config_hash)
    lock = path.with_name(path.name + ".lock")
    lock.write_text(f"{socket.gethostname()} {_dead_pid()}")  # killed before its release
    assert execute([run], tmp_path).already_done == 1
    assert not lock.exists()
    lock.write_text(_lock_owner())  # a live owner's lock is left alone
    execute([run], tmp_path)
    assert lock.exists()


def test_two_sweeps_at_once_run_each_run_once(tmp_path: Path) -> None:
    results = tmp_path / "r"
    cmd = _bench_cmd(results, "hps,single_task", "0,1,2", jobs=1)
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trained = 0
    for err in outputs:
        done_line = next(line for line in err.splitlines() if line.startswith("done in"))
        trained += int(done_line.split(": ", 1)[1].split(" ok")[0])
    assert trained == 6, outputs  # every run trained by exactly one of the two sweeps
    _one_record_per_run(results, 6)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_takes_over_locks_of_dead_processes_only(tmp_path: Path) -> None:
    host = socket.gethostname()
    lock = tmp_path / "a" / "run.json.lock"
    assert claim(lock) and lock.read_text() == _lock_owner()
    assert not claim(lock)  # held by a live process (this one)
    lock.write_text(f"{host} {_dead_pid()}")
    assert claim(lock), "a lock naming a dead pid is stale"
    assert lock.read_text() == _lock_owner()
    lock.write_text(f"{host} {os.getpid()} 1")  # our pid, reused: another start time
    assert claim(lock)
    lock.write_text(f"another-host {_dead_pid()}")
    assert not claim(lock), "another machine's lock cannot be checked: it is kept"
    lock.write_text("")  # garbled: stale only once older than the grace period
    assert not claim(lock)
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    assert claim(lock)
    assert sorted(p.name for p in lock.parent.iterdir()) == [lock.name]


def test_claim_treats_a_zombie_owner_as_dead(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 30
        while " Z " not in stat.read_text():  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.02)
        lock = tmp_path / "run.json.lock"
        lock.write_text(f"{socket.gethostname()} {proc.pid}")
        assert claim(lock)
    finally:
        proc.wait()


def test_claimed_run_removes_leftovers_of_an_interrupted_write(tmp_path: Path,
                                                                capsys) -> None:
    run = make_run("hps", SCENARIO, 0, "smoke")
    path = record_path(tmp_path, run.profile, run.scenario, run.display, run.seed,
                       run.config_hash)
    path.parent.mkdir(parents=True)
    partial = path.with_name(f".{path.name}.abc123.tmp")
    partial.write_text('{"method": "hps", "metr')  # killed mid-write
    lock = path.with_name(path.name + ".lock")
    dead = _dead_pid()
    lock.write_text(f"{socket.gethostname()} {dead}")
    candidate = path.with_name(f"{lock.name}.{dead}.0a1b2c3d.new")
    candidate.write_text("x")
    assert main(["results", "check", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"leftover: {partial} (partial write)" in out and f"leftover: {lock} (lock)" in out
    assert run_one(run, str(tmp_path))["status"] == "ok"
    _one_record_per_run(tmp_path, 1)


# ---------------------------------------------------------------- diverging and raising runs
FAULTY_PLUGIN = '''
"""Test methods that go wrong on seed 1 only: NaN loss at step 3, or an exception at step 1."""
import numpy as np
import torch
from bench.api import CompatWeighting, register_method, register_weighting

class Faulty(CompatWeighting):
    needs_task_gradients = False
    fault = "none"

    def backward(self, losses, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        total = losses.sum()
        if torch.initial_seed() == 1:  # seed_everything(seed) seeded torch with the run seed
            if self.fault == "nan" and self.calls == 3:  # step 2's update -> NaN at step 3
                total = total * float("nan")
            if self.fault == "raise" and self.calls == 2:
                raise RuntimeError("boom at step 1")
        total.backward()
        return np.ones(self.task_num)

class NanAt3(Faulty):
    fault = "nan"

class RaiseAt1(Faulty):
    fault = "raise"

register_weighting("nan_at_3", NanAt3, description="NaN at step 3 on seed 1")
register_weighting("raise_at_1", RaiseAt1, description="raises at step 1 on seed 1")
register_method("diverger", architecture="hps", weighting="nan_at_3", description="test")
register_method("crasher", architecture="hps", weighting="raise_at_1", description="test")
'''


@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One sweep of ``diverger``, ``crasher`` and ``hps`` on seeds 0 and 1."""
    root = tmp_path_factory.mktemp("faulty")
    (root / "plugins").mkdir()
    (root / "plugins" / "faulty_methods.py").write_text(textwrap.dedent(FAULTY_PLUGIN))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(registry.PLUGIN_PATH_ENV, str(root / "plugins"))
        err_file = root / "stderr.txt"
        saved = sys.stderr
        with err_file.open("w") as fh:
            sys.stderr = fh
            try:
                code = main(["run", "--method", "diverger,crasher,hps", "--scenario", SCENARIO,
                             "--seeds", "0,1", "--profile", "smoke", "--jobs", "1",
                             "--results-dir", str(root / "r"),
                             "--leaderboard", str(root / "lb.md")])
            finally:
                sys.stderr = saved
        records, bad = load_records(root / "r")
        yield {"code": code, "stderr": err_file.read_text(), "records": records, "bad": bad,
               "root": root, "leaderboard": (root / "lb.md").read_text()}


def _record(sweep: dict, label: str, seed: int) -> dict:
    return next(r for r in sweep["records"] if r["label"] == label and r["seed"] == seed)


def test_diverged_run_is_recorded_and_excluded_from_means(faulty_sweep: dict) -> None:
    bad = _record(faulty_sweep, "diverger", 1)
    assert bad["status"] == "diverged" and bad["diverged_at_step"] == 3
    assert "non-finite" in bad["error"]
    assert _record(faulty_sweep, "diverger", 0)["status"] == "ok"
    assert "diverged diverger on digits_domains seed 1 at step 3" in faulty_sweep["stderr"]
    text = faulty_sweep["leaderboard"]
    row = next(line for line in text.splitlines() if line.startswith("| diverger †"))
    assert row.endswith("| 1 |")  # one seed in the means
    assert "diverger: seed 1: diverged" in text
    # the means are those of the ok seed alone: the same row as without the diverged record
    root = faulty_sweep["root"]
    Path(bad["_path"]).rename(root / "set_aside.json")
    try:
        alone, _ = render(root / "r", root / "lb_alone.md")
    finally:
        (root / "set_aside.json").rename(bad["_path"])
    row_alone = next(line for line in alone.splitlines() if line.startswith("| diverger |"))
    assert row.replace(" †", "") == row_alone


def test_failed_run_is_recorded_sweep_goes_on_and_exits_1(faulty_sweep: dict) -> None:
    assert faulty_sweep["code"] == 1
    failed = _record(faulty_sweep, "crasher", 1)
    assert failed["status"] == "failed" and "RuntimeError: boom at step 1" in failed["error"]
    assert "Traceback" in failed["traceback"]
    assert len(faulty_sweep["records"]) == 6 and not faulty_sweep["bad"]
    assert {r["status"] for r in faulty_sweep["records"] if r["seed"] == 0} == {"ok"}
    err = faulty_sweep["stderr"]
    assert "FAILED crasher on digits_domains seed 1: RuntimeError: boom at step 1" in err
    assert "1 diverged, 1 failed" in err
    assert "  failed: crasher on digits_domains seed 1: RuntimeError: boom" in err
    assert "crasher: seed 1: failed" in faulty_sweep["leaderboard"]


def test_failed_and_diverged_runs_are_retried_keeping_their_errors(
        faulty_sweep: dict, tmp_path: Path, capsys) -> None:
    results = tmp_path / "r"
    shutil.copytree(faulty_sweep["root"] / "r", results)
    args = ["run", "--method", "diverger,crasher,hps", "--scenario", SCENARIO, "--seeds", "0,1",
            "--profile", "smoke", "--jobs", "1", "--results-dir", str(results),
            "--no-leaderboard"]
    assert main([*args, "--no-retry-failed"]) == 0
    assert "(6 already done, 0 to run)" in capsys.readouterr().err
    assert main(["results", "check", "--results-dir", str(results)]) == 1
    out = capsys.readouterr().out
    assert "6 valid records (1 diverged, 1 failed, 4 ok), 0 corrupt" in out
    assert "failed: " in out and "crasher/seed1-" in out and "RuntimeError: boom at step 1" in out
    assert "diverged: " in out and "loss became non-finite at step 3" in out
    assert main(args) == 1  # a rerun retries both (and they go wrong again)
    assert "(4 already done, 2 to run, 2 of them failed or diverged before: retried)" in \
        capsys.readouterr().err
    records, bad = load_records(results)
    assert not bad and len(records) == 6
    crasher = next(r for r in records if r["label"] == "crasher" and r["seed"] == 1)
    [earlier] = crasher["attempts"]
    assert earlier["status"] == "failed" and earlier["error"] == "RuntimeError: boom at step 1"
    assert "Traceback" in earlier["traceback"] and earlier["git_commit"]
    diverger = next(r for r in records if r["label"] == "diverger" and r["seed"] == 1)
    assert [a["diverged_at_step"] for a in diverger["attempts"]] == [3]


# ---------------------------------------------------------------- damaged and unwritable records
def _small_sweep(results: Path, *extra: str) -> int:
    return main(["run", "--method", "hps", "--seeds", "0,1", "--jobs", "1", "--results-dir",
                 str(results), *SMOKE, *extra])


def test_truncated_record_is_reported_skipped_then_rerun(tmp_path: Path, capsys) -> None:
    results = tmp_path / "r"
    assert _small_sweep(results) == 0
    victim = sorted(results.rglob("*.json"))[0]
    intact = victim.read_text()
    victim.write_text(intact[: len(intact) // 2])
    capsys.readouterr()
    assert main(["results", "check", "--results-dir", str(results)]) == 1
    assert f"corrupt: {victim}" in capsys.readouterr().out
    assert main(["leaderboard", "--results-dir", str(results), "--output",
                 str(tmp_path / "lb.md")]) == 0
    assert f"warning: skipped {victim}" in capsys.readouterr().err
    assert _small_sweep(results) == 0  # a corrupt record is not a finished run: run again
    assert "1 to run" in capsys.readouterr().err
    assert json.loads(victim.read_text())["metrics"] == json.loads(intact)["metrics"]
    _one_record_per_run(results, 2)
    capsys.readouterr()
    assert main(["run", "--method", "hps", "--seeds", "0,1,2", "--jobs", "2", "--results-dir",
                 str(results), *SMOKE, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "plan: 3 runs (2 already done, 1 to run) with --jobs 2" in err
    assert "estimated cost of the 1 runs to do" in err
    assert [line.split()[0] for line in out.splitlines()] == ["done", "done", "todo"]
    _one_record_per_run(results, 2)  # a dry run writes nothing


def test_failed_write_leaves_no_partial_record(tmp_path: Path, monkeypatch, capsys) -> None:
    import bench.records.store

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bench.records.store.os, "fsync", disk_full)
    results = tmp_path / "r"
    assert _small_sweep(results) == 1
    err = capsys.readouterr().err
    assert "FAILED hps on digits_domains seed 0: record not written" in err
    assert "No space left on device" in err and "0 ok" in err
    assert list(results.rglob("*.json")) == [] and _leftovers(results) == []
    monkeypatch.undo()
    assert _small_sweep(results) == 0
    _one_record_per_run(results, 2)


# ---------------------------------------------------------------- progress and backends
def test_progress_runs_shows_a_step_bar(tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[int, int]] = []
    import bench.run.engine

    real = bench.run.engine.run_config

    def spy(config, progress=None):
        assert progress is not None

        def record_step(step: int, total: int) -> None:
            seen.append((step, total))
            progress(step, total)

        return real(config, record_step)

    monkeypatch.setattr(bench.run.engine, "run_config", spy)
    assert _small_sweep(tmp_path / "r", "--progress-runs") == 0
    assert seen[-1] == (4, 4) and len(seen) == 8  # 2 runs × 4 smoke steps


def test_backend_flag_errors_exit_2_before_anything_runs(tmp_path: Path, capsys) -> None:
    from bench.run.backends import parse_time

    results = tmp_path / "r"
    assert _small_sweep(results, "--slurm-partition", "gpu") == 2
    assert "--slurm-partition needs --backend slurm" in capsys.readouterr().err
    assert _small_sweep(results, "--backend", "ray", "--slurm-gpus", "1") == 2
    assert "--slurm-gpus needs --backend slurm" in capsys.readouterr().err
    assert _small_sweep(results, "--scheduler", "tcp://localhost:8786") == 2
    assert "--scheduler needs --backend dask or ray" in capsys.readouterr().err
    assert _small_sweep(results, "--backend", "dask", "--threads", "2") == 2
    assert "--threads needs --backend local" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _small_sweep(results, "--threads", "0")
    assert "--threads must be at least 1" in capsys.readouterr().err
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"partition": "gpu", "walltime": 5}))
    pytest.importorskip("submitit", reason="submitit not installed (the distributed extra)")
    assert _small_sweep(results, "--backend", "slurm", "--slurm-config", str(config)) == 2
    assert "unknown setting(s) ['walltime']" in capsys.readouterr().err
    assert not results.exists()
    assert [parse_time(t) for t in ("90", "5:30", "1:30:00", "2-0", "1-2:30")] == [
        90, 6, 90, 2880, 1590]


#: what must not depend on where a run executed
SAME = ("metrics", "best_epoch", "history", "trainable_params", "total_params", "config_hash",
        "param_scaling", "status")
BACKEND_RUNS = [("hps", 0), ("single_task", 1)]


def _comparable(root: Path) -> dict:
    records, bad = load_records(root)
    assert not bad
    return {(r["label"], r["seed"]): {k: r.get(k) for k in SAME} for r in records}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory):
    """The local records of the backend runs at a given torch thread count (a backend's worker
    may use another count than a local run, and the count changes float sums)."""
    made: dict[int, dict] = {}

    def at(threads: int) -> dict:
        if threads not in made:
            root = tmp_path_factory.mktemp(f"local{threads}")
            runs = [make_run(m, SCENARIO, s, "smoke") for m, s in BACKEND_RUNS]
            summary = execute(runs, root, jobs=1, threads=threads)
            assert summary.count("ok") == 2
            made[threads] = _comparable(root)
        return made[threads]

    return at


@pytest.mark.parametrize("backend", ["dask", "ray", "slurm"])
def test_backends_write_the_same_records_as_local(backend: str, local_reference: dict,
                                                  tmp_path: Path) -> None:
    module = {"dask": "dask.distributed", "ray": "ray", "slurm": "submitit"}[backend]
    pytest.importorskip(module, reason=f"{module} not installed (the distributed extra: "
                                       f"pip install 'mtl-hetero-bench[distributed]')")
    options: dict = {}
    if backend == "slurm":
        config = tmp_path / "slurm.toml"
        config.write_text(f'[slurm]\ncluster = "local"\ntime = "0:10:00"\n'
                          f'log_dir = "{tmp_path / "logs"}"\n')
        options = {"config": config}
    runs = [make_run(m, SCENARIO, s, "smoke") for m, s in BACKEND_RUNS]
    results = tmp_path / "r"
    seen: list[dict] = []
    # one worker / one job at a time: on 2 cores, starting processes (torch imports) dominates
    summary = execute(runs, results, jobs=1, on_result=seen.append, backend=backend,
                      backend_options=options)
    assert [r["status"] for r in summary.results] == ["ok", "ok"], summary.results
    assert len(seen) == 2
    got = _comparable(results)
    [threads] = {r["host"]["threads"] for r in load_records(results)[0]}
    reference = local_reference(threads)
    assert set(got) == set(reference)
    for run, fields in reference.items():
        for name, value in fields.items():
            assert got[run][name] == value, f"{run} {name} differs at {threads} threads"
    _one_record_per_run(results, 2)
    again = execute(runs, results, jobs=1, backend=backend, backend_options=options)
    assert again.already_done == 2 and again.results == []


def test_remote_tasks_get_the_submitters_data_settings(monkeypatch) -> None:
    """BENCH_DATA_ROOT & co. travel with every backend task (remote workers do not inherit the
    submitting shell's environment)."""
    from bench.run import backends, worker

    monkeypatch.setenv("BENCH_DATA_ROOT", "/data/on/the/cluster")
    monkeypatch.delenv("BENCH_DEVICE", raising=False)
    env = backends.forwarded_env()
    assert env["BENCH_DATA_ROOT"] == "/data/on/the/cluster" and "BENCH_DEVICE" not in env
    monkeypatch.delenv("BENCH_DATA_ROOT")
    seen: list[str | None] = []
    monkeypatch.setattr(worker, "run_one",
                        lambda *a, **k: seen.append(os.environ.get("BENCH_DATA_ROOT")) or {})
    for task, args in ((backends._slurm_task, (None, "r", 1, False, env)),
                       (backends._ray_task, (None, "r", False, env)),
                       (backends._dask_task, (None, "r", 1, False, env))):
        monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
        task(*args)
    assert seen == ["/data/on/the/cluster"] * 3


# ---------------------------------------------------------------- local worker processes
def test_local_workers_are_reused_and_a_killed_one_loses_its_item_only() -> None:
    """Deterministic: the item ``"die"`` SIGKILLs its worker. Every other item is done, by
    long-lived workers (2, plus one replacing the killed one); the lost item and the one that
    raised come back through ``on_lost`` with why."""
    from pool_tasks import whoami

    from bench.run.pool import serve

    lost: list[tuple[object, str]] = []

    def on_lost(item: object, error: str, started_at: float, seconds: float) -> tuple:
        assert started_at <= time.time() and seconds >= 0
        lost.append((item, error))
        return item, None

    items: list[object] = [0, 1, "die", 2, 3, "raise", 4, 5, 6, 7]
    results = list(serve(items, whoami, 2, on_lost))
    assert sorted(map(str, (item for item, _ in results))) == sorted(map(str, items))
    pids = {pid for _, pid in results if pid is not None}
    assert 1 <= len(pids) <= 3, pids  # 8 items done by at most 3 processes
    # in either order: a killed worker's end is seen once the kernel has torn it down, which
    # can take longer than the other worker needs for the next items (2, 3, "raise")
    why = dict(lost)
    assert len(lost) == 2 and set(why) == {"die", "raise"}
    assert "died in this run (killed by SIGKILL" in why["die"]
    assert why["raise"] == "the worker raised ValueError: asked to raise"
    assert not [p for p in pids if _pid_alive(p)], "workers stopped at the end"


def _sweep_cmd(results: Path, jobs: int, seeds: str = "0,1,2") -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--method", "hps", "--scenario", SCENARIO,
            "--seeds", seeds, "--profile", "smoke", "--jobs", str(jobs), "--results-dir",
            str(results), "--leaderboard", str(results.parent / "lb.md")]


def test_a_local_worker_killed_mid_sweep_fails_its_run_only(tmp_path: Path, capsys) -> None:
    """Deterministic (``$BENCH_TEST_FAULT``): of 2 workers, one SIGKILLs itself in the run of
    seed 1. The other's run goes on: seed 1 is recorded as failed (exit 1), the summary and the
    leaderboard are written, no lock is left; the next identical command retries seed 1 only."""
    from bench.run.sweep import default_threads

    results = tmp_path / "r"
    env = {**_env(), "BENCH_TEST_FAULT": "kill:train:hps:1"}
    env.pop("OMP_NUM_THREADS")  # the workers' threads come from the sweep
    done = subprocess.run(_sweep_cmd(results, 2, "0,1"), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "FAILED hps on digits_domains seed 1: local worker process" in done.stderr
    assert "died in this run (killed by SIGKILL" in done.stderr
    assert "done in" in done.stderr and "1 ok, 0 diverged, 1 failed" in done.stderr
    assert "hps: seed 1: failed" in (tmp_path / "lb.md").read_text()
    records = {r["seed"]: r for r in _one_record_per_run(results, 2)}  # and no lock left
    assert [records[s]["status"] for s in (0, 1)] == ["ok", "failed"]
    assert {r["host"]["threads"] for r in records.values()} == {default_threads(2)}
    assert main(_sweep_cmd(results, 2, "0,1")[3:]) == 0  # in this process: one run to do
    assert "(1 already done, 1 to run, 1 of them failed or diverged before: retried)" in \
        capsys.readouterr().err
    records = {r["seed"]: r for r in _one_record_per_run(results, 2)}
    assert records[1]["status"] == "ok"
    assert "killed by SIGKILL" in records[1]["attempts"][0]["error"]


def test_a_run_whose_worker_died_is_recorded_failed_unless_its_record_was_written(
        tmp_path: Path) -> None:
    """What the sweep records for a run whose worker died (:func:`record_lost`): a worker killed
    between writing the record and releasing its lock leaves the record as it is (its lock is
    removed); one killed in the run leaves a failed record, keeping an older one's error."""
    from bench.run.worker import record_lost

    done, lost = make_run("hps", SCENARIO, 0, "smoke"), make_run("hps", SCENARIO, 1, "smoke")
    assert run_one(done, str(tmp_path))["status"] == "ok"
    paths = [record_path(tmp_path, r.profile, r.scenario, r.display, r.seed, r.config_hash)
             for r in (done, lost)]
    written = paths[0].read_bytes()
    for path in paths:  # the dead workers' locks
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".lock").write_text(f"{socket.gethostname()} {_dead_pid()}")
    started = time.time() - 60
    assert record_lost(done, str(tmp_path), "died", 1, started)["status"] == "ok"
    assert paths[0].read_bytes() == written
    summary = record_lost(lost, str(tmp_path), "died (killed by SIGKILL)", 1, started, 2.5)
    assert summary["status"] == "failed" and summary["error"] == "died (killed by SIGKILL)"
    later = time.time() + 60  # handed over again after that record was written: it is older
    assert record_lost(lost, str(tmp_path), "died again", 1, later)["status"] == "failed"
    records = {r["seed"]: r for r in _one_record_per_run(tmp_path, 2)}  # no lock left
    assert records[1]["error"] == "died again" and records[1]["host"]["threads"] == 1
    assert [a["error"] for a in records[1]["attempts"]] == ["died (killed by SIGKILL)"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_the_sweep_like_ctrl_c(jobs: int, tmp_path: Path) -> None:
    """Deterministic: every run blocks at its start (``$BENCH_TEST_FAULT``, a file per run);
    once all are in flight, ``kill PID`` (SIGTERM) the sweep: it stops its workers (none left),
    writes no record, leaves no lock, says so in one line and exits 143."""
    results, flags = tmp_path / "r", tmp_path / "flags"
    flags.mkdir()
    env = {**_env(), "BENCH_TEST_FAULT": "block:train:*:*", "BENCH_TEST_FAULT_DIR": str(flags)}
    proc = subprocess.Popen(_sweep_cmd(results, jobs, "0,1"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(flags.iterdir())) < jobs:  # each worker inside a run, its lock held
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        in_runs = [int(p.name.split("-")[0]) for p in flags.iterdir()]
        assert len(list(results.rglob("*.lock"))) == jobs
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if "terminated" in line] == [
        "terminated (SIGTERM): the runs in flight were stopped and left no record; finished "
        "runs are saved; run the same command again to resume"]
    assert "Traceback" not in err
    assert not [pid for pid in in_runs if _pid_alive(pid)], "a worker was left running"
    assert list(results.rglob("*.json")) == [] and _leftovers(results) == []

"""Comparisons timed on whole processes: the start-up of instant commands, the peak memory of a
smoke run per method, and whole sweeps on one core and with ``--jobs 1`` against ``--jobs 2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.perf.rows import Goal, Row, explain, interleaved_times, ratio_row, spread

#: instant commands: (name, ``python -m bench`` arguments, goal in seconds); ``{results}`` and
#: ``{tmp}`` are filled in
STARTUP_COMMANDS: tuple[tuple[str, tuple[str, ...], Goal | None], ...] = (
    ("list methods", ("list", "methods"), Goal("<", 2.0)),
    ("--help", ("--help",), None),
    ("results check", ("results", "check", "--results-dir", "{results}"), None),
    ("leaderboard", ("leaderboard", "--results-dir", "{results}", "--output",
                     "{tmp}/leaderboard.md"), Goal("<", 5.0)),
)
#: the methods whose peak memory ``perf`` measures unless told otherwise (one per family of
#: cost: plain sharing, the gradient methods of the issue, task-specific encoders, experts)
MEMORY_METHODS = ("hps", "pcgrad", "mgda", "cagrad", "imtl", "gradnorm", "mtan", "mmoe",
                  "cross_stitch", "single_task")
#: what a start-up command does beyond the bare interpreter, named where its goal is missed
STARTUP_WORK = {
    "list methods": "importing the CLI and reading the plugin files' registrations from source",
    "leaderboard": "reading and validating every record, the statistics (scipy) and the "
                   "figures (matplotlib)",
}


def _seconds(cmd: list[str], cwd: Path | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, done.returncode


def startup_benchmark(repeats: int = 5, results_dir: Path = Path("results"),
                      commands: tuple[tuple[str, tuple[str, ...], Goal | None], ...] | None
                      = None) -> list[Row]:
    """Wall time of fresh ``python -m bench ...`` processes for each instant command, in
    interleaved rounds (every command, then the bare interpreter ``python -c pass``, in turn);
    a row per command: seconds, median [min, max], with the interpreter's own start-up.
    ``commands``: :data:`STARTUP_COMMANDS` by default."""
    commands = STARTUP_COMMANDS if commands is None else commands
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        filled = {name: [sys.executable, "-m", "bench",
                         *(a.format(results=results_dir, tmp=tmp) for a in args)]
                  for name, args, _ in commands}
        filled["python -c pass"] = [sys.executable, "-c", "pass"]
        codes: dict[str, set[int]] = {name: set() for name in filled}

        def start(name: str) -> None:
            codes[name].add(subprocess.run(filled[name], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL).returncode)

        times = interleaved_times({name: partial(start, name) for name in filled}, repeats,
                                  warmup=False)
    interpreter = spread(times["python -c pass"])[0]
    rows = []
    for name, _, goal in commands:
        med, low, high = spread(times[name])
        row = Row("start-up", f"python -m bench {name}", "fresh process, wall time", med, low,
                  high, repeats, "s", goal,
                  details={"interpreter s": interpreter, "exit codes": sorted(codes[name])})
        work = STARTUP_WORK.get(name, "importing the CLI")
        rows.append(explain(row, f"{work} (the bare interpreter alone takes "
                                 f"{interpreter:.2f} s here)"))
    return rows


def memory_benchmark(methods: tuple[str, ...] = MEMORY_METHODS, scenario: str = "digits_domains",
                     profile: str = "smoke", threads: int = 1) -> list[Row]:
    """Peak resident memory of one ``profile`` run of each method on ``scenario``, each in a
    child forked from one fresh interpreter that has loaded the engine and the data
    (:mod:`bench.perf.memory`); a row per method in MB, with its ratio to HPS's (informational:
    no goal, one measurement each)."""
    cmd = [sys.executable, "-m", "bench.perf.memory", scenario, profile, str(threads), *methods]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not results:
        raise RuntimeError(f"the memory probe failed: {done.stderr.strip()[-500:]}")
    reference = next((r["peak_mb"] for r in results if r["method"] == "hps"), None)
    rows = []
    for r in results:
        mb = r["peak_mb"]
        details = {"run s": round(r["seconds"], 2), "probe total s": round(elapsed, 1)}
        if r["baseline_mb"] is not None:
            details["parent at fork MB"] = round(r["baseline_mb"])
        if reference:
            details["vs hps"] = mb / reference
        limits = "" if r["exit"] == 0 else f"the run failed (exit {r['exit']}): not comparable"
        rows.append(Row("peak memory", f"{r['method']}: one {profile} run on {scenario}",
                        "peak RSS of the process", mb, mb, mb, 1, "MB", None, limits, details))
    return rows


#: the sweeps timed per workload, in this order each repeat: ``--jobs 1`` on one core (one
#: torch thread: the sweep of one core the scaling goal is against), ``--jobs 1`` with its
#: default threads (every core through torch's intra-op threads) and ``--jobs 2`` (two worker
#: processes of one thread each)
JOBS_VARIANTS: dict[str, tuple[str, ...]] = {
    "one core": ("--jobs", "1", "--threads", "1"),
    "--jobs 1": ("--jobs", "1"),
    "--jobs 2": ("--jobs", "2"),
}


@dataclass(frozen=True)
class JobsWorkload:
    """A sweep :func:`jobs_scaling_benchmark` times: its ``run`` arguments, the goal of the
    speed-up of ``--jobs 2`` over one core, and the :data:`JOBS_VARIANTS` it is timed with."""

    name: str
    args: tuple[str, ...]
    goal: Goal | None
    variants: tuple[str, ...] = tuple(JOBS_VARIANTS)


#: the sweeps of :func:`jobs_scaling_benchmark`. The default profile's is one seed of the
#: default sweep (``run --all`` is 5 seeds of the same 30 runs, 26.5 min with ``--jobs 2``):
#: every method on every scenario, so its mix of short and long runs is the sweep's, and its
#: fixed costs (start-up, planning, leaderboard) weigh 5 times more than in the whole sweep.
#: It is timed on one core and with ``--jobs 2`` only (~15 min a repeat).
JOBS_WORKLOADS: tuple[JobsWorkload, ...] = (
    JobsWorkload("run --all --profile smoke", ("--all", "--profile", "smoke"), Goal(">=", 1.8)),
    JobsWorkload("default profile, run --all --seeds 0 (30 runs)", ("--all", "--seeds", "0"),
                 Goal(">=", 1.7), ("one core", "--jobs 2")),
)
#: what keeps a sweep of two processes from twice the speed of one
JOBS_LIMITS = ("a sweep's fixed costs (the parent's start-up and planning, the workers' "
               "start-up, the leaderboard written at the end) do not shrink with --jobs")


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages, or ``None`` where the system has none."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def jobs_scaling_benchmark(repeats: int = 3,
                           workloads: tuple[JobsWorkload, ...] = JOBS_WORKLOADS) -> list[Row]:
    """Wall time of whole ``python -m bench run`` sweeps, each in a fresh results folder, the
    workload's variants interleaved in every repeat; a row or two per workload:

    * scaling: one core (``--jobs 1 --threads 1``) against ``--jobs 2``, the speed-up its goal
      bounds (what a second core buys a sweep);
    * where the workload times it, ``--jobs 1`` with torch's default threads (both cores through
      intra-op threads) against ``--jobs 2``: what processes buy over threads on the same cores
      (no goal).

    Each sweep is printed as it ends, with the load average before it (a shared machine is
    noisy)."""
    rows = []
    for work in workloads:
        times: dict[str, list[float]] = {v: [] for v in work.variants}
        for repeat in range(repeats):
            for variant in work.variants:
                with tempfile.TemporaryDirectory() as tmp:
                    load = load_average()
                    seconds, code = _seconds([sys.executable, "-m", "bench", "run", *work.args,
                                              *JOBS_VARIANTS[variant], "--results-dir",
                                              str(Path(tmp) / "r")])
                times[variant].append(seconds)
                note = "" if code == 0 else f" (exit {code})"
                print(f"  {work.name}: repeat {repeat + 1}, {variant}: {seconds:.1f} s{note}, "
                      f"load average before {load}", flush=True)
        scaling = ratio_row("jobs scaling", work.name, "one core (--jobs 1 --threads 1) vs "
                                                       "--jobs 2 wall time (speed-up)",
                            times["one core"], times["--jobs 2"], work.goal, unit_of_times="s")
        rows.append(explain(scaling, JOBS_LIMITS))
        if "--jobs 1" not in times:
            continue
        threads = ratio_row("jobs scaling", work.name, "--jobs 1 (both cores as torch threads) "
                                                       "vs --jobs 2 wall time (speed-up)",
                            times["--jobs 1"], times["--jobs 2"], unit_of_times="s")
        threads.limits = ("no goal: --jobs 1 already uses the second core through torch's "
                          "intra-op threads, so this is what two processes gain over two "
                          "threads")
        rows.append(threads)
    return rows

"""Peak memory of one smoke run per method, measured in a fresh interpreter:
``python -m bench.perf.memory SCENARIO PROFILE THREADS METHOD...`` imports the engine, loads the
scenario, then forks one child per method that trains one run (seed 0) and exits; the child's
peak resident set (``os.wait4``'s ``ru_maxrss``: the pages it touched of what the parent held at
the fork, plus what the run allocated) is printed as one JSON line per method.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _train_one(method: str, scenario: str, profile: str) -> int:
    """In the forked child: plan and train one run; its exit code (1 if it raised)."""
    try:
        from bench.run.engine import run_config
        from bench.run.plan import make_run

        run_config(make_run(method, scenario, 0, profile))
        return 0
    except Exception as err:  # noqa: BLE001 - reported by the parent as the row's problem
        print(f"{method}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1


def resident_mb() -> float | None:
    """This process's resident set now, in MB (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        for line in open("/proc/self/status"):  # noqa: SIM115 - a few lines, closed at exit
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(methods: list[str], scenario: str, profile: str, threads: int) -> list[dict]:
    """One result per method: peak RSS in MB, wall seconds, exit code, and what this process
    holds when it forks (``baseline_mb``: the interpreter, the engine and the data)."""
    import torch

    from bench.run.engine import load_scenario

    torch.set_num_threads(threads)  # before any parallel region: forking stays safe
    load_scenario(scenario, profile)
    results = []
    for method in methods:
        sys.stdout.flush()
        baseline = resident_mb()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: one run, then leave without the parent's exit handlers
            os._exit(_train_one(method, scenario, profile))
        _, status, usage = os.wait4(pid, 0)
        results.append({"method": method, "peak_mb": usage.ru_maxrss / 1024,
                        "seconds": time.perf_counter() - start,
                        "exit": os.waitstatus_to_exitcode(status), "baseline_mb": baseline})
    return results


def main(argv: list[str]) -> int:
    scenario, profile, threads, *methods = argv
    for result in measure(methods, scenario, profile, int(threads)):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

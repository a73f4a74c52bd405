"""``python -m bench``: list, run, leaderboard, results check, perf, data (check, download).

Errors a user can fix (unknown names, impossible combinations, bad flags) end with one line on
stderr naming the problem and the fix, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR", "results"))
DEFAULT_LEADERBOARD = Path("leaderboard.md")


class UsageError(Exception):
    """A problem with the command line; printed as one line, exit code 2."""


def _one_line(message: str) -> str:
    """``message`` on one line (a key or value typed with a newline stays visible, escaped)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def leaderboard_for(results_dir: Path, explicit: str | None) -> Path:
    """The leaderboard file of ``results_dir``: ``explicit`` when given, the project's
    ``leaderboard.md`` for the default results folder, else ``<results_dir>/leaderboard.md``
    (so that another folder's records never overwrite the project's table)."""
    if explicit:
        return Path(explicit)
    if Path(results_dir).resolve() == DEFAULT_RESULTS.resolve():
        return DEFAULT_LEADERBOARD
    return Path(results_dir) / "leaderboard.md"


def existing_results(results_dir: Path) -> Path:
    """``results_dir`` if it is a folder, else one line naming the nearest existing folder."""
    path = Path(results_dir)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"--results-dir {path} is a file, not a results folder")
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    hint = (f"did you mean --results-dir {parent / close[0]}?" if close
            else "`python -m bench run` writes records there")
    raise UsageError(f"no results folder {path}; {hint}")


def writable_folder(path: Path, flag: str) -> None:
    """Create ``path`` if needed and check that a file can be written in it; one line naming
    the flag to change otherwise (before any training)."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; name a folder with {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"{flag}: cannot write in {path} ({err.strerror or err}); choose a "
                         f"writable folder with {flag}") from None


def writable_file(path: Path, flag: str) -> None:
    """``path`` can be (over)written: its folder is writable and it is not a folder."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; name a file, e.g. {flag} "
                         f"{path / 'leaderboard.md'}")
    writable_folder(path.parent if str(path.parent) else Path("."), flag)


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    return seeds


def _overrides(items: list[str] | None) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE (e.g. arch.rank=8), got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# ------------------------------------------------------------------ list
def cmd_list(args: argparse.Namespace) -> int:
    from bench import registry
    from bench.models.registries import backbones
    from bench.run.ablations import ablations

    reg = {
        "backbones": backbones,
        "methods": registry.methods,
        "scenarios": registry.scenarios,
        "architectures": registry.architectures,
        "weightings": registry.weightings,
        "ablations": ablations,
    }[args.what]
    names = reg.list(args.pattern or "*")
    width = max((len(n) for n in names), default=0)
    for name in names:
        extra = ""
        if args.what == "scenarios":  # read from the plugin file's source: nothing built
            from bench.data.kinds import HETEROGENEITY_LABELS

            extra = f"[{HETEROGENEITY_LABELS[reg.attribute(name, 'heterogeneity')]}] "
        print(f"{name:<{width}}  {extra}{reg.describe(name)}")
    if not names:
        print(f"no {args.what} match {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    if args.backend == "local" and args.jobs > 1 and not args.dry_run:
        from bench.run.pool import SWEEP_PRELOAD, warm_up

        warm_up(SWEEP_PRELOAD)  # the workers' fork server imports torch while we plan
    from bench.run import plan as planning

    seeds = _seeds(args.seeds)
    methods = _csv(args.method)
    scenarios = _csv(args.scenario)
    overrides = _overrides(args.set)
    if args.search is not None:
        return _run_search(args, seeds, methods, scenarios, overrides)
    if args.ablation:
        the_plan = planning.expand_ablation(args.ablation, scenarios, seeds, args.profile)
    else:
        if not (args.all or methods or scenarios):
            raise UsageError("nothing to run: use --all, or --method a,b and/or --scenario x,y")
        the_plan = planning.expand(methods, scenarios, seeds, args.profile, run_all=args.all,
                                   require_data=not args.dry_run, overrides=overrides,
                                   suite=args.suite)
    if not the_plan.runs:
        raise UsageError("the plan is empty: no method applies to the chosen scenarios")
    results_dir, leaderboard, engine = _run_outputs(args)
    code, _ = _sweep(the_plan, args, results_dir, engine)
    if not args.dry_run and not args.no_leaderboard:
        _render(results_dir, leaderboard)
    return code


def _run_outputs(args: argparse.Namespace) -> tuple[Path, Path, Any]:
    """The results folder, the leaderboard file and the backend of ``run``, checked before
    anything is printed or trained (one line and exit 2 when unusable)."""
    results_dir = Path(args.results_dir)
    leaderboard = leaderboard_for(results_dir, args.leaderboard)
    engine = None
    if not args.dry_run:
        engine = _backend(args)
        writable_folder(results_dir, "--results-dir")
        if not args.no_leaderboard:
            writable_file(leaderboard, "--leaderboard")
    return results_dir, leaderboard, engine


def _sweep(the_plan: Any, args: argparse.Namespace, results_dir: Path, engine: Any,
           what: str = "plan", extra_estimate: list[Any] | None = None) -> tuple[int, Any]:
    """Announce ``the_plan`` (done / to run, skips, missing data and weights), then list it
    (``--dry-run``, with the estimated cost of the runs to do and of ``extra_estimate``) or run
    it with a progress bar; returns the exit code (1 when a run failed) and the summary."""
    from bench.run.pool import Terminated, sigterm_raises
    from bench.run.sweep import execute, pending

    retry = not args.no_retry_failed
    todo = pending(the_plan.runs, results_dir, retry)
    retried = len(todo) - len(pending(the_plan.runs, results_dir, False)) if retry else 0
    where = "" if args.backend == "local" else f" on {args.backend}"
    again = f", {retried} of them failed or diverged before: retried" if retried else ""
    print(f"{what}: {len(the_plan.runs)} runs ({len(the_plan.runs) - len(todo)} already done, "
          f"{len(todo)} to run{again}) with --jobs {args.jobs}{where}; results in "
          f"{results_dir}/", file=sys.stderr)
    for method, scenario, reason in the_plan.skipped:
        print(f"  skipped {method} on {scenario}: {reason}", file=sys.stderr)
    for scenario, problem in the_plan.missing_data:
        print(f"  data missing for {scenario}: its runs cannot start yet ({problem})",
              file=sys.stderr)
    by_problem: dict[str, list[str]] = {}
    for method, scenario, problem in the_plan.missing_weights:
        by_problem.setdefault(problem, []).append(f"{method} on {scenario}")
    for problem, pairs in by_problem.items():
        shown = ", ".join(pairs[:4]) + (f" and {len(pairs) - 4} more" if len(pairs) > 4 else "")
        print(f"  weights missing for {shown}: their runs cannot start yet ({problem})",
              file=sys.stderr)
    if args.dry_run:
        estimated = [*todo, *(extra_estimate or [])]
        notes = _print_estimate(estimated, results_dir, args) if estimated else {}
        for run in the_plan.runs:
            state = "todo" if run in todo else "done"
            note = f"  {notes[run]}" if run in notes else ""
            print(f"{state}  {run.profile:8} {run.scenario:16} {run.display:24} seed={run.seed} "
                  f"{run.config_hash[:12]}{note}")
        return 0, None
    from bench.run.progress import progress_bar

    bar = progress_bar(len(the_plan.runs), len(the_plan.runs) - len(todo))
    failures = 0

    def on_result(res: dict[str, Any]) -> None:
        nonlocal failures
        if res["status"] == "failed":
            failures += 1
            bar.write(f"FAILED {res['label']} on {res['scenario']} seed {res.get('seed')}: "
                      f"{res.get('error')}", file=sys.stderr)
        elif res["status"] == "diverged":
            bar.write(f"diverged {res['label']} on {res['scenario']} seed {res.get('seed')} "
                      f"at step {res.get('diverged_at_step')}", file=sys.stderr)
        bar.set_postfix_str(f"{res['label']}/{res['scenario']} failures={failures}")
        bar.update(1)

    start = time.perf_counter()
    try:
        with sigterm_raises():  # `kill PID`: stopped like Ctrl-C, exit code 143
            summary = execute(the_plan.runs, results_dir, jobs=args.jobs, on_result=on_result,
                              backend=engine, progress_runs=args.progress_runs,
                              retry_failed=retry,
                              threads=getattr(args, "threads", None))
    except Terminated:
        bar.close()
        print("terminated (SIGTERM): the runs in flight were stopped and left no record; "
              "finished runs are saved; run the same command again to resume", file=sys.stderr)
        raise SystemExit(143) from None
    bar.close()
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed / 60:.1f} min: {summary.count('ok')} ok, "
          f"{summary.count('diverged')} diverged, {summary.count('failed')} failed, "
          f"{summary.count('busy')} claimed by another sweep, "
          f"{summary.already_done + summary.count('skipped')} already done", file=sys.stderr)
    for res in summary.failures:
        print(f"  failed: {res['label']} on {res['scenario']} seed {res['seed']}: "
              f"{res['error']}", file=sys.stderr)
    return (1 if summary.failures else 0), summary


def _run_search(args: argparse.Namespace, seeds: list[int], methods: list[str] | None,
                scenarios: list[str] | None, overrides: dict[str, Any]) -> int:
    """``run --search N``: N trials per (method, scenario), then the configuration each chose on
    validation re-run on ``--seeds`` (:mod:`bench.run.search`)."""
    from bench.run import search

    if args.ablation:
        raise UsageError("--search tunes methods (--all or --method/--scenario), not an "
                         "--ablation preset")
    if not (args.all or methods or scenarios):
        raise UsageError("nothing to search: use --all, or --method a,b and/or --scenario x,y")
    trials = search.expand_search(methods, scenarios, args.profile, args.search,
                                  args.search_seed, run_all=args.all,
                                  require_data=not args.dry_run, overrides=overrides,
                                  suite=args.suite)
    if not trials.runs:
        raise UsageError("the plan is empty: no method applies to the chosen scenarios")
    results_dir, leaderboard, engine = _run_outputs(args)
    pairs = len(trials.runs) // args.search
    print(f"search: {args.search} trials (seed {search.TRIAL_SEED}) for each of {pairs} "
          f"(method, scenario) pairs, the configuration chosen on validation then re-run on "
          f"seeds {','.join(map(str, seeds))} ({pairs * len(seeds)} runs); search seed "
          f"{args.search_seed}", file=sys.stderr)
    stand_ins = search.default_stand_ins(trials, seeds) if args.dry_run else None
    code, _ = _sweep(trials, args, results_dir, engine, "trials", stand_ins)
    if args.dry_run:
        print(f"re-runs: {len(stand_ins or [])} runs once the trials have ended (estimated "
              "above as the defaults' runs)", file=sys.stderr)
        return 0
    tuned, left_out = search.tuned_plan(trials, results_dir, seeds, args.search,
                                        args.search_seed)
    for method, scenario, reason in left_out:
        print(f"  not re-run: {method} on {scenario}: {reason}", file=sys.stderr)
        code = 1
    if tuned.runs:
        tuned_code, _ = _sweep(tuned, args, results_dir, engine, "re-runs of the chosen trials")
        code = max(code, tuned_code)
    if not args.no_leaderboard:
        _render(results_dir, leaderboard)
    return code


def _backend(args: argparse.Namespace) -> Any:
    """``"local"`` or a :class:`bench.run.backends.Backend` built (and checked) from the flags."""
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time,
             "gpus": args.slurm_gpus, "config": args.slurm_config}
    slurm_given = [f"--slurm-{key}" for key, value in slurm.items() if value is not None]
    if args.backend != "slurm" and slurm_given:
        raise UsageError(f"{', '.join(slurm_given)} needs --backend slurm")
    if args.backend != "local" and getattr(args, "threads", None) is not None:
        raise UsageError("--threads needs --backend local (Dask and Ray workers split their "
                         "cores, a Slurm job uses its cpus_per_task)")
    if args.backend == "local":
        if args.scheduler is not None:
            raise UsageError("--scheduler needs --backend dask or ray")
        return "local"
    from bench.run.backends import get_backend

    if args.backend != "slurm":
        return get_backend(args.backend, jobs=args.jobs, scheduler=args.scheduler)
    return get_backend("slurm", jobs=args.jobs, scheduler=args.scheduler, **slurm)


def _record_seconds(runs: list[Any], results_dir: Path) -> dict[Any, float]:
    """The median wall time of earlier records of the same (scenario, data version, label,
    profile), for the runs that have some (records of other evaluation splits do not count)."""
    import statistics

    from bench.records import load_records

    records, _ = load_records(results_dir)
    times: dict[tuple[str, str, str, str], list[float]] = {}
    for rec in records:
        if rec.get("wall_time_s"):
            version = str(rec["config"].get("scenario_data_version"))
            times.setdefault((rec["scenario"], version, rec["label"], rec["profile"]),
                             []).append(rec["wall_time_s"])
    matched = {run: times.get((run.scenario, str(run.config.get("scenario_data_version")),
                               run.display, run.profile)) for run in runs}
    return {run: statistics.median(found) for run, found in matched.items() if found}


def _print_estimate(todo: list[Any], results_dir: Path, args: argparse.Namespace
                    ) -> dict[Any, str]:
    """Print the estimated cost of the runs to do on stderr: from earlier records of the same
    runs where there are some, else from their counted FLOPs and this device's measured rate
    (:mod:`bench.run.cost`). Returns a note per run for the listing."""
    from bench.run.cost import RATE_WORKLOAD, device_rate, plan_flops
    from bench.run.engine import default_device

    recorded = _record_seconds(todo, results_dir)
    counted = plan_flops([run for run in todo if run not in recorded], args.jobs)
    costs = {run: cost for run, cost in counted.items() if cost is not None}
    cores = os.cpu_count() or 1
    local = args.backend == "local"
    parts, details, seconds = [], [], 0.0
    notes = {run: f"~{_duration(t)} (records)" for run, t in recorded.items()}
    if recorded:
        seconds += sum(recorded.values())
        parts.append(f"{len(recorded)} from earlier records {_duration(seconds)}")
    if costs:
        device = default_device()
        threads = (getattr(args, "threads", None) or max(1, cores // args.jobs)
                   if local and device.type == "cpu" else None)
        rate = device_rate(device, threads)
        flops = sum(cost.flops for cost in costs.values())
        seconds += flops / rate
        parts.append(f"{len(costs)} by counted FLOPs {_flops(flops)} ≈ {_duration(flops / rate)}")
        where = f"{threads} thread{'s' * (threads != 1)} per run" if threads else device.type
        details.append(
            f"counted FLOPs / this {device.type}'s rate ({where}): {_flops(rate)}/s measured on "
            f"a ResNet-18 step (batch {RATE_WORKLOAD['batch']}, {RATE_WORKLOAD['size']} px); "
            "element-wise work, per-step overheads and data loading are not counted, so read it "
            "as a lower bound (the small models of the default profile took about 3× it, README)")
        nominal = sorted({run.scenario for run, cost in costs.items() if cost.nominal})
        if nominal:
            details.append(f"published dataset sizes (data not present): {', '.join(nominal)}")
        notes.update({run: _flops(cost.flops) for run, cost in costs.items()})
    if parts:
        parallel = min(args.jobs, cores) if local else args.jobs
        total = f" = {_duration(seconds)}" if len(parts) > 1 else ""
        print(f"estimated cost of the {len(todo)} runs to do: {' + '.join(parts)}{total} of "
              f"single-run time, ~{_duration(seconds / parallel)} with --jobs {args.jobs}",
              file=sys.stderr)
    for line in details:
        print(f"  {line}", file=sys.stderr)
    for scenario in sorted({run.scenario for run, cost in counted.items() if cost is None}):
        print(f"  no estimate for {scenario}: sample counts unknown until its data are present",
              file=sys.stderr)
    notes.update({run: "size unknown" for run, cost in counted.items() if cost is None})
    return notes


def _flops(value: float) -> str:
    """``12.3 TFLOP``: FLOPs with an SI prefix."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}FLOP"
    return f"{value:.0f} FLOP"


def _duration(seconds: float) -> str:
    """``42 s``, ``3.4 min``, ``37.5 h`` or ``12.0 d``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 4 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# ------------------------------------------------------------------ leaderboard / results
def _render(results_dir: Path, output: Path, rule: str = "val_loss", fmt: str = "md") -> str:
    """Regenerate the leaderboard (``output`` ``-``: only returned); one warning line per record
    it skipped (``run`` and ``leaderboard`` alike)."""
    from bench.report import render

    try:
        text, bad = render(results_dir, output, rule=rule, fmt=fmt)
    except OSError as err:  # e.g. a read-only folder for the plots or the table
        raise UsageError(f"cannot write the leaderboard ({err.strerror or err}: "
                         f"{err.filename or output}); choose a writable --output / "
                         "--results-dir") from None
    for b in bad:
        print(f"warning: skipped {b.path}: {b.problem}", file=sys.stderr)
    if str(output) != "-":
        print(f"leaderboard written to {output}", file=sys.stderr)
    return text


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.records import selection
    from bench.report import FORMATS
    from bench.report.leaderboard import DEFAULT_OUTPUTS

    if args.selection not in selection.RULES:
        raise UsageError(f"unknown selection rule {args.selection!r}; rules: "
                         f"{', '.join(selection.RULES)}")
    if args.format not in FORMATS:
        raise UsageError(f"unknown format {args.format!r}; formats: {', '.join(FORMATS)}")
    results_dir = existing_results(Path(args.results_dir))
    if args.output == "-":
        output = Path("-")
    else:
        output = leaderboard_for(results_dir, args.output)
        if args.output is None:  # leaderboard.md / .tex / .csv by --format
            output = output.with_name(DEFAULT_OUTPUTS[args.format])
        writable_file(output, "--output")
    text = _render(results_dir, output, args.selection, args.format)
    if str(output) == "-":
        sys.stdout.write(text)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from bench.records import load_records

    root = existing_results(Path(args.results_dir))
    if args.action == "verify":
        return _verify(root, args.sample)
    good, bad = load_records(root)
    by_status: dict[str, int] = {}
    for rec in good:
        by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
    counts = ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
    print(f"{len(good)} valid records ({counts}), {len(bad)} corrupt")
    for b in bad:
        print(f"corrupt: {b.path}: {b.problem}")
    unfinished = [rec for rec in good if rec["status"] != "ok"]
    for rec in unfinished:  # the next `run` retries them (unless --no-retry-failed)
        print(f"{rec['status']}: {rec['_path']}: {rec.get('error') or 'no error recorded'}")
    # what an interrupted sweep leaves; the next claim of the run (or its resume) cleans it
    for path in sorted([*root.rglob(".*.json.*.tmp"), *root.rglob("*.json.lock")]):
        print(f"leftover: {path} ({'lock' if path.suffix == '.lock' else 'partial write'})")
    return 1 if bad or unfinished else 0


def _verify(root: Path, k: int) -> int:
    """Re-run ``k`` records (chosen deterministically) and report each test metric's difference
    against the seed spread of its method and scenario; exit 1 when one is off by more than two
    seed standard deviations, or differs at all on the machine that produced it."""
    from bench.records import load_records
    from bench.run.verify import TOLERANCE_STD, describe, sample, verify

    if k < 1:
        raise UsageError("--sample takes a number of records to re-run, at least 1")
    records, _ = load_records(root)
    chosen = sample(records, k)
    if not chosen:
        raise UsageError(f"no ok record to verify in {root}")
    print(f"re-running {len(chosen)} of {len(records)} records of {root}/ (the ones with the "
          "smallest config hashes); nothing is written", file=sys.stderr)
    checks = []
    for rec in chosen:
        check = verify(rec, records)
        checks.append(check)
        for line in describe(check):
            print(line, flush=True)
    identical = sum(c.identical for c in checks)
    failed = sum(c.failed for c in checks)
    print(f"{identical} identical, {len(checks) - identical - failed} within "
          f"{TOLERANCE_STD:g} seed std, {failed} failed (of {len(checks)})")
    return 1 if failed else 0


def cmd_data(args: argparse.Namespace) -> int:
    from bench.data.real import cmd_data as run_data_command

    return run_data_command(args)


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import DEFAULT_GROUPS, check_groups
    from bench.perf import main as perf_main

    groups = [g for g in (args.only or ",".join(DEFAULT_GROUPS)).split(",") if g]
    try:
        check_groups(groups)
    except ValueError as err:
        raise UsageError(f"--only: {err}") from None
    if args.jobs_scaling and "jobs" not in groups:
        groups.append("jobs")
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.memory_methods in (None, ""):
        memory = None
    else:
        from bench.registry import methods

        memory = (methods.list() if args.memory_methods == "all"
                  else [m for m in args.memory_methods.split(",") if m])
        missing = [m for m in memory if m not in methods]
        if missing:
            raise UsageError(f"--memory-methods: unknown method(s) {', '.join(missing)}; see "
                             f"`python -m bench list methods`")
    docs = Path(args.write_docs) if args.write_docs else None
    for path, flag in ((Path(args.json) if args.json else None, "--json"), (docs, "--write-docs")):
        if path is not None:
            writable_file(path, flag)
    return perf_main(repeats=args.repeats, groups=groups, threads=args.threads,
                     memory_methods=memory, json_path=Path(args.json) if args.json else None,
                     docs_path=docs, results_dir=Path(args.results_dir),
                     argv=args.command_line)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bench.models.pretrained import WeightsError, entry
    from bench.run.pretrain import SMOKE, PretrainConfig, command, install, pretrain, save

    cfg = replace(SMOKE if args.smoke else PretrainConfig(), seed=args.seed)
    if args.threads is not None:
        cfg = replace(cfg, threads=args.threads)
    out = Path(args.out or f"{args.backbone}-fractal-seed{args.seed}.pt")
    if args.install and args.out:
        raise UsageError("give --out FILE or --install, not both")
    if not args.install and not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    print(f"{command(args.backbone, cfg)}: {cfg.classes} fractal classes x {cfg.variants} "
          f"variants, {cfg.steps} steps of {cfg.batch_size}, {cfg.threads} thread(s)")
    result = pretrain(args.backbone, cfg, progress=not args.no_progress)
    if args.install:
        install(args.backbone, cfg, result)
        print(f"installed the {args.backbone} checkpoint into the package (manifest updated)")
        return 0
    digest = save(result, out)
    try:
        committed = entry(args.backbone)["sha256"]
    except WeightsError:
        committed = None
    same = ("identical to the committed checkpoint" if committed == digest
            else "differs from the committed checkpoint" if committed else "nothing committed")
    print(f"wrote {out} ({result.parameters:,} parameters, {result.seconds:.0f} s, "
          f"final training accuracy {100 * result.accuracy:.1f} %); sha256 {digest} ({same})")
    return 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark multi-task learning methods on heterogeneous data "
                    "(domain, multi-input and single-input task heterogeneity, as in MoLA).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list methods, scenarios, architectures, weightings, "
                                    "backbones, ablations")
    p.add_argument("what", choices=["methods", "scenarios", "architectures", "weightings",
                                    "backbones", "ablations"])
    p.add_argument("pattern", nargs="?",
                   help="a part of the name ('mola') or a glob pattern ('mola*')")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "run", help="train methods × scenarios × seeds, write one record per run, "
                    "regenerate the leaderboard",
        description="Runs are keyed by a hash of their config: finished runs are skipped, so "
                    "re-running the same command resumes an interrupted sweep.")
    p.add_argument("--all", action="store_true",
                   help="every registered method on every scenario it applies to")
    p.add_argument("--method", help="comma-separated method names; 'A+B' = architecture of A "
                                    "with the weighting of B (e.g. mmoe+pcgrad)")
    p.add_argument("--scenario", help="comma-separated scenario names")
    p.add_argument("--suite", default="mission", choices=["mission", "full"],
                   help="with --all: 'mission' (default: the 10 methods the MoLA/MTLoRA "
                        "comparison is about, minutes) or 'full' (every registered method)")
    p.add_argument("--ablation", help="an ablation preset (see `list ablations`)")
    p.add_argument("--search", type=int, metavar="N",
                   help="equal-budget random search: N configurations per method and scenario "
                        "(trial 0 = the defaults, the others drawn from the method's declared "
                        "search space), each trained on one trial seed; the best on validation "
                        "is then re-run on --seeds (README: 'Tuned comparison')")
    p.add_argument("--search-seed", type=int, default=0, metavar="S",
                   help="seed of the search's draws (default 0); the same S gives the same "
                        "configurations on any machine and backend")
    p.add_argument("--seeds", default="0,1,2,3,4",
                   help="comma-separated seeds (default 0,1,2,3,4)")
    p.add_argument("--profile", default="default",
                   help="'smoke' (seconds, for tests), 'default' (the embedded benchmark), "
                        "'paper' (the papers' setups on their real datasets, see `bench data`)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="parallel runs (long-lived local worker processes); torch threads are "
                        "split between them (default: number of cores)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per run with --backend local (default: the cores "
                        "split between the --jobs workers, at least 1; torch's default with "
                        "--jobs 1); recorded in each record's host.threads")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyper-parameter: arch.NAME, weighting.NAME, train.NAME, "
                        "or the encoder with backbone.name / backbone.KWARG (repeatable), e.g. "
                        "--set weighting.calpha=0.4 --set backbone.name=swin_embedded")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS),
                   help="where records are written (default results/)")
    p.add_argument("--leaderboard", default=None,
                   help="leaderboard file regenerated at the end (default leaderboard.md for "
                        "the default results folder, else RESULTS_DIR/leaderboard.md)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not regenerate it")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--no-retry-failed", action="store_true",
                   help="count runs recorded as failed or diverged as done (by default a rerun "
                        "runs them again, keeping the earlier error in the record's attempts)")
    p.add_argument("--progress-runs", action="store_true",
                   help="also show a bar of training steps for each run in flight")
    p.add_argument("--backend", choices=["local", "dask", "ray", "slurm"], default="local",
                   help="where runs execute: local worker processes (default), a Dask or Ray "
                        "cluster, or Slurm jobs through submitit; --jobs = workers / CPUs / "
                        "jobs at a time (pip install 'mtl-hetero-bench[distributed]')")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask: scheduler address (tcp://host:8786); ray: cluster address "
                        "(auto, ray://host:10001); default: start a local cluster")
    p.add_argument("--slurm-partition", help="Slurm partition of the jobs")
    p.add_argument("--slurm-time", help="time limit per job: minutes or [D-]H:M:S")
    p.add_argument("--slurm-gpus", type=int, help="GPUs per job")
    p.add_argument("--slurm-config", metavar="FILE",
                   help="JSON or TOML Slurm settings (partition, time, gpus, cpus_per_task, "
                        "mem_gb, account, qos, setup, cluster, log_dir, any slurm_* of "
                        "submitit); flags override it")
    p.set_defaults(func=cmd_run)
    from bench.data.arguments import add_data_arguments, add_data_parser

    add_data_arguments(p)  # --data-root, --no-verify (real datasets)

    p = sub.add_parser("leaderboard", help="rebuild leaderboard.md from the records alone")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--output", default=None,
                   help="file to write, '-' for stdout (default leaderboard.md, .tex or .csv "
                        "by --format, beside the default results folder's records' project, "
                        "else inside RESULTS_DIR)")
    p.add_argument("--selection", default="val_loss", metavar="RULE",
                   help="model-selection rule of the tables: val_loss (default), val_metric, "
                        "last, oracle (an upper bound)")
    p.add_argument("--format", default="md", metavar="FORMAT",
                   help="md (default: tables, statistics, figures), latex (booktabs) or csv "
                        "(one row per run, task and metric)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("results", help="inspect stored records")
    p.add_argument("action", choices=["check", "verify"],
                   help="check: report invalid records (schema), failed or diverged runs, "
                        "leftover locks and partial writes; verify: re-run --sample records "
                        "and compare their metrics with the seed spread")
    p.add_argument("--sample", type=int, default=3, metavar="K",
                   help="verify: how many records to re-run (default 3)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "perf", help="speed and memory comparisons measured side by side in one run",
        description="Speed and memory comparisons, each a ratio A/B over interleaved repeats "
                    "(A B A B ...) printed as median [min, max], with its goal, whether the "
                    "median meets it, and what limits it: kernels (fused forward, bf16, MoLA "
                    "convs, streaming), engine (a run's train() vs a bare PyTorch loop, goal "
                    "<= 1.10), gradients (PCGrad, MGDA, CAGrad, IMTL, GradNorm vs the T-backward "
                    "floor at T = 3 and 9, goal <= 1.25), startup (fresh `list methods` < 2 s, "
                    "`leaderboard` < 5 s, `--help`, `results check`), memory (peak RSS of a smoke "
                    "run per method), jobs (whole sweeps on one core, with --jobs 1 and with "
                    "--jobs 2; opt-in, minutes).")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved repeats of every comparison (default 5)")
    p.add_argument("--only", metavar="GROUPS",
                   help="comma-separated groups to run: kernels, engine, gradients, startup, "
                        "memory, jobs (default all but jobs)")
    p.add_argument("--jobs-scaling", action="store_true",
                   help="also time whole sweeps on one core (--jobs 1 --threads 1) and with "
                        "--jobs 2: smoke --all (also with --jobs 1) and default --all --seeds 0 "
                        "(goals of --jobs 2 over one core >= 1.8 and >= 1.7; ~60 min at "
                        "--repeats 3)")
    p.add_argument("--memory-methods", metavar="METHODS",
                   help="methods whose peak memory is measured: comma-separated, or 'all' "
                        "(default: hps and nine representative methods)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads of the in-process comparisons (default 1: a default "
                        "sweep's threads per run, --jobs = cores)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS),
                   help="records that `results check` and `leaderboard` read in the start-up "
                        "comparison (default results)")
    p.add_argument("--json", metavar="FILE",
                   help="write the rows and the machine (cores, torch, threads, load average "
                        "before and after, date, command line) as JSON")
    p.add_argument("--write-docs", nargs="?", const="docs/performance.md", metavar="FILE",
                   help="regenerate docs/performance.md (or FILE) from this run: a table per "
                        "group with each ratio, its goal, met or not and what limits it")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser(
        "pretrain", help="pretrain an embedded backbone on fractals (the committed weights)",
        description="Pretrain an embedded backbone on formula-driven fractal images (no digits, "
                    "no download): supervised fractal-category classification, deterministic "
                    "from --seed. The committed checkpoints (bench/models/weights, "
                    "manifest.json) were made by this command with its defaults; the embedded "
                    "scenarios start every method from them (--set backbone.init=scratch not).")
    p.add_argument("--backbone", required=True, choices=["resnet", "swin_embedded"])
    p.add_argument("--out", metavar="FILE",
                   help="where to write the checkpoint (default BACKBONE-fractal-seedS.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default 1, as the committed checkpoints)")
    p.add_argument("--smoke", action="store_true", help="a test-sized pretraining (seconds)")
    p.add_argument("--install", action="store_true",
                   help="write into the package's weights folder and update the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    # python -m bench data check|download|list [NAME]
    add_data_parser(sub).set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.registry import UnknownNameError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # as typed (perf records it)
    if getattr(args, "jobs", 1) is not None and getattr(args, "jobs", 1) < 1:
        parser.error("--jobs must be at least 1")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    from bench.data.arguments import apply_data_arguments

    apply_data_arguments(args)  # --data-root / --no-verify reach workers through the env
    try:
        return int(args.func(args) or 0)
    # a method that cannot run on a scenario (bench.models.method.IncompatibleError) is a
    # ValueError too: not imported here, so that `list` and `--help` never import torch
    except (UsageError, UnknownNameError, ValueError) as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench results verify [--sample K]``: re-run committed records, compare the numbers.

K records are chosen deterministically (the K ``ok`` records with the smallest config hash: a
spread over methods, scenarios and seeds that does not depend on the folder's layout), each is
rebuilt from its config alone (:meth:`bench.run.plan.RunSpec.from_config`) and trained again in
this process with the record's thread count; nothing is written. Each test metric's difference
is reported against the seed spread of its method and scenario (the standard deviation over the
other seeds' records):

* on the machine that produced the records (same CPU model and instruction set, same BLAS,
  torch, numpy, thread count) the numbers are identical, bit for bit;
* elsewhere, floating-point sums differ from the first step on, so single runs differ; the
  check is statistical: a difference within two seed standard deviations is expected.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.run.plan import RunSpec

#: a difference beyond this many seed standard deviations fails the verification
TOLERANCE_STD = 2.0
#: what floating-point results depend on, besides the config (``versions`` and ``host``)
SAME_MACHINE_KEYS = ("cpu", "cpu_capability", "blas", "onednn", "torch", "numpy")


@dataclass
class MetricDiff:
    task: str
    metric: str
    recorded: float
    rerun: float
    #: standard deviation of the metric over the seeds of the record's method and scenario
    seed_std: float | None

    @property
    def diff(self) -> float:
        return self.rerun - self.recorded

    @property
    def in_std(self) -> float | None:
        """``|diff|`` in seed standard deviations (None: no spread to compare with — one other
        seed, or other seeds that agree exactly)."""
        if self.diff == 0:
            return 0.0
        if not self.seed_std:
            return None
        return abs(self.diff) / self.seed_std


@dataclass
class Verification:
    record: dict[str, Any]
    #: whether this machine and software match the record's (exact reproduction expected);
    #: None when the record does not say (it predates the CPU fields of ``versions``)
    same_machine: bool | None
    diffs: list[MetricDiff] = field(default_factory=list)
    problem: str | None = None

    @property
    def identical(self) -> bool:
        return self.problem is None and all(d.diff == 0 for d in self.diffs)

    @property
    def beyond(self) -> list[MetricDiff]:
        """Metrics off by more than :data:`TOLERANCE_STD` seed standard deviations."""
        return [d for d in self.diffs if (d.in_std or 0.0) > TOLERANCE_STD]

    @property
    def failed(self) -> bool:
        return self.problem is not None or bool(self.beyond) or (
            self.same_machine is True and not self.identical)


def sample(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` ok records with the smallest config hashes (deterministic, spread out)."""
    ok = [r for r in records if r["status"] == "ok"]
    return sorted(ok, key=lambda r: r["config_hash"])[:k]


def seed_std(records: list[dict[str, Any]], record: dict[str, Any]) -> dict[tuple[str, str],
                                                                            float | None]:
    """Per test metric, the standard deviation over the *other* seeds' ok records of the same
    method label, scenario, profile and ablation (None with fewer than two): the record itself
    is left out, or a moved value would widen its own yardstick."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["profile"], r["scenario"], r.get("label") or r["method"], r.get("ablation")

    group = [r for r in records if r["status"] == "ok" and key(r) == key(record)
             and r["config_hash"] != record["config_hash"]]
    out: dict[tuple[str, str], float | None] = {}
    for task in record["tasks"]:
        for metric in task["metrics"]:
            values = [r["metrics"]["test"][task["name"]][metric["name"]] for r in group
                      if metric["name"] in r["metrics"]["test"].get(task["name"], {})]
            out[(task["name"], metric["name"])] = (statistics.stdev(values)
                                                   if len(values) > 1 else None)
    return out


def same_machine(record: dict[str, Any], here: dict[str, str], threads: int) -> bool | None:
    recorded = record.get("versions", {})
    if any(k not in recorded for k in SAME_MACHINE_KEYS):
        return None
    return (all(recorded[k] == here.get(k) for k in SAME_MACHINE_KEYS)
            and (record.get("host") or {}).get("threads") == threads)


def verify(record: dict[str, Any], records: list[dict[str, Any]],
           train: Callable[[RunSpec], dict[str, dict[str, float]]] | None = None
           ) -> Verification:
    """Re-run ``record`` (with its thread count) and compare its test metrics."""
    import torch

    from bench.run.worker import versions

    threads = int((record.get("host") or {}).get("threads") or torch.get_num_threads())
    check = Verification(record, same_machine(record, versions(), threads))
    try:
        run = RunSpec.from_config(record["config"])
    except Exception as err:  # noqa: BLE001 - a config this code cannot rebuild is reported
        check.problem = f"its config cannot be rebuilt ({type(err).__name__}: {err})"
        return check
    if run.config_hash != record["config_hash"]:
        check.problem = "its config does not hash to its config_hash"
        return check
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        metrics = (train or _train)(run)
    finally:
        torch.set_num_threads(previous)
    spread = seed_std(records, record)
    for (task, metric), std in spread.items():
        check.diffs.append(MetricDiff(task, metric, record["metrics"]["test"][task][metric],
                                      metrics[task][metric], std))
    return check


def _train(run: RunSpec) -> dict[str, dict[str, float]]:
    from bench.run.engine import run_config

    result, _ = run_config(run)
    return result.test_metrics


def describe(check: Verification) -> list[str]:
    """The lines ``results verify`` prints for one record."""
    rec = check.record
    name = (f"{rec.get('label') or rec['method']} on {rec['scenario']} ({rec['profile']}) "
            f"seed {rec['seed']}")
    where = {True: "same machine and software", False: "another machine or software",
             None: "machine not recorded"}[check.same_machine]
    if check.problem:
        return [f"FAILED {name}: {check.problem}"]
    if check.identical:
        return [f"{'identical':10} {name} ({where})"]
    expected = "exact expected" if check.same_machine else "statistical check"
    lines = [f"{'FAILED' if check.failed else 'close':10} {name} ({where}; {expected})"]
    for d in check.diffs:
        spread = ("no seed spread to compare with" if d.in_std is None
                  else f"{d.in_std:.2f} × the seed std {d.seed_std:.4g}")
        lines.append(f"    {d.task}/{d.metric}: {d.rerun:.6g} rerun vs {d.recorded:.6g} recorded, "
                     f"diff {d.diff:+.4g} = {spread}")
    return lines

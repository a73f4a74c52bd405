"""Mixed precision (``train.precision``) and data parallelism (``train.ddp``), issue 16.

* bf16 autocast: every registered method trains on a tiny domain scenario through the worker
  (finite losses and metrics, a record that says ``precision: bf16``);
* fp16 with the gradient scaler (forced on the CPU, where planning refuses it): the weighting
  sees unscaled gradients — a few steps land near the fp32 ones;
* 2 gloo processes give the parameters of one process with the same global batch after 3
  optimiser steps (HPS and gradient weightings);
* planning refuses what cannot work (one line, exit 2), and configs at the defaults keep
  their keys and hashes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_tiny

from bench import registry
from bench.api import Scenario, register_scenario
from bench.cli import main
from bench.data.scenario import LATER_DEFAULTS, TrainingSetup
from bench.data.settings import SettingsError
from bench.models.method import build_model, resolve_method
from bench.registry import methods
from bench.run import engine, precision, worker
from bench.run.engine import batch_losses, fetch_batch, train
from bench.run.plan import make_run

TINY = "test_precision_tiny"


class TinyDomains(Scenario):
    """The tests' tiny domain scenario (2 domains, 8x8 inputs), registered for the worker."""

    name = TINY
    heterogeneity = "domain"
    profiles = ("smoke",)

    def setup(self, profile: str) -> TrainingSetup:
        return make_tiny("domain")[1].training

    def load(self, profile: str, data_root: Path | None = None):
        return make_tiny("domain")[1]


@pytest.fixture(scope="module")
def tiny_registered():
    register_scenario(TINY)(TinyDomains)
    try:
        yield TINY
    finally:
        del registry.scenarios.entries[TINY]
        engine._load_scenario.cache_clear()


@pytest.fixture
def cheap_worker(monkeypatch):
    """The worker without what this file does not test (git/CPU versions, parameter scaling)."""
    torch.set_num_threads(1)
    monkeypatch.setattr(worker, "versions", lambda: {"git_commit": "test"})
    monkeypatch.setattr(engine, "param_scaling", lambda run: {})
    monkeypatch.setenv("BENCH_DEVICE", "cpu")


def _record(results: Path) -> dict:
    [path] = [p for p in results.rglob("*.json")]
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", methods.list())
def test_bf16_trains_every_method(name: str, tiny_registered, cheap_worker, tmp_path) -> None:
    run = make_run(name, TINY, 0, "smoke", {"train.precision": "bf16"})
    assert run.config["training"]["precision"] == "bf16"
    summary = worker.run_one(run, str(tmp_path))
    assert summary["status"] == "ok", summary.get("error")
    record = _record(tmp_path)
    assert record["config"]["training"]["precision"] == "bf16"
    assert all(math.isfinite(v) for h in record["history"] for v in h["val_task_losses"])
    assert all(math.isfinite(v) for ms in record["metrics"]["test"].values() for v in ms.values())


def test_bf16_losses_and_gradients_are_float32() -> None:
    torch.set_num_threads(1)
    _, data = make_tiny("single_input")
    model = build_model(resolve_method("pcgrad"), data)
    batch = fetch_batch(data, data.train, {t: torch.arange(8) for t in data.task_names})
    losses, out = batch_losses(model, data, batch, fused=False, amp="bf16")
    assert losses.dtype == torch.float32 and all(v.dtype == torch.float32 for v in out.values())
    model.zero_grad(set_to_none=False)
    model.backward(losses)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def _sgd(data, **changes) -> TrainingSetup:
    return replace(data.training, **{"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, **changes})


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if a[k].is_floating_point())


@pytest.mark.parametrize("name", ["hps", "pcgrad", "uw", "mgda_ub"])
def test_fp16_scaler_shows_the_weighting_true_gradients(name: str, monkeypatch) -> None:
    """fp16 (forced on the CPU) with a gradient scaler of scale 2^8 (small enough that no step
    overflows here): after 3 SGD steps the parameters are those of fp32 up to fp16 rounding — a
    gradient left scaled would move them 256 times too far (for UW's own log-variances, and
    MGDA-UB's representation path, too)."""
    torch.set_num_threads(1)
    monkeypatch.setattr(precision, "make_scaler", lambda amp, device: torch.amp.GradScaler(
        device.type, init_scale=2.0**8) if amp == "fp16" else None)
    scen, data = make_tiny("single_input", n=24)
    spec = resolve_method(name)
    setup = _sgd(data, lr=0.01)
    fp32 = train(spec, scen, data, setup, 0, rule_names=["val_loss"], keep_state=True)
    fp16 = train(spec, scen, data, replace(setup, precision="fp16"), 0,
                 rule_names=["val_loss"], keep_state=True)
    torch.manual_seed(0)
    model = build_model(spec, data)  # seed 0 again: the initial parameters
    params = {n for n, _ in model.named_parameters()}
    start = {n: v for n, v in model.state_dict().items() if n in params}
    moved = _max_diff(start, fp32.state)
    assert moved > 1e-3
    assert _max_diff(start, fp16.state) < 2 * moved
    assert _max_diff(start, {n: fp16.state[n] - fp32.state[n] + start[n] for n in start}) \
        < 0.1 * moved


#: the 2-process comparisons: HPS (all-reduced final gradients) and PCGrad (all-reduced task
#: gradients; every gradient weighting takes that path)
DDP_CASES = [("hps", "single_input"), ("pcgrad", "multi_input")]


def _ddp_case(name: str, kind: str) -> tuple:
    scen, data = make_tiny(kind, n=24)
    return resolve_method(name), scen, data


def _train_each_on_this_rank(cases: list[tuple]) -> list | None:
    """On every rank of one process group: each case's data-parallel training in turn; rank 0
    returns the results (the others ``None``)."""
    results = [engine._train(spec, data, setup, 0, None, ["val_loss"], True)
               for spec, data, setup in cases]
    return None if results[0] is None else results


@pytest.fixture(scope="module", autouse=True)
def two_process_launch(request) -> Iterator[Future | None]:
    """Every case of :data:`DDP_CASES` trained on 2 gloo processes, each with half of every
    batch, in ONE process-group launch, started in a background thread when the module starts:
    the fork server's start-up (imports) and the ranks' training overlap the other tests of the
    file instead of following them. ``None`` when no 2-process comparison is selected."""
    from bench.run import parallel

    if not any(item.name.startswith("test_two_processes_match") for item in
               request.session.items):
        yield None
        return
    cases = []  # built here, in the main thread: the thread only waits for the processes
    for name, kind in DDP_CASES:
        spec, _, data = _ddp_case(name, kind)
        cases.append((spec, data, _sgd(data, ddp=2)))
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(parallel.launch, _train_each_on_this_rank, 2, (cases,), threads=1)


@pytest.fixture(scope="module")
def two_process_results(two_process_launch) -> dict[tuple[str, str], object]:
    """case -> rank 0's result of the 2-process training (waits for the launch)."""
    return dict(zip(DDP_CASES, two_process_launch.result()))


@pytest.mark.parametrize(("name", "kind"), DDP_CASES)
def test_two_processes_match_one_with_the_global_batch(name: str, kind: str,
                                                       two_process_results) -> None:
    """2 gloo processes, each with half of every batch: after 3 SGD steps the parameters (and
    BatchNorm statistics) are those of one process with the whole batch."""
    torch.set_num_threads(1)
    spec, scen, data = _ddp_case(name, kind)
    one = train(spec, scen, data, _sgd(data), 0, rule_names=["val_loss"], keep_state=True)
    two = two_process_results[(name, kind)]
    assert one.steps == two.steps == 3
    assert _max_diff(one.state, two.state) < 1e-5
    for task, metrics in one.test_metrics.items():
        for metric, value in metrics.items():
            assert two.test_metrics[task][metric] == pytest.approx(value, abs=1e-4)


def test_data_parallel_run_writes_one_record(tiny_registered, cheap_worker, tmp_path) -> None:
    run = make_run("pcgrad", TINY, 0, "smoke", {"train.ddp": 2, "train.precision": "bf16"})
    summary = worker.run_one(run, str(tmp_path))
    assert summary["status"] == "ok", summary.get("error")
    record = _record(tmp_path)
    assert record["config"]["training"]["ddp"] == 2 and record["steps"] == 2


def test_defaults_leave_configs_and_hashes_unchanged(tiny_registered) -> None:
    assert LATER_DEFAULTS["precision"] == "fp32" and LATER_DEFAULTS["ddp"] == 1
    base = make_run("hps", TINY, 0, "smoke")
    assert "precision" not in base.config["training"] and "ddp" not in base.config["training"]
    same = make_run("hps", TINY, 0, "smoke", {"train.precision": "fp32", "train.ddp": 1})
    assert same.config["training"] == base.config["training"]
    other = make_run("hps", TINY, 0, "smoke", {"train.precision": "bf16"})
    assert other.config_hash != base.config_hash


@pytest.mark.parametrize(("override", "words"), [
    ({"train.precision": "fp16"}, "needs a CUDA device"),
    ({"train.precision": "fp8"}, "train.precision"),
    ({"train.ddp": 0}, "train.ddp"),
    ({"train.ddp": 9}, "more than train.batch_size"),
])
def test_planning_refuses(override: dict, words: str, tiny_registered, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    with pytest.raises(SettingsError, match=words):
        make_run("hps", TINY, 0, "smoke", override)


def test_representation_gradients_refused_under_ddp(tiny_registered, monkeypatch, tmp_path,
                                                    capsys) -> None:
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    code = main(["run", "--method", "mgda_ub", "--scenario", TINY, "--profile", "smoke",
                 "--set", "train.ddp=2", "--results-dir", str(tmp_path / "r"),
                 "--no-leaderboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "representation gradients" in err[0]
    assert not (tmp_path / "r").exists()

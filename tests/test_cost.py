"""Scenario shapes (``Scenario.shape``), counted-FLOP cost estimates (``bench.run.cost``) and the
dry run's estimate without records.

Tiny configs only; nothing here asserts a time.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.data.scenario import ScenarioShape, TrainingSetup
from bench.models.method import resolve_method
from bench.registry import scenarios
from bench.run import cost
from bench.run.engine import epoch_steps
from bench.run.plan import make_run


@pytest.fixture(autouse=True)
def _no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real datasets are absent; counting runs on the CPU with one thread."""
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    torch.set_num_threads(1)


def _shape(tiny_scenario, kind: str) -> tuple[ScenarioShape, TrainingSetup]:
    _, data = tiny_scenario(kind)
    return ScenarioShape.of(data), data.training


@pytest.mark.parametrize("shape_only", [True, False])
def test_count_of_a_linear_layer_matches_the_hand_count(shape_only: bool) -> None:
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    # forward x·Wᵀ, backward dL/dx and dL/dW: three (5×8)·(8×4)-sized products of 2 FLOPs/MAC
    assert cost.count_flops(step, shape_only) == 3 * 2 * 5 * 8 * 4


def test_cpu_attention_kernel_is_counted() -> None:
    q = torch.randn(2, 3, 16, 8, requires_grad=True)

    def attend() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    product = 2 * (2 * 3) * 16 * 16 * 8  # one (16×8)·(8×16)-sized product per batch and head
    # forward Q·Kᵀ, P·V; backward (as torch counts it): Q·Kᵀ again, dV, dP, dQ, dK
    assert cost.count_flops(attend, shape_only=False) == 7 * product


@pytest.mark.parametrize("kind", ["multi_input", "single_input"])
@pytest.mark.parametrize("method", ["hps", "pcgrad", "mgda_ub", "cagrad", "mola_router",
                                    "mtlora"])
def test_shape_only_counting_equals_real_execution(method: str, kind: str,
                                                   tiny_scenario) -> None:
    shape, setup = _shape(tiny_scenario, kind)
    spec = resolve_method(method)
    assert (cost.method_flops(spec, shape, setup, shape_only=True)
            == cost.method_flops(spec, shape, setup, shape_only=False))


def test_step_flops_scale_with_the_batch(tiny_scenario) -> None:
    shape, setup = _shape(tiny_scenario, "single_input")
    spec = resolve_method("hps")
    counts = cost.method_flops(spec, shape, setup)
    assert counts.step.fixed == 0 and counts.step.per_sample > 0  # HPS: all FLOPs per sample
    small = cost.step_flops(spec, shape, TrainingSetup(epochs=1, batch_size=4))
    large = cost.step_flops(spec, shape, TrainingSetup(epochs=1, batch_size=8))
    assert large == 2 * small
    # a batch larger than the training set is capped as the engine's sampler caps it
    train = shape.sizes["train"][shape.task_names[0]]
    capped = cost.step_flops(spec, shape, TrainingSetup(epochs=1, batch_size=10 * train))
    assert capped == cost.step_flops(spec, shape, TrainingSetup(epochs=1, batch_size=train))


def test_per_task_gradient_weighting_counts_its_backward_passes(tiny_scenario) -> None:
    shape, setup = _shape(tiny_scenario, "multi_input")
    hps = cost.method_flops(resolve_method("hps"), shape, setup)
    pcgrad = cost.method_flops(resolve_method("pcgrad"), shape, setup)
    assert pcgrad.evaluation == hps.evaluation  # the same forward
    # T = 2 backward passes through the shared encoder instead of one
    assert pcgrad.step.per_sample > 1.5 * hps.step.per_sample


def test_run_flops_follow_the_engines_steps_and_evaluations() -> None:
    run = make_run("hps", "digits_tasks", 0, "smoke")
    shape = cost.scenario_shape("digits_tasks", "smoke")
    assert shape is not None and not shape.nominal
    setup = scenarios.get("digits_tasks")().setup("smoke")
    result = cost.run_flops(run)
    assert result is not None
    per_epoch = max(math.ceil(n / setup.batch_size) for n in shape.sizes["train"].values())
    assert result.steps == setup.epochs * per_epoch == setup.epochs * epoch_steps(
        list(shape.sizes["train"].values()), setup.batch_size, True)
    assert result.train_flops == result.steps * result.step_flops
    spec = resolve_method("hps")
    assert result.eval_flops == (setup.epochs * (cost.eval_flops(spec, shape, setup, "val")
                                                 + cost.eval_flops(spec, shape, setup, "oracle"))
                                 + cost.eval_flops(spec, shape, setup, "test"))
    assert 0 < cost.eval_flops(spec, shape, setup, "oracle") < cost.eval_flops(
        spec, shape, setup, "test")  # 32 of the 40 test samples per task
    longer = make_run("hps", "digits_tasks", 0, "smoke", {"train.epochs": 2 * setup.epochs})
    assert cost.run_flops(longer).train_flops == 2 * result.train_flops  # type: ignore[union-attr]
    plan = cost.plan_flops([run, make_run("hps", "digits_tasks", 1, "smoke")])
    assert set(plan.values()) == {result}  # seeds share the cost


def test_nominal_shapes_of_real_scenarios_come_from_published_sizes() -> None:
    from medmnist import INFO

    from bench.data.real import split_sizes

    mola = scenarios.get("medmnist_mola")()
    shape = mola.shape("paper")
    assert shape is not None and shape.nominal and shape.multi_input
    for flag in mola.subsets:
        assert {s: shape.sizes[s][flag] for s in ("train", "val", "test")} == \
            INFO[flag]["n_samples"]
    smoke = mola.shape("smoke")
    assert smoke is not None and smoke.backbone == "resnet"
    assert smoke.sizes["val"]["breastmnist"] == min(32, INFO["breastmnist"]["n_samples"]["val"])

    for name, total in (("vlcs", 10729), ("officehome", 15588)):
        scen = scenarios.get(name)()
        shape = scen.shape("paper")
        assert shape is not None and shape.shared_label_space and shape.backbone == "resnet18"
        assert sum(sum(sizes.values()) for sizes in shape.sizes.values()) == total
        size = scen.pipeline("paper").size
        assert shape.input_shape == (3, size, size)
        assert shape.backbone_kwargs == scen.backbone_kwargs_of("paper")  # as the loader
        first = shape.task_names[0]
        assert {s: shape.sizes[s][first] for s in ("train", "val", "test")} == split_sizes(
            scen.published_sizes[first], (0.1, 0.1))

    nyuv2 = scenarios.get("nyuv2")()
    shape = nyuv2.shape("paper")
    assert shape is not None and not shape.multi_input
    assert shape.input_shape[1:] == _constants(nyuv2).PROFILE_DATA["paper"][:2]
    assert shape.sizes["train"]["depth"] + shape.sizes["val"]["depth"] == 795
    assert shape.sizes["test"]["depth"] == 654 and shape.sizes["val"]["depth"] == 80
    pascal = scenarios.get("pascal_context")()
    shape = pascal.shape("paper")
    assert shape is not None and shape.tasks == _constants(pascal).TASKS
    assert shape.sizes["train"]["semseg"] + shape.sizes["val"]["semseg"] == 4998
    assert shape.sizes["test"]["semseg"] == 5105
    assert scenarios.get("radimagenet")().shape("paper") is None


def _constants(scenario: object) -> object:
    """The module (plugin file) that defines a scenario class."""
    return sys.modules[type(scenario).__module__]


def test_dry_run_without_records_prints_a_counted_estimate(tmp_path: Path, capsys) -> None:
    assert main(["run", "--method", "hps,pcgrad", "--scenario", "digits_tasks", "--profile",
                 "smoke", "--seeds", "0,1", "--jobs", "1", "--dry-run", "--results-dir",
                 str(tmp_path / "results")]) == 0
    out, err = capsys.readouterr()
    assert "estimated cost of the 4 runs to do: 4 by counted FLOPs" in err
    assert "GFLOP/s measured on a ResNet-18 step" in err and "with --jobs 1" in err
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.endswith("FLOP") for line in lines)
    assert not (tmp_path / "results").exists()


def test_dry_run_of_real_scenarios_without_data(tmp_path: Path, capsys) -> None:
    assert main(["run", "--method", "hps", "--scenario", "medmnist_mola,radimagenet",
                 "--profile", "paper", "--seeds", "0", "--jobs", "1", "--dry-run",
                 "--results-dir", str(tmp_path / "results")]) == 0
    out, err = capsys.readouterr()
    assert "data missing for medmnist_mola" in err
    assert "1 by counted FLOPs" in err
    assert "published dataset sizes (data not present): medmnist_mola" in err
    assert ("no estimate for radimagenet: sample counts unknown until its data are present"
            in err)
    assert "size unknown" in out and "PFLOP" in out


def test_plan_flops_in_worker_processes_match_one_process() -> None:
    runs = [make_run(method, "digits_domains", 0, "smoke") for method in ("hps", "mgda")]
    assert cost.plan_flops(runs, jobs=2) == cost.plan_flops(runs, jobs=1)


def test_counting_paper_runs_fetches_no_weights_and_follows_pooled_epochs(monkeypatch) -> None:
    """The paper profile's models start from pretrained weights, but weights do not change
    FLOPs: counting never asks for them. MoLA's pooled batches: an epoch is one pass over
    all tasks' samples together."""
    import timm

    from bench.run.engine import epoch_steps

    real_create = timm.create_model

    def no_download(name: str, pretrained: bool = False, **kwargs):
        assert not pretrained, f"counting asked for the weights of {name}"
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    run = make_run("hps", "medmnist_mola", 0, "paper")
    shape = scenarios.get("medmnist_mola")().shape("paper")
    assert shape is not None and shape.backbone_kwargs == {"pretrained": True}
    cost_of = cost.run_flops(run)
    assert cost_of is not None
    train_total = sum(shape.sizes["train"].values())
    assert cost_of.steps == 100 * (train_total // 128)  # pooled: one pass, batch 128 in all
    assert cost_of.steps == 100 * epoch_steps(list(shape.sizes["train"].values()), 128, True,
                                              "pooled")
    mtlora = make_run("mtlora", "pascal_context", 0, "paper")  # the ImageNet Swin-T at 448²
    assert cost.run_flops(mtlora).step_flops > 10 * cost.run_flops(  # type: ignore[union-attr]
        make_run("mtlora", "digits_scene", 0, "default")).step_flops  # type: ignore[union-attr]


def test_a_second_dry_run_reads_the_counted_flops_from_disk(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    """Counted FLOPs are kept on disk per (method identity, scenario shape, code version): a
    second dry run (a new process: nothing in memory) does not count again; another code
    version counts anew."""
    monkeypatch.setenv(cost.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cost, "_METHOD_CACHE", {})
    counted: list[str] = []
    real = cost.method_flops

    def counting(spec, *args, **kwargs):
        counted.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(cost, "method_flops", counting)
    args = ["run", "--method", "hps", "--scenario", "digits_tasks", "--profile", "smoke",
            "--seeds", "0,1", "--jobs", "1", "--dry-run", "--results-dir",
            str(tmp_path / "results")]
    assert main(args) == 0
    first = capsys.readouterr().out
    calls = len(counted)  # method_flops calls itself with the counted batch size
    assert calls >= 1 and set(counted) == {"hps"} and "FLOP" in first
    assert len(list((tmp_path / "cache" / "flops").glob("*.json"))) == 1
    cost._METHOD_CACHE.clear()
    assert main(args) == 0
    assert len(counted) == calls  # read from disk, not counted
    assert capsys.readouterr().out == first
    cost._METHOD_CACHE.clear()
    monkeypatch.setattr(cost, "code_version", lambda: "another version")
    assert main(args) == 0
    assert len(counted) == 2 * calls

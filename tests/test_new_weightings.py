"""The weightings of issue 14 on hand-made task gradients and losses: absent tasks, colinear and
rank-deficient gradients, their own formulas and state, and training with pooled batches where
tasks go missing. (Agreement with torchjd: ``test_torchjd_crosscheck.py``.)

Absent tasks: a task with no sample in a batch has the loss ``0 * (...)`` (an exact 0 on the
graph) and a zero gradient row. Every weighting must treat it as if the task were not there —
asserted below as "the first step with an absent task equals the first step of the same
weighting built without that task" — with no NaN and no all-zero update.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchjd.aggregation import AlignedMTLWeighting
from weighting_probe import make_probe, step

from bench.models.method import resolve_method
from bench.registry import weightings
from bench.run.engine import train

torch.set_num_threads(1)

GRADIENT_WEIGHTINGS = ("upgrad", "dualproj", "config", "nash_mtl", "aligned_mtl", "fairgrad",
                       "sdmgrad", "moco", "db_mtl", "excess_mtl")
LOSS_WEIGHTINGS = ("famo", "gls", "si", "imtl_l", "stch")
NEW_METHODS = (*GRADIENT_WEIGHTINGS, "aligned_mtl_ub", *LOSS_WEIGHTINGS, "linear_scalarization")


def module_of(name: str):
    return sys.modules[weightings.get(name).cls.__module__]


def run(name: str, grads: torch.Tensor, values: torch.Tensor | None = None,
        rep_grad: bool = False, **kwargs: object) -> tuple[torch.Tensor, object]:
    spec = weightings.get(name)
    model = make_probe(spec.cls, len(grads), grads.shape[1], rep_grad=rep_grad)
    return step(model, grads, values, **{**spec.defaults, **kwargs})


GRADS = torch.tensor([[1.0, 0.2, -0.5, 0.0], [-0.6, 1.0, 0.3, 0.2],
                      [0.1, -0.4, 1.2, 0.5], [0.3, 0.3, 0.3, -1.0]])
VALUES = torch.tensor([0.7, 1.3, 2.0, 0.4])
RANK_DEFICIENT = {
    "duplicate": torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]),
    "positive_multiple": torch.tensor([[1.0, -1.0, 0.5], [4.0, -4.0, 2.0], [0.2, 1.0, 1.0]]),
    "five_in_a_plane": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0],
                                     [2.0, -0.5, 0.0], [-0.3, 1.0, 0.0]]),
    "near_colinear": torch.tensor([[1.0, 0.5, -0.2], [1.0, 0.5 + 1e-6, -0.2],
                                   [0.3, -1.0, 0.4]]),
}


@pytest.mark.parametrize("name", (*GRADIENT_WEIGHTINGS, *LOSS_WEIGHTINGS, "mgda", "imtl"))
@pytest.mark.parametrize("absent", [(0,), (2,), (3,), (0, 1, 3)])
def test_absent_task_is_as_if_not_there(name: str, absent: tuple[int, ...]) -> None:
    grads, values = GRADS.clone(), VALUES.clone()
    grads[list(absent)], values[list(absent)] = 0.0, 0.0
    update, weights = run(name, grads, values)
    keep = [t for t in range(len(GRADS)) if t not in absent]
    alone, alone_weights = run(name, GRADS[keep], VALUES[keep])
    assert torch.isfinite(update).all() and float(update.norm()) > 1e-3
    assert torch.allclose(update, alone, rtol=1e-4, atol=1e-6), (update, alone)
    if weights is not None:
        assert all(weights[t] == 0.0 for t in absent)
        assert np.allclose(np.asarray(weights)[keep], alone_weights, rtol=1e-4)


@pytest.mark.parametrize("name", (*GRADIENT_WEIGHTINGS, *LOSS_WEIGHTINGS))
def test_every_task_absent_gives_a_zero_update(name: str) -> None:
    update, _ = run(name, torch.zeros(3, 4), torch.zeros(3))
    assert torch.equal(update, torch.zeros(4))


@pytest.mark.parametrize("name", GRADIENT_WEIGHTINGS)
@pytest.mark.parametrize("case", sorted(RANK_DEFICIENT))
def test_rank_deficient_gradients(name: str, case: str) -> None:
    grads = RANK_DEFICIENT[case]
    update, _ = run(name, grads)
    assert torch.isfinite(update).all()
    assert float(update.norm()) > 1e-3 * float(grads.norm(dim=1).max()), "silent zero update"
    if name in ("upgrad", "dualproj"):  # conflicts with no task (up to reg_eps = 1e-4)
        cos = (grads @ update) / (grads.norm(dim=1) * update.norm())
        assert float(cos.min()) >= -1e-3
    if name == "config":  # positive cosine with every task; equal where U x = 1 is solvable
        unit = grads / grads.norm(dim=1, keepdim=True)
        cos = unit @ update / update.norm()
        assert float(cos.min()) > 0
        if case != "five_in_a_plane":  # 5 equal cosines in a plane: least squares only
            assert float(cos.max() - cos.min()) < 1e-3


@pytest.mark.parametrize("name", GRADIENT_WEIGHTINGS)
def test_opposite_gradients_give_no_nan(name: str) -> None:
    """``g`` and ``-g``: a Pareto-stationary point; a zero update is allowed, NaN is not."""
    grads = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])
    update, _ = run(name, grads)
    assert torch.isfinite(update).all()


@pytest.mark.parametrize("name", ("upgrad", "dualproj", "nash_mtl", "aligned_mtl", "fairgrad",
                                  "sdmgrad", "excess_mtl"))
def test_returned_weights_combine_the_task_gradients(name: str) -> None:
    update, weights = run(name, GRADS)
    assert weights is not None and len(weights) == len(GRADS)
    combined = torch.as_tensor(np.asarray(weights), dtype=torch.float32) @ GRADS
    assert torch.allclose(update, combined, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", (*LOSS_WEIGHTINGS, "linear_scalarization"))
def test_loss_weightings_return_dL_dLt(name: str) -> None:
    """For loss-based weightings the returned weights are ``dL/dL_t``: the update is their
    combination of the task gradients."""
    update, weights = run(name, GRADS, VALUES)
    combined = torch.as_tensor(np.asarray(weights), dtype=torch.float32) @ GRADS
    assert torch.allclose(update, combined, rtol=1e-4, atol=1e-6)


def test_aligned_mtl_ub_on_representation_gradients() -> None:
    update, _ = run("aligned_mtl", GRADS, rep_grad=True)
    params, _ = run("aligned_mtl", GRADS)
    assert torch.allclose(update, params, rtol=1e-4, atol=1e-6)
    assert weightings.get("aligned_mtl").rep_grad == (False, True)
    assert resolve_method("aligned_mtl_ub").rep_grad


def test_aligned_mtl_equalises_the_aligned_gradients() -> None:
    """``B G`` has orthogonal rows of equal norm (condition number 1) on a full-rank ``G``."""
    _, alpha = run("aligned_mtl", GRADS)
    b = AlignedMTLWeighting._compute_balance_transformation(GRADS @ GRADS.T)
    aligned = b @ GRADS
    gram = aligned @ aligned.T
    assert torch.allclose(gram, gram[0, 0] * torch.eye(len(GRADS)), atol=1e-4)
    assert np.allclose(alpha, b.sum(dim=1).numpy(), atol=1e-5)


def test_db_mtl_first_step() -> None:
    """``beta = 0.9``: the EMA is ``0.1 grad log L_t = 0.1 g_t / L_t``; every task is scaled to
    the largest EMA norm."""
    update, _ = run("db_mtl", GRADS, VALUES)
    ema = 0.1 * GRADS / VALUES[:, None]
    norms = ema.norm(dim=1)
    expected = (norms.max() / norms) @ ema
    assert torch.allclose(update, expected, rtol=1e-4, atol=1e-6)


def test_moco_first_step_and_projection_variant() -> None:
    update, lam = run("moco", GRADS, VALUES)
    y = 0.5 * GRADS / GRADS.norm(dim=1, keepdim=True) * VALUES[:, None]  # beta_1 = 0.5
    start = torch.full((4,), 0.25)
    expected_lam = torch.softmax(start - 0.1 * (y @ y.T) @ start, 0)  # gamma_1 = 0.1
    assert np.allclose(lam, expected_lam.numpy(), atol=1e-6)
    assert torch.allclose(update, y.T @ expected_lam, atol=1e-6)
    spec = weightings.get("moco")
    model = make_probe(spec.cls, 4, 4)
    for _ in range(5):
        _, lam = step(model, GRADS, VALUES, **{**spec.defaults, "lambda_update": "projection",
                                               "normalize": "none"})
        assert np.isclose(np.sum(lam), 1.0) and (np.asarray(lam) >= 0).all()
    projected = module_of("moco").project_simplex(torch.tensor([0.5, 0.9, -0.2]))
    assert torch.allclose(projected, torch.tensor([0.3, 0.7, 0.0]), atol=1e-6)


def test_excess_mtl_leaves_an_absent_task_state_alone() -> None:
    spec = weightings.get("excess_mtl")
    model = make_probe(spec.cls, 4, 4)
    step(model, GRADS, VALUES, **spec.defaults)
    absent = GRADS.clone()
    absent[1] = 0.0
    values = VALUES.clone()
    values[1] = 0.0
    state = model.__dict__["_excess_mtl"]
    before_sq, before_w = state["sq"][1].clone(), state["w"].clone()
    _, weights = step(model, absent, values, robust_step_size=1.0)
    assert torch.equal(state["sq"][1], before_sq) and weights[1] == 0.0
    assert not np.isclose(weights[0], before_w[0].item())  # the present tasks moved
    assert np.isclose(state["w"].sum().item(), 4.0)


def test_torchjd_state_is_kept_per_set_of_present_tasks() -> None:
    spec = weightings.get("nash_mtl")
    model = make_probe(spec.cls, 4, 4)
    step(model, GRADS, **spec.defaults)
    step(model, GRADS * 1.1, **spec.defaults)
    cache = model.__dict__["_torchjd_aggregators"]
    assert len(cache) == 1
    (aggregator,) = cache.values()
    assert aggregator.weighting.step == 2  # the warm start saw both steps
    absent = GRADS.clone()
    absent[2] = 0.0
    step(model, absent, **spec.defaults)
    assert len(cache) == 2


def test_famo_logits_follow_the_slower_task() -> None:
    spec = weightings.get("famo")
    model = make_probe(spec.cls, 3, 4)
    losses = torch.tensor([1.0, 1.0, 1.0]) + GRADS[:3] @ model.p
    model.backward(losses, **spec.defaults)
    assert torch.equal(model.famo_logits, torch.zeros(3))
    model.after_step(torch.tensor([0.5, 0.9, 0.5]))  # task 1 decreased least
    logits = model.famo_logits
    assert logits[1] > logits[0] and torch.isclose(logits[0], logits[2])
    with pytest.raises(RuntimeError, match="after_step"):
        model.after_step(torch.tensor([0.5, 0.9, 0.5]))
    assert weightings.get("famo").cls.needs_losses_after_step


def test_stch_warmup_nadir_then_tchebycheff() -> None:
    spec = weightings.get("stch")
    model = make_probe(spec.cls, 4, 4)
    kwargs = {"mu": 0.5, "warmup_epochs": 1}
    model.train()
    _, weights = step(model, GRADS, VALUES, **kwargs)  # epoch 0: warm-up, sum of logs
    assert np.allclose(weights, 1.0 / VALUES.numpy(), rtol=1e-5)
    for epoch_values in (VALUES, 2.0 * VALUES):  # epoch 1: still log-sum, nadir accumulated
        model.eval()
        model.train()
        if epoch_values is VALUES:
            step(model, GRADS, VALUES, **kwargs)
            step(model, GRADS, 3.0 * VALUES, **kwargs)
    assert model.epoch == 2
    _, weights = step(model, GRADS, 2.0 * VALUES, **kwargs)  # epoch 2: STCH, nadir 2 VALUES
    f = torch.log(torch.ones(4) + 1e-20)  # L / nadir = 1 for every task
    expected = 4 * torch.softmax(f / 0.5, 0) / (2.0 * VALUES)
    assert np.allclose(weights, expected.numpy(), rtol=1e-5)


def test_imtl_l_scales_are_parameters_and_absent_scales_stay() -> None:
    spec = weightings.get("imtl_l")
    model = make_probe(spec.cls, 4, 4)
    assert any(p is model.loss_scale for p in model.parameters())
    values = VALUES.clone()
    values[3] = 0.0
    grads = GRADS.clone()
    grads[3] = 0.0
    step(model, grads, values)
    assert model.loss_scale.grad[3] == 0.0
    assert torch.allclose(model.loss_scale.grad[:3], values[:3] - 1.0)


def test_linear_scalarization_weights() -> None:
    update, weights = run("linear_scalarization", GRADS, weights=[1.0, 0.0, 2.0, 0.5])
    assert torch.allclose(update, torch.tensor([1.0, 0.0, 2.0, 0.5]) @ GRADS, atol=1e-6)
    ones, _ = run("linear_scalarization", GRADS)
    assert torch.allclose(ones, GRADS.sum(0), atol=1e-6)
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0, 1.0], "x"):
        with pytest.raises(ValueError, match="weighting.weights"):
            run("linear_scalarization", GRADS, weights=bad)
    spec = resolve_method("linear_scalarization").with_overrides(
        {"weighting.weights": [1, 2, 3]})
    assert spec.resolved_weighting_kwargs() == {"weights": [1, 2, 3]}


@pytest.mark.parametrize("name", NEW_METHODS)
def test_pooled_batches_with_missing_tasks_train(name: str, tiny_scenario) -> None:
    """Pooled batches of 3 samples over 2 tasks: tasks go missing from steps."""
    if name == "aligned_mtl_ub":
        pytest.skip("representation gradients are refused on pooled batches (check_compatible)")
    scenario, data = tiny_scenario("multi_input")
    setup = replace(data.training, sampling="pooled", batch_size=3, epochs=2)
    result = train(resolve_method(name), scenario, data, setup, seed=0)
    assert result.steps == 2 * (32 // 3)
    for task_metrics in result.test_metrics.values():
        assert all(math.isfinite(v) for v in task_metrics.values())
    assert all(math.isfinite(h["val_score"]) for h in result.history)


def _engine_patched() -> bool:
    import bench.run.engine

    return hasattr(bench.run.engine, "WeightTrajectory")


@pytest.mark.skipif(not _engine_patched(), reason="ENGINE_PATCH.md not applied to bench/engine.py")
@pytest.mark.parametrize("kind", ["multi_input", "single_input"])
def test_engine_calls_after_step_and_logs_task_weights(kind: str, tiny_scenario,
                                                       monkeypatch) -> None:
    """With the engine patch: FAMO's logits learn from the same batch's losses after every
    step, and each epoch's history holds the mean/min/max of the returned task weights."""
    scenario, data = tiny_scenario(kind)
    calls: list[torch.Tensor] = []
    famo = weightings.get("famo").cls
    original = famo.after_step

    logits: list[torch.Tensor] = []

    def spy(self, losses_after: torch.Tensor) -> None:
        calls.append(losses_after.clone())
        original(self, losses_after)
        logits.append(self.famo_logits)

    monkeypatch.setattr(famo, "after_step", spy)
    result = train(resolve_method("famo"), scenario, data, replace(data.training, epochs=2),
                   seed=0)
    assert len(calls) == result.steps and all(c.shape == (len(data.tasks),) for c in calls)
    for entry in result.history:
        summary = entry["task_weights"]
        assert set(summary) == {"mean", "min", "max"}
        assert all(len(v) == len(data.tasks) for v in summary.values())
        assert all(lo <= m <= hi for lo, m, hi in zip(summary["min"], summary["mean"],
                                                       summary["max"]))
    assert not torch.equal(logits[-1], torch.zeros(len(data.tasks)))  # the logits learnt
    hps = train(resolve_method("hps"), scenario, data, data.training, seed=0)
    assert hps.history[0]["task_weights"]["mean"] == [1.0] * len(data.tasks)

"""Smoke test of every registered method (and a few ``A+B`` combinations) on a tiny scenario of
each heterogeneity kind: one optimiser step gives finite losses and moves the parameters, and a
1-epoch training run gives finite metrics."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.models.method import IncompatibleError, build_model, check_compatible, resolve_method
from bench.registry import methods
from bench.run.engine import compute_losses, make_optimizer, train

torch.set_num_threads(1)

KINDS = ("domain", "multi_input", "single_input")
COMBINATIONS = ("mmoe+pcgrad", "cgc+cagrad", "cross_stitch+mgda_ub", "mmoe+mgda", "mtan+pcgrad",
                "ple+mgda_ub", "dselect_k+cagrad", "ltb+pcgrad")
#: the domain-generalisation methods (architecture or weighting restricted to domains)
DOMAIN_ONLY = ("coral", "dann", "eqrm", "groupdro", "mmd_aae", "selfreg", "vrex")
#: (method, kind) pairs that check_compatible must refuse; update when a method is restricted
EXPECTED_INCOMPATIBLE: set[tuple[str, str]] = {
    (m, k) for m in DOMAIN_ONLY for k in ("multi_input", "single_input")}
#: methods that train no shared parameter (a frozen encoder, task decoders only)
NO_SHARED_TRAINING = {"decoders_only"}


def _cases() -> list[tuple[str, str]]:
    return [(m, k) for m in (*methods.list(), *COMBINATIONS) for k in KINDS]


def test_incompatible_set_is_as_expected(tiny_scenario) -> None:
    refused = set()
    for name, kind in _cases():
        scenario, _ = tiny_scenario(kind)
        try:
            check_compatible(resolve_method(name), scenario)
        except IncompatibleError:
            refused.add((name, kind))
    assert refused == EXPECTED_INCOMPATIBLE


@pytest.mark.parametrize(("name", "kind"), _cases())
def test_method_trains(name: str, kind: str, tiny_scenario) -> None:
    scenario, data = tiny_scenario(kind)
    spec = resolve_method(name)
    try:
        check_compatible(spec, scenario)
    except IncompatibleError as err:
        assert (name, kind) in EXPECTED_INCOMPATIBLE, f"unexpectedly incompatible: {err}"
        pytest.skip(f"{name} is incompatible with {kind} scenarios: {err}")
    torch.manual_seed(0)
    model = build_model(spec, data)
    model.train()
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], data.training)
    fused = (data.multi_input and not spec.weighting_spec.cls.needs_task_gradients
             and spec.arch_spec.supports_fused_multi_input)
    index = {t: torch.arange(8) for t in data.task_names}
    losses, _ = compute_losses(model, data, data.train, index, fused)
    assert losses.shape == (len(data.tasks),) and torch.isfinite(losses).all()
    optimizer.zero_grad(set_to_none=False)
    model.backward(losses, **spec.resolved_weighting_kwargs())
    optimizer.step()
    after = dict(model.named_parameters())
    moved = {n for n, p in params.items() if not torch.equal(p, after[n].detach())}
    shared = {id(p) for p in model.get_share_params() if p.requires_grad}
    if name in NO_SHARED_TRAINING:
        assert not shared
    else:
        assert any(id(after[n]) in shared for n in moved), "no shared parameter moved"
    for task in data.task_names:  # every task-specific decoder that exists was trained
        if task in model.decoders:
            assert any(n.startswith(f"decoders.{task}.") for n in moved), task
    result = train(spec, scenario, data, data.training, seed=0)
    assert result.steps == 2
    for task_metrics in result.test_metrics.values():
        assert all(math.isfinite(v) for v in task_metrics.values())


@pytest.mark.parametrize("name", ["dwa", "gradnorm", "graddrop", "imtl", "gradvac", "uw"])
@pytest.mark.parametrize("kind", ["multi_input", "single_input"])
def test_epoch_dependent_weightings_train_three_epochs(name: str, kind: str,
                                                       tiny_scenario) -> None:
    """DWA (from epoch 2) and GradNorm (from epoch 1) change behaviour after the first epochs."""
    scenario, data = tiny_scenario(kind)
    spec = resolve_method(name)
    result = train(spec, scenario, data, replace(data.training, epochs=3), seed=0)
    assert result.steps == 6 and len(result.history) == 3
    assert all(math.isfinite(h["val_score"]) for h in result.history)


def test_gradnorm_learns_its_weights(tiny_scenario) -> None:
    _, data = tiny_scenario("single_input")
    model = build_model(resolve_method("gradnorm"), data)
    optimizer = make_optimizer(model.parameters(), data.training)
    weights = []
    for _epoch in range(2):
        model.train()
        for step in range(2):
            index = {t: torch.arange(step * 8, step * 8 + 8) for t in data.task_names}
            losses, _ = compute_losses(model, data, data.train, index, fused=False)
            optimizer.zero_grad(set_to_none=False)
            weights.append(model.backward(losses, alpha=1.5))
            optimizer.step()
        model.eval()
    assert all(np.allclose(w, 1.0) for w in weights[:3])  # epoch 0, then the initial softmax
    assert not np.allclose(weights[3], 1.0) and np.isclose(weights[3].sum(), 3.0)

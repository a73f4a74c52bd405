"""Gradient weightings get only the tasks present in the batch (a task absent from a pooled batch
has an exact-zero loss and gradient row), and IMTL solves with a pseudo-inverse: no NaN, no
LinAlgError, no silent all-zero update on rank-deficient, colinear or absent-task gradients."""

from __future__ import annotations

import random

import pytest
import torch

from bench.registry import weightings

torch.set_num_threads(1)

#: (weighting, its keywords) that compute per-task gradients of the shared parameters
GRADIENT_WEIGHTINGS = [("imtl", {}), ("mgda", {"mgda_gn": "none"}), ("mgda", {"mgda_gn": "l2"}),
                       ("cagrad", {"calpha": 0.5, "rescale": 1}), ("pcgrad", {}),
                       ("gradvac", {"beta": 0.5})]
SOLVERS = ("imtl", "mgda", "cagrad")  # solve for weights: the absent row must not take part


def _grads(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 6, generator=gen)


def _run(run_weighting, name: str, grads: torch.Tensor, kwargs: dict, batch_tasks=None):
    random.seed(0)  # PCGrad and GradVac shuffle the task order
    return run_weighting(weightings.get(name).cls, grads, batch_tasks=batch_tasks, **kwargs)


@pytest.mark.parametrize(("name", "kwargs"), GRADIENT_WEIGHTINGS,
                         ids=[f"{n}-{k}" for n, k in GRADIENT_WEIGHTINGS])
def test_an_absent_task_gives_a_finite_nonzero_update(name: str, kwargs: dict,
                                                      run_weighting) -> None:
    grads = _grads()
    grads[2] = 0.0  # task 2 has no sample in this batch: its loss and gradient are exact zeros
    update, weights = _run(run_weighting, name, grads, kwargs, [True, True, False])
    assert torch.isfinite(update).all() and update.norm() > 1e-3, (name, update)
    if name in SOLVERS:
        assert weights[2] == 0.0
        alone, _ = _run(run_weighting, name, grads[:2].clone(), kwargs)  # the 2-task problem
        assert torch.allclose(update, alone, atol=1e-6), name


def test_a_zero_row_is_left_out_even_without_the_mask(run_weighting) -> None:
    """Told nothing, MGDA's min-norm point would be the absent task's zero row — an exactly zero
    update (what happened on pooled batches before). An exact-zero row counts as absent too."""
    grads = _grads()
    grads[2] = 0.0
    update, weights = _run(run_weighting, "mgda", grads, {"mgda_gn": "none"})
    assert update.norm() > 0.0 and weights[2] == 0.0


@pytest.mark.parametrize("case", ["colinear", "parallel_three", "zero_gradient",
                                  "more_tasks_than_dims"])
def test_imtl_is_finite_on_rank_deficient_gradients(case: str, run_weighting) -> None:
    g = _grads()
    grads = {"colinear": torch.stack([g[0], 2.0 * g[0], g[1]]),
             "parallel_three": torch.stack([g[0], 2.0 * g[0], 3.0 * g[0]]),
             "zero_gradient": torch.stack([g[0], torch.zeros(6), g[1]]),  # present, but flat
             "more_tasks_than_dims": torch.randn(5, 2, generator=torch.Generator()
                                                 .manual_seed(1))}[case]
    update, alpha = _run(run_weighting, "imtl", grads, {})
    assert torch.isfinite(update).all() and abs(float(sum(alpha)) - 1.0) < 1e-4
    if case != "more_tasks_than_dims":  # 5 directions in 2-D: only d = 0 projects equally
        assert update.norm() > 1e-3, (case, update)


def test_imtl_matches_libmtls_closed_form_when_it_is_defined(run_weighting) -> None:
    """Full-rank gradients: the pseudo-inverse is the inverse, the update LibMTL's."""
    from bench.models.compat import import_libmtl

    import_libmtl()
    from LibMTL.weighting.IMTL import IMTL as LibMTLIMTL

    from bench.models.compat import CompatWeighting

    class Raw(CompatWeighting, LibMTLIMTL):
        backward = LibMTLIMTL.backward

    grads = _grads(3)
    ours, alpha = _run(run_weighting, "imtl", grads, {})
    theirs, alpha_raw = run_weighting(Raw, grads)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(torch.as_tensor(alpha, dtype=torch.float32),
                          torch.as_tensor(alpha_raw), atol=1e-5)
    # unit projections of the update are equal (IMTL-G, Eq. 4)
    unit = grads / grads.norm(dim=1, keepdim=True)
    projections = unit @ ours
    assert torch.allclose(projections, projections[0].expand(3), atol=1e-4)


def test_imtl_leaves_an_absent_tasks_loss_scale_alone(run_weighting) -> None:
    grads = _grads()
    grads[1] = 0.0
    cls = weightings.get("imtl").cls
    seen = {}

    class Spy(cls):  # type: ignore[misc, valid-type]
        def backward(self, losses, **kwargs):
            out = super().backward(losses, **kwargs)
            seen["scale_grad"] = self.loss_scale.grad.clone()
            return out

    run_weighting(Spy, grads, batch_tasks=[True, False, True])
    assert seen["scale_grad"][1] == 0.0 and seen["scale_grad"][0] != 0.0


@pytest.mark.parametrize("method", ["imtl", "mgda", "cagrad"])
def test_pooled_batches_missing_tasks_train_to_finite_metrics(method: str) -> None:
    """Batches of 2 samples pooled over 4 domains: every step misses at least 2 tasks."""
    import math

    from bench.run.engine import run_config
    from bench.run.plan import make_run

    run = make_run(method, "digits_domains", 0, "smoke",
                   {"train.sampling": "pooled", "train.batch_size": 2})
    result, _ = run_config(run)
    assert all(math.isfinite(v) for task in result.test_metrics.values() for v in task.values())
    assert all(math.isfinite(h["val_score"]) for h in result.history)

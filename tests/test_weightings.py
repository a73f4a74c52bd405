"""Our PCGrad, MGDA and CAGrad update directions against torchjd's aggregators (an independent
implementation) on random task gradients.

Conventions compared:

* PCGrad — both return ``sum_i g_i^PC`` (same scale); the projection order is random in both, so
  for more than 2 tasks both are run with the identity order.
* MGDA — both return the min-norm element ``sum_t alpha_t g_t`` (same scale); both are iterative
  Frank-Wolfe solvers with different stopping rules, so they agree to a tolerance, and we also
  check optimality against the exact QP solution.
* CAGrad — torchjd returns ``g_0 + (c ||g_0|| / ||g_w||) g_w``; we divide by ``1 + calpha^2``
  (LibMTL's default ``rescale=1``): same direction, scale ``1 / (1 + c^2)``; with ``rescale=0``
  the vectors are equal.
* IMTL-G — both weight the gradients with ``alpha`` such that the update has equal projections on
  every task's unit gradient, ``sum alpha = 1`` (LibMTL's IMTL-L loss scales start at 1).
* GradVac — same update on the first call (targets ``phi^ = 0``). The targets then differ:
  LibMTL 1.1.5 updates ``phi^_ij`` only when it projects (``phi_ij < phi^_ij``), torchjd at every
  pair, so only the first call is compared.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torchjd import aggregation as tjd

from bench.registry import weightings

torch.set_num_threads(1)


def random_grads(num_tasks: int, dim: int = 12, seed: int = 0, conflict: bool = True
                 ) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_tasks, dim, generator=gen)
    if not conflict:
        grads = grads.abs()
    return grads * torch.linspace(0.5, 3.0, num_tasks)[:, None]  # different norms


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_matches_torchjd(num_tasks: int, seed: int, run_weighting, monkeypatch) -> None:
    monkeypatch.setattr(random, "shuffle", lambda seq: None)  # LibMTL's order: 0..T-1
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n))  # torchjd's order
    grads = random_grads(num_tasks, seed=seed)
    ours, _ = run_weighting(weightings.get("pcgrad").cls, grads)
    ref = tjd.PCGrad()(grads)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_pcgrad_projects_only_conflicts(run_weighting) -> None:
    grads = random_grads(3, conflict=False)  # pairwise non-negative dot products
    ours, _ = run_weighting(weightings.get("pcgrad").cls, grads)
    assert torch.allclose(ours, grads.sum(0), atol=1e-5)
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    ours, _ = run_weighting(weightings.get("pcgrad").cls, conflicting)
    # g1 -> g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2 -> g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    assert torch.allclose(ours, torch.tensor([0.5, 1.5]), atol=1e-6)


def exact_min_norm(grads: torch.Tensor) -> np.ndarray:
    g = grads.double().numpy()
    gram = g @ g.T
    n = len(g)
    res = minimize(lambda a: a @ gram @ a, np.full(n, 1 / n), jac=lambda a: 2 * gram @ a,
                   method="SLSQP", bounds=[(0, 1)] * n,
                   constraints=({"type": "eq", "fun": lambda a: a.sum() - 1},),
                   options={"ftol": 1e-15, "maxiter": 1000})
    return res.x @ g


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_matches_torchjd_and_exact(num_tasks: int, seed: int, run_weighting) -> None:
    grads = random_grads(num_tasks, seed=seed)
    ours, alpha = run_weighting(weightings.get("mgda").cls, grads, mgda_gn="none")
    assert abs(float(np.sum(alpha)) - 1) < 1e-6 and (np.asarray(alpha) >= 0).all()
    ref = tjd.MGDA(epsilon=1e-6, max_iters=5000)(grads)
    exact = torch.from_numpy(exact_min_norm(grads)).float()
    scale = float(grads.norm(dim=1).max())
    assert (ours - exact).norm() <= 1e-3 * scale
    assert (ours - ref).norm() <= 1e-3 * scale
    # min-norm element: no task gradient decreases its norm further (KKT: g_t . d >= |d|^2)
    d = ours.double()
    assert bool(((grads.double() @ d) >= d @ d - 1e-3 * scale**2).all())


def test_mgda_gradient_normalisation(run_weighting) -> None:
    grads = random_grads(3, seed=3)
    ours, _ = run_weighting(weightings.get("mgda").cls, grads, mgda_gn="l2")
    unit = grads / grads.norm(dim=1, keepdim=True)
    exact = torch.from_numpy(exact_min_norm(unit)).float()
    assert (ours - exact).norm() <= 1e-3
    with pytest.raises(ValueError, match="mgda_gn"):
        run_weighting(weightings.get("mgda").cls, grads, mgda_gn="l1")


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("calpha", [0.2, 0.5, 0.9])
def test_cagrad_matches_torchjd(num_tasks: int, calpha: float, run_weighting) -> None:
    grads = random_grads(num_tasks, seed=num_tasks)
    cls = weightings.get("cagrad").cls
    ref = tjd.CAGrad(c=calpha)(grads)
    raw, w = run_weighting(cls, grads, calpha=calpha, rescale=0)
    assert w.shape == (num_tasks,)
    assert cosine(raw, ref) > 0.9999
    assert torch.allclose(raw, ref, rtol=2e-3, atol=2e-3 * float(ref.norm()))
    scaled, _ = run_weighting(cls, grads, calpha=calpha, rescale=1)
    assert torch.allclose(scaled, raw / (1 + calpha**2), rtol=1e-4, atol=1e-5)
    half, _ = run_weighting(cls, grads, calpha=calpha, rescale=2)
    assert torch.allclose(half, raw / (1 + calpha), rtol=1e-4, atol=1e-5)


def test_cagrad_dual_optimality() -> None:
    """``w*`` is optimal: no vertex of the simplex improves the dual objective's linearisation."""
    cagrad = sys.modules[weightings.get("cagrad").cls.__module__]
    for num_tasks in (2, 3, 5, 8):
        g = random_grads(num_tasks, seed=10 + num_tasks).double().numpy()
        gram = g @ g.T
        w, coef = cagrad.cagrad_weights(gram, 0.5)
        mean = np.full(num_tasks, 1 / num_tasks)
        c = 0.5 * np.sqrt(mean @ gram @ mean)
        grad = gram @ mean + c * gram @ w / np.sqrt(w @ gram @ w)
        gap = grad @ w - grad.min()  # Frank-Wolfe duality gap
        assert gap < 1e-5 * np.abs(grad).max()
        assert np.allclose(coef, mean + c / np.sqrt(w @ gram @ w) * w, rtol=1e-6)


def test_cagrad_calpha_zero_is_mean_gradient(run_weighting) -> None:
    grads = random_grads(4)
    ours, _ = run_weighting(weightings.get("cagrad").cls, grads, calpha=0.0, rescale=1)
    assert torch.allclose(ours, grads.mean(0), atol=1e-4)


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_imtl_matches_torchjd(num_tasks: int, run_weighting) -> None:
    grads = random_grads(num_tasks, seed=20 + num_tasks)
    ours, alpha = run_weighting(weightings.get("imtl").cls, grads)
    assert np.isclose(np.sum(alpha), 1.0, atol=1e-5)
    ref = tjd.IMTLG()(grads)
    assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-4 * float(ref.norm()))
    unit = grads / grads.norm(dim=1, keepdim=True)
    projections = unit @ ours
    assert torch.allclose(projections, projections.mean().expand_as(projections), rtol=1e-3)


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_gradvac_first_step_matches_torchjd(num_tasks: int, run_weighting, monkeypatch) -> None:
    monkeypatch.setattr(random, "shuffle", lambda seq: None)
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.arange(n))
    grads = random_grads(num_tasks, seed=30 + num_tasks)
    ours, _ = run_weighting(weightings.get("gradvac").cls, grads, beta=0.5)
    ref = tjd.GradVac(beta=0.5)(grads)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4)
    if num_tasks == 2 and float(grads[0] @ grads[1]) >= 0:
        assert torch.allclose(ours, grads.sum(0), atol=1e-5)

"""Our weightings against torchjd 0.18 (an independent implementation) on the same task-gradient
matrices: random ones drawn by ``hypothesis`` (2-9 tasks; random, conflicting, colinear and
rank-deficient) and hand-made ones. We compare the update direction (cosine >= 0.999) and, where
both fix the scale, the norm. Intended differences, asserted as documented relations:

* torchjd-backed weightings (UPGrad, DualProj, ConFIG, Aligned-MTL, FairGrad, Nash-MTL,
  SDMGrad): the same aggregator through our adapter (absent rows removed) against torchjd on the
  same float32 matrix: equal; on well-conditioned full-rank matrices also against torchjd in
  float64. (On colinear float32 rows float64 is *not* a better reference: ConFIG's pseudo-inverse
  and Aligned-MTL's rank cut-off would keep the rows' rounding noise as a direction.)
  Aligned-MTL uses ``pref_vector = ones`` (the official sum); torchjd's default is the mean:
  ``T`` times torchjd's default (asserted).
* PCGrad: equal with both projection orders fixed to ``0..T-1``.
* MGDA: both iterate Frank-Wolfe with different stops; compared to each other and to the exact
  min-norm QP, where the min-norm element is not ~0 (Pareto-stationary ``J``: both ~0).
* CAGrad: ``rescale=0`` equals torchjd; the default ``rescale=1`` is ``1/(1+c^2)`` of it.
* IMTL (LibMTL's IMTL-G with IMTL-L scales at 1): equal to torchjd's IMTLG on full-rank ``J``.
  LibMTL inverts ``D U^T``, which fails on rank-deficient ``J``: ours then uses torchjd's
  pseudo-inverse form (equal by construction there).
* GradDrop: LibMTL's sums ``dL/dZ * sign(Z)`` over the batch before the sign purity (the
  paper's batch rule); with one sample and ``Z > 0`` it equals torchjd's on the same ``U``.
* GradVac: equal on the first call (LibMTL then updates its targets only for adjusted pairs).
* ExcessMTL (own): weights start at 1, sum to ``T``, and the first call only sets the baseline:
  ``T x`` torchjd's ``ExcessMTL(n_warmup_steps=1)`` over a sequence of matrices.
* FAMO, GLS, IMTL-L (own, loss-based): equal to torchjd's scalarizers (``FAMO``,
  ``GeometricMean``, ``IMTLL``) when every task is present; STCH: ``T x`` torchjd's ``STCH``
  with ``weights = 1`` on the same nadir-normalised log losses.
"""

from __future__ import annotations

import random
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchjd import aggregation as tjd
from torchjd import scalarization as tjs
from weighting_probe import make_probe, step

from bench.registry import weightings

torch.set_num_threads(1)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

KINDS = ("random", "conflicting", "colinear", "low_rank")


def make_matrix(kind: str, num_tasks: int, dim: int, seed: int) -> torch.Tensor:
    """A ``T x D`` task-gradient matrix of one kind, rows of different norms."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(num_tasks).uniform_(-1.5, 1.5, generator=gen))
    if kind == "random":
        base = torch.randn(num_tasks, dim, generator=gen)
    elif kind == "conflicting":  # every pair at an obtuse angle around a common axis
        axis = torch.randn(dim, generator=gen)
        base = torch.randn(num_tasks, dim, generator=gen) * 2.0 - 0.3 * axis
    elif kind == "colinear":  # rows repeat two directions (duplicates and positive multiples)
        dirs = torch.randn(2, dim, generator=gen)
        base = dirs[torch.arange(num_tasks) % 2]
    else:  # low_rank: T rows in a 2-dimensional span, conflicting
        basis = torch.randn(2, dim, generator=gen)
        base = torch.randn(num_tasks, 2, generator=gen) @ basis
    return (base * scales[:, None]).float()


@st.composite
def matrices(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS, max_tasks: int = 9
             ) -> torch.Tensor:
    kind = draw(st.sampled_from(kinds))
    num_tasks = draw(st.integers(2, max_tasks))
    dim = draw(st.integers(num_tasks if kind == "random" else 3, 14))
    return make_matrix(kind, num_tasks, dim, draw(st.integers(0, 2**31 - 1)))


HAND_MADE = {
    "two_conflicting": torch.tensor([[1.0, 0.0], [-1.0, 1.0]]),
    "acute": torch.tensor([[2.0, 0.1, 0.0], [1.0, 1.0, 0.0], [0.5, -0.2, 1.0]]),
    "duplicate": torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]),
    "multiple": torch.tensor([[1.0, -1.0, 0.5, 0.0], [3.0, -3.0, 1.5, 0.0],
                              [0.0, 1.0, 1.0, 1.0]]),
    "low_rank_5": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0],
                                [2.0, -0.5, 0.0], [-0.3, 1.0, 0.0]]),
    "nine_in_four": make_matrix("random", 9, 4, 7),
}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().reshape(1, -1),
                                                       b.double().reshape(1, -1)))


def assert_same(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-3,
                scale: float = 1.0) -> None:
    """Same direction (cosine >= 0.999) and ``||ours|| = scale ||ref||`` (or both ~0)."""
    ours, ref = ours.double(), ref.double()
    tiny = 1e-6 * max(float(ref.norm()), float(ours.norm()), 1e-12)
    if float(ref.norm()) < 1e-6 and float(ours.norm()) < 1e-6:
        return
    assert torch.isfinite(ours).all()
    assert cosine(ours, ref) >= 0.999, (ours, ref)
    assert abs(float(ours.norm()) - scale * float(ref.norm())) <= rtol * scale * float(
        ref.norm()) + tiny, (ours.norm(), ref.norm())


def ours(name: str, grads: torch.Tensor, rep_grad: bool = False, **kwargs: object
         ) -> torch.Tensor:
    spec = weightings.get(name)
    model = make_probe(spec.cls, len(grads), grads.shape[1], rep_grad=rep_grad)
    update, _ = step(model, grads, **{**spec.defaults, **kwargs})
    return update


# -- torchjd-backed weightings: the adapter against torchjd itself ---------------------------

def _reference(name: str, grads: torch.Tensor, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    j = grads.to(dtype)
    if name == "upgrad":
        return tjd.UPGrad()(j)
    if name == "dualproj":
        return tjd.DualProj()(j)
    if name == "config":
        return tjd.ConFIG()(j)
    if name == "aligned_mtl":
        return tjd.AlignedMTL(pref_vector=torch.ones(len(j), dtype=j.dtype))(j)
    if name == "fairgrad":
        return tjd.FairGrad(alpha=1.0)(j)
    if name == "sdmgrad":
        return tjd.SDMGradWeighting(lambda_=0.3)(j @ j.T).to(j) @ j
    if name == "nash_mtl":
        return tjd.NashMTL(n_tasks=len(j))(j)
    raise KeyError(name)


ADAPTED = ("upgrad", "dualproj", "config", "aligned_mtl", "fairgrad", "sdmgrad")


@pytest.mark.parametrize("name", ADAPTED)
@SETTINGS
@given(grads=matrices())
def test_adapted_weighting_equals_torchjd(name: str, grads: torch.Tensor) -> None:
    """The adapter adds nothing to torchjd's aggregation of the same (float32) matrix."""
    assert_same(ours(name, grads), _reference(name, grads), rtol=1e-4)


@pytest.mark.parametrize("name", ADAPTED)
@SETTINGS
@given(grads=matrices(kinds=("random",)))
def test_adapted_weighting_is_accurate(name: str, grads: torch.Tensor) -> None:
    """Well-conditioned full-rank matrices: float32 as the engine computes it = float64."""
    assert_same(ours(name, grads), _reference(name, grads, torch.float64), rtol=2e-3)


@pytest.mark.parametrize("name", (*ADAPTED, "nash_mtl"))
@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_adapted_weighting_equals_torchjd_hand_made(name: str, case: str) -> None:
    grads = HAND_MADE[case]
    update = ours(name, grads)
    assert torch.isfinite(update).all() and float(update.norm()) > 1e-3
    ref = _reference(name, grads)
    if name == "nash_mtl":  # cvxpy/ECOS: iterative, its stop may differ slightly
        assert cosine(update, ref) >= 0.999
        return
    assert_same(update, ref, rtol=1e-4)


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(grads=matrices(kinds=("random", "conflicting"), max_tasks=5))
def test_nash_mtl_equals_torchjd(grads: torch.Tensor) -> None:
    ref = _reference("nash_mtl", grads)
    assert cosine(ours("nash_mtl", grads), ref) >= 0.999


def test_aligned_mtl_is_t_times_torchjd_default() -> None:
    grads = HAND_MADE["acute"]
    assert_same(ours("aligned_mtl", grads), tjd.AlignedMTL()(grads), scale=3.0)


def test_stateful_adapters_keep_torchjd_state_across_steps() -> None:
    """Nash-MTL's warm start and SDMGrad's weights: three steps equal torchjd's three."""
    sequence = [make_matrix("conflicting", 3, 6, seed) for seed in range(3)]
    for name, ref in (("sdmgrad", tjd.SDMGradWeighting(lambda_=0.3)),
                      ("nash_mtl", tjd.NashMTL(n_tasks=3))):
        spec = weightings.get(name)
        model = make_probe(spec.cls, 3, 6)
        for grads in sequence:
            update, _ = step(model, grads, **spec.defaults)
            expected = ref(grads) if name == "nash_mtl" else ref(grads @ grads.T) @ grads
            assert cosine(update, expected) >= 0.999


@SETTINGS
@given(grads=matrices())
def test_aligned_mtl_ub_equals_aligned_mtl_on_one_sample(grads: torch.Tensor) -> None:
    """Representation probe ``Z = p`` (one sample): the UB variant sees the same matrix."""
    assert_same(ours("aligned_mtl", grads, rep_grad=True), ours("aligned_mtl", grads))


# -- our existing weightings against torchjd ------------------------------------------------

@SETTINGS
@given(grads=matrices())
def test_pcgrad_equals_torchjd(grads: torch.Tensor) -> None:
    with mock.patch.object(random, "shuffle", lambda seq: None), \
            mock.patch.object(torch, "randperm", lambda n, **kw: torch.arange(n)):
        assert_same(ours("pcgrad", grads), tjd.PCGrad()(grads.double()))


def _exact_min_norm(grads: torch.Tensor) -> torch.Tensor:
    from scipy.optimize import minimize

    g = grads.double().numpy()
    gram, n = g @ g.T, len(g)
    res = minimize(lambda a: a @ gram @ a, np.full(n, 1 / n), jac=lambda a: 2 * gram @ a,
                   method="SLSQP", bounds=[(0, 1)] * n,
                   constraints=({"type": "eq", "fun": lambda a: a.sum() - 1},),
                   options={"ftol": 1e-16, "maxiter": 2000})
    return torch.from_numpy(res.x @ g)


@SETTINGS
@given(grads=matrices())
def test_mgda_equals_torchjd_and_exact(grads: torch.Tensor) -> None:
    """The min-norm point ``d*`` of the hull is unique and every hull point ``d`` has
    ``||d - d*||^2 <= ||d||^2 - ||d*||^2``: a small objective gap bounds the distance. Our
    Frank-Wolfe stops at 250 iterations (fix 10), torchjd's here at 5000."""
    update = ours("mgda", grads).double()
    ref = tjd.MGDA(epsilon=1e-7, max_iters=5000)(grads.double())
    exact = _exact_min_norm(grads)
    scale2 = float(grads.norm(dim=1).max()) ** 2
    for d in (update, ref):
        gap = float(d @ d - exact @ exact)
        assert -1e-6 * scale2 <= gap <= 1e-3 * scale2
    if float(exact @ exact) > 0.04 * scale2:  # a direction to compare
        assert cosine(update, exact) >= 0.999 and cosine(update, ref) >= 0.999


@SETTINGS
@given(grads=matrices(), calpha=st.sampled_from([0.2, 0.5, 0.9]))
def test_cagrad_equals_torchjd(grads: torch.Tensor, calpha: float) -> None:
    ref = tjd.CAGrad(c=calpha)(grads.double())
    raw = ours("cagrad", grads, calpha=calpha, rescale=0)
    assert_same(raw, ref, rtol=5e-3)
    assert_same(ours("cagrad", grads, calpha=calpha, rescale=1), ref, rtol=5e-3,
                scale=1 / (1 + calpha**2))


@SETTINGS
@given(grads=matrices(kinds=("random", "conflicting")))
def test_imtl_equals_torchjd_on_full_rank(grads: torch.Tensor) -> None:
    if torch.linalg.matrix_rank(grads.double()) < len(grads):
        return
    g = grads.double()
    unit = g / g.norm(dim=1, keepdim=True)
    if float(torch.linalg.cond((g[:1] - g[1:]) @ (unit[:1] - unit[1:]).T)) > 1e3:
        return  # LibMTL inverts D U^T in float32: not accurate there
    assert_same(ours("imtl", grads), tjd.IMTLG()(grads.double()), rtol=5e-3)


@pytest.mark.parametrize("case", ["duplicate", "multiple"])
def test_imtl_on_rank_deficient_matrices(case: str) -> None:
    """LibMTL 1.1.5 inverts ``D U^T``, singular for colinear gradients; ours then falls back to
    torchjd's pseudo-inverse form."""
    grads = HAND_MADE[case]
    assert_same(ours("imtl", grads), tjd.IMTLG()(grads), rtol=1e-4)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 9])
@pytest.mark.parametrize("seed", [0, 1])
def test_graddrop_equals_torchjd_on_one_positive_sample(num_tasks: int, seed: int) -> None:
    grads = make_matrix("conflicting", num_tasks, 10, seed)
    torch.manual_seed(123)
    update = ours("graddrop", grads, rep_grad=True, leak=0.0)
    torch.manual_seed(123)
    ref = tjd.GradDrop()(grads)
    assert torch.allclose(update, ref, atol=1e-5)


@SETTINGS
@given(grads=matrices())
def test_gradvac_first_call_equals_torchjd(grads: torch.Tensor) -> None:
    with mock.patch.object(random, "shuffle", lambda seq: None), \
            mock.patch.object(torch, "randperm", lambda n, **kw: torch.arange(n)):
        assert_same(ours("gradvac", grads, beta=0.5), tjd.GradVac(beta=0.5)(grads.double()),
                    rtol=2e-3)


# -- own implementations against torchjd ----------------------------------------------------

@SETTINGS
@given(num_tasks=st.integers(2, 9), seed=st.integers(0, 10_000),
       eta=st.sampled_from([1e-2, 0.5, 1.0]))
def test_excess_mtl_is_t_times_torchjd_with_one_warmup_step(num_tasks: int, seed: int,
                                                             eta: float) -> None:
    spec = weightings.get("excess_mtl")
    model = make_probe(spec.cls, num_tasks, 8)
    ref = tjd.ExcessMTLWeighting(robust_step_size=eta, n_warmup_steps=1)
    for k in range(4):
        grads = make_matrix("random", num_tasks, 8, seed + k)
        update, weights = step(model, grads, robust_step_size=eta)
        ref_weights = ref(grads.double())
        assert np.allclose(weights, num_tasks * ref_weights.numpy(), rtol=1e-4, atol=1e-6)
        assert_same(update, ref_weights.to(grads) @ grads, scale=num_tasks)


def _losses(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Positive task losses of a parameter vector ``weights``: ``L_t = v_t (1 + x_t . w)^2``."""
    return values * (1.0 + weights) ** 2


@SETTINGS
@given(num_tasks=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_famo_equals_torchjd(num_tasks: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn(num_tasks, generator=gen))
    spec = weightings.get("famo")
    model = make_probe(spec.cls, num_tasks, num_tasks)
    ref = tjs.FAMO(num_tasks)
    ref_param = torch.zeros(num_tasks, requires_grad=True)
    for _ in range(4):
        model.p.grad = None
        model.backward(_losses(values, model.p), **spec.defaults)
        ref(_losses(values, ref_param)).backward()
        assert torch.allclose(model.p.grad, ref_param.grad, rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # one SGD step, the same parameters for both
            model.p -= 0.1 * model.p.grad
            ref_param.copy_(model.p)
            ref_param.grad = None
        after = _losses(values, model.p.detach())
        model.after_step(after)
        ref.update(after)
        assert torch.allclose(model.famo_logits, ref._w.detach(), rtol=1e-4, atol=1e-7)


@SETTINGS
@given(num_tasks=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_gls_and_imtl_l_equal_torchjd(num_tasks: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn(num_tasks, generator=gen))
    for name, ref in (("gls", tjs.GeometricMean()), ("imtl_l", tjs.IMTLL(num_tasks))):
        model = make_probe(weightings.get(name).cls, num_tasks, num_tasks)
        ref_param = torch.zeros(num_tasks, requires_grad=True)
        model.backward(_losses(values, model.p))
        ref(_losses(values, ref_param)).backward()
        assert torch.allclose(model.p.grad, ref_param.grad, rtol=1e-5, atol=1e-7)
        if name == "imtl_l":  # the scales' gradients too (both start at 0)
            assert torch.allclose(model.loss_scale.grad, ref.log_scale.grad, atol=1e-6)


def test_stch_is_t_times_torchjd_after_warmup() -> None:
    stch = sys.modules[weightings.get("stch").cls.__module__]
    num_tasks, mu = 4, 0.5
    model = make_probe(stch.STCH, num_tasks, num_tasks)
    values = torch.tensor([0.5, 2.0, 1.0, 4.0])
    model.backward(_losses(values, model.p), mu=mu, warmup_epochs=0)  # epoch 0: the nadir
    model.eval()
    model.train()  # epoch 1: smooth Tchebycheff
    model.p.grad = None
    param = model.p.detach().clone().fill_(0.1).requires_grad_(True)
    with torch.no_grad():
        model.p.fill_(0.1)
    model.backward(_losses(values, model.p), mu=mu, warmup_epochs=0)
    nadir = values  # the losses at p = 0
    f = torch.log(_losses(values, param) / nadir + 1e-20)
    (num_tasks * tjs.STCH(mu=mu, weights=torch.ones(num_tasks))(f)).backward()
    assert torch.allclose(model.p.grad, param.grad, rtol=1e-5, atol=1e-7)

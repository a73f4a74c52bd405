"""Domain-generalisation baselines (DANN, CORAL, MMD-AAE, SelfReg, GroupDRO, VREx, EQRM): each
method's defining mechanism on a hand-checkable case, their restriction to domain scenarios, and
what the engine gives them (labels, the run's length)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench.run.engine as engine
from bench.models import dg
from bench.models.method import IncompatibleError, build_model, check_compatible, resolve_method
from bench.registry import load_plugins, methods, scenarios
from bench.run.engine import backward_step, batch_losses, fetch_batch
from bench.run.plan import expand

torch.set_num_threads(1)
load_plugins()

DG_METHODS = ("dann", "coral", "mmd_aae", "selfreg", "groupdro", "vrex", "eqrm")


def _module(method: str):
    """A DG method's plugin module (functions that are not exported through bench)."""
    import sys

    spec = resolve_method(method)
    cls = spec.weighting_spec.cls if spec.architecture == "uniform" else spec.arch_spec.cls
    return sys.modules[cls.__module__]


# ------------------------------------------------------------------------------- DANN


def test_gradient_reversal_flips_the_sign_and_scales_by_lambda() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = dg.grad_reverse(x, 0.25)
    assert torch.equal(y, x.detach())  # identity forward
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_dann_lambda_schedule() -> None:
    assert dg.dann_lambda(0.0) == 0.0
    assert dg.dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dg.dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    values = [dg.dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1


def test_dann_encoder_gets_the_reversed_discriminator_gradient(tiny_scenario) -> None:
    """The discriminator descends the domain cross-entropy; the features receive -λ times its
    gradient, λ following the schedule over the announced run length."""
    _, data = tiny_scenario("domain")
    model = build_model(resolve_method("dann"), data)
    model.train()
    model.total_training_steps = 4
    feats = torch.randn(6, model.feature_dim, requires_grad=True)
    domains = torch.tensor([0, 0, 0, 1, 1, 1])
    model.aux_steps = 3  # the third step: progress 2/4
    scale = model.reversal_scale()
    assert scale == pytest.approx(dg.dann_lambda(0.5))
    model.penalty({"features": feats, "domains": domains}, None).backward()
    plain = feats.detach().clone().requires_grad_(True)
    F.cross_entropy(model.discriminator(plain), domains).backward()
    assert torch.allclose(feats.grad, -scale * plain.grad, atol=1e-6)


# ------------------------------------------------------------------------------- CORAL / MMD


def test_coral_zero_for_equal_statistics_and_positive_otherwise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=gen)
    same = x[torch.randperm(20, generator=gen)]  # the same sample, reordered
    assert dg.coral(x, same).item() == pytest.approx(0.0, abs=1e-10)
    assert dg.coral(x, x + 3.0, mean_term=False).item() == pytest.approx(0.0, abs=1e-10)
    assert dg.coral(x, x + 3.0).item() == pytest.approx(9.0, rel=1e-5)  # mean term only
    assert dg.coral(x, 2.0 * x).item() > 0
    # by hand: variances 2 and 8 (1 feature), means 1 and 2 -> (8 - 2)² + (2 - 1)² = 37
    assert dg.coral(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [4.0]])).item() == 37.0
    assert torch.allclose(dg.covariance(x), torch.cov(x.T), atol=1e-6)


def test_mmd_of_identical_samples_is_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=gen)
    assert dg.mmd(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert dg.mmd(x, x + 1.0).item() > 0.1
    assert dg.mmd(x, x + 1.0).item() == pytest.approx(dg.mmd(x + 1.0, x).item(), rel=1e-5)
    # one point each, distance d: K(x,x) = K(y,y) = 7 kernels of value 1
    d2 = 0.5 ** 2
    expected = 14 - 2 * sum(math.exp(-g * d2) for g in dg.MMD_GAMMAS)
    got = dg.mmd(torch.tensor([[0.0]]), torch.tensor([[0.5]])).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_pairwise_mean_averages_over_present_domain_pairs() -> None:
    feats = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    domains = torch.tensor([0, 1, 2, 2])

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.mean() - b.mean()).abs()

    # pairs (0,1): 1, (0,2): 5, (1,2): 4
    assert dg.pairwise_mean(feats, domains, dist).item() == pytest.approx(10 / 3)
    assert dg.pairwise_mean(feats, domains, dist, min_rows=2) is None  # one domain has 2 rows
    assert dg.pairwise_mean(feats, torch.zeros(4, dtype=torch.long), dist) is None


def test_coral_method_penalty_is_the_pairwise_coral(tiny_scenario) -> None:
    _, data = tiny_scenario("domain")
    model = build_model(resolve_method("coral"), data)
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(8, model.feature_dim, generator=gen)
    domains = torch.tensor([0] * 4 + [1] * 4)
    got = model.penalty({"features": feats, "domains": domains}, None)
    assert got.item() == pytest.approx(dg.coral(feats[:4], feats[4:]).item(), rel=1e-6)


# ------------------------------------------------------------------------------- MMD-AAE


def test_mmd_aae_codes_are_classified_aligned_and_pushed_to_the_prior(tiny_scenario) -> None:
    _, data = tiny_scenario("domain")
    model = build_model(resolve_method("mmd_aae"), data)
    model.train()
    xs = {t: data.train.inputs[t][:4] for t in data.task_names}
    ys = {t: data.train.targets[t][:4] for t in data.task_names}
    losses, out = batch_losses(model, data, (xs, ys), fused=True)
    assert out["d0"].shape == (4, 3)
    aux = model.auxiliary_loss()
    assert aux is not None and torch.isfinite(aux)
    model.zero_grad()
    aux.backward()
    for name in ("code.weight", "reconstruct.weight", "prior_discriminator.output.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.head.in_features == model.code_dim  # the classifier reads the code


# ------------------------------------------------------------------------------- SelfReg


def test_selfreg_partners_share_the_class() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    torch.manual_seed(3)
    partners = _module("selfreg").same_class_partners(labels)
    assert torch.equal(labels[partners], labels)
    for c in labels.unique():  # a permutation within each class
        rows = (labels == c).nonzero().flatten()
        assert sorted(partners[rows].tolist()) == rows.tolist()


def test_selfreg_regulariser_is_finite_and_pulls_same_class_pairs_together() -> None:
    mod = _module("selfreg")
    torch.manual_seed(4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    logits = torch.randn(6, 3, requires_grad=True)
    feats = torch.zeros(6, 2)

    def spread(o: torch.Tensor) -> float:
        return sum(float(o[labels == c].var(dim=0).sum()) for c in (0, 1))

    gap = float((logits[:3].mean(0) - logits[3:].mean(0)).detach().norm())
    before = spread(logits.detach())
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        loss = mod.selfreg_regulariser(feats, feats, logits, labels, mix=0.3)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert spread(logits.detach()) < 0.1 * before
    # the class means do not move (pairs never cross classes)
    after = float((logits[:3].mean(0) - logits[3:].mean(0)).detach().norm())
    assert after == pytest.approx(gap, rel=1e-4)


def test_selfreg_labels_follow_the_rows_of_each_domain(tiny_scenario) -> None:
    """The engine hands the targets over; rows of a fused batch get their own labels, also
    with interleaved domains and one forward per domain."""
    _, data = tiny_scenario("domain")
    model = build_model(resolve_method("selfreg"), data)
    model.train()
    targets = {"d0": torch.tensor([2, 0, 1]), "d1": torch.tensor([1, 1])}
    model.observe_targets(targets)
    model(torch.randn(5, *data.input_shape), task_ids=torch.tensor([1, 0, 0, 1, 0]))
    assert model._labels(model._rows, model._targets).tolist() == [1, 2, 0, 1, 1]
    model.train()  # forgets the step
    model.observe_targets(targets)
    model(torch.randn(3, *data.input_shape), task_name="d0")
    model(torch.randn(2, *data.input_shape), task_name="d1")
    assert model._labels(model._rows, model._targets).tolist() == [2, 0, 1, 1, 1]
    aux = model.auxiliary_loss()
    assert aux is not None and torch.isfinite(aux) and aux.requires_grad


# ------------------------------------------------------------------------------- weightings


class _Harness:
    """Losses ``L_t = a_t · p`` of one shared parameter ``p`` (ones) for a weighting class."""

    def __init__(self, weighting_cls: type, num_tasks: int) -> None:
        class Model(weighting_cls):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                torch.nn.Module.__init__(self)
                self.p = torch.nn.Parameter(torch.ones(1))
                self.task_name = [f"d{i}" for i in range(num_tasks)]
                self.task_num = num_tasks
                self.rep_grad = False
                self.device = torch.device("cpu")

            def get_share_params(self):
                return [self.p]

        self.model = Model()

    def step(self, values: list[float], **kwargs: object) -> tuple[np.ndarray, float]:
        self.model.p.grad = None
        losses = torch.tensor(values) * self.model.p
        weights = self.model.backward(losses, **kwargs)
        return np.asarray(weights), float(self.model.p.grad)


def _weighting(method: str) -> type:
    return resolve_method(method).weighting_spec.cls


def test_groupdro_weights_move_towards_the_worst_group() -> None:
    h = _Harness(_weighting("groupdro"), 3)
    values = [1.0, 2.0, 5.0]
    q, grad = h.step(values, eta=0.1)
    expected = np.exp(0.1 * np.array(values)) / np.exp(0.1 * np.array(values)).sum()
    assert np.allclose(q, expected) and grad == pytest.approx(float(expected @ values))
    for _ in range(100):
        q, _ = h.step(values, eta=0.1)
    assert q[2] > 0.99 and q[0] < q[1] < q[2]
    # a domain absent from the batch (loss 0) keeps its weight up to the renormalisation
    h2 = _Harness(_weighting("groupdro"), 2)
    q2, _ = h2.step([0.0, 1.0], eta=0.5)
    assert q2[0] / q2[1] == pytest.approx(math.exp(-0.5))


def test_vrex_penalty_is_the_variance_after_annealing() -> None:
    h = _Harness(_weighting("vrex"), 2)
    h.model.total_training_steps = 10  # anneal 10 % -> the first step has penalty weight 1
    vrex = _module("vrex")
    assert vrex.vrex_objective(torch.tensor([1.0, 3.0]), 10.0).item() == pytest.approx(2 + 10)
    w, grad = h.step([1.0, 3.0], vrex_lambda=10.0, anneal_fraction=0.1)
    # d/dL_t (mean + λ·var) = 1/n + λ·2(L_t - mean)/n, λ = 1 during the anneal
    assert np.allclose(w, [0.5 - 1.0, 0.5 + 1.0]) and grad == pytest.approx(-0.5 + 4.5)
    w, _ = h.step([1.0, 3.0], vrex_lambda=10.0, anneal_fraction=0.1)
    assert np.allclose(w, [0.5 - 10.0, 0.5 + 10.0])
    # an absent domain (loss 0) is left out of mean and variance
    h3 = _Harness(_weighting("vrex"), 3)
    w, _ = h3.step([0.0, 1.0, 3.0], vrex_lambda=10.0, anneal_fraction=0.0)
    assert np.allclose(w, [0.0, -9.5, 10.5])


def test_eqrm_quantile_on_a_hand_made_risk_set() -> None:
    from scipy.optimize import brentq
    from scipy.stats import norm

    risks = torch.tensor([0.2, 0.5, 0.9, 1.6], dtype=torch.float64, requires_grad=True)
    q = dg.kde_quantile(risks, 0.75)
    r = risks.detach().numpy()
    h = 1.06 * r.std(ddof=1) * 4 ** -0.2
    want = brentq(lambda v: norm.cdf((v - r) / h).mean() - 0.75, -10, 10, xtol=1e-14)
    assert q.item() == pytest.approx(want, abs=1e-9)
    # symmetric risks: the median is the mean
    sym = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert dg.kde_quantile(sym, 0.5).item() == pytest.approx(2.5, abs=1e-6)
    # the implicit gradient matches finite differences and sums to 1 (shift equivariance)
    q.backward()
    eps = 1e-6
    for i in range(4):
        up, down = r.copy(), r.copy()
        up[i] += eps
        down[i] -= eps
        fd = (dg.kde_quantile(torch.tensor(up), 0.75) - dg.kde_quantile(torch.tensor(down),
                                                                         0.75)) / (2 * eps)
        assert risks.grad[i].item() == pytest.approx(fd.item(), abs=1e-6)
    assert risks.grad.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert dg.kde_quantile(torch.tensor([0.7]), 0.75).item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="quantile"):
        dg.kde_quantile(sym, 1.0)


def test_eqrm_burns_in_on_erm_then_minimises_the_quantile() -> None:
    h = _Harness(_weighting("eqrm"), 4)
    h.model.total_training_steps = 4  # burn-in: half the run, steps 0 and 1
    values = [0.2, 0.5, 0.9, 1.6]
    for _ in range(2):
        w, _ = h.step(values, quantile=0.75, burnin_fraction=0.5)
        assert np.allclose(w, 0.25)
    w, grad = h.step(values, quantile=0.75, burnin_fraction=0.5)
    risks = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    dg.kde_quantile(risks, 0.75).backward()
    assert np.allclose(w, risks.grad.numpy(), atol=1e-6)
    assert w[3] > w[0]  # the quantile leans on the high risks
    assert grad == pytest.approx(float(np.dot(w, values)), rel=1e-5)


# ------------------------------------------------------------------------------- planning


@pytest.mark.parametrize("method", DG_METHODS)
def test_dg_methods_are_refused_outside_domain_scenarios(method: str, tiny_scenario) -> None:
    for kind in ("multi_input", "single_input"):
        scenario, _ = tiny_scenario(kind)
        with pytest.raises(IncompatibleError, match="supports only domain heterogeneity") as err:
            check_compatible(resolve_method(method), scenario)
        assert "\n" not in str(err.value)
    check_compatible(resolve_method(method), tiny_scenario("domain")[0])


def test_planning_refuses_a_domain_weighting_on_task_scenarios() -> None:
    with pytest.raises(IncompatibleError, match="weighting 'vrex' supports only domain"):
        expand(["hps+vrex"], ["digits_tasks"], [0], "default")
    plan = expand(None, None, [0], "default", run_all=True)
    ran = {(r.method, r.scenario) for r in plan.runs}
    assert {(m, "digits_domains") for m in DG_METHODS} <= ran
    skipped = {(m, s) for m, s, _ in plan.skipped}
    assert {(m, s) for m in DG_METHODS for s in ("digits_tasks", "digits_scene")} <= skipped
    assert set(DG_METHODS) <= set(methods.list()) and "digits_domains" in scenarios.list()


# ------------------------------------------------------------------------------- engine


def test_engine_gives_labels_and_the_run_length(monkeypatch, tiny_scenario) -> None:
    scenario, data = tiny_scenario("domain")
    built = []
    real_build = engine.build_model

    def spy(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(engine, "build_model", spy)
    result = engine.train(resolve_method("selfreg"), scenario, data, data.training, seed=0)
    (model,) = built
    assert model.total_training_steps == result.steps == 2
    assert model.aux_steps == 2  # an auxiliary loss at every step, with the labels


def test_pooled_batch_with_an_absent_domain(tiny_scenario) -> None:
    _, data = tiny_scenario("domain")
    for method in ("dann", "coral", "mmd_aae", "selfreg", "vrex", "eqrm", "groupdro"):
        model = build_model(resolve_method(method), data)
        model.train()
        index = {"d0": torch.arange(6), "d1": torch.arange(0)}
        losses, out = batch_losses(model, data, fetch_batch(data, data.train, index), fused=True)
        assert losses[1].item() == 0.0 and len(out.get("d1", ())) == 0
        backward_step(model, losses, resolve_method(method).resolved_weighting_kwargs())
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), method

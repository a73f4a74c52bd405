"""Embedded digit scenarios: shapes, label ranges, deterministic disjoint splits, smoke runs."""

from __future__ import annotations

import sys

import pytest
import torch

from bench import registry
from bench.data import digits as dd
from bench.data.scenario import ScenarioData
from bench.report import reports_average
from bench.run.engine import run_config
from bench.run.plan import make_run

SCENARIOS = {
    "digits_domains": "domain",
    "digits_tasks": "multi_input",
    "digits_scene": "single_input",
}


def _load(name: str, profile: str) -> ScenarioData:
    return registry.scenarios.get(name)().load(profile)


def _module(name: str):
    registry.load_plugins()
    return sys.modules[registry.scenarios.entries[name].source]


@pytest.mark.parametrize("profile", ["smoke", "default"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_shapes_dtypes_and_label_ranges(name: str, profile: str) -> None:
    data = _load(name, profile)
    assert data.heterogeneity == SCENARIOS[name]
    assert len(data.tasks) >= 3
    assert all(t.label for t in data.tasks)
    c, h, w = data.input_shape
    for split in (data.train, data.val, data.test):
        for task in data.tasks:
            x = split.inputs[task.name] if isinstance(split.inputs, dict) else split.inputs
            y = split.targets[task.name]
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (c, h, w)
            assert torch.isfinite(x).all()
            assert len(y) == len(x)
            if task.kind == "regression":
                assert y.dtype == torch.float32 and tuple(y.shape[1:]) == (task.num_outputs, h, w)
                assert bool((y > 0).all())
            else:
                assert y.dtype == torch.long
                assert int(y.min()) >= 0 and int(y.max()) < task.num_outputs
                if task.kind == "segmentation":
                    assert tuple(y.shape[1:]) == (h, w)
    if profile == "default":
        for task in data.tasks:
            assert data.test.size(task.name) >= 1100 and data.val.size(task.name) >= 300
            if task.kind == "classification":  # every class is represented in the test set
                assert len(torch.unique(data.test.targets[task.name])) == task.num_outputs
    if name == "digits_domains":
        assert data.shared_label_space
    if name == "digits_scene":
        assert not reports_average([t.describe() for t in data.tasks])


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_splits_are_deterministic(name: str) -> None:
    a, b = _load(name, "default"), _load(name, "default")
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        xa = sa.inputs if isinstance(sa.inputs, dict) else {"_": sa.inputs}
        xb = sb.inputs if isinstance(sb.inputs, dict) else {"_": sb.inputs}
        assert xa.keys() == xb.keys()
        for k in xa:
            assert torch.equal(xa[k], xb[k])
        for k in sa.targets:
            assert torch.equal(sa.targets[k], sb.targets[k])


def _pools(name: str) -> dict[str, torch.Tensor]:
    """The source pools a scenario draws from (as its ``load`` computes them)."""
    mod = _module(name)
    if name == "digits_scene":
        return dd.source_pools(dd.LEGACY_POOLS, mod.DATA_SEED)
    train, held = dd.train_and_held_out(mod.DATA_SEED, mod.TRAIN_SOURCES)
    if name == "digits_domains":
        return {"train": train, "test": held[:mod.TEST_SOURCES], "val": held[mod.TEST_SOURCES:]}
    return {"train": train, "test": held, "val": held}  # digits_tasks: val and test share


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_training_sources_are_disjoint_from_evaluation_sources(name: str) -> None:
    pools = {k: set(v.tolist()) for k, v in _pools(name).items()}
    assert pools["train"].isdisjoint(pools["val"])
    assert pools["train"].isdisjoint(pools["test"])
    if name != "digits_tasks":  # digits_tasks renders val and test from the same held-out images
        assert pools["val"].isdisjoint(pools["test"])
    assert len(set().union(*pools.values())) <= 1797


def test_rendered_inputs_come_from_their_split_only() -> None:
    """Domain training labels are exactly those of their disjoint slices of the training pool;
    the test split renders every test-pool image once per domain."""
    mod = _module("digits_domains")
    _, labels = dd.digits()
    pools = _pools("digits_domains")
    data = _load("digits_domains", "default")
    n_train = mod.COUNTS["default"][0]
    for d_idx, domain in enumerate(mod.DOMAINS):
        idx = pools["train"][d_idx * n_train:(d_idx + 1) * n_train]
        assert torch.equal(data.train.targets[domain], labels[idx])
        assert torch.equal(torch.bincount(data.test.targets[domain], minlength=10),
                           torch.bincount(labels[pools["test"]], minlength=10))
    assert len(pools["train"]) == n_train * len(mod.DOMAINS)


#: fingerprints of the training splits of the previous data versions (digits_domains 2,
#: digits_tasks 1, digits_scene 1): per task the sum and sum of squares of the inputs, and a
#: hash of the targets (dense float targets x 1000, rounded) — enlarging the evaluation splits
#: left every training set as it was
TRAIN_FINGERPRINTS = {
    "digits_domains/smoke": ("5aa2b56d1c410b7b", {
        "flip": (1867.59, 1194.73), "mirror": (1856.687, 1188.531),
        "rot180": (1844.615, 1167.094), "upright": (1838.866, 1173.966)}),
    "digits_domains/default": ("48e18562bb50eea7", {
        "flip": (6280.3, 3964.302), "mirror": (6063.014, 3796.654),
        "rot180": (6205.767, 3898.243), "upright": (6168.23, 3923.87)}),
    "digits_tasks/smoke": ("d63e45b128213b24", {
        "digit": (1891.707, 1263.264), "mod3": (4288.637, 3510.933),
        "pair": (1183.697, 743.743), "rotation": (1792.393, 1127.698)}),
    "digits_tasks/default": ("3eb3c73b2ca3ad81", {
        "digit": (9240.083, 5949.904), "mod3": (21516.258, 17780.413),
        "pair": (5933.335, 3777.502), "rotation": (9355.222, 6057.983)}),
    "digits_scene/smoke": ("9d30016a78a3d2d0", {"_": (1494.478, 1398.006)}),
    "digits_scene/default": ("9bb633630338d6c9", {"_": (19496.612, 18447.313)}),
}


@pytest.mark.parametrize("key", list(TRAIN_FINGERPRINTS))
def test_training_sets_are_those_of_the_previous_data_version(key: str) -> None:
    import hashlib

    name, profile = key.split("/")
    target_hash, sums = TRAIN_FINGERPRINTS[key]
    split = _load(name, profile).train
    h = hashlib.sha256()
    for task in sorted(split.targets):
        y = split.targets[task]
        h.update(task.encode())
        h.update((y if y.dtype == torch.long else (y * 1000).round().long()).numpy().tobytes())
    assert h.hexdigest()[:16] == target_hash
    inputs = split.inputs if isinstance(split.inputs, dict) else {"_": split.inputs}
    for task, (total, squares) in sums.items():
        x = inputs[task].double()
        assert float(x.sum()) == pytest.approx(total, rel=1e-6, abs=2e-3)
        assert float((x ** 2).sum()) == pytest.approx(squares, rel=1e-6, abs=2e-3)


@pytest.mark.parametrize("name", ["digits_domains", "digits_tasks"])
def test_test_splits_bound_the_binomial_standard_error(name: str) -> None:
    """Whatever the accuracy, a task's test accuracy has a binomial SE <= 1.5 points and the
    Avg over the tasks <= 0.75 (at p = 0.5, the worst case)."""
    import math

    data = _load(name, "default")
    ses = [100 * math.sqrt(0.25 / data.test.size(t)) for t in data.task_names]
    assert max(ses) <= 1.5
    assert math.sqrt(sum(se ** 2 for se in ses)) / len(ses) <= 0.75


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_smoke_hps_trains_end_to_end(name: str) -> None:
    torch.set_num_threads(1)
    result, wall = run_config(make_run("hps", name, 0, "smoke"))
    assert result.epochs == 2 and result.steps > 0
    data = _load(name, "smoke")
    assert set(result.test_metrics) == set(data.task_names)
    for task in data.tasks:
        for metric in task.metrics:
            value = result.test_metrics[task.name][metric]
            assert value == value and value >= 0  # finite, not NaN
    assert wall < 30


def test_the_digits_read_without_scikit_learn_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    assert dd.digits_file() is not None  # the fast path is the one taken here
    dd._digits.cache_clear()
    images, labels = dd._digits()
    reference = load_digits()
    assert torch.equal(images, torch.tensor(reference.images, dtype=torch.float32) / 16.0)
    assert torch.equal(labels, torch.tensor(reference.target, dtype=torch.long))

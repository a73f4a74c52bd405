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
            assert data.test.size(task.name) >= 300
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


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_source_pools_are_disjoint(name: str) -> None:
    seed = _module(name).DATA_SEED
    pools = dd.source_pools({"test": 600, "val": 300, "train": -1}, seed)
    sets = {k: set(v.tolist()) for k, v in pools.items()}
    assert sets["train"].isdisjoint(sets["val"])
    assert sets["train"].isdisjoint(sets["test"])
    assert sets["val"].isdisjoint(sets["test"])
    assert sum(len(s) for s in sets.values()) == 1797


def test_rendered_inputs_come_from_their_split_only() -> None:
    """Domain 'upright' test inputs match their pool's digits, not the training pool's."""
    mod = _module("digits_domains")
    images, labels = dd.digits()
    pools = dd.source_pools({"test": 600, "val": 300, "train": -1}, mod.DATA_SEED)
    data = _load("digits_domains", "default")
    n_train = mod.COUNTS["default"][0]
    # training images of domain d are pool slice d; the labels must match that slice exactly
    for d_idx, domain in enumerate(mod.DOMAINS):
        idx = pools["train"][d_idx * n_train:(d_idx + 1) * n_train]
        assert torch.equal(data.train.targets[domain], labels[idx])
    train_set = set(pools["train"].tolist())
    assert train_set.isdisjoint(pools["test"].tolist())


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

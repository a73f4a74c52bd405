"""Scenario shapes (``Scenario.shape``) and counted-FLOP cost estimates (``bench.cost``).

Tiny configs only; nothing here asserts a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.registry import scenarios


@pytest.fixture(autouse=True)
def _no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real datasets are absent."""
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "no-data"))


def test_nominal_shapes_of_real_scenarios_come_from_published_sizes() -> None:
    from medmnist import INFO

    from bench.data import split_sizes

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
        size = scen.profile_data["paper"][0]
        assert shape.input_shape == (3, size, size)
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

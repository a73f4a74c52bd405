"""Model-selection rules (``bench.records.selection``) on hand-made histories, and the engine
that applies them while training (running bests, states kept, full test once per epoch)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.records import selection as sel

ACC_TASKS = [{"name": t, "metrics": [{"name": "accuracy", "higher_is_better": True}]}
             for t in ("a", "b")]
DENSE_TASKS = [
    {"name": "seg", "metrics": [{"name": "miou", "higher_is_better": True}]},
    {"name": "depth", "metrics": [{"name": "abs_err", "higher_is_better": False}]},
]


def _acc(a: float, b: float) -> dict[str, dict[str, float]]:
    return {"a": {"accuracy": a}, "b": {"accuracy": b}}


#: epoch 1 has the lowest normalised validation loss, epoch 2 the best validation Avg, epoch 0
#: the best test-subset Avg, epoch 3 is the last
HISTORY = [
    {"epoch": 0, "val_task_losses": [2.0, 1.0], "val_metrics": _acc(50, 50),
     "oracle_metrics": _acc(90, 90)},
    {"epoch": 1, "val_task_losses": [1.0, 0.6], "val_metrics": _acc(60, 60),
     "oracle_metrics": _acc(60, 60)},
    {"epoch": 2, "val_task_losses": [1.2, 0.7], "val_metrics": _acc(70, 62),
     "oracle_metrics": _acc(61, 61)},
    {"epoch": 3, "val_task_losses": [1.5, 0.9], "val_metrics": _acc(55, 55),
     "oracle_metrics": _acc(62, 62)},
]


def test_each_rule_chooses_its_epoch_on_a_hand_made_history() -> None:
    chosen = {name: rule.select(HISTORY, ACC_TASKS) for name, rule in sel.RULES.items()}
    assert chosen == {"val_loss": 1, "val_metric": 2, "last": 3, "oracle": 0}
    # val_loss: mean of 1.0/2.0 and 0.6/1.0 = 0.55
    assert sel.RULES["val_loss"].score(HISTORY, 1, ACC_TASKS) == pytest.approx(0.55)
    assert sel.RULES["val_metric"].score(HISTORY, 2, ACC_TASKS) == pytest.approx(-66.0)
    assert sel.DEFAULT == "val_loss" and sel.RULES["oracle"].upper_bound
    assert not any(r.upper_bound for n, r in sel.RULES.items() if n != "oracle")


def test_ties_go_to_the_earliest_epoch() -> None:
    flat = [dict(e, val_task_losses=[1.0, 1.0]) for e in HISTORY]
    assert sel.RULES["val_loss"].select(flat, ACC_TASKS) == 0


def test_val_metric_without_an_average_is_the_change_against_the_first_epoch() -> None:
    """Dense tasks (mIoU up, abs error down): the Δm%-like score against epoch 0."""
    def entry(epoch: int, miou: float, err: float) -> dict:
        return {"epoch": epoch, "val_metrics": {"seg": {"miou": miou},
                                                "depth": {"abs_err": err}}}

    history = [entry(0, 10.0, 1.0), entry(1, 20.0, 0.9), entry(2, 12.0, 0.5)]
    rule = sel.RULES["val_metric"]
    # epoch 1: (−100 % + (−10 %)) / 2 = −55 ; epoch 2: (−20 % − 50 %) / 2 = −35
    assert rule.score(history, 1, DENSE_TASKS) == pytest.approx(-55.0)
    assert rule.score(history, 2, DENSE_TASKS) == pytest.approx(-35.0)
    assert rule.select(history, DENSE_TASKS) == 1
    # a metric at 0 in the first epoch counts by its absolute change
    zero = [entry(0, 0.0, 1.0), entry(1, 0.5, 1.0)]
    assert rule.score(zero, 1, DENSE_TASKS) == pytest.approx(-25.0)


class _Poison(dict):
    def __getitem__(self, key):  # any read of a test metric fails the test
        raise AssertionError("a validation rule read test metrics")

    def __iter__(self):
        raise AssertionError("a validation rule read test metrics")


def test_validation_rules_never_read_test_metrics() -> None:
    for name in ("val_loss", "val_metric", "last"):
        rule = sel.RULES[name]
        assert "oracle_metrics" not in rule.reads
        poisoned = [dict(e, oracle_metrics=_Poison()) for e in HISTORY]
        assert rule.select(poisoned, ACC_TASKS) == rule.select(HISTORY, ACC_TASKS)
        shuffled = [dict(e, oracle_metrics=HISTORY[-1 - i]["oracle_metrics"])
                    for i, e in enumerate(HISTORY)]
        assert rule.select(shuffled, ACC_TASKS) == rule.select(HISTORY, ACC_TASKS)
    with pytest.raises(KeyError):  # the oracle is given only what it declares
        sel.RULES["oracle"].score([{"epoch": 0, "val_metrics": _acc(1, 1)}], 0, ACC_TASKS)


def test_running_best_equals_selection_over_the_whole_history() -> None:
    running = sel.RunningBest(list(sel.RULES.values()), ACC_TASKS)
    improved = [running.update(entry) for entry in HISTORY]
    assert running.chosen() == {n: r.select(HISTORY, ACC_TASKS) for n, r in sel.RULES.items()}
    assert improved[0] == list(sel.RULES)  # the first epoch is everyone's first choice
    assert improved[3] == ["last"]


def test_non_finite_scores_never_win() -> None:
    history = [HISTORY[0], dict(HISTORY[1], val_task_losses=[math.nan, 0.1])]
    assert sel.RULES["val_loss"].score(history, 1, ACC_TASKS) == math.inf
    assert sel.RULES["val_loss"].select(history, ACC_TASKS) == 0


def test_unknown_rule_names_the_rules() -> None:
    with pytest.raises(KeyError, match="val_loss, val_metric, last, oracle"):
        sel.get("best")


# ---------------------------------------------------------------- the engine


@pytest.mark.parametrize("kind", ["domain", "single_input"])
def test_engine_reports_every_rule_and_keeps_the_default_compatible(tiny_scenario,
                                                                    kind: str) -> None:
    from dataclasses import replace

    from bench.models.method import resolve_method
    from bench.run import engine

    scenario, data = tiny_scenario(kind)
    setup = replace(data.training, epochs=4)
    data = replace(data, training=setup)
    result = engine.train(resolve_method("hps"), scenario, data, setup, seed=0)
    assert set(result.selection) == set(sel.RULES)
    default = result.selection["val_loss"]
    assert (result.best_epoch, result.test_metrics, result.val_metrics) == (
        default["epoch"], default["test"], default["val"])
    assert result.selection["last"]["epoch"] == 3
    for name, chosen in result.selection.items():
        # the rounded history of the record gives the same choices (no near-ties here)
        assert sel.RULES[name].select(result.history, result.tasks) == chosen["epoch"]
        stored = result.history[chosen["epoch"]]["val_metrics"]
        for task, metrics in chosen["val"].items():
            assert metrics == pytest.approx(stored[task], abs=1e-5)
    assert result.oracle_subset == {t: 8 for t in data.task_names}  # the whole tiny split
    # the same epoch gives the same full-test metrics whichever rule chose it
    by_epoch = {}
    for chosen in result.selection.values():
        assert by_epoch.setdefault(chosen["epoch"], chosen["test"]) == chosen["test"]


def test_engine_evaluates_the_full_test_split_once_per_distinct_epoch(tiny_scenario,
                                                                      monkeypatch) -> None:
    from dataclasses import replace

    from bench.models.method import resolve_method
    from bench.run import engine

    scenario, data = tiny_scenario("domain")
    setup = replace(data.training, epochs=3)
    data = replace(data, training=setup)
    calls = []
    real = engine.evaluate

    def counting(model, data_, split, batch_size, fused=False, *args, **kwargs):
        calls.append(split is data.test)
        return real(model, data_, split, batch_size, fused, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", counting)
    result = engine.train(resolve_method("hps"), scenario, data, setup, seed=0)
    distinct = {c["epoch"] for c in result.selection.values()}
    assert sum(calls) == len(distinct)
    only_default = engine.train(resolve_method("hps"), scenario, data, setup, seed=0,
                                rule_names=["val_loss"])
    assert only_default.test_metrics == result.test_metrics  # the rules change no result
    assert set(only_default.selection) == {"val_loss"} and not only_default.oracle_subset


def test_oracle_subset_is_fixed_and_spread_through_the_split(tiny_scenario) -> None:
    from bench.data.scenario import Split
    from bench.run.engine import oracle_subset

    _, data = tiny_scenario("single_input")
    x = torch.arange(1000.0).view(1000, 1, 1, 1)
    split = Split(x, {t.name: torch.arange(1000) for t in data.tasks})
    sub = oracle_subset(data, split, fraction=0.05, minimum=32)
    assert sub.size(data.task_names[0]) == 50
    picked = sub.inputs.view(-1).long().tolist()
    assert picked == [i * 20 for i in range(50)]  # evenly spaced from first to last
    assert torch.equal(oracle_subset(data, split).inputs, oracle_subset(data, split).inputs)
    assert oracle_subset(data, Split(x[:10], {t.name: torch.arange(10) for t in data.tasks}),
                         minimum=32).size(data.task_names[0]) == 10


@pytest.mark.parametrize("method", ["hps", "mola_grad", "mmoe"])
def test_fused_evaluation_equals_evaluation_task_by_task(tiny_scenario, method: str) -> None:
    """The oracle's subset is evaluated in fused chunks mixing the tasks' samples: the same
    metrics as one task at a time, chunk boundaries falling inside a task or not."""
    from bench.models.method import build_model, resolve_method
    from bench.run.engine import evaluate

    _, data = tiny_scenario("multi_input")
    model = build_model(resolve_method(method), data)
    for batch_size in (3, 8, 64):
        plain, plain_losses = evaluate(model, data, data.test, batch_size)
        fused, fused_losses = evaluate(model, data, data.test, batch_size, fused=True)
        assert fused == plain
        assert fused_losses == pytest.approx(plain_losses, rel=1e-5)

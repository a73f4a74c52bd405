"""The engine against a bare PyTorch loop: what :func:`bench.run.engine.train` costs over the
plainest code that does the same training, the same per-epoch validation and the same
selection (the epoch of the lowest normalised validation loss, then the test split there).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.perf.rows import Goal, Row, explain, interleaved_times, ratio_row

GROUP = "engine"
GOAL = Goal("<=", 1.10)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]


@torch.no_grad()
def bare_evaluate(model: torch.nn.Module, data: Any, split: Any, batch_size: int
                  ) -> tuple[list[float], list[float]]:
    """Mean loss and accuracy of every (classification) task on ``split``: one forward per
    chunk of ``batch_size`` samples, a task at a time in multi-input scenarios."""
    from bench.data.metrics import task_loss

    model.eval()
    losses, accuracies = [], []
    for task in data.tasks:
        x_all = split.inputs[task.name] if data.multi_input else split.inputs
        y_all = split.targets[task.name]
        total, correct = 0.0, 0
        for part in _chunks(len(y_all), batch_size):
            x, y = x_all[part], y_all[part]
            out = (model(x, task_name=task.name) if data.multi_input else model(x))[task.name]
            total += float(task_loss(task.kind, out, y, task.loss)) * len(y)
            correct += int((out.argmax(dim=1) == y).sum())
        losses.append(total / len(y_all))
        accuracies.append(correct / len(y_all))
    return losses, accuracies


def bare_train(data: Any, epochs: int, seed: int = 0) -> list[float]:
    """HPS trained on ``data`` by a plain loop (Adam, per-task reshuffled batches, one fused
    forward per step in multi-input scenarios, the sum of the task losses); after every epoch
    the validation split, keeping the state of the best normalised validation loss; the test
    accuracies of that state."""
    from bench.data.metrics import task_loss
    from bench.models.method import build_model, resolve_method
    from bench.run.engine import seed_everything

    if any(t.kind != "classification" for t in data.tasks):
        raise ValueError("the bare loop measures classification scenarios only")
    setup = data.training
    seed_everything(seed)
    model = build_model(resolve_method("hps"), data)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=setup.lr, weight_decay=setup.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    names = data.task_names
    sizes = {t: data.train.size(t) for t in names}
    steps = max(-(-n // setup.batch_size) for n in sizes.values())
    first: list[float] | None = None
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        order = {t: torch.randperm(sizes[t], generator=gen) for t in names}
        for k in range(steps):
            idx = {t: order[t][(k * setup.batch_size) % sizes[t]:][:setup.batch_size]
                   for t in names}
            targets = {t: data.train.targets[t][idx[t]] for t in names}
            if data.multi_input:
                x = torch.cat([data.train.inputs[t][idx[t]] for t in names])
                ids = torch.cat([torch.full((len(idx[t]),), i) for i, t in enumerate(names)])
                out = model(x, task_ids=ids)
            else:
                out = model(data.train.inputs[idx[names[0]]])
            loss = sum(task_loss(t.kind, out[t.name], targets[t.name], t.loss)
                       for t in data.tasks)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
        val_losses, _ = bare_evaluate(model, data, data.val, setup.eval_batch_size)
        first = first or val_losses
        score = sum(v / f for v, f in zip(val_losses, first)) / len(first)
        if score < best:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return bare_evaluate(model, data, data.test, setup.eval_batch_size)[1]


def engine_train(data: Any, scenario: str, epochs: int, seed: int = 0) -> None:
    """One run's :func:`bench.run.engine.train` of HPS on ``data`` for ``epochs`` epochs, with
    the default selection rule only (the bare loop's)."""
    from bench.models.method import resolve_method
    from bench.records import selection
    from bench.registry import scenarios
    from bench.run.engine import train

    setup = replace(data.training, epochs=epochs)
    train(resolve_method("hps"), scenarios.get(scenario)(), data, setup, seed,
          rule_names=[selection.DEFAULT])


def engine_vs_bare_benchmark(repeats: int = 3, scenario: str = "digits_domains",
                             profile: str = "default", epochs: int = 5) -> list[Row]:
    """Wall time of one run's ``train()`` (A) against the bare loop (B) on ``scenario``'s
    ``profile`` for ``epochs`` epochs, A B A B ... after one warm-up of each."""
    from bench.run.engine import load_scenario

    data = load_scenario(scenario, profile)
    setup = data.training
    if epochs < 1:
        raise ValueError("epochs must be at least 1")

    times = interleaved_times({"engine": lambda: engine_train(data, scenario, epochs),
                               "bare": lambda: bare_train(data, epochs)}, repeats)
    steps = max(-(-data.train.size(t) // setup.batch_size) for t in data.task_names)
    row = ratio_row(GROUP, f"HPS run, {scenario} ({profile} profile, {epochs} epochs x {steps} "
                           f"steps, batch {setup.batch_size}, validation every epoch)",
                    "engine train() vs bare PyTorch loop (same training, validation, "
                    "selection)", times["engine"], times["bare"], GOAL,
                    unit_of_times="s")
    return [explain(row, "the engine's bookkeeping per step and epoch (task sampler objects, "
                         "the weighting's backward call and task-weight log, metric "
                         "accumulators, the selection history)")]

"""Gradient methods against the T-backward floor: one training step of a weighting that needs
per-task gradients (PCGrad, MGDA, CAGrad, IMTL, GradNorm) against the least any such step
costs — one forward pass and T backward passes, each leaving one task's gradient of the shared
parameters in a row of a ``T x D`` matrix — and both against one HPS step (one backward of the
summed losses), at T tasks on a real embedded backbone and batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.perf.rows import Goal, Row, explain, interleaved_times, ratio_row, ratios, spread

GROUP = "gradient methods"
GOAL = Goal("<=", 1.25)
METHODS = ("pcgrad", "mgda", "cagrad", "imtl", "gradnorm")
TASK_COUNTS = (3, 9)
#: steps timed in a row per sample (their mean): one step is 15-150 ms, and a lone step's time
#: moved the median by ±30 % on this shared machine
STEPS_PER_SAMPLE = 10
#: what each method does beyond the floor (from its algorithm), named where its goal is missed
BEYOND_FLOOR = {
    "pcgrad": "T² projections between the gradient rows, in random task order",
    "mgda": "the min-norm solve (Frank-Wolfe iterations on the T x T Gram matrix)",
    "cagrad": "its dual solve (scipy minimize on the T x T Gram matrix)",
    "imtl": "a T x T linear solve on normalised gradient differences",
    "gradnorm": "the gradient-norm loss's backward to its learnt weights, then the weighted "
                "rows written back",
}


def tasks_of(data: Any, count: int) -> Any:
    """``data`` with ``count`` tasks: the scenario's tasks repeated in turn (``segment_0``,
    ``depth_1``...), each reading its original task's targets."""
    tasks = tuple(replace(data.tasks[i % len(data.tasks)],
                          name=f"{data.tasks[i % len(data.tasks)].name}_{i}")
                  for i in range(count))
    return replace(data, tasks=tasks)


def _batch(data: Any, clone: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first training batch of a single-input ``data``, with targets named as ``clone``'s
    tasks."""
    idx = torch.arange(min(data.training.batch_size, data.train.size(data.task_names[0])))
    original = {t.name: data.tasks[i % len(data.tasks)].name for i, t in enumerate(clone.tasks)}
    return data.train.inputs[idx], {t: data.train.targets[o][idx] for t, o in original.items()}


def step_functions(clone: Any, batch: Any, methods: tuple[str, ...]) -> dict[str, Any]:
    """Zero-argument training steps (forward, losses, backward; no optimiser step): "hps", the
    "floor" (T backward passes filling a T x D matrix of shared-parameter gradients, on the HPS
    model) and each method's step through its weighting (:func:`bench.run.engine.backward_step`),
    past its first epoch (GradNorm weighs the tasks equally during the first)."""
    from bench.models.method import build_model, resolve_method
    from bench.run.engine import backward_step, batch_losses, seed_everything

    def model_of(name: str) -> tuple[Any, dict[str, Any]]:
        seed_everything(0)
        spec = resolve_method(name)
        model = build_model(spec, clone)
        model.train()
        return model, spec.resolved_weighting_kwargs()

    def weighted(model: Any, kwargs: dict[str, Any]) -> Any:
        def step() -> None:
            model.zero_grad(set_to_none=False)
            losses, _ = batch_losses(model, clone, batch, fused=False)
            backward_step(model, losses, kwargs)
        step()
        model.eval()  # an epoch boundary: loss-history weightings leave their first epoch
        model.train()
        return step

    hps, hps_kwargs = model_of("hps")
    shared = [p for p in hps.get_share_params() if p.requires_grad]

    def floor() -> None:
        hps.zero_grad(set_to_none=False)
        losses, _ = batch_losses(hps, clone, batch, fused=False)
        rows = torch.zeros(len(losses), sum(p.numel() for p in shared))
        for t in range(len(losses)):
            losses[t].backward(retain_graph=t + 1 < len(losses))
            rows[t] = torch.cat([p.grad.reshape(-1) for p in shared])
            for p in shared:
                p.grad.zero_()

    steps = {"hps": weighted(hps, hps_kwargs), "floor": floor}
    for name in methods:
        steps[name] = weighted(*model_of(name))
    return steps


def gradient_methods_benchmark(repeats: int = 5, scenario: str = "digits_scene",
                               methods: tuple[str, ...] = METHODS,
                               task_counts: tuple[int, ...] = TASK_COUNTS,
                               number: int = STEPS_PER_SAMPLE) -> list[Row]:
    """Per task count T: ``number`` steps of every method, of the floor and of HPS, in
    interleaved rounds; rows of method / floor (goal ≤ 1.25), method / HPS and floor / HPS."""
    from bench.run.engine import load_scenario

    data = load_scenario(scenario, "default")
    if data.multi_input:
        raise ValueError("the gradient benchmark takes a single-input scenario")
    rows: list[Row] = []
    for count in task_counts:
        clone = tasks_of(data, count)
        batch = _batch(data, clone)
        times = interleaved_times(step_functions(clone, batch, methods), repeats,
                                  number=number)
        name = (f"one training step, T = {count} tasks ({scenario}'s backbone and heads, "
                f"batch {len(batch[0])})")
        rows.append(ratio_row(GROUP, name, "T-backward floor vs HPS step", times["floor"],
                              times["hps"]))
        for method in methods:
            row = ratio_row(GROUP, name, f"{method} step vs T-backward floor", times[method],
                            times["floor"], GOAL,
                            vs_hps=spread(ratios(times[method], times["hps"]))[0])
            rows.append(explain(row, f"what {method} adds to the floor: "
                                     f"{BEYOND_FLOOR.get(method, 'its weighting')}"))
    return rows


"""One training engine for every method and scenario: a run config in, a result record out.

* Deterministic per seed on CPU: Python, NumPy and torch are seeded, batches come from a seeded
  ``torch.Generator``, and deterministic algorithms are requested.
* Multi-input scenarios: all tasks' batches go through the shared encoder in **one** forward
  pass (the architecture routes each row to its task's decoder), for every method alike, so that
  methods differ only in what they are (BatchNorm statistics, for one, are then computed the same
  way for all). Weightings that need per-task gradients backpropagate each task's loss through
  the shared graph. ``train.forward=per_task`` restores LibMTL's one forward per task — measured
  on ``digits_tasks``: HPS's first task lost ~20 accuracy points that way, because BatchNorm's
  running statistics then lean towards the last task of every step.
* Device: CUDA when available (``BENCH_DEVICE=cpu|cuda|cuda:1`` overrides); the data stay on the
  CPU and each batch is moved to the model's device.
* Model selection: test metrics are reported at the epoch with the lowest validation score
  ``mean_t L_t(epoch) / L_t(first epoch)`` — the MoLA reference selects the lowest validation
  loss; normalising each task's loss by its first-epoch value keeps one task's loss scale (e.g. a
  cross-entropy next to an L1 depth loss) from deciding the epoch alone.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.method import MethodSpec, build_model, check_compatible, count_parameters, resolve_method
from bench.metrics import METRICS, task_loss
from bench.registry import scenarios
from bench.scenario import Scenario, ScenarioData, Split, TrainingSetup


class DivergedError(RuntimeError):
    def __init__(self, step: int, losses: list[float]) -> None:
        super().__init__(f"loss became non-finite at step {step}: {losses}")
        self.step = step
        self.losses = losses


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_scenario(name: str, profile: str) -> ScenarioData:
    """A scenario's data, cached per process; the key includes the real datasets' data root and
    checksum setting (``BENCH_DATA_ROOT``, ``BENCH_VERIFY_CHECKSUMS``)."""
    return _load_scenario(name, profile, os.environ.get("BENCH_DATA_ROOT", ""),
                          os.environ.get("BENCH_VERIFY_CHECKSUMS", ""))


@lru_cache(maxsize=2)  # small: a real dataset's paper profile takes gigabytes
def _load_scenario(name: str, profile: str, data_root: str, verify: str) -> ScenarioData:
    scenario: Scenario = scenarios.get(name)()
    scenario.check_profile(profile)
    return scenario.load(profile)


def default_device() -> torch.device:
    """``$BENCH_DEVICE`` if set, else CUDA when available, else the CPU."""
    name = os.environ.get("BENCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_setup(scenario: Scenario, profile: str, spec: MethodSpec) -> TrainingSetup:
    setup = scenario.setup(profile)
    return replace(setup, **spec.training_overrides) if spec.training_overrides else setup


class TaskSampler:
    """Endless reshuffled index stream over ``n`` samples (an epoch = one permutation)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.gen = generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        batch_size = min(batch_size, self.n)
        if self.pos + batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + batch_size]
        self.pos += batch_size
        return idx


def make_optimizer(params: Any, setup: TrainingSetup) -> torch.optim.Optimizer:
    if setup.optimizer == "adam":
        return torch.optim.Adam(params, lr=setup.lr, weight_decay=setup.weight_decay)
    if setup.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=setup.lr, weight_decay=setup.weight_decay)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=setup.lr, momentum=setup.momentum,
                               weight_decay=setup.weight_decay)
    raise ValueError(f"unknown optimizer {setup.optimizer!r}")


def _task_input(split: Split, task: str) -> torch.Tensor:
    return split.inputs[task] if isinstance(split.inputs, dict) else split.inputs


def compute_losses(model: nn.Module, data: ScenarioData, split: Split,
                   index: dict[str, torch.Tensor], fused: bool) -> tuple[torch.Tensor, dict]:
    """Forward one training batch; return the per-task losses ``(T,)`` and the predictions."""
    names = data.task_names
    dev = _device_of(model)
    if not data.multi_input:
        x = split.inputs[index[names[0]]].to(dev)  # type: ignore[index]
        out = model(x)
        targets = {t: split.targets[t][index[t]].to(dev) for t in names}
    elif fused:
        xs = [split.inputs[t][index[t]] for t in names]  # type: ignore[index]
        task_ids = torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(xs)])
        out = model(torch.cat(xs).to(dev), task_ids=task_ids.to(dev))
        targets = {t: split.targets[t][index[t]].to(dev) for t in names}
    else:
        out, targets = {}, {}
        for t in names:
            out.update(model(split.inputs[t][index[t]].to(dev), task_name=t))  # type: ignore[index]
            targets[t] = split.targets[t][index[t]].to(dev)
    losses = torch.stack([task_loss(task.kind, out[task.name], targets[task.name])
                          for task in data.tasks])
    return losses, out


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: ScenarioData, split: Split, batch_size: int
             ) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Metrics per task and the mean loss of each task on ``split``."""
    model.eval()
    metrics: dict[str, dict[str, float]] = {}
    losses = []
    accs = {t.name: {m: METRICS[m].factory(t.num_outputs) for m in t.metrics} for t in data.tasks}
    loss_sums = {t.name: 0.0 for t in data.tasks}
    counts = {t.name: 0 for t in data.tasks}
    chunks: list[tuple[str | None, slice]] = []
    if data.multi_input:
        for t in data.task_names:
            n = split.size(t)
            chunks += [(t, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
    else:
        n = split.size(data.task_names[0])
        chunks = [(None, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
    kinds = {t.name: t.kind for t in data.tasks}
    dev = _device_of(model)
    for task_name, sl in chunks:
        x = _task_input(split, task_name or data.task_names[0])[sl].to(dev)
        out = model(x, task_name=task_name) if task_name else model(x)
        for t, pred in out.items():
            y = split.targets[t][sl].to(dev)
            loss_sums[t] += float(task_loss(kinds[t], pred, y)) * len(y)
            counts[t] += len(y)
            for acc in accs[t].values():
                acc.update(pred, y)
    for t in data.task_names:
        metrics[t] = {m: acc.compute() for m, acc in accs[t].items()}
        losses.append(loss_sums[t] / max(counts[t], 1))
    return metrics, losses


def fused_forward(spec: MethodSpec, multi_input: bool, setup: TrainingSetup) -> bool:
    """Whether a training batch of all tasks goes through the model in one forward pass."""
    return (multi_input and setup.forward == "fused"
            and spec.arch_spec.supports_fused_multi_input)


def epoch_steps(train_sizes: list[int], batch_size: int, multi_input: bool) -> int:
    """Steps of one epoch: multi-input, the most of any task (``ceil(n_t / batch)``, batches of
    every task in each step); single-input, ``ceil(n / batch)``."""
    if multi_input:
        return max(math.ceil(n / batch_size) for n in train_sizes)
    return math.ceil(train_sizes[0] / batch_size)


def backward_step(model: nn.Module, losses: torch.Tensor, weighting_kwargs: dict[str, Any]
                  ) -> None:
    """Backpropagate one step: the model's auxiliary loss if it has one (MoLA-Router's TwD),
    then the task losses through the method's weighting (T backward passes for weightings that
    need per-task gradients)."""
    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
    if aux is not None:
        aux.backward(retain_graph=True)
    model.backward(losses, **weighting_kwargs)


@dataclass
class RunResult:
    val_metrics: dict[str, dict[str, float]]
    test_metrics: dict[str, dict[str, float]]
    best_epoch: int
    epochs: int
    steps: int
    trainable_params: int
    total_params: int
    param_breakdown: dict[str, int] | None
    forward_mode: str
    history: list[dict[str, float]]
    tasks: list[dict[str, Any]]


def train(spec: MethodSpec, scenario: Scenario, data: ScenarioData, setup: TrainingSetup,
          seed: int, progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Train ``spec`` on ``data`` and evaluate at the best validation epoch."""
    check_compatible(spec, scenario)
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(spec, data, default_device())
    trainable, total = count_parameters(model)
    breakdown = model.param_breakdown() if hasattr(model, "param_breakdown") else None
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], setup)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=setup.epochs)
                 if setup.scheduler == "cosine" else None)
    weighting_kwargs = spec.resolved_weighting_kwargs()
    fused = fused_forward(spec, data.multi_input, setup)
    forward_mode = "fused" if fused else ("per_task" if data.multi_input else "single_input")
    gen = torch.Generator().manual_seed(seed)
    names = data.task_names
    if data.multi_input:
        samplers = {t: TaskSampler(data.train.size(t), gen) for t in names}
    else:
        shared = TaskSampler(data.train.size(names[0]), gen)
    steps_per_epoch = epoch_steps([data.train.size(t) for t in names], setup.batch_size,
                                  data.multi_input)
    best_loss, best_epoch, best_state = math.inf, -1, None
    reference: list[float] | None = None
    best_val: dict[str, dict[str, float]] = {}
    history: list[dict[str, float]] = []
    step = 0
    total_steps = steps_per_epoch * setup.epochs
    for epoch in range(setup.epochs):
        model.train()
        for _ in range(steps_per_epoch):
            if data.multi_input:
                index = {t: samplers[t].next(setup.batch_size) for t in names}
            else:
                idx = shared.next(setup.batch_size)
                index = {t: idx for t in names}
            losses, _ = compute_losses(model, data, data.train, index, fused)
            if not torch.isfinite(losses).all():
                raise DivergedError(step, [float(v) for v in losses.detach()])
            optimizer.zero_grad(set_to_none=False)
            backward_step(model, losses, weighting_kwargs)
            optimizer.step()
            step += 1
            if progress is not None:
                progress(step, total_steps)
        if scheduler is not None:
            scheduler.step()
        val_metrics, task_losses = evaluate(model, data, data.val, setup.eval_batch_size)
        if not all(math.isfinite(v) for v in task_losses):
            raise DivergedError(step, task_losses)
        if reference is None:
            reference = [max(v, 1e-12) for v in task_losses]
        val_loss = float(np.mean([v / r for v, r in zip(task_losses, reference)]))
        history.append({"epoch": epoch, "val_score": round(val_loss, 6),
                        "val_task_losses": [round(v, 6) for v in task_losses]})
        if val_loss < best_loss:
            best_loss, best_epoch, best_val = val_loss, epoch, val_metrics
            best_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    test_metrics, _ = evaluate(model, data, data.test, setup.eval_batch_size)
    return RunResult(best_val, test_metrics, best_epoch, setup.epochs, step, trainable, total,
                     breakdown, forward_mode, history, [t.describe() for t in data.tasks])


def run_config(config: dict[str, Any], progress: Callable[[int, int], None] | None = None
               ) -> tuple[RunResult, float]:
    """Train the run described by a plan entry (see :mod:`bench.plan`)."""
    spec = resolve_method(config["method"]).with_overrides(config.get("overrides"))
    scenario: Scenario = scenarios.get(config["scenario"])()
    data = load_scenario(config["scenario"], config["profile"])
    setup = training_setup(scenario, config["profile"], spec)
    start = time.perf_counter()
    result = train(spec, scenario, data, setup, int(config["seed"]), progress)
    return result, time.perf_counter() - start


PARAM_SCALING_TASKS = (2, 4, 6, 8, 10)


def param_scaling(config: dict[str, Any], task_counts: tuple[int, ...] = PARAM_SCALING_TASKS
                  ) -> dict[str, int]:
    """Trainable parameters of the run's method built for ``T`` copies of the scenario's first
    task, for each ``T`` in ``task_counts`` (the x-axis of MoLA Fig. 5)."""
    spec = resolve_method(config["method"]).with_overrides(config.get("overrides"))
    data = load_scenario(config["scenario"], config["profile"])
    out: dict[str, int] = {}
    first = data.tasks[0]
    for count in task_counts:
        tasks = tuple(replace(first, name=f"task{i}") for i in range(count))
        clone = replace(data, tasks=tasks)
        out[str(count)] = count_parameters(build_model(spec, clone))[0]
    return out

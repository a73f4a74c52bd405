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
* Model selection: the named rules of :mod:`bench.records.selection` (``val_loss``,
  ``val_metric``, ``last``, ``oracle``). Each epoch evaluates the validation split and a fixed
  subset of the test split (:func:`oracle_subset`, for the ``oracle`` rule only); the engine
  keeps each rule's running best and the model state of every epoch some rule currently
  chooses (in memory), then evaluates the full test split once per distinct chosen epoch. The
  default rule, ``val_loss``, is the epoch with the lowest ``mean_t L_t(epoch) / L_t(first
  epoch)`` on validation — the MoLA reference selects the lowest validation loss; normalising
  each task's loss by its first-epoch value keeps one task's loss scale (e.g. a cross-entropy
  next to an L1 depth loss) from deciding the epoch alone. Its epoch and metrics are the
  record's ``best_epoch`` and ``metrics``.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.data.metrics import METRICS, task_loss
from bench.data.scenario import Scenario, ScenarioData, Split, TrainingSetup
from bench.data.streaming import LazySamples, is_lazy, prefetched, take
from bench.models.method import (
    MethodSpec,
    build_model,
    check_compatible,
    count_parameters,
)
from bench.records import selection
from bench.registry import scenarios
from bench.run import parallel, precision
from bench.run.plan import RunSpec
from bench.run.precision import default_device


class DivergedError(RuntimeError):
    def __init__(self, step: int, losses: list[float]) -> None:
        super().__init__(f"loss became non-finite at step {step}: {losses}")
        self.step = step
        self.losses = losses

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (a data-parallel rank raises it)
        return (DivergedError, (self.step, self.losses))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of
    ``torch._inductor.config``, which pulls in ``torch._dynamo`` and sympy (~1.9 s in every
    worker process). Inductor's ``deterministic`` flag matters only to ``torch.compile``, which
    no run uses; where inductor is already imported it is set as torch sets it."""
    inductor = sys.modules.get("torch._inductor.config")
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if inductor is not None or setter is None:  # a torch without the setter: its public API
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)


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


class PooledSampler:
    """Batches drawn from all tasks' training samples pooled (MoLA's reference): one seeded
    permutation of the union per epoch; each batch is split back into every task's own sample
    numbers (a task may have none in a batch)."""

    def __init__(self, sizes: list[int], generator: torch.Generator) -> None:
        self.sampler = TaskSampler(sum(sizes), generator)
        self.ends = torch.tensor(list(itertools.accumulate(sizes)))
        self.starts = self.ends - torch.tensor(sizes)

    def next(self, batch_size: int) -> list[torch.Tensor]:
        idx = self.sampler.next(batch_size)
        task = torch.bucketize(idx, self.ends, right=True)
        return [idx[task == t] - self.starts[t] for t in range(len(self.ends))]


def make_optimizer(params: Any, setup: TrainingSetup) -> torch.optim.Optimizer:
    if setup.optimizer == "adam":
        return torch.optim.Adam(params, lr=setup.lr, weight_decay=setup.weight_decay)
    if setup.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=setup.lr, weight_decay=setup.weight_decay)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=setup.lr, momentum=setup.momentum,
                               weight_decay=setup.weight_decay)
    raise ValueError(f"unknown optimizer {setup.optimizer!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, setup: TrainingSetup
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule of ``setup``: "cosine" annealing over the epochs
    (to ``min_lr``), "step" decay (× ``gamma`` every ``step_size`` epochs) or none, after
    ``warmup_epochs`` of linear warm-up from lr/1000 (MTLoRA's schedule: 20 epochs)."""
    if setup.scheduler == "cosine" and not setup.warmup_epochs and not setup.min_lr:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=setup.epochs)
    if setup.scheduler == "none" and not setup.warmup_epochs:
        return None
    if setup.scheduler == "step" and setup.step_size < 1:
        raise ValueError("scheduler 'step' needs train.step_size >= 1 (epochs between decays)")
    warmup, floor = setup.warmup_epochs, setup.min_lr / setup.lr

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return 1e-3 + (1.0 - 1e-3) * epoch / warmup
        done = epoch - warmup
        if setup.scheduler == "cosine":
            span = max(1, setup.epochs - warmup)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done / span))
        if setup.scheduler == "step":
            return setup.gamma ** (done // setup.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _task_input(split: Split, task: str) -> Any:
    return split.inputs[task] if isinstance(split.inputs, dict) else split.inputs


Batch = tuple[Any, dict[str, torch.Tensor]]


def fetch_batch(data: ScenarioData, split: Split, index: dict[str, torch.Tensor],
                augment: tuple[int, ...] | None = None) -> Batch:
    """The CPU tensors of one training batch: the inputs (one tensor, or one per task in
    multi-input scenarios) and each task's targets. Streamed splits read them here; with
    ``augment`` (the run's seed and the step), sample ``j`` of task ``t`` is augmented with the
    key ``(*augment, t, j)`` — shared by its input and targets (:mod:`bench.data.transforms`)."""
    names = data.task_names

    def keys(t: int, count: int) -> list[tuple[int, ...]] | None:
        return None if augment is None else [(*augment, t, j) for j in range(count)]

    def rows(samples: Any, t: int, idx: torch.Tensor) -> torch.Tensor:
        if len(idx) == 0:  # a task absent from a pooled batch: nothing to read
            return torch.empty((0, *samples.shape[1:]))
        return take(samples, idx, keys(t, len(idx)))

    if data.multi_input:
        x: Any = {t: rows(split.inputs[t], i, index[t])  # type: ignore[index]
                  for i, t in enumerate(names)}
        targets = {t: rows(split.targets[t], i, index[t]) for i, t in enumerate(names)}
    else:
        shared = keys(0, len(index[names[0]]))
        x = take(split.inputs, index[names[0]], shared)
        targets = {t: take(split.targets[t], index[t], shared) for t in names}
    return x, targets


def batch_losses(model: nn.Module, data: ScenarioData, batch: Batch, fused: bool,
                 share: bool = False, amp: str = "fp32") -> tuple[torch.Tensor, dict]:
    """Forward one fetched training batch; return the per-task losses ``(T,)`` and the
    predictions. A task with no rows in the batch (pooled sampling) has loss 0, attached to
    the graph so that every weighting can differentiate it; with ``share`` each task's loss is
    scaled by its share of the batch's rows. A model with ``observe_targets`` is given the
    batch's targets (per task, on its device) before the forward, for an auxiliary loss that
    needs the labels (SelfReg's same-class pairs). ``amp`` (``train.precision``): the forward
    pass under autocast; the predictions are cast back to float32 and the losses computed in
    float32 (:mod:`bench.run.precision`)."""
    names = data.task_names
    dev = _device_of(model)
    xs, cpu_targets = batch
    targets = {t: cpu_targets[t].to(dev) for t in names}
    if hasattr(model, "observe_targets"):  # a training loss on the labels of all rows (SelfReg)
        model.observe_targets(targets)
    with precision.autocast(amp, dev):
        if not data.multi_input:
            out = model(xs.to(dev))
        elif fused:
            parts = [xs[t] for t in names]
            task_ids = torch.cat([torch.full((len(x),), i, dtype=torch.long)
                                  for i, x in enumerate(parts)])
            out = model(torch.cat(parts).to(dev), task_ids=task_ids.to(dev))
        else:
            out = {}
            for t in names:
                if len(xs[t]):
                    out.update(model(xs[t].to(dev), task_name=t))
    if amp != "fp32":
        out = {t: v.float() for t, v in out.items()}
    total = sum(len(targets[t]) for t in names)
    losses = []
    for task in data.tasks:
        rows = len(targets[task.name])
        if rows == 0 or task.name not in out:
            losses.append(sum(v.sum() for t, v in out.items() if len(targets[t])) * 0.0)
            continue
        loss = task.loss_weight * task_loss(task.kind, out[task.name], targets[task.name],
                                            task.loss)
        losses.append(loss * (rows / total) if share else loss)
    return torch.stack(losses), out


def compute_losses(model: nn.Module, data: ScenarioData, split: Split,
                   index: dict[str, torch.Tensor], fused: bool) -> tuple[torch.Tensor, dict]:
    """Fetch and forward one training batch; return the per-task losses ``(T,)`` and the
    predictions."""
    return batch_losses(model, data, fetch_batch(data, split, index), fused)


def is_streamed(split: Split) -> bool:
    """Whether ``split`` reads its samples on demand (then batches are fetched ahead)."""
    return is_lazy(split.inputs) or is_lazy(split.targets)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: ScenarioData, split: Split, batch_size: int,
             fused: bool = False, amp: str = "fp32"
             ) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Metrics per task and the mean loss of each task on ``split``. Multi-input scenarios are
    evaluated one task at a time, or with ``fused`` in chunks that mix the tasks' samples (one
    forward pass per chunk, rows routed by task id, as in fused training: fewer calls for a
    small split such as the oracle's test subset). ``amp``: the forward pass under autocast
    (``train.precision``); metrics and losses from float32 predictions."""
    model.eval()
    metrics: dict[str, dict[str, float]] = {}
    losses = []
    accs = {t.name: {m: METRICS[m].factory(t.num_outputs) for m in t.metrics} for t in data.tasks}
    loss_sums = {t.name: 0.0 for t in data.tasks}
    counts = {t.name: 0 for t in data.tasks}
    # a chunk: the (task, slice) parts evaluated in one forward pass; task None = every task
    chunks: list[list[tuple[str | None, slice]]] = []
    if data.multi_input and fused:
        part: list[tuple[str | None, slice]] = []
        room = batch_size
        for t in data.task_names:
            start, n = 0, split.size(t)
            while start < n:
                take = min(room, n - start)
                part.append((t, slice(start, start + take)))
                start, room = start + take, room - take
                if room == 0:
                    chunks.append(part)
                    part, room = [], batch_size
        if part:
            chunks.append(part)
    elif data.multi_input:
        for t in data.task_names:
            n = split.size(t)
            chunks += [[(t, slice(i, i + batch_size))] for i in range(0, n, batch_size)]
    else:
        n = split.size(data.task_names[0])
        chunks = [[(None, slice(i, i + batch_size))] for i in range(0, n, batch_size)]
    specs = {t.name: t for t in data.tasks}
    dev = _device_of(model)

    def fetch(parts: list[tuple[str | None, slice]]) -> Batch:
        if parts[0][0] is None:
            sl = parts[0][1]
            return split.inputs[sl], {t: split.targets[t][sl] for t in data.task_names}
        xs = [_task_input(split, t)[sl] for t, sl in parts]  # type: ignore[arg-type]
        return (torch.cat(xs) if len(xs) > 1 else xs[0],
                {t: split.targets[t][sl] for t, sl in parts})  # type: ignore[index]

    fetches = (partial(fetch, parts) for parts in chunks)
    for parts, (x, ys) in zip(chunks, prefetched(fetches, is_streamed(split))):
        x = x.to(dev)
        with precision.autocast(amp, dev):
            if parts[0][0] is None:
                out = model(x)
            elif len(parts) == 1 and not fused:
                out = model(x, task_name=parts[0][0])
            else:
                ids = torch.cat([torch.full((len(ys[t]),),  # type: ignore[arg-type]
                                            data.task_names.index(t),  # type: ignore[arg-type]
                                            dtype=torch.long) for t, _ in parts])
                out = model(x, task_ids=ids.to(dev))
        if amp != "fp32":
            out = {t: v.float() for t, v in out.items()}
        for t, pred in out.items():
            if t not in ys or not len(ys[t]):
                continue
            y = ys[t].to(dev)
            loss_sums[t] += float(task_loss(specs[t].kind, pred, y, specs[t].loss)) * len(y)
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


def epoch_steps(train_sizes: list[int], batch_size: int, multi_input: bool,
                sampling: str = "per_task") -> int:
    """Steps of one epoch: multi-input, the most of any task (``ceil(n_t / batch)``, batches of
    every task in each step), or with pooled sampling ``sum(n_t) // batch`` (one pass over all
    tasks' samples, the incomplete last batch dropped); single-input, ``ceil(n / batch)``."""
    if multi_input and sampling == "pooled":
        return max(1, sum(train_sizes) // batch_size)
    if multi_input:
        return max(math.ceil(n / batch_size) for n in train_sizes)
    return math.ceil(train_sizes[0] / batch_size)


def backward_step(model: nn.Module, losses: torch.Tensor, weighting_kwargs: dict[str, Any],
                  present: list[bool] | None = None, scale: float = 1.0,
                  amp: str = "fp32") -> Any:
    """Backpropagate one step: the model's auxiliary loss if it has one (MoLA-Router's TwD),
    then the task losses through the method's weighting (T backward passes for weightings that
    need per-task gradients). ``present``: which tasks have samples in the batch (pooled
    sampling may leave some out); the weighting sees it as ``batch_tasks`` and gives gradient
    weightings only the present tasks (:class:`bench.models.compat.CompatWeighting`). Returns
    what the weighting's ``backward`` returns (its task weights of this step, or ``None``).
    ``scale``: fp16's loss scale (every gradient entering the network multiplied by it, the
    weighting shown true task gradients: :mod:`bench.run.precision`); ``amp``: the auxiliary
    loss's modules (a discriminator, a projector) run under the forward pass's autocast."""
    model.batch_tasks = present
    aux = None
    if hasattr(model, "auxiliary_loss"):
        with precision.autocast(amp, _device_of(model)):
            aux = model.auxiliary_loss()
        if aux is not None and amp != "fp32":
            aux = aux.float()
    if scale != 1.0:
        model.grad_scale = scale
        precision.scale_entering(losses, scale)
    if aux is not None:
        (aux * scale if scale != 1.0 else aux).backward(retain_graph=True)
    weights = model.backward(losses, **weighting_kwargs)
    precision.scale_weighting_grads(model, scale)
    return weights


class WeightTrajectory:
    """Per-epoch summary of the task weights a weighting's ``backward`` returns at every step
    (``None`` steps are skipped): ``{"mean", "min", "max"}``, one value per task, rounded to 6
    significant digits — a compact trajectory in the run's history."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def add(self, weights: Any) -> None:
        if weights is None:
            return
        row = np.asarray(weights, dtype=np.float64).reshape(-1)
        if np.isfinite(row).all():
            self.rows.append(row)

    def close(self) -> dict[str, list[float]] | None:
        """The summary of the epoch's steps (``None`` if no step returned weights); resets."""
        if not self.rows or len({len(r) for r in self.rows}) != 1:
            self.rows = []
            return None
        table = np.stack(self.rows)
        self.rows = []
        return {key: [float(f"{v:.6g}") for v in fn(table, axis=0)]
                for key, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))}


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
    history: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    #: per rule: the chosen epoch, the validation metrics there and the full test metrics
    selection: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: samples per task of the fixed test subset the ``oracle`` rule reads every epoch
    oracle_subset: dict[str, int] = field(default_factory=dict)
    #: the model's state after the last step (``train(keep_state=True)``; not recorded)
    state: dict[str, torch.Tensor] | None = None


def train(spec: MethodSpec, scenario: Scenario, data: ScenarioData, setup: TrainingSetup,
          seed: int, progress: Callable[[int, int], None] | None = None,
          rule_names: Sequence[str] | None = None, keep_state: bool = False) -> RunResult:
    """Train ``spec`` on ``data``; evaluate the test split at the epoch each selection rule
    chooses (``rule_names``: all of :data:`bench.records.selection.RULES` by default; the
    default rule is always among them). With ``setup.ddp`` > 1 the run trains on that many
    processes (:mod:`bench.run.parallel`) and rank 0's result is returned. ``keep_state``: the
    result holds the model's state after the last step."""
    check_compatible(spec, scenario)
    if setup.ddp > 1 and parallel.current() is None:
        return parallel.launch(_train, setup.ddp, (spec, data, setup, seed, None, rule_names,
                                                   keep_state), default_device())
    result = _train(spec, data, setup, seed, progress, rule_names, keep_state)
    assert result is not None
    return result


def _train(spec: MethodSpec, data: ScenarioData, setup: TrainingSetup, seed: int,
           progress: Callable[[int, int], None] | None, rule_names: Sequence[str] | None,
           keep_state: bool) -> RunResult | None:
    """The training of :func:`train` in this process (one data-parallel rank, or the only
    process); ``None`` on a data-parallel rank other than 0."""
    seed_everything(seed)
    deterministic_algorithms()
    current = parallel.current()
    ddp = current if current is not None and current.world > 1 else None
    lead = ddp is None or ddp.lead
    device = default_device()
    amp = setup.precision
    scaler = precision.make_scaler(amp, device)
    model = build_model(spec, data, device)
    if ddp is not None:
        parallel.sync_batchnorm(model)
        parallel.broadcast_parameters(model)
        model.task_grad_sync = parallel.average
    trainable, total = count_parameters(model)
    breakdown = model.param_breakdown() if hasattr(model, "param_breakdown") else None
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trained, setup)
    scheduler = make_scheduler(optimizer, setup)
    weighting_kwargs = spec.resolved_weighting_kwargs()
    fused = fused_forward(spec, data.multi_input, setup)
    forward_mode = "fused" if fused else ("per_task" if data.multi_input else "single_input")
    gen = torch.Generator().manual_seed(seed)
    names = data.task_names
    pooled = data.multi_input and setup.sampling == "pooled"
    if pooled:
        pool = PooledSampler([data.train.size(t) for t in names], gen)
    elif data.multi_input:
        samplers = {t: TaskSampler(data.train.size(t), gen) for t in names}
    else:
        shared = TaskSampler(data.train.size(names[0]), gen)
    steps_per_epoch = epoch_steps([data.train.size(t) for t in names], setup.batch_size,
                                  data.multi_input, setup.sampling)
    rules = [selection.get(name) for name in (rule_names or selection.RULES)]
    if selection.DEFAULT not in [r.name for r in rules]:
        raise ValueError(f"the rules must include the default {selection.DEFAULT!r}")
    tasks = [t.describe() for t in data.tasks]
    running = selection.RunningBest(rules, tasks)
    oracle = oracle_subset(data, data.test) if "oracle" in [r.name for r in rules] else None
    states: dict[int, dict[str, torch.Tensor]] = {}  # epoch -> model state some rule chose
    history: list[dict[str, Any]] = []
    step = 0
    total_steps = steps_per_epoch * setup.epochs
    if hasattr(model, "total_training_steps"):  # schedules over training (DANN, VREx, EQRM)
        model.total_training_steps = total_steps
    streamed = is_streamed(data.train)
    # weightings that learn from the same batch's losses after the step (FAMO)
    after_step = bool(getattr(model, "needs_losses_after_step", False))
    trajectory = WeightTrajectory()

    def epoch_batches(epoch: int) -> Iterator[Callable[[], Batch]]:
        """One epoch's batch fetches; the indices are drawn when the fetch is created, and
        streamed samples get their augmentation keys from the seed and the step."""
        for k in range(steps_per_epoch):
            if pooled:
                index = dict(zip(names, pool.next(setup.batch_size)))
            elif data.multi_input:
                index = {t: samplers[t].next(setup.batch_size) for t in names}
            else:
                idx = shared.next(setup.batch_size)
                index = {t: idx for t in names}
            if ddp is not None:  # every rank drew the global batch: keep this rank's share
                index = {t: parallel.shard(i, ddp) for t, i in index.items()}
            yield partial(fetch_batch, data, data.train, index,
                          (seed, epoch * steps_per_epoch + k))

    for epoch in range(setup.epochs):
        model.train()
        for batch in prefetched(epoch_batches(epoch), streamed):
            losses, _ = batch_losses(model, data, batch, fused, setup.loss_share, amp)
            present = [len(batch[1][t]) > 0 for t in names] if pooled else None
            if ddp is not None:  # the global batch's loss values, on every rank
                losses, everywhere = parallel.global_losses(
                    losses, [len(batch[1][t]) for t in names], ddp)
                present = everywhere if pooled else None
            if not torch.isfinite(losses).all():
                raise DivergedError(step, [float(v) for v in losses.detach()])
            optimizer.zero_grad(set_to_none=False)
            scale = precision.current_scale(scaler, device)
            trajectory.add(backward_step(model, losses, weighting_kwargs, present, scale, amp))
            if ddp is not None:
                parallel.average_gradients(trained, ddp)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if setup.grad_clip:
                torch.nn.utils.clip_grad_norm_(trained, setup.grad_clip)
            if scaler is not None:  # skips a step with an inf or NaN gradient
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if after_step:  # the same batch again, in training mode (FAMO's official code)
                with torch.no_grad():
                    losses_after, _ = batch_losses(model, data, batch, fused, setup.loss_share,
                                                   amp)
                    if ddp is not None:
                        losses_after = parallel.global_losses(
                            losses_after, [len(batch[1][t]) for t in names], ddp)[0]
                if not torch.isfinite(losses_after).all():
                    raise DivergedError(step, [float(v) for v in losses_after])
                model.after_step(losses_after)
            step += 1
            if progress is not None:
                progress(step, total_steps)
        if scheduler is not None:
            scheduler.step()
        if not lead:  # rank 0 evaluates; the weightings' epoch ends with eval mode all the same
            model.eval()
            continue
        val_metrics, task_losses = evaluate(model, data, data.val, setup.eval_batch_size,
                                            amp=amp)
        if not all(math.isfinite(v) for v in task_losses):
            raise DivergedError(step, task_losses)
        entry: dict[str, Any] = {"epoch": epoch, "val_task_losses": task_losses,
                                 "val_metrics": val_metrics}
        if oracle is not None:  # small: one fused pass where the architecture allows it
            entry["oracle_metrics"] = evaluate(model, data, oracle, setup.eval_batch_size,
                                               fused, amp)[0]
        if any(not selection.RULES[name].latest for name in running.update(entry)):
            # the model at the end is "last"'s choice: no copy for it
            states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        chosen = set(running.chosen().values())
        for old in [e for e in states if e not in chosen]:
            del states[old]  # no rule chooses that epoch any more
        history.append(_history_entry(entry, running.history))
        weights_summary = trajectory.close()
        if weights_summary is not None:
            history[-1]["task_weights"] = weights_summary
    if not lead:
        return None
    state = ({k: v.detach().clone() for k, v in model.state_dict().items()} if keep_state
             else None)
    chosen_epochs = running.chosen()
    test_at: dict[int, dict[str, dict[str, float]]] = {}
    final = setup.epochs - 1
    for epoch in sorted(set(chosen_epochs.values()), key=lambda e: e != final):
        if epoch != final:  # the final epoch first: that model is the one in memory
            model.load_state_dict(states[epoch])
        test_at[epoch], _ = evaluate(model, data, data.test, setup.eval_batch_size, amp=amp)
    chosen_by = {name: {"epoch": epoch, "val": running.history[epoch]["val_metrics"],
                        "test": test_at[epoch]} for name, epoch in chosen_epochs.items()}
    default = chosen_by[selection.DEFAULT]
    return RunResult(default["val"], default["test"], default["epoch"], setup.epochs, step,
                     trainable, total, breakdown, forward_mode, history, tasks, chosen_by,
                     {t: oracle.size(t) for t in names} if oracle is not None else {}, state)


def _history_entry(entry: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """What the record keeps of one epoch (rounded): the normalised validation loss
    (``val_score``, the default rule's score), the task losses and both splits' metrics."""
    def rounded(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {t: {m: round(v, 6) for m, v in ms.items()} for t, ms in metrics.items()}

    score = selection.RULES[selection.DEFAULT].score(history, len(history) - 1, [])
    out = {"epoch": entry["epoch"], "val_score": round(score, 6),
           "val_task_losses": [round(v, 6) for v in entry["val_task_losses"]],
           "val_metrics": rounded(entry["val_metrics"])}
    if "oracle_metrics" in entry:
        out["oracle_metrics"] = rounded(entry["oracle_metrics"])
    return out


#: share of each task's test split evaluated every epoch for the ``oracle`` rule, and the
#: smallest such subset (the whole split when it is smaller)
ORACLE_FRACTION = 0.025
ORACLE_MIN = 32


def oracle_size(n: int, fraction: float = ORACLE_FRACTION, minimum: int = ORACLE_MIN) -> int:
    """Samples of a task's fixed test subset (:func:`oracle_subset`) when its split has ``n``."""
    return min(n, max(minimum, math.ceil(fraction * n)))


def oracle_subset(data: ScenarioData, split: Split, fraction: float = ORACLE_FRACTION,
                  minimum: int = ORACLE_MIN) -> Split:
    """A fixed subset of ``split`` (the same for every run of a scenario): per task,
    ``max(minimum, fraction · n)`` samples evenly spaced through the split (so an ordered
    split — e.g. files sorted by class — is covered from end to end), unread if streamed."""
    def pick(n: int) -> torch.Tensor:
        m = oracle_size(n, fraction, minimum)
        return torch.arange(m) * n // m

    def sub(samples: Any, idx: torch.Tensor) -> Any:
        return samples.subset(idx) if isinstance(samples, LazySamples) else samples[idx]

    if data.multi_input:
        index = {t: pick(split.size(t)) for t in data.task_names}
        return Split({t: sub(split.inputs[t], index[t])  # type: ignore[index]
                      for t in data.task_names},
                     {t: sub(split.targets[t], index[t]) for t in data.task_names})
    idx = pick(split.size(data.task_names[0]))
    return Split(sub(split.inputs, idx), {t: sub(v, idx) for t, v in split.targets.items()})


def run_config(run: RunSpec, progress: Callable[[int, int], None] | None = None
               ) -> tuple[RunResult, float]:
    """Train the resolved run ``run`` (:class:`bench.run.plan.RunSpec`); returns the result and
    the training wall time in seconds."""
    scenario: Scenario = scenarios.get(run.scenario)()
    data = load_scenario(run.scenario, run.profile)
    start = time.perf_counter()
    result = train(run.method_spec, scenario, data, run.training, run.seed, progress)
    return result, time.perf_counter() - start


PARAM_SCALING_TASKS = (2, 4, 6, 8, 10)


def param_scaling(run: RunSpec, task_counts: tuple[int, ...] = PARAM_SCALING_TASKS
                  ) -> dict[str, int]:
    """Trainable parameters of the run's method built for ``T`` copies of the scenario's first
    task, for each ``T`` in ``task_counts`` (the x-axis of MoLA Fig. 5)."""
    data = load_scenario(run.scenario, run.profile)
    out: dict[str, int] = {}
    first = data.tasks[0]
    for count in task_counts:
        tasks = tuple(replace(first, name=f"task{i}") for i in range(count))
        clone = replace(data, tasks=tasks)
        out[str(count)] = count_parameters(build_model(run.method_spec, clone))[0]
    return out

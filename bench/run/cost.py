"""Counted-FLOP cost of a planned run, for ``python -m bench run --dry-run``.

* :func:`step_flops` runs **one real training step** of a method — the engine's
  :func:`~bench.run.engine.compute_losses` and :func:`~bench.run.engine.backward_step`
  (auxiliary loss, then ``model.backward`` through the weighting, so PCGrad, MGDA, CAGrad... are
  counted with their T backward passes) — on a synthetic batch of the scenario's input shape, under
  :class:`torch.utils.flop_counter.FlopCounterMode`; :func:`eval_flops` counts an evaluation.
* The batch is small: FLOPs are counted at 1 and 2 samples per task (2 and 4 when BatchNorm needs
  more) and extrapolated linearly to the real batch, which keeps the part of a step that does not
  grow with the batch (a weighting's Gram matrix of the task gradients, MoLA's ``B·A`` adapter
  products) once.
* What is counted is what ``FlopCounterMode`` counts: matrix products, convolutions and attention,
  forward and backward (plus the CPU's fused attention, which it misses). Element-wise work
  (normalisation, activations, the optimiser's update) and data loading are not.
* Counting runs the real code but replaces the expensive kernels by outputs of the right shape
  (:class:`ShapeOnlyKernels`): FLOPs depend on shapes only, and counting a ResNet-18 step at 224²
  then costs a fraction of running it (the counts are the same, a test).
* The counts of a (method identity, scenario shape, forward) are kept on disk
  (:func:`cache_dir`, one JSON file each, keyed with :func:`code_version`): a second dry run
  reads them instead of counting again; any change of the package's or the plugins' source, or
  of torch's version, counts anew.
* :func:`device_rate` measures this device's FLOP/s on a fixed ResNet-18 step counted the same
  way, so that a run's time ≈ its FLOPs / the rate. Small models on a CPU are overhead-bound: the
  estimate is then well below the wall time (the README gives the measured ratio).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from tqdm import tqdm

from bench.data.scenario import ScenarioData, ScenarioShape, Split, TaskSpec, TrainingSetup
from bench.models.method import MethodSpec, build_model
from bench.records import write_json_atomic
from bench.registry import plugin_files
from bench.run.engine import (
    backward_step,
    compute_losses,
    default_device,
    epoch_steps,
    evaluate,
    fused_forward,
    oracle_size,
)
from bench.run.plan import RunSpec, canonical_json

#: samples per task of the smaller counted batch, and the fallback when BatchNorm in training
#: mode sees a single value per channel (a 1×1 feature map of one sample)
COUNT_SAMPLES, FALLBACK_SAMPLES = 1, 2


def _cpu_attention_flop(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _cpu_attention_backward_flop(grad_out: Any, query: Any, key: Any, value: Any, *args: Any,
                                 **kwargs: Any) -> int:
    return int(sdpa_backward_flop_count(grad_out, query, key, value))


_aten = torch.ops.aten
#: kernels that ``FlopCounterMode`` has no formula for (the CPU's fused attention), counted as
#: the attention kernels it knows (the arguments are shapes)
EXTRA_FORMULAS: dict[Any, Any] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flop,
}
COUNTED_KERNELS = frozenset([*flop_registry, *EXTRA_FORMULAS])
#: reductions (sums, norms, dot products, losses, argmax) skipped on large tensors
REDUCTIONS = frozenset([_aten.sum, _aten.mean, _aten.linalg_vector_norm, _aten.norm, _aten.dot,
                        _aten.vdot, _aten.mv, _aten.nll_loss_forward, _aten.nll_loss2d_forward,
                        _aten.binary_cross_entropy_with_logits, _aten.mse_loss, _aten.argmax])
#: element-wise ops whose output is shaped and typed like their (same-shaped, floating-point)
#: tensor arguments, skipped on large tensors
ELEMENTWISE = frozenset([
    _aten.add, _aten.sub, _aten.mul, _aten.div, _aten.neg, _aten.relu, _aten.threshold_backward,
    _aten.gelu, _aten.gelu_backward, _aten.sigmoid, _aten.sigmoid_backward, _aten.tanh,
    _aten.tanh_backward, _aten.silu, _aten.silu_backward, _aten.exp, _aten.log, _aten.sqrt,
    _aten.rsqrt, _aten.pow, _aten.abs, _aten.clamp, _aten.clamp_min, _aten.clamp_max,
    _aten.reciprocal, _aten.hardtanh_backward])
#: batch normalisation: an output like the input, saved statistics with one value per channel
BATCH_NORMS = frozenset([_aten._native_batch_norm_legit, _aten._native_batch_norm_legit_no_training,
                         _aten.native_batch_norm])
#: in-place ops that only change a tensor's values (random fills for dropout masks, gradient
#: accumulation and zeroing, copies, clamps), skipped on large floating-point tensors
IN_PLACE = frozenset([_aten.bernoulli_, _aten.uniform_, _aten.normal_, _aten.fill_,
                      _aten.zero_, _aten.copy_, _aten.add_, _aten.sub_, _aten.mul_, _aten.div_,
                      _aten.clamp_, _aten.clamp_min_, _aten.clamp_max_, _aten.relu_])
#: a tensor of at least this many elements is large (skipping an op on it saves time)
LARGE_INPUT = 1 << 16
#: stand-in outputs up to this size get random values; larger ones are left uninitialised
RANDOM_OUTPUT_LIMIT = 1 << 12


class ShapeOnlyKernels(TorchDispatchMode):
    """Replace every counted kernel (matrix product, convolution, attention), and on large
    tensors every reduction (a norm, a dot product of task gradients, a loss), common
    element-wise op (in place or not) and batch normalisation, by an output of the right shape
    (found on the meta device, or by the op's shape rule), without computing it.

    Everything else runs for real, so the code path (and every shape) is that of a real step.
    Small outputs get random values, so that the weightings' solvers see a well-posed problem;
    large ones (activations, gradients) are left uninitialised, as their values never decide
    anything that is counted (tests compare the counts with real execution).
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        like = _large_elementwise_operand(func, args, kwargs)
        if like is not None:
            return torch.empty_like(like)
        shortcut = _shape_rule(func, args)
        if shortcut is not None:
            return shortcut
        counted = func._overloadpacket in COUNTED_KERNELS
        if func._schema.is_mutable or not (counted or _is_large_reduction(func, args)):
            return func(*args, **kwargs)
        meta = func(*[_to_meta(a) for a in args], **{k: _to_meta(v) for k, v in kwargs.items()})
        device = next((a.device for a in args if isinstance(a, torch.Tensor)),
                      torch.device("cpu"))
        if isinstance(meta, tuple):
            return tuple(_stand_in(out, device) for out in meta)
        return _stand_in(meta, device)


def _large_elementwise_operand(func: Any, args: Any, kwargs: Any) -> torch.Tensor | None:
    """The first tensor argument of an :data:`ELEMENTWISE` op on large, floating-point tensors
    of one shape and type (its output is like it), else None."""
    if func._overloadpacket not in ELEMENTWISE or kwargs.get("out") is not None:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or tensors[0].numel() < LARGE_INPUT or not tensors[0].is_floating_point():
        return None
    first = tensors[0]
    if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors[1:]):
        return None
    return first


def _shape_rule(func: Any, args: Any) -> Any:
    """The stand-in output of a batch normalisation (forward or backward), or the tensor of a
    skipped in-place op, on a large tensor; None for any other op."""
    packet = func._overloadpacket
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None or func._schema.overload_name.endswith("out"):
        return None
    if packet in IN_PLACE:
        return x if x.numel() >= LARGE_INPUT and x.is_floating_point() else None
    if packet in BATCH_NORMS and x.numel() >= LARGE_INPUT:
        names = [arg.name for arg in func._schema.arguments]
        training = "training" in names and bool(args[names.index("training")])
        stats = torch.empty(x.shape[1] if training else 0, dtype=torch.float32, device=x.device)
        return torch.empty_like(x), stats, stats.clone()
    if packet is _aten.native_batch_norm_backward and args[1].numel() >= LARGE_INPUT:
        grad_out, inputs, mask = args[0], args[1], args[-1]
        channels = torch.empty(inputs.shape[1], dtype=grad_out.dtype, device=grad_out.device)
        return (torch.empty_like(inputs) if mask[0] else None,
                channels if mask[1] else None, channels.clone() if mask[2] else None)
    return None


def _is_large_reduction(func: Any, args: Any) -> bool:
    return func._overloadpacket in REDUCTIONS and any(
        isinstance(a, torch.Tensor) and a.numel() >= LARGE_INPUT for a in args)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_to_meta(v) for v in value)
    return value


def _stand_in(meta: Any, device: torch.device) -> Any:
    """An output like ``meta`` on ``device``: random when small and floating-point (a loss, a
    Gram matrix), zeros when integral (indices), uninitialised otherwise."""
    if not isinstance(meta, torch.Tensor):
        return meta
    if not meta.dtype.is_floating_point:
        return torch.zeros(meta.shape, dtype=meta.dtype, device=device)
    if meta.numel() <= RANDOM_OUTPUT_LIMIT:
        return torch.rand(meta.shape, dtype=meta.dtype, device=device)
    return torch.empty(meta.shape, dtype=meta.dtype, device=device)


def count_flops(fn: Callable[[], Any], shape_only: bool = True) -> int:
    """FLOPs that ``FlopCounterMode`` counts while ``fn()`` runs (``shape_only``: counted
    kernels are not computed, see :class:`ShapeOnlyKernels`; denormals are flushed and numeric
    warnings silenced meanwhile). Torch's random state is kept."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        if shape_only:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(np.errstate(all="ignore"))
            stack.callback(torch.set_flush_denormal, False)
            torch.set_flush_denormal(True)
            stack.enter_context(ShapeOnlyKernels())
        counter = stack.enter_context(
            FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS))
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------ synthetic batches
def _random_target(task: TaskSpec, n: int, input_shape: tuple[int, int, int],
                   gen: torch.Generator) -> torch.Tensor:
    """Random targets of a task kind, shaped as the scenarios' loaders shape them."""
    hw = tuple(input_shape[1:])
    if task.kind == "classification":
        return torch.randint(0, task.num_outputs, (n,), generator=gen)
    if task.kind == "multilabel":
        return torch.randint(0, 2, (n, task.num_outputs), generator=gen).float()
    if task.kind == "segmentation":
        return torch.randint(0, task.num_outputs, (n, *hw), generator=gen)
    if task.kind == "saliency":
        return torch.randint(0, 2, (n, *hw), generator=gen).float()
    if task.kind == "normals":
        return torch.nn.functional.normalize(torch.randn((n, 3, *hw), generator=gen), dim=1)
    # depth, regression: positive values (depth 0 means "missing")
    return torch.rand((n, task.num_outputs, *hw), generator=gen) + 0.5


def synthetic_data(shape: ScenarioShape, samples: int, seed: int = 0) -> ScenarioData:
    """Random inputs and targets of ``shape``'s tasks: ``samples`` per task (multi-input) or in
    all (single-input), the same tensors in every split."""
    gen = torch.Generator().manual_seed(seed)

    def inputs() -> torch.Tensor:
        return torch.randn((samples, *shape.input_shape), generator=gen)

    targets = {t.name: _random_target(t, samples, shape.input_shape, gen) for t in shape.tasks}
    if shape.multi_input:
        split = Split({t.name: inputs() for t in shape.tasks}, targets)
    else:
        split = Split(inputs(), targets)
    return ScenarioData(
        name=shape.name, heterogeneity=shape.heterogeneity, tasks=shape.tasks,
        input_shape=shape.input_shape, train=split, val=split, test=split,
        training=TrainingSetup(epochs=1, batch_size=samples), backbone=shape.backbone,
        backbone_kwargs=dict(shape.backbone_kwargs),
        shared_label_space=shape.shared_label_space)


# ------------------------------------------------------------------ counting
@dataclass(frozen=True)
class LinearFlops:
    """FLOPs of one call as ``fixed + per_sample × samples`` (samples per task in
    multi-input scenarios), from two counts."""

    fixed: float
    per_sample: float

    @classmethod
    def from_counts(cls, samples: int, small: int, large: int) -> LinearFlops:
        """From the counts at ``samples`` and ``2 × samples``."""
        per_sample = (large - small) / samples
        return cls(max(small - per_sample * samples, 0.0), per_sample)

    def at(self, samples: float) -> float:
        return self.fixed + self.per_sample * samples


@dataclass(frozen=True)
class MethodFlops:
    """What one method costs on one scenario shape: a training step and an evaluation call."""

    step: LinearFlops
    #: one evaluation forward (multi-input: of one task's samples; tasks are counted alike)
    evaluation: LinearFlops


def method_flops(spec: MethodSpec, shape: ScenarioShape, setup: TrainingSetup,
                 samples: int | None = None, shape_only: bool = True) -> MethodFlops:
    """Count a training step and an evaluation at ``samples`` and ``2 × samples`` per task
    (default :data:`COUNT_SAMPLES`, else :data:`FALLBACK_SAMPLES`), with the engine's own code,
    on one model built as the engine builds it (on the CPU)."""
    if samples is None:
        try:
            return method_flops(spec, shape, setup, COUNT_SAMPLES, shape_only)
        except ValueError as err:
            if "more than 1 value per channel" not in str(err):
                raise
            return method_flops(spec, shape, setup, FALLBACK_SAMPLES, shape_only)
    with torch.random.fork_rng(devices=[]), (
            ShapeOnlyKernels() if shape_only else contextlib.nullcontext()):
        torch.manual_seed(0)  # shape only: large parameters are not initialised (not needed)
        # weights do not change FLOPs: never fetch or read them to count
        model = build_model(spec, synthetic_data(shape, samples), "cpu", load_weights=False)
    fused = fused_forward(spec, shape.multi_input, setup)
    steps, evals = [], []
    for n in (samples, 2 * samples):
        data = synthetic_data(shape, n)
        steps.append(count_flops(partial(_training_step, model, spec, data, fused), shape_only))
        val = _first_task_only(data) if shape.multi_input else data.val
        evals.append(count_flops(partial(evaluate, model, data, val, n), shape_only))
    return MethodFlops(LinearFlops.from_counts(samples, *steps),
                       LinearFlops.from_counts(samples, *evals))


def _first_task_only(data: ScenarioData) -> Split:
    """The validation split with the first task's samples only: evaluating it runs that task's
    forward (multi-input scenarios; tasks are counted alike)."""
    first = data.task_names[0]
    assert isinstance(data.val.inputs, dict)
    return Split({t: x if t == first else x[:0] for t, x in data.val.inputs.items()},
                 {t: y if t == first else y[:0] for t, y in data.val.targets.items()})


def _training_step(model: torch.nn.Module, spec: MethodSpec, data: ScenarioData,
                   fused: bool) -> None:
    """One training step on all of ``data.train``, as :func:`bench.run.engine.train` runs it
    (without the optimiser's element-wise update)."""
    model.train()
    index = {t: torch.arange(data.train.size(t)) for t in data.task_names}
    losses, _ = compute_losses(model, data, data.train, index, fused)
    backward_step(model, losses, spec.resolved_weighting_kwargs())


def step_batch(shape: ScenarioShape, setup: TrainingSetup) -> float:
    """Samples per task in one training step: ``min(batch, n_train)`` (the engine's sampler
    never returns more than a task has), averaged over tasks in multi-input scenarios; with
    pooled sampling the batch is shared by all tasks (``batch / T`` on average)."""
    train = shape.sizes["train"]
    if shape.multi_input and setup.sampling == "pooled":
        return min(setup.batch_size, sum(train.values())) / len(train)
    if not shape.multi_input:
        return min(setup.batch_size, train[shape.task_names[0]])
    return sum(min(setup.batch_size, train[t]) for t in shape.task_names) / len(train)


def step_flops(spec: MethodSpec, shape: ScenarioShape, setup: TrainingSetup) -> int:
    """FLOPs of one training step of ``spec`` at the scenario's real per-step batch."""
    flops = _method_flops(spec, shape, setup)
    return round(flops.step.at(step_batch(shape, setup)))


def eval_flops(spec: MethodSpec, shape: ScenarioShape, setup: TrainingSetup, split: str) -> int:
    """Forward FLOPs of evaluating ``split`` in chunks of ``setup.eval_batch_size`` samples, as
    :func:`bench.run.engine.evaluate` does (multi-input: chunks of each task's samples);
    ``oracle``: the fixed test subset the ``oracle`` selection rule reads every epoch."""
    flops = _method_flops(spec, shape, setup).evaluation
    counts = shape.sizes["test" if split == "oracle" else split]
    if split == "oracle":
        counts = {t: oracle_size(n) for t, n in counts.items()}
    sizes = list(counts.values()) if shape.multi_input else [counts[shape.task_names[0]]]
    return round(sum(math.ceil(n / setup.eval_batch_size) * flops.fixed + n * flops.per_sample
                     for n in sizes))


def _method_flops(spec: MethodSpec, shape: ScenarioShape, setup: TrainingSetup) -> MethodFlops:
    """:func:`method_flops`, kept in memory and on disk (:func:`cache_dir`) per method identity,
    scenario shape, forward kind and :func:`code_version`."""
    key = (canonical_json(spec.identity()), shape.name, canonical_json(_shape_key(shape)),
           str(fused_forward(spec, shape.multi_input, setup)), code_version())
    if key not in _METHOD_CACHE:
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        path = cache_dir() / "flops" / f"{name}.json"
        flops = _read_counts(path, key)
        if flops is None:
            flops = method_flops(spec, shape, setup)
            _write_counts(path, key, flops)
        _METHOD_CACHE[key] = flops
    return _METHOD_CACHE[key]


CACHE_ENV = "BENCH_CACHE_DIR"


def cache_dir() -> Path:
    """Where counted FLOPs are kept: ``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME`` (default
    ``~/.cache``) ``/mtl-hetero-bench``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mtl-hetero-bench"


@cache
def code_version() -> str:
    """A digest of what counted FLOPs depend on besides the method and the shape: the source of
    the ``bench`` package and of every plugin file, and torch's version."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(__file__).resolve().parents[1]
    for path in [*sorted(package.rglob("*.py")), *plugin_files()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_counts(path: Path, key: tuple[str, ...]) -> MethodFlops | None:
    """The counts stored at ``path`` for ``key`` (None: absent, unreadable or another key)."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") != list(key):
            return None
        return MethodFlops(LinearFlops(**stored["step"]), LinearFlops(**stored["evaluation"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_counts(path: Path, key: tuple[str, ...], flops: MethodFlops) -> None:
    """Store ``flops`` for ``key`` (atomically); a cache that cannot be written is skipped."""
    record = {"key": list(key), "step": vars(flops.step), "evaluation": vars(flops.evaluation)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
    except OSError:
        pass


def _shape_key(shape: ScenarioShape) -> dict[str, Any]:
    """What the counts depend on (not the split sizes)."""
    return {"tasks": [t.describe() for t in shape.tasks], "input": shape.input_shape,
            "backbone": shape.backbone, "kwargs": shape.backbone_kwargs,
            "kind": shape.heterogeneity, "shared": shape.shared_label_space}


_METHOD_CACHE: dict[tuple[str, ...], MethodFlops] = {}


# ------------------------------------------------------------------ runs
@dataclass(frozen=True)
class RunCost:
    """Counted FLOPs of one run: its training steps, per-epoch validation and final test."""

    steps: int
    step_flops: int
    train_flops: int
    eval_flops: int
    #: the scenario's split sizes are published ones (its data are not present)
    nominal: bool = False

    @property
    def flops(self) -> int:
        return self.train_flops + self.eval_flops


def scenario_shape(name: str, profile: str) -> ScenarioShape | None:
    """A scenario's shape, cached per process (and data root)."""
    return _scenario_shape(name, profile, os.environ.get("BENCH_DATA_ROOT", ""))


@cache
def _scenario_shape(name: str, profile: str, data_root: str) -> ScenarioShape | None:
    from bench.registry import scenarios

    return scenarios.get(name)().shape(profile)


def run_flops(run: RunSpec) -> RunCost | None:
    """The counted cost of ``run`` (None when its scenario's size is unknown): epochs × steps
    per epoch (as :func:`bench.run.engine.train` counts them) training steps, a validation pass
    and a pass over the oracle's test subset every epoch, and one test pass (the engine makes
    one per distinct epoch the selection rules choose, 1 to 4: one is the lower bound). Seeds
    share it (cached per method, scenario, profile)."""
    shape = scenario_shape(run.scenario, run.profile)
    if shape is None:
        return None
    spec, setup = run.method_spec, run.training
    steps = setup.epochs * epoch_steps([shape.sizes["train"][t] for t in shape.task_names],
                                       setup.batch_size, shape.multi_input, setup.sampling)
    per_step = step_flops(spec, shape, setup)
    evaluation = (setup.epochs * (eval_flops(spec, shape, setup, "val")
                                  + eval_flops(spec, shape, setup, "oracle"))
                  + eval_flops(spec, shape, setup, "test"))
    return RunCost(steps, per_step, steps * per_step, evaluation, shape.nominal)


def plan_flops(runs: list[RunSpec], jobs: int = 1) -> dict[RunSpec, RunCost | None]:
    """:func:`run_flops` of every run, each distinct (method, scenario, profile, training setup)
    counted once (seeds share it), in ``jobs`` processes when there are several."""
    groups: dict[tuple[str, ...], list[RunSpec]] = {}
    for run in runs:
        key = (canonical_json(run.config["method_identity"]), run.scenario, run.profile,
               canonical_json(run.config["training"]))
        groups.setdefault(key, []).append(run)
    firsts = [members[0] for members in groups.values()]
    bar = tqdm(total=len(firsts), desc="counting FLOPs", unit="method×scenario",
               disable=None, file=sys.stderr, leave=False, dynamic_ncols=True)
    costs: list[RunCost | None] = []
    if jobs > 1 and len(firsts) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forked workers inherit the loaded plugins (no start-up imports) where fork exists
        context = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(min(jobs, len(firsts)), mp_context=context,
                                 initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            for counted in pool.map(run_flops, firsts):
                costs.append(counted)
                bar.update()
    else:
        for run in firsts:
            costs.append(run_flops(run))
            bar.update()
    bar.close()
    return {run: cost for members, cost in zip(groups.values(), costs) for run in members}


# ------------------------------------------------------------------ device
#: the reference workload of :func:`device_rate`: ResNet-18, batch, resolution, classes
RATE_WORKLOAD = {"batch": 16, "size": 64, "classes": 10}


def device_rate(device: torch.device | str | None = None, threads: int | None = None,
                repeats: int = 5) -> float:
    """Measured FLOP/s of ``device`` (default: the engine's) on one training step (forward and
    backward) of :func:`bench.models.backbones.resnet18` at :data:`RATE_WORKLOAD`, counted with
    ``FlopCounterMode``: the median of ``repeats`` timed steps after a warm-up. ``threads``
    sets torch's CPU threads while measuring (as a sweep's ``--jobs`` splits them)."""
    device = torch.device(device) if device is not None else default_device()
    return _device_rate(str(device), threads or torch.get_num_threads(), repeats)


@cache
def _device_rate(device_name: str, threads: int, repeats: int) -> float:
    from bench.models.backbones import resnet18

    device = torch.device(device_name)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = resnet18().to(device)
            head = torch.nn.Linear(encoder.out_channels, RATE_WORKLOAD["classes"]).to(device)
            x = torch.randn(RATE_WORKLOAD["batch"], 3, RATE_WORKLOAD["size"],
                            RATE_WORKLOAD["size"], device=device)
            y = torch.randint(0, RATE_WORKLOAD["classes"], (RATE_WORKLOAD["batch"],),
                              device=device)

            def step() -> None:
                logits = head(encoder(x).mean(dim=(2, 3)))
                torch.nn.functional.cross_entropy(logits, y).backward()

            flops = count_flops(step, shape_only=False)
            step()  # warm-up
            times = []
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                step()
                _synchronize(device)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return flops / statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["LinearFlops", "MethodFlops", "RunCost", "ShapeOnlyKernels", "cache_dir",
           "code_version", "count_flops", "device_rate", "eval_flops", "method_flops",
           "plan_flops", "run_flops", "scenario_shape", "step_flops", "synthetic_data"]

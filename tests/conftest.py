"""Shared test fixtures: tiny random-tensor scenarios for each heterogeneity kind.

``tiny_scenario(kind)`` returns ``(scenario, data)``: a :class:`Scenario` instance (for
``check_compatible``) and a :class:`ScenarioData` of random tensors with a very narrow ResNet,
1x8x8 inputs and a 1-epoch training setup, so a training step of any method takes well under a
second on one CPU thread.

* ``domain`` — 2 domains (tasks) sharing one 3-class label space, own inputs per domain;
* ``multi_input`` — 2 classification tasks with different label spaces, own inputs per task;
* ``single_input`` — one input, 3 tasks: 4-class classification, 3-class segmentation, regression.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import settings

from bench.data.scenario import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup

#: Under CI the property tests draw the same examples on every run (hypothesis' documented CI
#: setting), so CI cannot fail by chance; locally they draw new ones each time and keep finding.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_every_test() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Counted FLOPs (``bench.run.cost.cache_dir``) go to a folder of the test session, never to
    the user's cache: every session counts from scratch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


INPUT_SHAPE = (1, 8, 8)
TINY_BACKBONE = {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1), "strides": (1, 2, 1, 2)}
SETUP = TrainingSetup(epochs=1, batch_size=8, optimizer="adam", lr=1e-2, eval_batch_size=64)
KINDS = ("domain", "multi_input", "single_input")


class TinyScenario(Scenario):
    profiles = ("smoke",)
    backbone = "resnet"

    def __init__(self, kind: str) -> None:
        self.name = f"tiny_{kind}"
        self.heterogeneity = kind  # type: ignore[assignment]

    def setup(self, profile: str) -> TrainingSetup:
        return SETUP


def _tasks(kind: str) -> tuple[TaskSpec, ...]:
    if kind == "domain":
        return (TaskSpec("d0", "classification", 3, ("accuracy",)),
                TaskSpec("d1", "classification", 3, ("accuracy",)))
    if kind == "multi_input":
        return (TaskSpec("a", "classification", 3, ("accuracy",)),
                TaskSpec("b", "classification", 5, ("accuracy",)))
    return (TaskSpec("cls", "classification", 4, ("accuracy",)),
            TaskSpec("seg", "segmentation", 3, ("miou", "pixel_accuracy")),
            TaskSpec("depth", "regression", 1, ("abs_err",)))


def _target(task: TaskSpec, n: int, gen: torch.Generator) -> torch.Tensor:
    if task.kind == "classification":
        return torch.randint(0, task.num_outputs, (n,), generator=gen)
    if task.kind == "segmentation":
        return torch.randint(0, task.num_outputs, (n, *INPUT_SHAPE[1:]), generator=gen)
    return torch.rand((n, task.num_outputs, *INPUT_SHAPE[1:]), generator=gen)


def make_tiny(kind: str, n: int = 16, seed: int = 0) -> tuple[TinyScenario, ScenarioData]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    gen = torch.Generator().manual_seed(seed)
    tasks = _tasks(kind)

    def split(size: int) -> Split:
        if kind == "single_input":
            x = torch.randn((size, *INPUT_SHAPE), generator=gen)
            return Split(x, {t.name: _target(t, size, gen) for t in tasks})
        return Split({t.name: torch.randn((size, *INPUT_SHAPE), generator=gen) for t in tasks},
                     {t.name: _target(t, size, gen) for t in tasks})

    data = ScenarioData(name=f"tiny_{kind}", heterogeneity=kind,  # type: ignore[arg-type]
                        tasks=tasks, input_shape=INPUT_SHAPE, train=split(n), val=split(8),
                        test=split(8), training=SETUP, backbone="resnet",
                        backbone_kwargs=dict(TINY_BACKBONE),
                        shared_label_space=kind == "domain")
    return TinyScenario(kind), data


@pytest.fixture
def tiny_scenario() -> Callable[..., tuple[TinyScenario, ScenarioData]]:
    """Factory fixture: ``tiny_scenario("domain" | "multi_input" | "single_input")``."""
    torch.set_num_threads(1)
    return make_tiny


def weighting_direction(weighting_cls: type, grads: torch.Tensor, rep_grad: bool = False,
                        batch_tasks: list[bool] | None = None,
                        **kwargs: object) -> tuple[torch.Tensor, object]:
    """Run ``weighting_cls.backward`` on linear losses ``L_t = g_t . p`` whose gradients w.r.t. the
    one shared parameter ``p`` are the rows of ``grads``; return ``(p.grad, backward's result)``.
    ``batch_tasks``: which tasks the batch holds, as the engine sets it (None: all)."""
    num_tasks, dim = grads.shape

    class Harness(weighting_cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            self.p = torch.nn.Parameter(torch.zeros(dim))
            self.task_name = [f"t{i}" for i in range(num_tasks)]
            self.task_num = num_tasks
            self.rep_grad = rep_grad
            self.device = torch.device("cpu")

        def get_share_params(self):
            return [self.p]

        def zero_grad_share_params(self) -> None:
            if self.p.grad is not None:
                self.p.grad.zero_()

    model = Harness()
    model.init_param()
    model.batch_tasks = batch_tasks
    losses = grads @ model.p
    result = model.backward(losses, **kwargs)
    assert model.p.grad is not None
    return model.p.grad.detach().clone(), result


@pytest.fixture
def run_weighting() -> Callable[..., tuple[torch.Tensor, object]]:
    """``run_weighting(WeightingClass, grads, **kwargs)`` -> ``(update direction, weights)``."""
    return weighting_direction

"""Search distributions: what equal-budget random search draws for a hyper-parameter.

DomainBed's ``hparams_registry.py`` declares, per algorithm, each hyper-parameter's default and
a random distribution; a sweep draws N configurations per algorithm from them. Here a method's
plugin file declares its own (``register_architecture(..., search={...})``,
``register_weighting(..., search={...})``), a scenario declares the optimiser's
(:meth:`bench.data.scenario.Scenario.search_space`, default :data:`OPTIMISER_SPACE`), and every
distribution names its ``source`` (a paper's grid or range, or why it was chosen here).

Draws use :class:`random.Random` seeded by the caller (no global state), so the same seed gives
the same draws in any process, on any backend.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Distribution:
    """A search distribution; ``source`` says where it comes from."""

    source: str

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class LogUniform(Distribution):
    """``exp(U(log low, log high))`` — a learning rate, a weight decay, a temperature."""

    low: float = 1e-4
    high: float = 1e-2

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.4g}")

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform(Distribution):
    """``U(low, high)``, rounded to 4 significant digits (a readable table entry)."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got {self.low}, {self.high}")

    def sample(self, rng: random.Random) -> float:
        return float(f"{rng.uniform(self.low, self.high):.4g}")

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``values``, uniformly (a paper's grid, or discrete settings)."""

    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng: random.Random) -> Any:
        value = self.values[rng.randrange(len(self.values))]
        return list(value) if isinstance(value, tuple) else value

    def describe(self) -> str:
        return "one of {" + ", ".join(str(v) for v in self.values) + "}"


#: the optimiser's search space of every scenario unless it declares its own
OPTIMISER_SPACE: dict[str, Distribution] = {
    "lr": LogUniform(
        "Gama & Grassi 2025 tune lr on {1e-4, 5e-4, 1e-3, 5e-3} per method; DomainBed draws "
        "Adam's lr log-uniformly: this range covers that grid and the embedded default 3e-3",
        1e-4, 1e-2),
    "weight_decay": Choice(
        "Gama & Grassi 2025's grid {0, 1e-5, 1e-4} (Kurin et al. 2022 also tune weight decay)",
        (0.0, 1e-5, 1e-4)),
}


def draw(space: dict[str, Distribution], rng: random.Random) -> dict[str, Any]:
    """One configuration: a value for every key of ``space``, in sorted key order (so the draws
    do not depend on the order the space was declared in)."""
    return {key: space[key].sample(rng) for key in sorted(space)}

"""Ablation presets: the papers' ablation axes as sweeps (``python -m bench run --ablation NAME``).

Each preset is a list of variants ``(label, method, overrides)`` run on its scenarios; the
leaderboard renders each preset as its own table.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.registry import Registry

Variant = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    scenarios: tuple[str, ...]
    variants: tuple[Variant, ...]
    #: variants that depend on the scenario (e.g. one weight per task): ``(num_tasks) -> list``
    variants_for: Callable[[int], list[Variant]] | None = None
    #: rows that are a method's default runs, not re-run: ``(label, method)``; the preset plans
    #: those runs as the default sweep does (done once, shared) and its records name them
    #: (``config["ablation_rows"]``) so that its tables show them under ``label``
    from_defaults: tuple[tuple[str, str], ...] = ()

    def variants_of(self, num_tasks: int) -> list[Variant]:
        """The variants run on a scenario with ``num_tasks`` tasks."""
        return list(self.variants) + (self.variants_for(num_tasks) if self.variants_for else [])


#: the ablation presets (``python -m bench list ablations``)
ablations: Registry[Ablation] = Registry("ablation")


def register_ablation(name: str, description: str, scenarios: tuple[str, ...],
                      variants: list[Variant],
                      variants_for: Callable[[int], list[Variant]] | None = None,
                      from_defaults: tuple[tuple[str, str], ...] = ()) -> Ablation:
    preset = Ablation(name, description, scenarios, tuple(variants), variants_for,
                      from_defaults)
    ablations.add(name, preset, description)
    return preset


def _axis(method: str, key: str, values: list[Any], short: str) -> list[tuple[str, str, dict]]:
    return [(f"{method}[{short}={_text(v)}]", method, {key: v}) for v in values]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v + 1) if isinstance(v, int) else str(v) for v in value)
    return str(value)


register_ablation(
    "mola_rank", "MoLA rank r of every adapter (MoLA Table 6: r = 1, 4, 8, 16, 64)",
    ("digits_domains",),
    _axis("mola_grad", "arch.rank", [1, 4, 8, 16, 64], "r")
    + _axis("mola_router", "arch.rank", [1, 4, 8, 16, 64], "r"),
)
register_ablation(
    "mola_placement",
    "MoLA-Grad placement: which ResNet blocks carry adapters (MoLA Table 7; Block k = stage k)",
    ("digits_scene",),
    [("hps (without MoLA)", "hps", {})]
    + _axis("mola_grad", "arch.placement",
            [[0], [1], [2], [3], [0, 1], [2, 3], [0, 1, 2], [1, 2, 3], [0, 1, 2, 3]], "block"),
)
register_ablation(
    "mola_twd", "MoLA-Router with and without the Task-wise Decorrelation loss (MoLA §5.5, Fig. 6)",
    ("digits_domains", "digits_tasks"),
    _axis("mola_router", "arch.twd_weight", [0.0, 0.1], "lambda"),
)
register_ablation(
    "mola_dim", "dimension d of the TwD feature map (MoLA Table 10: d = 32, 64, 128)",
    ("digits_domains",),
    _axis("mola_router", "arch.twd_dim", [32, 64, 128], "d"),
)
register_ablation(
    "mola_experts", "number of adapters K of MoLA-Router (MoLA Table 11: K = 2, 3, 4)",
    ("digits_domains",),
    _axis("mola_router", "arch.num_adapters", [2, 3, 4], "K"),
)
register_ablation(
    "mtlora_rank",
    "MTLoRA shared (TA-LoRA) rank at task rank 4 (MTLoRA Table 1: 16/32/64 on Swin-T; "
    "scaled to the embedded Swin's width)",
    ("digits_scene",),
    _axis("mtlora", "arch.rank", [2, 4, 8, 16], "r"),
)
register_ablation(
    "mola_backbone",
    "ResNet vs Transformer: HPS, MoLA-Router and MoLA-Grad on the scenario's ResNet and on a "
    "trained Swin Transformer (MoLA §5.5, Table 8; adapters on the last Swin stage's qkv, proj, "
    "fc1, fc2)",
    ("digits_domains",),
    [(f"{method} ({label})", method, overrides)
     for method in ("hps", "mola_router", "mola_grad")
     for label, overrides in (("ResNet", {}), ("Transformer", {"backbone.name": "swin_embedded"}))],
)
register_ablation(
    "mtlora_locations",
    "MTLoRA without the low-rank modules of one location (MTLoRA Table 2: no FC1 / FC2 / "
    "projection / QKV)",
    ("digits_scene",),
    [("mtlora (all)", "mtlora", {})]
    + [(f"mtlora (no {loc})", "mtlora",
        {"arch.locations": [x for x in ("qkv", "proj", "fc1", "fc2") if x != loc]})
       for loc in ("fc1", "fc2", "proj", "qkv")],
)

#: the methods of the ``init`` preset (issue 13: the papers' low-rank methods and references)
INIT_METHODS = ("hps", "single_task", "mola_grad", "mola_router", "mtlora", "mtlora_plus")
register_ablation(
    "init",
    "scratch vs pretrained: the encoder started from random weights or from the committed "
    "fractal-pretrained checkpoint (python -m bench pretrain; the embedded scenarios' default, "
    "as the papers start from ImageNet weights: MoLA App. B, MTLoRA §4.1)",
    ("digits_domains", "digits_tasks", "digits_scene"),
    [(f"{method} (scratch)", method, {"backbone.init": "scratch"}) for method in INIT_METHODS],
    from_defaults=tuple((f"{method} (pretrained)", method) for method in INIT_METHODS),
)


#: Dirichlet samples of the scalarization frontier beyond the corners and the centre
FRONTIER_SAMPLES = 6


def scalarization_weights(num_tasks: int, samples: int = FRONTIER_SAMPLES,
                          seed: int = 0) -> list[list[float]]:
    """Fixed task-weight vectors summing to ``num_tasks`` (the centre is equal weighting): the
    simplex's corners, its centre and ``samples`` Dirichlet(1, ..., 1) draws (seeded; Xin et
    al., NeurIPS 2022, compare methods against such a grid of fixed weightings)."""
    rng = random.Random(f"scalarization/{num_tasks}/{seed}")
    corners = [[float(num_tasks) if t == k else 0.0 for t in range(num_tasks)]
               for k in range(num_tasks)]
    draws = []
    for _ in range(samples):
        gammas = [rng.gammavariate(1.0, 1.0) for _ in range(num_tasks)]
        total = sum(gammas)
        draws.append([round(num_tasks * g / total, 3) for g in gammas])
    return corners + [[1.0] * num_tasks] + draws


def _scalarizations(num_tasks: int) -> list[Variant]:
    return [(f"ls[w={','.join(f'{w:g}' for w in weights)}]", "linear_scalarization",
             {"weighting.weights": weights}) for weights in scalarization_weights(num_tasks)]


register_ablation(
    "scalarization",
    "the scalarization frontier: HPS trained with fixed task weights (the simplex's corners, its "
    "centre and 6 seeded Dirichlet draws; Xin et al., NeurIPS 2022); the leaderboard takes the "
    "best on validation as every scenario's reference row",
    ("digits_domains", "digits_tasks", "digits_scene"),
    [], _scalarizations,
)

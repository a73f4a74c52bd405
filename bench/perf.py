"""``python -m bench perf``: speed ratios measured side by side in one process.

Every row is timed in the same run on the same machine, and reported as a ratio to its
reference, so the numbers are comparable whatever the machine's speed. Nothing here is a test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeats`` calls, after one warm-up."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def multi_input_forward_benchmark(repeats: int = 5, scenario: str = "digits_tasks"
                                  ) -> list[dict[str, Any]]:
    """One training step of HPS on a multi-input scenario: one fused forward pass for all
    tasks (ours) vs one forward per task (LibMTL's Trainer)."""
    from bench.engine import compute_losses, load_scenario, seed_everything
    from bench.method import build_model, resolve_method
    from bench.registry import scenarios

    if scenario not in scenarios:
        scenario = next(n for n in scenarios.list() if scenarios.get(n).heterogeneity
                        == "multi_input")
    data = load_scenario(scenario, "default")
    seed_everything(0)
    model = build_model(resolve_method("hps"), data)
    gen = torch.Generator().manual_seed(0)
    batch = data.training.batch_size
    index = {t: torch.randperm(data.train.size(t), generator=gen)[:batch] for t in data.task_names}

    def step(fused: bool) -> None:
        model.zero_grad(set_to_none=False)
        losses, _ = compute_losses(model, data, data.train, index, fused)
        losses.sum().backward()

    per_task = median_ms(lambda: step(False), repeats)
    fused = median_ms(lambda: step(True), repeats)
    return [
        {"benchmark": f"HPS train step, {scenario}", "path": "one forward per task (LibMTL)",
         "ms": per_task, "ratio": 1.0},
        {"benchmark": f"HPS train step, {scenario}", "path": "one fused forward (ours)",
         "ms": fused, "ratio": fused / per_task},
    ]


def main(repeats: int = 5) -> int:
    rows: list[dict[str, Any]] = []
    rows += multi_input_forward_benchmark(repeats)
    try:
        from bench.mola import mola_conv_benchmark
    except ImportError:
        mola_conv_benchmark = None
    if mola_conv_benchmark is not None:
        for row in mola_conv_benchmark(repeats):
            rows.append({"benchmark": "MoLA conv fwd+bwd (batch 128, 256->256, 4x4, 4 tasks)",
                         **row})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    current = None
    for row in rows:
        if row["benchmark"] != current:
            current = row["benchmark"]
            print(f"\n{current}")
        print(f"  {row['path']:<42} {row['ms']:9.2f} ms   x{row['ratio']:.2f}")
    return 0

"""``python -m bench perf``: speed ratios measured side by side in one process.

Every row is timed in the same run on the same machine, and reported as a ratio to its
reference, so the numbers are comparable whatever the machine's speed. Nothing here is a test.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
    from bench.models.method import build_model, resolve_method
    from bench.registry import scenarios
    from bench.run.engine import compute_losses, load_scenario, seed_everything

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


def precision_benchmark(repeats: int = 5, scenario: str = "digits_scene",
                        method: str = "hps") -> list[dict[str, Any]]:
    """One training step (forward under autocast, float32 losses, backward) of ``method`` on an
    embedded scenario's shape: bf16 against fp32 (``train.precision``), timed alternately —
    fp32 step, bf16 step, ratio — so that both see the same machine load; the row gives the
    median ratio and its [min, max] over the ``repeats`` pairs."""
    from bench.models.method import build_model, resolve_method
    from bench.run.engine import batch_losses, fetch_batch, load_scenario, seed_everything

    data = load_scenario(scenario, "default")
    seed_everything(0)
    model = build_model(resolve_method(method), data)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batch_size = data.training.batch_size
    index = {t: torch.randperm(data.train.size(t), generator=gen)[:batch_size]
             for t in data.task_names}
    batch = fetch_batch(data, data.train, index)
    fused = data.multi_input

    def step(amp: str) -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=False)
        losses, _ = batch_losses(model, data, batch, fused, amp=amp)
        losses.sum().backward()
        return time.perf_counter() - start

    step("fp32"), step("bf16")  # warm-up
    pairs = [(step("fp32"), step("bf16")) for _ in range(repeats)]
    ratios = [b / f for f, b in pairs]
    fp32_ms = statistics.median(f for f, _ in pairs) * 1000.0
    bf16_ms = statistics.median(b for _, b in pairs) * 1000.0
    name = f"{method} train step, {scenario} (batch {batch_size}), train.precision"
    return [{"benchmark": name, "path": "fp32", "ms": fp32_ms, "ratio": 1.0},
            {"benchmark": name,
             "path": f"bf16 autocast [ratio min {min(ratios):.2f}, max {max(ratios):.2f}]",
             "ms": bf16_ms, "ratio": statistics.median(ratios)}]


def write_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` RGB JPEGs of ``size``² (smooth gradients plus noise, like photos), for
    benchmarks of image decoding."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    paths = []
    for k in range(count):
        base = np.stack([np.outer(ramp, ramp), np.outer(ramp[::-1], ramp),
                         np.outer(ramp, ramp[::-1])], axis=-1) * rng.uniform(80, 255, 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{k:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def streaming_benchmark(repeats: int = 5, batch: int = 16, steps: int = 3
                        ) -> list[dict[str, Any]]:
    """Streamed real-dataset batches (:mod:`bench.data.streaming`), DomainBed-sized JPEGs (227²)
    read at 224²: decoding a batch with one thread vs the loader's thread pool; and what
    streaming costs a few training steps of a narrow ResNet against images decoded beforehand,
    with the next batch fetched in turn or in the background."""
    import tempfile

    from bench.data.real import image_files
    from bench.data.streaming import loader_threads, prefetched, use_loader_threads
    from bench.data.transforms import DOMAINBED_CLIP
    from bench.models.backbones import build_backbone

    rows: list[dict[str, Any]] = []
    threads = loader_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), batch * steps, 227)
        images = image_files(paths, DOMAINBED_CLIP, "perf")  # test-time: resize, crop
        first = torch.arange(batch)
        with use_loader_threads(1):
            one = median_ms(lambda: images[first], repeats)
        pooled = median_ms(lambda: images[first], repeats)
        name = f"decode a batch of {batch} JPEGs (227² -> 224²)"
        rows += [{"benchmark": name, "path": "1 decoding thread", "ms": one, "ratio": 1.0},
                 {"benchmark": name, "path": f"loader pool ({threads} threads)", "ms": pooled,
                  "ratio": pooled / one}]

        torch.manual_seed(0)
        encoder = build_backbone("resnet", input_shape=(3, 224, 224),
                                 widths=(8, 16, 32, 64))
        head = torch.nn.Linear(encoder.out_channels, 7)
        batches = [torch.arange(i * batch, (i + 1) * batch) for i in range(steps)]
        decoded = images[:]

        def step(x: torch.Tensor) -> None:
            encoder.zero_grad(set_to_none=False)
            head(encoder(x).mean(dim=(2, 3))).square().mean().backward()

        def epoch(source: Any, background: bool) -> None:
            fetches = ((lambda idx=idx: source[idx]) for idx in batches)
            for x in prefetched(fetches, background):
                step(x)

        memory = median_ms(lambda: epoch(decoded, False), repeats)
        in_turn = median_ms(lambda: epoch(images, False), repeats)
        ahead = median_ms(lambda: epoch(images, True), repeats)
        name = f"{steps} training steps (narrow ResNet, batch {batch}, 224²)"
        rows += [{"benchmark": name, "path": "images decoded beforehand (in memory)",
                  "ms": memory, "ratio": 1.0},
                 {"benchmark": name, "path": "streamed: fetch, then train", "ms": in_turn,
                  "ratio": in_turn / memory},
                 {"benchmark": name, "path": "streamed: next batch fetched meanwhile",
                  "ms": ahead, "ratio": ahead / memory}]
    return rows



def mola_conv_benchmark(repeats: int = 5, batch: int = 128, channels: int = 256, size: int = 4,
                        tasks: int = 4, threads: int = 2) -> list[dict[str, Any]]:
    """Forward+backward time of one MoLA conv (3×3, ``channels``→``channels`` on ``size``² maps,
    batch ``batch``, ``tasks`` adapters of rank 4) per path, as ratios to the plain conv.

    On the project's shared 2-core CPU (noisy), the paper's groups=N path costs about 8-34x a
    plain conv, the split-by-task path 0.8-2x, the masked sum 2-7x and the soft weighted sum
    4-7x: hence ``"auto"`` = split for one-hot α and weighted sum for soft α."""
    from bench.models.mola import MoLAConv2d

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        layer = MoLAConv2d(conv, tasks, rank=4)
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.01, generator=gen)
        x = torch.randn(batch, channels, size, size, generator=gen)
        task_ids = torch.arange(batch) % tasks
        grouped_ids = torch.sort(task_ids).values  # the engine's fused batches
        soft = torch.softmax(torch.randn(batch, tasks, generator=gen), dim=1)
        one_hot = F.one_hot(task_ids, tasks).float()

        def step(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                layer.zero_grad(set_to_none=True)
                xi = x.detach().requires_grad_(True)
                fn(xi).square().mean().backward()
            return run

        cases: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
            ("plain conv", lambda xi: layer._conv(xi, layer.base.weight)),
            ("one-hot: grouped groups=N (paper)", lambda xi: layer.forward_grouped(xi, one_hot)),
            ("one-hot: split by task (rows interleaved)",
             lambda xi: layer.forward_split(xi, task_ids)),
            ("one-hot: split by task (rows grouped)",
             lambda xi: layer.forward_split(xi, grouped_ids)),
            ("one-hot: masked sum", lambda xi: layer.forward_sum(xi, one_hot)),
            ("soft: grouped groups=N (paper)", lambda xi: layer.forward_grouped(xi, soft)),
            ("soft: weighted sum", lambda xi: layer.forward_sum(xi, soft)),
        ]
        rows: list[dict[str, Any]] = []
        base_ms = 0.0
        for name, fn in cases:
            ms = median_ms(step(fn), repeats)
            base_ms = base_ms or ms
            rows.append({"benchmark": f"MoLA conv fwd+bwd, batch {batch}, {channels}->{channels} "
                                      f"3x3 on {size}x{size}, {tasks} tasks, {threads} threads",
                         "path": name, "ms": ms, "ratio": ms / base_ms})
        return rows
    finally:
        torch.set_num_threads(old_threads)


#: the sweeps of :func:`jobs_scaling_benchmark`: (name, ``run`` arguments)
JOBS_WORKLOADS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run --all --profile smoke", ("--all", "--profile", "smoke")),
    ("default profile, hps,pcgrad on digits_domains, seeds 0,1",
     ("--method", "hps,pcgrad", "--scenario", "digits_domains", "--seeds", "0,1")),
)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def jobs_scaling_benchmark(repeats: int = 3, jobs: tuple[int, int] = (1, 2),
                           workloads: tuple[tuple[str, tuple[str, ...]], ...] = JOBS_WORKLOADS,
                           ) -> list[dict[str, Any]]:
    """Wall time of whole ``python -m bench run`` sweeps with ``--jobs`` ``jobs[0]`` (A) and
    ``jobs[1]`` (B), each in a fresh results folder, interleaved A B A B ...; returns a row per
    workload with each repeat's times, the ratios A/B (speed-up) and their median, min and max.
    Printed as it goes: a shared machine is noisy, so the load average is shown too."""
    import subprocess
    import sys
    import tempfile

    rows = []
    for name, args in workloads:
        times: dict[int, list[float]] = {j: [] for j in jobs}
        for repeat in range(repeats):
            for j in jobs:
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, "-m", "bench", "run", *args, "--jobs", str(j),
                           "--results-dir", str(Path(tmp) / "r")]
                    load = _load()
                    start = time.perf_counter()
                    done = subprocess.run(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
                    seconds = time.perf_counter() - start
                times[j].append(seconds)
                note = "" if done.returncode == 0 else f" (exit {done.returncode})"
                print(f"  {name}: repeat {repeat + 1}, --jobs {j}: {seconds:.1f} s{note}, "
                      f"load average before {load}", flush=True)
        ratios = [a / b for a, b in zip(times[jobs[0]], times[jobs[1]])]
        rows.append({"benchmark": name, "jobs": jobs, "times": times, "ratios": ratios,
                     "median": statistics.median(ratios), "min": min(ratios),
                     "max": max(ratios)})
        print(f"{name}: --jobs {jobs[0]} / --jobs {jobs[1]} wall time = "
              f"x{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] "
              f"(median [min, max] of {repeats} interleaved pairs)", flush=True)
    return rows


def main(repeats: int = 5, jobs_scaling: bool = False) -> int:
    if jobs_scaling:  # minutes per repeat: whole sweeps, not part of the default comparisons
        print(f"{os.cpu_count()} cores; sweeps timed whole, A B A B ...")
        jobs_scaling_benchmark(repeats)
        return 0
    rows: list[dict[str, Any]] = []
    rows += multi_input_forward_benchmark(repeats)
    rows += precision_benchmark(repeats)
    for row in mola_conv_benchmark(repeats):
        rows.append({**row, "benchmark": "MoLA conv fwd+bwd (batch 128, 256->256, 4x4, 4 tasks)"})
    rows += streaming_benchmark(repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    current = None
    for row in rows:
        if row["benchmark"] != current:
            current = row["benchmark"]
            print(f"\n{current}")
        print(f"  {row['path']:<42} {row['ms']:9.2f} ms   x{row['ratio']:.2f}")
    return 0

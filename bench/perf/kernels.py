"""Kernel-level comparisons of ``python -m bench perf``: one training step or one layer, each
path timed against its reference in interleaved rounds (:func:`bench.perf.rows.interleaved_times`)
on an embedded scenario's real shapes; rows of ratios to the reference path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.perf.rows import Row, interleaved_times, ratio_row

GROUP = "kernels"


def _rows_against(reference: str, times: dict[str, list[float]], benchmark: str,
                  labels: dict[str, str] | None = None) -> list[Row]:
    """One row per path other than ``reference``: its time over the reference's, per round."""
    labels = labels or {}
    return [ratio_row(GROUP, benchmark, f"{labels.get(name, name)} vs "
                                         f"{labels.get(reference, reference)}",
                      times[name], times[reference])
            for name in times if name != reference]


def multi_input_forward_benchmark(repeats: int = 5, scenario: str = "digits_tasks"
                                  ) -> list[Row]:
    """One training step of HPS on a multi-input scenario (its default profile's batch): one
    fused forward pass for all tasks (ours) vs one forward per task (LibMTL's Trainer)."""
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

    times = interleaved_times({"per task": lambda: step(False), "fused": lambda: step(True)},
                              repeats)
    return _rows_against("per task", times, f"HPS train step, {scenario} (batch {batch})",
                         {"per task": "one forward per task (LibMTL)",
                          "fused": "one fused forward (ours)"})


def precision_benchmark(repeats: int = 5, scenario: str = "digits_scene",
                        method: str = "hps") -> list[Row]:
    """One training step (forward under autocast, float32 losses, backward) of ``method`` on an
    embedded scenario's shape: bf16 against fp32 (``train.precision``), timed alternately."""
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

    def step(amp: str) -> None:
        model.zero_grad(set_to_none=False)
        losses, _ = batch_losses(model, data, batch, fused, amp=amp)
        losses.sum().backward()

    times = interleaved_times({"fp32": lambda: step("fp32"), "bf16": lambda: step("bf16")},
                              repeats)
    return _rows_against("fp32", times, f"{method} train step, {scenario} (batch "
                                        f"{batch_size}), train.precision",
                         {"bf16": "bf16 autocast"})


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


def streaming_benchmark(repeats: int = 5, batch: int = 16, steps: int = 3) -> list[Row]:
    """Streamed real-dataset batches (:mod:`bench.data.streaming`), DomainBed-sized JPEGs (227²)
    read at 224²: decoding a batch with one thread vs the loader's thread pool; and what
    streaming costs a few training steps of a narrow ResNet against images decoded beforehand,
    with the next batch fetched in turn or in the background."""
    import tempfile

    from bench.data.real import image_files
    from bench.data.streaming import loader_threads, prefetched, use_loader_threads
    from bench.data.transforms import DOMAINBED_CLIP
    from bench.models.backbones import build_backbone

    rows: list[Row] = []
    threads = loader_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), batch * steps, 227)
        images = image_files(paths, DOMAINBED_CLIP, "perf")  # test-time: resize, crop
        first = torch.arange(batch)
        def decode_alone() -> None:
            with use_loader_threads(1):
                images[first]

        times = interleaved_times({"one": decode_alone, "pool": lambda: images[first]},
                                  repeats)
        rows += _rows_against("one", times, f"decode a batch of {batch} JPEGs (227² -> 224²)",
                              {"one": "1 decoding thread",
                               "pool": f"loader pool ({threads} threads)"})

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

        times = interleaved_times({"memory": lambda: epoch(decoded, False),
                                   "in turn": lambda: epoch(images, False),
                                   "ahead": lambda: epoch(images, True)}, repeats)
        rows += _rows_against("memory", times,
                              f"{steps} training steps (narrow ResNet, batch {batch}, 224²)",
                              {"memory": "images decoded beforehand",
                               "in turn": "streamed: fetch, then train",
                               "ahead": "streamed: next batch fetched meanwhile"})
    return rows



def mola_conv_benchmark(repeats: int = 5, batch: int = 128, channels: int = 256, size: int = 4,
                        tasks: int = 4, threads: int = 1) -> list[Row]:
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
        times = interleaved_times({name: step(fn) for name, fn in cases}, repeats)
        return _rows_against("plain conv", times,
                             f"MoLA conv fwd+bwd, batch {batch}, {channels}->{channels} 3x3 on "
                             f"{size}x{size}, {tasks} tasks, {threads} threads")
    finally:
        torch.set_num_threads(old_threads)

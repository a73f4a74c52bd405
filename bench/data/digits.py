"""Shared helpers of the embedded scenarios built from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 grey 8x8 images (values 0..16) inside the
scikit-learn wheel, so these scenarios run offline. Every scenario first splits the *source
images* into a training pool and a held-out pool with a fixed data seed (never the run seed);
training samples are rendered from the training pool only and validation / test samples from
the held-out pool only, so no source image leaks from training into evaluation. Within the
held-out pool a scenario may render one source image several times (in several domains, tasks
or canvases, or once for validation and once for test: see each scenario's docstring).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.scenario import Scenario, ScenarioData, TrainingSetup
from bench.registry import package_file

SPLITS = ("train", "val", "test")


def digits_file() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (what ``load_digits`` reads), found
    without importing scikit-learn (that import costs ~1.4 s, with pandas and joblib), or
    ``None`` where it is not there."""
    return package_file("sklearn", "datasets", "data", "digits.csv.gz")


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    path = digits_file()
    if path is None:  # another layout: scikit-learn's own reader
        from sklearn.datasets import load_digits

        d = load_digits()
        flat, target = d.data, d.target
    else:  # the rows of load_digits: 64 pixel values, then the label
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        flat, target = table[:, :-1], table[:, -1].astype(int)
    images = torch.tensor(flat.reshape(-1, 8, 8), dtype=torch.float32) / 16.0  # in [0, 1]
    labels = torch.tensor(target, dtype=torch.long)
    return images, labels


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All digit images ``(1797, 8, 8)`` in [0, 1] and their labels ``(1797,)`` (copies)."""
    images, labels = _digits()
    return images.clone(), labels.clone()


def source_pools(sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Disjoint index pools into :func:`digits` of the given sizes (``-1``: the rest).

    Pools come from one seeded permutation (not stratified); sizes must fit in 1,797 images.
    """
    _, labels = _digits()
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fixed = sum(s for s in sizes.values() if s >= 0)
    if fixed > n:
        raise ValueError(f"pools of {fixed} images exceed the {n} digits")
    pools: dict[str, torch.Tensor] = {}
    start = 0
    for name, size in sizes.items():
        size = n - fixed if size < 0 else size
        pools[name] = perm[start:start + size]
        start += size
    return pools


#: the pools of ``data_version`` 1 (2 for ``digits_domains``): the training pool is still the
#: third one, so the training sets are unchanged (:func:`train_and_held_out`)
LEGACY_POOLS = {"test": 600, "val": 300, "train": -1}


def train_and_held_out(seed: int, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training sources (the first ``n_train`` of the legacy training pool, so training
    sets are the ones of earlier data versions) and every other source image, held out for
    validation and test (the legacy val and test pools first, then the unused rest)."""
    pools = source_pools(LEGACY_POOLS, seed)
    if n_train > len(pools["train"]):
        raise ValueError(f"{n_train} training sources exceed the pool of {len(pools['train'])}")
    train = pools["train"][:n_train]
    held = torch.cat([pools["test"], pools["val"], pools["train"][n_train:]])
    return train, held


def draw(pool: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` source indices from ``pool``: successive seeded permutations of the pool, so
    every source is used once before any is used twice (``count`` may exceed the pool)."""
    rounds = -(-count // len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(rounds)])
    return pool[order[:count]]


@contextmanager
def one_thread() -> Iterator[None]:
    """Render on one torch thread: thousands of tiny per-image operations are several times
    faster without intra-op threads (and far faster on a loaded machine, where waiting threads
    spin); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DigitsScenario(Scenario):
    """What the embedded digits scenarios share: the narrow ResNet started from the committed
    fractal-pretrained checkpoint (every method's encoder, MTLoRA's Swin included:
    ``--set backbone.init=scratch`` to not), a 2-epoch smoke profile, and data rendered on one
    thread (:func:`one_thread`). A scenario declares ``encoder`` and ``default_training`` and
    builds its data in :meth:`build`."""

    #: the encoder's keywords besides ``init`` (widths, strides)
    encoder: dict[str, Any] = {}
    #: the default profile's (epochs, batch size, learning rate)
    default_training: tuple[int, int, float] = (20, 16, 3e-3)

    def backbone_kwargs_of(self, profile: str | None = None) -> dict[str, Any]:
        return {**self.encoder, "init": "pretrained"}

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=2, batch_size=16)
        epochs, batch_size, lr = self.default_training
        return TrainingSetup(epochs=epochs, batch_size=batch_size, lr=lr)

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_profile(profile)
        with one_thread():
            return self.build(profile)

    def build(self, profile: str) -> ScenarioData:
        """The data of ``profile`` (a checked profile, on one thread)."""
        raise NotImplementedError


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(N, H, W)`` or ``(N, C, H, W)`` images to ``size x size``."""
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.squeeze(1) if squeeze else x


def rotate(images: torch.Tensor, degrees: torch.Tensor | float) -> torch.Tensor:
    """Rotate ``(N, H, W)`` images about their centre (bilinear, zero fill)."""
    n = images.shape[0]
    angle = torch.as_tensor(degrees, dtype=torch.float32).expand(n) * math.pi / 180.0
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = F.affine_grid(theta, [n, 1, *images.shape[1:]], align_corners=False)
    return F.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(N, H, W)`` images (separable, reflect padding)."""
    radius = max(1, int(math.ceil(2 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = k / k.sum()
    x = images.unsqueeze(1)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.squeeze(1)


def generator(seed: int, *salt: int) -> torch.Generator:
    """A torch generator seeded from a data seed and integer salts (reproducible streams)."""
    value = seed
    for s in salt:
        value = (value * 1_000_003 + s) % (2**62)
    return torch.Generator().manual_seed(value)

"""Shared helpers of the embedded scenarios built from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 grey 8x8 images (values 0..16) inside the
scikit-learn wheel, so these scenarios run offline. Every scenario first splits the *source
images* into disjoint train/val/test pools with a fixed data seed (never the run seed); all the
samples of a split are rendered from that split's pool only, so no source image leaks across
splits. Within a split the same source image may appear in several tasks or canvases.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.tensor(d.target, dtype=torch.long)
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

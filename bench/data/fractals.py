"""Formula-driven synthetic images for pretraining: iterated-function-system (IFS) fractals.

FractalDB (Kataoka et al., "Pre-training without Natural Images", ACCV 2020) pretrains image
models on fractals, each *category* one IFS: a set of ``N`` affine maps
``w_i(x) = A_i x + b_i`` chosen with probability ``p_i`` proportional to ``|det A_i|``, rendered
by the chaos game (iterate ``x <- w_i(x)`` with a random ``i`` and plot every point). No natural
image — and nothing of the digits the embedded scenarios use — is involved.

Sampling the maps follows Anderson & Farrell ("Improving Fractal Pre-training", WACV 2022,
§3.1): ``A_i = R(theta_i) diag(s1_i, s2_i) R(phi_i) diag(d1_i, d2_i)`` (rotations ``R``,
singular values ``1 >= s1 >= s2 > 0``, reflections ``d`` in ``{-1, 1}``), ``b_i`` uniform in
``[-1, 1]^2``, and the *sigma factor* ``sum_i (s1_i + 2 s2_i)`` restricted to
``[(5 + N) / 2, (6 + N) / 2]``, the range in which their systems are neither dust nor blobs
(here by rejection sampling). A system is kept only when its rendering covers a fair share of
the canvas (FractalDB's *filling rate*; :data:`MIN_FILL`).

Each category gets ``variants`` instances: its maps with every parameter perturbed by Gaussian
noise (FractalDB's intra-category variation) and a fresh chaos-game run. :func:`augment` then
makes training inputs shaped like the embedded scenarios' (``(1, 16, 16)``, values in about
``[0, 1]`` plus pixel noise): random flips and quarter turns, a random scaled crop, downsampling
with anti-aliasing and noise.

Everything is a pure function of its seed (``numpy.random.Generator`` and ``torch.Generator``).
This module imports torch and numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: canvas side of the rendered bank (inputs are downsampled from it)
CANVAS = 32
#: a system is kept when its rendering covers at least this fraction of the canvas
MIN_FILL = 0.12
#: chaos game: parallel chains per image, iterations per chain, iterations discarded
CHAINS, ITERATIONS, BURN_IN = 192, 48, 8
#: std of the per-variant perturbation of every map parameter
VARIATION = 0.04


@dataclass(frozen=True)
class System:
    """One IFS: ``maps`` affine maps ``A`` ``(N, 2, 2)``, ``b`` ``(N, 2)``, probabilities ``p``."""

    A: np.ndarray
    b: np.ndarray
    p: np.ndarray


def sample_system(rng: np.random.Generator, n_maps: int) -> System:
    """An IFS of ``n_maps`` maps with Anderson & Farrell's parametrisation and sigma factor."""
    low, high = (5 + n_maps) / 2, (6 + n_maps) / 2
    while True:
        s = np.sort(rng.uniform(0.0, 1.0, size=(n_maps, 2)), axis=1)[:, ::-1]
        if low <= float((s[:, 0] + 2 * s[:, 1]).sum()) <= high:
            break
    theta, phi = rng.uniform(-math.pi, math.pi, size=(2, n_maps))
    d = rng.choice([-1.0, 1.0], size=(n_maps, 2))
    A = rotation(theta) @ (s[:, :, None] * np.eye(2)) @ rotation(phi) @ (d[:, :, None] * np.eye(2))
    b = rng.uniform(-1.0, 1.0, size=(n_maps, 2))
    return System(A, b, probabilities(A))


def rotation(angle: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 2, 2)`` of the angles ``(N,)``."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def probabilities(A: np.ndarray) -> np.ndarray:
    """FractalDB's map probabilities: proportional to ``|det A_i|`` (never exactly zero)."""
    det = np.abs(np.linalg.det(A)) + 1e-3
    return det / det.sum()


def perturb(system: System, rng: np.random.Generator) -> System:
    """An instance of the category ``system``: every map parameter plus N(0, VARIATION)."""
    A = system.A + rng.normal(0.0, VARIATION, size=system.A.shape)
    b = system.b + rng.normal(0.0, VARIATION, size=system.b.shape)
    return System(A, b, probabilities(A))


def render(systems: list[System], gen: torch.Generator, canvas: int = CANVAS) -> torch.Tensor:
    """Chaos-game renderings of ``systems``: ``(len(systems), canvas, canvas)`` in ``{0, 1}``.

    All systems are iterated together (padded to the largest map count with probability-0
    maps); each picture is fitted to its points' bounding box (aspect kept, small margin)."""
    n = len(systems)
    k = max(len(s.p) for s in systems)
    A = torch.zeros(n, k, 2, 2, dtype=torch.float64)
    b = torch.zeros(n, k, 2, dtype=torch.float64)
    p = torch.zeros(n, k, dtype=torch.float64)
    for i, s in enumerate(systems):
        m = len(s.p)
        A[i, :m], b[i, :m], p[i, :m] = torch.from_numpy(s.A), torch.from_numpy(s.b), \
            torch.from_numpy(s.p)
    x = torch.zeros(n, CHAINS, 2, dtype=torch.float64)
    points = []
    rows = torch.arange(n)[:, None]
    for step in range(ITERATIONS):
        idx = torch.multinomial(p, CHAINS, replacement=True, generator=gen)
        x = torch.einsum("ncij,ncj->nci", A[rows, idx], x) + b[rows, idx]
        x = x.clamp(-1e3, 1e3)  # a rare non-contracting perturbed map must not overflow
        if step >= BURN_IN:
            points.append(x)
    pts = torch.cat(points, dim=1)  # (n, P, 2)
    lo, hi = pts.amin(dim=1), pts.amax(dim=1)
    centre, half = (lo + hi) / 2, ((hi - lo).amax(dim=1) / 2 * 1.08).clamp_min(1e-9)
    unit = (pts - centre[:, None]) / half[:, None, None]  # in [-1, 1]
    cells = ((unit + 1) / 2 * canvas).long().clamp(0, canvas - 1)
    flat = rows * canvas * canvas + cells[..., 1] * canvas + cells[..., 0]
    image = torch.zeros(n * canvas * canvas)
    image[flat.reshape(-1)] = 1.0
    return image.reshape(n, canvas, canvas)


def fill_rate(images: torch.Tensor) -> torch.Tensor:
    """Fraction of the canvas each rendering covers."""
    return images.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class FractalBank:
    """Rendered instances ``images`` ``(C * V, canvas, canvas)`` of ``C`` categories, ``labels``
    their category (``0 .. C-1``)."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def classes(self) -> int:
        return int(self.labels.max()) + 1


def make_bank(classes: int, variants: int, seed: int, max_maps: int = 4) -> FractalBank:
    """``classes`` fractal categories (2..``max_maps`` maps each, kept when their rendering
    fills at least :data:`MIN_FILL`), each rendered ``variants`` times with perturbed maps."""
    rng = np.random.Generator(np.random.PCG64(seed))
    gen = torch.Generator().manual_seed(seed)
    categories: list[System] = []
    while len(categories) < classes:
        candidates = [sample_system(rng, int(rng.integers(2, max_maps + 1)))
                      for _ in range(2 * (classes - len(categories)))]
        fills = fill_rate(render(candidates, gen))
        categories += [s for s, f in zip(candidates, fills.tolist()) if f >= MIN_FILL]
    categories = categories[:classes]
    instances = [perturb(s, rng) if v else s for s in categories for v in range(variants)]
    images = render(instances, gen)
    labels = torch.arange(classes).repeat_interleave(variants)
    return FractalBank(images, labels)


def augment(images: torch.Tensor, size: int, gen: torch.Generator,
            noise: float = 0.1) -> torch.Tensor:
    """Training inputs ``(N, 1, size, size)`` from bank images ``(N, canvas, canvas)``: a random
    quarter turn and flip, a random zoom (a window of 75-115 % of the side, shifted at random;
    black outside the canvas), resized to ``size`` with anti-aliasing, a random contrast in
    [0.6, 1] and pixel noise."""
    n, canvas = images.shape[0], images.shape[-1]
    x = images[:, None]
    turns = torch.randint(0, 4, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    x = torch.stack([torch.rot90(xi, int(t), dims=(-2, -1)) for xi, t in zip(x, turns)])
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    scale = 0.75 + 0.4 * torch.rand(n, generator=gen)
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=gen) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (n, 1, canvas, canvas), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    x = x * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen))
    return x + noise * torch.randn(x.shape, generator=gen)

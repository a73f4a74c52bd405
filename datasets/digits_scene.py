"""``digits_scene`` — single-input task heterogeneity: a MultiMNIST-style scene of digits.

What it is: each input is a ``(1, 16, 16)`` canvas holding two handwritten digits at seeded
random positions, possibly overlapping, with pixel noise (std 0.1): a near one (depth 1 to 1.3)
and a far one (depth 1.5 to 2.2); the background is at depth 3. A digit at depth ``d`` is drawn
``12 / d`` pixels tall with brightness falling as ``1 / sqrt(d)`` (size and brightness are the
depth cues), and the near digit occludes the far one. Three tasks read the same input:

* ``segment`` — per-pixel semantic segmentation: background + 10 digit classes (mIoU, pixel acc.);
* ``depth``   — per-pixel depth regression, > 0 everywhere (absolute and relative error);
* ``nearest`` — which digit is the nearest one (10 classes, accuracy).

Why it is heterogeneous: one input, tasks of different kinds (dense classification, dense
regression, global classification) with losses of different scales and metrics of different
directions (``report_average=False``).

Splits (default profile): disjoint pools of source images (fixed data seed 2468) — train 897,
val 300, test 600 images; 400 train, 150 val and 400 test canvases, each composed only from its
split's pool. Smoke profile: 32 train, 16 val, 32 test canvases.

Analogy to the paper: NYUv2 (segmentation, depth and surface normals of one indoor image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.api import ScenarioData, Split, TaskSpec, register_scenario
from bench.data import digits as dd

DATA_SEED = 2468
SIZE = 16
BACKGROUND_DEPTH = 3.0
NEAR_RANGE = (1.0, 1.3)
FAR_RANGE = (1.5, 2.2)
SCALE = 12.0
MIN_DIGITS, MAX_DIGITS = 2, 2
MASK_THRESHOLD = 0.3
NOISE = 0.1
#: canvases per profile: (train, val, test)
COUNTS = {"smoke": (32, 16, 32), "default": (400, 400, 2400)}
EPOCHS = 20
BATCH = 16
LR = 3e-3
WIDTHS = (8, 16, 32, 64)
STRIDES = (1, 2, 2, 1)


def compose(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compose one canvas from source digits ``(k, 8, 8)``.

    Returns the input ``(1, S, S)``, segmentation ``(S, S)`` (long, 0 = background), depth
    ``(1, S, S)`` (> 0) and the class of the nearest digit.
    """
    k = images.shape[0]
    lo = torch.tensor([NEAR_RANGE[0]] + [FAR_RANGE[0]] * (k - 1))
    hi = torch.tensor([NEAR_RANGE[1]] + [FAR_RANGE[1]] * (k - 1))
    depths = lo + (hi - lo) * torch.rand(k, generator=gen)  # digit 0 is the nearest
    canvas = torch.zeros(SIZE, SIZE)
    seg = torch.zeros(SIZE, SIZE, dtype=torch.long)
    depth = torch.full((SIZE, SIZE), BACKGROUND_DEPTH)
    for i in depths.argsort(descending=True).tolist():  # far to near: nearer digits occlude
        d = float(depths[i])
        side = int(round(SCALE / d))
        digit = F.interpolate(images[i][None, None], size=(side, side), mode="bilinear",
                              align_corners=False)[0, 0].clamp(0, 1)
        top = int(torch.randint(0, SIZE - side + 1, (1,), generator=gen))
        left = int(torch.randint(0, SIZE - side + 1, (1,), generator=gen))
        mask = digit > MASK_THRESHOLD
        brightness = 1.4 / d ** 0.5
        window = (slice(top, top + side), slice(left, left + side))
        canvas[window] = torch.where(mask, digit * brightness, canvas[window])
        seg[window] = torch.where(mask, labels[i] + 1, seg[window])
        depth[window] = torch.where(mask, torch.tensor(d), depth[window])
    nearest = labels[int(depths.argmin())]
    x = canvas + NOISE * torch.randn(canvas.shape, generator=gen)
    return x[None], seg, depth[None], nearest


def build_split(pool: torch.Tensor, count: int, gen: torch.Generator) -> Split:
    images, labels = dd.digits()
    xs, segs, depths, nearest = [], [], [], []
    for _ in range(count):
        k = int(torch.randint(MIN_DIGITS, MAX_DIGITS + 1, (1,), generator=gen))
        idx = pool[torch.randperm(len(pool), generator=gen)[:k]]
        x, s, d, n = compose(images[idx], labels[idx], gen)
        xs.append(x)
        segs.append(s)
        depths.append(d)
        nearest.append(n)
    targets = {"segment": torch.stack(segs), "depth": torch.stack(depths),
               "nearest": torch.stack(nearest)}
    return Split(torch.stack(xs), targets)


@register_scenario("digits_scene")
class DigitsScene(dd.DigitsScenario):
    """Canvases of 2-3 overlapping digits: segmentation, depth and nearest-digit class."""

    name = "digits_scene"
    heterogeneity = "single_input"
    source = "scikit-learn load_digits (ships with the wheel)"
    data_version = "2"  # 2: larger validation (400) and test (2,400) splits
    backbone = "resnet"

    encoder = {"widths": WIDTHS, "strides": STRIDES}
    default_training = (EPOCHS, BATCH, LR)

    def build(self, profile: str) -> ScenarioData:
        pools = dd.source_pools(dd.LEGACY_POOLS, DATA_SEED)
        splits = {split: build_split(pools[split], count, dd.generator(DATA_SEED, s_idx))
                  for s_idx, (split, count) in enumerate(zip(dd.SPLITS, COUNTS[profile]))}
        tasks = (
            TaskSpec("segment", "segmentation", 11, ("miou", "pixel_accuracy"),
                     label="Segmentation"),
            TaskSpec("depth", "regression", 1, ("abs_err", "rel_err"), label="Depth"),
            TaskSpec("nearest", "classification", 10, ("accuracy",), label="Nearest digit"),
        )
        return ScenarioData(
            name=self.name, heterogeneity="single_input", tasks=tasks,
            input_shape=(1, SIZE, SIZE), train=splits["train"], val=splits["val"],
            test=splits["test"], training=self.setup(profile), backbone="resnet",
            backbone_kwargs=self.backbone_kwargs_of(profile),
            description=(__doc__ or "").strip().splitlines()[0],
        )

"""``digits_domains`` — domain heterogeneity on scikit-learn's handwritten digits.

What it is: one label space (the 10 digits) seen through four *domains*, in the spirit of
DomainBed's RotatedMNIST: ``upright`` digits, digits rotated by 180 degrees (``rot180``),
mirrored left-right (``mirror``) and flipped upside down (``flip``). Every domain is a task with
its own head (``shared_label_space=True``: Uniform uses one head for all of them).

Why it is heterogeneous (and hard for one pooled model): the four domains are the four
symmetries of the plane that keep a digit's bounding box, so the domain cannot be read from the
image style alone, while the same shape means different digits in different domains — a 6
rotated by 180 degrees is a 9, a mirrored or upside-down 2 looks like a 5. Every image also gets
a small random rotation (up to 8 degrees), a Gaussian blur of random width and additive pixel
noise (std 0.1), and each domain has only 80 labelled training images, so no method saturates
(HPS reaches about 70% per domain).

Splits (default profile): disjoint pools of source images (fixed data seed 1234) — train 897,
val 300, test 600 images; per domain 80 train images (disjoint across domains), 100 val and
300 test images drawn from their pools. Inputs are ``(1, 16, 16)`` floats (the 8x8 digits
upsampled). Smoke profile: 24 train, 20 val, 40 test per domain.

Analogy to the paper: MoLA's domain-heterogeneity datasets (e.g. the same diagnosis from several
hospitals or imaging devices): one label space, several input distributions, few labels each.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.api import Scenario, ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data import digits as dd

DATA_SEED = 1234
SIZE = 16
DOMAINS = {
    "upright": "Upright",
    "rot180": "Rot 180",
    "mirror": "Mirror",
    "flip": "Upside-down",
}
#: per-domain sample counts of each profile: (train, val, test)
COUNTS = {"smoke": (24, 20, 40), "default": (80, 100, 300)}
NOISE = 0.1
JITTER_DEG = 8.0
BLUR = (0.3, 0.6)
EPOCHS = 25
LR = 3e-3
WIDTHS = (8, 16, 32, 64)


def _apply_domain(images: torch.Tensor, domain: str) -> torch.Tensor:
    if domain == "rot180":
        return images.flip(-1).flip(-2)
    if domain == "mirror":
        return images.flip(-1)
    if domain == "flip":
        return images.flip(-2)
    return images


def render(images: torch.Tensor, domain: str, gen: torch.Generator) -> torch.Tensor:
    """Render source digits ``(N, 8, 8)`` in ``domain``: ``(N, 1, 16, 16)`` floats."""
    n = images.shape[0]
    x = dd.resize(images, SIZE)
    angles = (torch.rand(n, generator=gen) * 2 - 1) * JITTER_DEG
    x = dd.rotate(x, angles)
    sigma = BLUR[0] + (BLUR[1] - BLUR[0]) * torch.rand(n, generator=gen)
    x = torch.stack([dd.blur(x[i:i + 1], float(s))[0] for i, s in enumerate(sigma)])
    x = _apply_domain(x, domain)
    x = x + NOISE * torch.randn(x.shape, generator=gen)
    return x.unsqueeze(1).contiguous()


@register_scenario("digits_domains")
class DigitsDomains(Scenario):
    """Handwritten digits upright, rotated 180°, mirrored and upside down; each domain a task."""

    name = "digits_domains"
    heterogeneity = "domain"
    source = "scikit-learn load_digits (ships with the wheel)"
    data_version = "2"
    backbone = "resnet"

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=2, batch_size=16)
        return TrainingSetup(epochs=EPOCHS, batch_size=16, lr=LR)

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_profile(profile)
        n_train, n_val, n_test = COUNTS[profile]
        images, labels = dd.digits()
        pools = dd.source_pools({"test": 600, "val": 300, "train": -1}, DATA_SEED)
        counts = {"train": n_train, "val": n_val, "test": n_test}
        splits: dict[str, Split] = {}
        for s_idx, split in enumerate(dd.SPLITS):
            pool = pools[split]
            inputs, targets = {}, {}
            for d_idx, domain in enumerate(DOMAINS):
                gen = dd.generator(DATA_SEED, s_idx, d_idx)
                if split == "train":  # disjoint source images across domains
                    idx = pool[d_idx * n_train:(d_idx + 1) * n_train]
                else:
                    idx = pool[torch.randperm(len(pool), generator=gen)[:counts[split]]]
                inputs[domain] = render(images[idx], domain, gen)
                targets[domain] = labels[idx].clone()
            splits[split] = Split(inputs, targets)
        tasks = tuple(TaskSpec(d, "classification", 10, ("accuracy",), label=label)
                      for d, label in DOMAINS.items())
        return ScenarioData(
            name=self.name, heterogeneity="domain", tasks=tasks, input_shape=(1, SIZE, SIZE),
            train=splits["train"], val=splits["val"], test=splits["test"],
            training=self.setup(profile), backbone="resnet",
            backbone_kwargs={"widths": WIDTHS},
            shared_label_space=True, description=(__doc__ or "").strip().splitlines()[0],
        )

"""``digits_tasks`` — multi-input task heterogeneity on scikit-learn's handwritten digits.

What it is: four tasks, each with its *own inputs* (disjoint sets of source digits, rendered in a
task-specific style) and its *own label space*:

* ``digit``  — noisy upright digits -> which digit (10 classes);
* ``mod3``   — inverted (white background), blurred digits -> digit mod 3 (3 classes);
* ``rotation`` — digits rotated by 0/90/180/270 degrees -> the rotation (4 classes; symmetric
  digits such as 0, 1 and 8 make it ambiguous, so its ceiling is below 100%);
* ``pair``  — two half-size digits side by side -> is their sum greater than 9 (2 classes).

Why it is heterogeneous: inputs differ in content and style (single digits, inverted digits,
rotated digits, digit pairs) and the tasks ask different questions with different numbers of
classes; a shared encoder must serve identity, arithmetic and geometry at once, with few labels.

Splits (default profile, fixed data seed 4321): per task 120 training samples from disjoint
source images (the pair task uses two images per sample: 600 source images in all, the same as
in data version 1). The other 1,197 source images are held out and serve both evaluation splits:
each task's test split renders every held-out image once (1,197 samples; the pair task draws
2 x 1,197 images, each held-out image twice), its validation split 300 samples drawn from the
same images with their own rendering (jitter, noise, rotation). Validation and test therefore
share source digits — not renderings — which the test's size requires: 1,197 held-out images
give a binomial standard error of at most 1.45 points per task and 0.72 for the Avg (README,
"Evaluation data"); disjoint pools could not reach 1.5. Inputs are ``(1, 16, 16)`` floats.
Smoke profile: 24 train, 20 val, 40 test per task.

Analogy to the paper: MoLA's multi-input task-heterogeneity benchmark on MedMNIST subsets —
different organs and modalities (inputs) with different diagnostic label spaces (tasks).
"""

from __future__ import annotations

import torch

from bench.api import ScenarioData, Split, TaskSpec, register_scenario
from bench.data import digits as dd

DATA_SEED = 4321
SIZE = 16
#: name -> (label for tables, number of classes, source images per sample)
TASKS = {
    "digit": ("Digit", 10, 1),
    "mod3": ("Digit mod 3", 3, 1),
    "rotation": ("Rotation", 4, 1),
    "pair": ("Pair sum>9", 2, 2),
}
#: per-task sample counts of each profile: (train, val, test)
COUNTS = {"smoke": (24, 20, 40), "default": (120, 300, 1197)}
#: source images of the training sets (120 per task, two per pair sample), disjoint across tasks
TRAIN_SOURCES = 600
NOISE = 0.1
EPOCHS = 20
LR = 3e-3
WIDTHS = (8, 16, 32, 64)


def _noise(x: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    return x + scale * torch.randn(x.shape, generator=gen)


def render(task: str, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one task's samples; ``images`` is ``(N, k, 8, 8)`` with ``k`` images per sample.

    Returns inputs ``(N, 1, 16, 16)`` and targets ``(N,)``.
    """
    n = images.shape[0]
    jitter = (torch.rand(n, generator=gen) * 2 - 1) * 10.0
    if task == "pair":
        canvas = torch.zeros(n, SIZE, SIZE)
        for j in range(2):
            small = dd.resize(images[:, j], SIZE // 2 + 1)  # 9x9 each, slightly overlapping
            top = int(SIZE // 2 - 4)
            left = 0 if j == 0 else SIZE - small.shape[-1]
            region = canvas[:, top:top + small.shape[-2], left:left + small.shape[-1]]
            canvas[:, top:top + small.shape[-2], left:left + small.shape[-1]] = torch.maximum(
                region, small)
        x = dd.rotate(canvas, jitter)
        y = (labels[:, 0] + labels[:, 1] > 9).long()
        return _noise(x, gen, NOISE).unsqueeze(1), y
    x = dd.rotate(dd.resize(images[:, 0], SIZE), jitter)
    digit = labels[:, 0]
    if task == "digit":
        return _noise(x, gen, NOISE).unsqueeze(1), digit.clone()
    if task == "mod3":
        x = 1.0 - dd.blur(x, 0.8)
        return _noise(x, gen, NOISE).unsqueeze(1), digit % 3
    if task == "rotation":
        k = torch.randint(0, 4, (n,), generator=gen)
        x = torch.stack([torch.rot90(img, int(r), dims=(0, 1)) for img, r in zip(x, k)])
        return _noise(x, gen, NOISE).unsqueeze(1), k
    raise ValueError(f"unknown task {task!r}")


@register_scenario("digits_tasks")
class DigitsTasks(dd.DigitsScenario):
    """Four digit tasks with their own inputs and label spaces (identity, mod 3, rotation, sum)."""

    name = "digits_tasks"
    heterogeneity = "multi_input"
    source = "scikit-learn load_digits (ships with the wheel)"
    data_version = "2"  # 2: larger validation (300) and test (1,197) splits per task
    backbone = "resnet"

    encoder = {"widths": WIDTHS}
    default_training = (EPOCHS, 32, LR)

    def build(self, profile: str) -> ScenarioData:
        n_train, n_val, n_test = COUNTS[profile]
        counts = {"train": n_train, "val": n_val, "test": n_test}
        images, labels = dd.digits()
        train_pool, held = dd.train_and_held_out(DATA_SEED, TRAIN_SOURCES)
        splits: dict[str, Split] = {}
        for s_idx, split in enumerate(dd.SPLITS):
            pool = train_pool if split == "train" else held
            inputs, targets = {}, {}
            start = 0
            for t_idx, (task, (_, _, per_sample)) in enumerate(TASKS.items()):
                gen = dd.generator(DATA_SEED, s_idx, t_idx)
                need = counts[split] * per_sample
                if split == "train":  # disjoint source images across tasks
                    idx = pool[start:start + need]
                    start += need
                else:  # every held-out image once before any twice; tasks share them
                    idx = dd.draw(pool, need, gen)
                idx = idx.view(counts[split], per_sample)
                x, y = render(task, images[idx], labels[idx], gen)
                inputs[task], targets[task] = x.contiguous(), y
            splits[split] = Split(inputs, targets)
        tasks = tuple(TaskSpec(t, "classification", k, ("accuracy",), label=label)
                      for t, (label, k, _) in TASKS.items())
        return ScenarioData(
            name=self.name, heterogeneity="multi_input", tasks=tasks,
            input_shape=(1, SIZE, SIZE), train=splits["train"], val=splits["val"],
            test=splits["test"], training=self.setup(profile), backbone="resnet",
            backbone_kwargs=self.backbone_kwargs_of(profile), shared_label_space=False,
            description=(__doc__ or "").strip().splitlines()[0],
        )

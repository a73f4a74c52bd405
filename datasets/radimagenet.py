"""``radimagenet`` — RadImageNet, multi-input task heterogeneity over 11 anatomical regions.

Dataset: RadImageNet (Mei et al., "RadImageNet: an open radiologic deep learning research
dataset for effective transfer learning", Radiology: Artificial Intelligence 2022): 1.35 M
CT, MRI and ultrasound images in 165 labels over 11 anatomical regions. Obtained on request
from https://www.radimagenet.com (no public URL, so no ``bench data download``). The release's
folder layout is kept: ``<data_root>/radimagenet/<modality>/<anatomy>/<label>/<image>`` with
modality ``CT``, ``MR`` or ``US`` (the archive's top folder ``radiology_ai/`` may be kept in
between); anatomy folder names are matched case-insensitively with common aliases
(``abd`` = abdomen/pelvis, ``af`` = ankle/foot).

Tasks: the 11 columns of MoLA (ICML 2024) Table 1, in its order — Lung, Abdomen, Thyroid,
Abdomen, Knee, Shoulder, Spine, Ankle, Abdomen, Brain, Hip. The table names three "Abdomen"
columns without their modality; they are read here as CT, US and MR abdomen/pelvis (the release
has an abdomen/pelvis region in each modality; Lung is CT, Thyroid US, the rest MR). Each task's
classes are the label folders of its region (sorted), its inputs that region's images.

Splits: MoLA does not publish its split; each label folder's images are split by a seeded
permutation (data seed 1357) into 80 / 10 / 10 % train / val / test. Images are read from disk
batch by batch (:mod:`bench.data.streaming`: only the file list is held in memory) through MoLA's
reference pipeline (:data:`bench.data.transforms.RADIMAGENET_IMAGENET`): grey repeated to RGB,
resize to 256, random resized crop 224 and flip in training, centre crop at test, ImageNet
mean/std.

Profiles: ``paper`` — ResNet-18, batches of 128 drawn from all regions pooled with each task's loss
weighted by its share of the batch (the reference's rule), SGD lr 0.05, momentum 0.9, wd 1e-4,
cosine, 100 epochs (MoLA App. B), every image of the release, 224×224 crops, a ResNet-18 trained
from scratch (the reference trains its RadImageNet backbone from scratch). ``smoke`` — 32×32 crops,
at most 10 images per label, a narrow ResNet, 1 epoch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data.real import (
    FileStatus,
    RealScenario,
    find_dir,
    image_files,
    list_images,
    split_indices,
)
from bench.data.scenario import DataMissingError, ScenarioShape
from bench.data.transforms import RADIMAGENET_IMAGENET, ClassificationPipeline

DATA_SEED = 1357
ABDOMEN = ("abd", "abdomen", "abdomen_pelvis", "abdomenpelvis", "abd_pelvis")
#: (task name, MoLA Table 1 column, modality, anatomy folder aliases)
TASKS = (
    ("ct_lung", "Lung", "CT", ("lung", "chest")),
    ("ct_abdomen", "Abdomen (CT)", "CT", ABDOMEN),
    ("us_thyroid", "Thyroid", "US", ("thyroid",)),
    ("us_abdomen", "Abdomen (US)", "US", ABDOMEN),
    ("mr_knee", "Knee", "MR", ("knee",)),
    ("mr_shoulder", "Shoulder", "MR", ("shoulder",)),
    ("mr_spine", "Spine", "MR", ("spine",)),
    ("mr_ankle", "Ankle", "MR", ("af", "ankle", "ankle_foot", "anklefoot", "foot_ankle")),
    ("mr_abdomen", "Abdomen (MR)", "MR", ABDOMEN),
    ("mr_brain", "Brain", "MR", ("brain",)),
    ("mr_hip", "Hip", "MR", ("hip",)),
)
MODALITY_ALIASES = {"CT": ("ct",), "MR": ("mr", "mri"), "US": ("us", "ultrasound")}
#: profile -> (input pipeline, max images per label; None = all)
PROFILE_DATA: dict[str, tuple[ClassificationPipeline, int | None]] = {
    "smoke": (replace(RADIMAGENET_IMAGENET, size=32, resize=36), 10),
    "paper": (RADIMAGENET_IMAGENET, None)}
FRACTIONS = (0.1, 0.1)


@register_scenario("radimagenet")
class RadImageNet(RealScenario):
    """RadImageNet, the 11 anatomical-region tasks of MoLA Table 1; real data."""

    name = "radimagenet"
    description = "RadImageNet, the 11 anatomical-region tasks of MoLA Table 1; real data"
    heterogeneity = "multi_input"
    folder = "radimagenet"
    backbone = "resnet18"
    paper_pretrained = False  # MoLA's reference trains its RadImageNet encoder from scratch
    data_version = "3"  # 3: MoLA's reference pipeline (RGB, 256 → crop 224), streamed
    source = "RadImageNet release (on request from radimagenet.com)"
    layout = ("radimagenet/{CT,MR,US}/<anatomy>/<label>/<image> (anatomies: CT lung, abd; "
              "US thyroid, abd; MR knee, shoulder, spine, af, abd, brain, hip)")
    where = "https://www.radimagenet.com (request access; no public URL)"

    def _base(self, data_root_: Path | None) -> Path:
        root = self.root(data_root_)
        inner = find_dir(root, "radiology_ai")
        return inner if inner is not None else root

    def region_dirs(self, data_root_: Path | None = None) -> dict[str, Path | None]:
        base = self._base(data_root_)
        out: dict[str, Path | None] = {}
        for task, _, modality, aliases in TASKS:
            mod = find_dir(base, *MODALITY_ALIASES[modality])
            out[task] = find_dir(mod, *aliases) if mod is not None else None
        return out

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        statuses = []
        for (_, _, modality, aliases), region in zip(TASKS, self.region_dirs(data_root_)
                                                        .values()):
            rel = f"{modality}/{aliases[0]}"
            if region is None:
                statuses.append(FileStatus(rel, False, "missing"))
                continue
            labels = [d for d in sorted(region.iterdir()) if d.is_dir()]
            counts = [len(list_images(d)) for d in labels]
            if len(labels) < 2 or min(counts) == 0:
                found = dict(zip([d.name for d in labels], counts))
                statuses.append(FileStatus(rel, False, "needs >= 2 label folders with images, "
                                                       f"found {found}"))
            else:
                statuses.append(FileStatus(rel, True, f"{len(labels)} labels, {sum(counts)} "
                                                      "images"))
        return statuses

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=16, lr=1e-3, eval_batch_size=256)
        return TrainingSetup(epochs=100, batch_size=128, optimizer="sgd", lr=0.05,
                             momentum=0.9, weight_decay=1e-4, scheduler="cosine",
                             eval_batch_size=512, sampling="pooled", loss_share=True)

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_data(profile, data_root)
        pipeline, cap = PROFILE_DATA[profile]
        size = pipeline.size
        parts: dict[str, dict[str, dict[str, Any]]] = {
            s: {"inputs": {}, "targets": {}} for s in ("train", "val", "test")}
        tasks = []
        for t_idx, ((task, label, _, _), region) in enumerate(
                zip(TASKS, self.region_dirs(data_root).values())):
            assert region is not None
            classes = [d for d in sorted(region.iterdir()) if d.is_dir()]
            chosen: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
            for c_idx, cls in enumerate(classes):
                images = list_images(cls)
                if cap is not None and len(images) > cap:
                    keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(
                        DATA_SEED + 1000 * t_idx + c_idx))[:cap].sort().values
                    images = [images[i] for i in keep.tolist()]
                tr, va, te = split_indices(len(images), FRACTIONS, DATA_SEED + c_idx)
                for split, idx in (("train", tr), ("val", va), ("test", te)):
                    chosen[split] += [(images[i], c_idx) for i in idx.tolist()]
            for split, items in chosen.items():
                if not items:
                    raise DataMissingError(f"radimagenet: region {region} has too few images "
                                           f"for a {split} split")
                parts[split]["inputs"][task] = image_files(
                    [p for p, _ in items], pipeline, f"radimagenet/{task}/{split}")
                parts[split]["targets"][task] = torch.tensor([c for _, c in items])
            tasks.append(TaskSpec(task, "classification", len(classes), ("accuracy",),
                                  label=label))
        return ScenarioData(
            name=self.name, heterogeneity="multi_input", tasks=tuple(tasks),
            input_shape=(3, size, size), train=Split(**parts["train"]),
            val=Split(**parts["val"]), test=Split(**parts["test"]),
            training=self.setup(profile), backbone=self.backbone_of(profile),
            backbone_kwargs=self.backbone_kwargs_of(profile),
            shared_label_space=False, description=self.description)

    def nominal_shape(self, profile: str) -> ScenarioShape | None:
        """Unknown: the release's per-region image and label counts are not published in a form
        this file could state, so RadImageNet's cost is estimated only once its data are
        present."""
        return None

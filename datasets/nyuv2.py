"""``nyuv2`` — NYUv2, single-input task heterogeneity: segmentation, depth, surface normals.

Dataset: NYU Depth v2 (Silberman et al., ECCV 2012) in the 3-task preprocessed form of MTAN
(Liu, Johns & Davison, CVPR 2019) that LibMTL's NYUv2 example reads: 795 training and 654
validation indoor scenes at 288×384. Layout: ``<data_root>/nyuv2/{train,val}/{image,label,depth,
normal}/<i>.npy`` with image ``(288, 384, 3)`` float in [0, 1], label ``(288, 384)`` with the
13 classes and -1 for unlabelled pixels, depth ``(288, 384, 1)`` (0 = missing), normal
``(288, 384, 3)`` in [-1, 1] (0 = missing). Download link in MTAN's README
(github.com/lorenmt/mtan, "nyuv2.zip", a Dropbox link; no MD5 is published).

Tasks (MoLA Table 5): ``segmentation`` (13 classes; mIoU, pixel accuracy), ``depth`` (L1 over
valid pixels; absolute and relative error), ``normal`` (cosine loss; mean and median angle error,
% within 11.25°, 22.5°, 30°). ``report_average=False``; Δm% is the summary, as in the paper.

Splits: the ``val`` folder is the test split (as in MTAN, LibMTL and MoLA's table); 10 % of the
training folder (seeded, data seed 795) is held out for model selection.

Profiles: ``paper`` — ResNet-18 (its 1/32 feature map upsampled by each task's dense head;
MoLA's reference follows LibMTL's dense setup), Adam lr 1e-4, batch 128 (MoLA App. B: "for all
experiments"), 200 epochs with the lr halved after 100 (MoLA's reference code and LibMTL's NYUv2
example; the paper does not state them), ImageNet weights, full resolution,
each sample's four ``.npy`` files read per batch (:mod:`bench.data.streaming`). ``smoke`` — the
first 8 training and 4 validation scenes at 72×96, a narrow ResNet, 1 epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data.metrics import IGNORE_INDEX
from bench.data.real import FileStatus, RealScenario, field_samples, held_out_split
from bench.data.scenario import DataMissingError, ScenarioShape
from bench.data.streaming import Key, LazySamples
from bench.data.transforms import nyuv2_sample

FOLDERS = ("image", "label", "depth", "normal")
#: the share of the training folder held out for model selection
HELD_OUT = 0.1
DATA_SEED = 795
#: profile -> (height, width, max train scenes, max val scenes)
PROFILE_DATA = {"smoke": (72, 96, 8, 4), "paper": (288, 384, None, None)}
TASKS = (
    TaskSpec("segmentation", "segmentation", 13, ("miou", "pixel_accuracy"), label="Segmentation"),
    TaskSpec("depth", "depth", 1, ("depth_abs_err", "rel_err"), label="Depth"),
    TaskSpec("normal", "normals", 3,
             ("angle_mean", "angle_median", "within_11", "within_22", "within_30"),
             label="Surface normal"),
)


def _sample_ids(folder: Path) -> list[str]:
    return sorted((p.stem for p in folder.glob("*.npy")),
                  key=lambda s: (0, int(s)) if s.isdigit() else (1, s))  # type: ignore[misc]


#: expected trailing dimensions of each folder's arrays (H, W first)
SHAPES = {"image": (3,), "label": (), "depth": (1,), "normal": (3,)}


def _check_shape(path: Path, sub: str, rel: str, count: int) -> FileStatus:
    """Check the first sample's array shape from its header (memory-mapped, not read)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        return FileStatus(rel, False, f"{path.name} is not a readable .npy file ({err})")
    tail = tuple(arr.shape[2:])
    if arr.ndim < 2 or (tail != SHAPES[sub] and not (sub == "depth" and tail == ())):
        return FileStatus(rel, False, f"{path.name} has shape {tuple(arr.shape)}; expected "
                                      f"(H, W{''.join(f', {d}' for d in SHAPES[sub])})")
    return FileStatus(rel, True, f"{count} samples")


#: field -> folder of its .npy files
FIELD_FOLDERS = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal"}


#: field -> how bench.data.transforms resamples it
FIELD_KINDS = {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normals"}


def read_field(folder: Path, sample: str, field: str, size: tuple[int, int],
               key: Key | None = None) -> torch.Tensor:
    """One sample's ``field`` from ``folder/<field folder>/<sample>.npy`` at ``size``, through
    LibMTL's NYUv2 augmentation when ``key`` is given (:func:`bench.data.transforms.nyuv2_sample`:
    random scale-crop, flip): the image ``(3, H, W)``, ``segmentation`` ``(H, W)`` long with
    classes outside 0-12 → -1 (ignored), ``depth`` ``(1, H, W)`` and ``normal`` ``(3, H, W)``
    (0 = missing)."""
    arr = np.load(folder / FIELD_FOLDERS[field] / f"{sample}.npy")
    if field == "segmentation":
        if arr.ndim != 2:
            raise ValueError(f"label has shape {arr.shape}, expected (H, W)")
        raw = torch.from_numpy(arr.astype(np.int64))
        raw[(raw < 0) | (raw >= 13)] = IGNORE_INDEX
    else:
        (channels,) = SHAPES[FIELD_FOLDERS[field]]
        arr = arr.reshape(*arr.shape[:2], -1) if field == "depth" else arr
        if arr.ndim != 3 or arr.shape[-1] != channels:
            raise ValueError(f"{field} has shape {arr.shape}, expected (H, W, {channels}) as in "
                             "MTAN's preprocessed release")
        raw = torch.from_numpy(np.moveaxis(arr, -1, 0).astype(np.float32))
    return nyuv2_sample(raw, FIELD_KINDS[field], key, size)


@register_scenario("nyuv2")
class NYUv2(RealScenario):
    """NYUv2 (MTAN/LibMTL .npy layout): segmentation, depth, normals of one image; real data."""

    name = "nyuv2"
    description = ("NYUv2 (MTAN/LibMTL .npy layout): 13-class segmentation, depth, surface "
                   "normals; real data")
    heterogeneity = "single_input"
    folder = "nyuv2"
    backbone = "resnet18"
    data_version = "2"  # 2: LibMTL's augmentation in training, streamed
    source = "MTAN's preprocessed NYUv2 (github.com/lorenmt/mtan)"
    layout = "nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy"
    where = "the nyuv2.zip link in MTAN's README (github.com/lorenmt/mtan)"

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        root = self.root(data_root_)
        statuses = []
        for split in ("train", "val"):
            ids = None
            for sub in FOLDERS:
                folder = root / split / sub
                rel = f"{split}/{sub}"
                if not folder.is_dir():
                    statuses.append(FileStatus(rel, False, "missing"))
                    continue
                found = _sample_ids(folder)
                if not found:
                    statuses.append(FileStatus(rel, False, "no .npy files"))
                elif ids is not None and found != ids:
                    statuses.append(FileStatus(rel, False, f"{len(found)} files whose names "
                                                           f"differ from {split}/image's"))
                else:
                    statuses.append(_check_shape(folder / f"{found[0]}.npy", sub, rel,
                                                 len(found)))
                ids = found if ids is None else ids
        return statuses

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=4, lr=1e-3, eval_batch_size=8)
        # MoLA App. B: Adam, lr 1e-4, batch 128; its reference (and LibMTL's NYUv2 example):
        # 200 epochs, the lr halved every 100 epochs
        return TrainingSetup(epochs=200, batch_size=128, optimizer="adam", lr=1e-4,
                             scheduler="step", step_size=100, gamma=0.5, eval_batch_size=16)

    def _samples(self, root: Path, split: str, ids: list[str], size: tuple[int, int],
                 name: str) -> tuple[LazySamples, dict[str, LazySamples]]:
        """The images and targets of ``ids`` (in ``root/split``), read from disk per batch."""
        h, w = size
        shapes = {"image": (3, h, w), "segmentation": (h, w), "depth": (1, h, w),
                  "normal": (3, h, w)}
        return field_samples(
            lambda i, field, key: read_field(root / split, ids[i], field, size, key), len(ids),
            shapes, self.name, name, lambda i: f"{split}/{ids[i]}", self.layout)

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_data(profile, data_root)
        root = self.root(data_root)
        h, w, n_train, n_val = PROFILE_DATA[profile]
        train_ids = _sample_ids(root / "train" / "image")[:n_train]
        test_ids = _sample_ids(root / "val" / "image")[:n_val]
        if len(train_ids) < 2:
            raise DataMissingError(f"nyuv2: {root / 'train'} needs at least 2 samples")
        tr, va = held_out_split(len(train_ids), HELD_OUT, DATA_SEED)
        train = Split(*self._samples(root, "train", [train_ids[i] for i in tr.tolist()], (h, w),
                                     "train"))
        val = Split(*self._samples(root, "train", [train_ids[i] for i in va.tolist()], (h, w),
                                   "val"))
        test = Split(*self._samples(root, "val", test_ids, (h, w), "test"))
        return ScenarioData(
            name=self.name, heterogeneity="single_input", tasks=TASKS, input_shape=(3, h, w),
            train=train, val=val, test=test, training=self.setup(profile),
            backbone=self.backbone_of(profile),
            backbone_kwargs=self.backbone_kwargs_of(profile),
            description=self.description)

    #: MTAN's release: training and validation (= test) scenes, for estimates before a download
    published_sizes = {"train": 795, "val": 654}

    def nominal_shape(self, profile: str) -> ScenarioShape:
        """Published scene counts (capped as ``PROFILE_DATA``), 10 % of the training scenes
        held out for validation as :meth:`load` does."""
        self.check_profile(profile)
        h, w, n_train, n_val = PROFILE_DATA[profile]
        train, test = self.published_sizes["train"], self.published_sizes["val"]
        train, test = min(train, n_train or train), min(test, n_val or test)  # caps: None = all
        return self._nominal_train_test(profile, TASKS, (3, h, w), train, test, HELD_OUT)

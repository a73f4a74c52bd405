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
experiments"), 200 epochs (LibMTL's NYUv2 default; MoLA does not state it); full resolution
(~6 GB in memory). ``smoke`` — the first 8 training and 4 validation scenes at 72×96, a narrow
ResNet, 1 epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data import FileStatus, RealScenario, split_indices, split_sizes
from bench.metrics import IGNORE_INDEX
from bench.scenario import DataMissingError, ScenarioShape

FOLDERS = ("image", "label", "depth", "normal")
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


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a ``(H, W)`` or ``(C, H, W)`` tensor ("nearest" for labels and invalid masks)."""
    if tuple(x.shape[-2:]) == size:
        return x
    y = x.reshape(1, -1, *x.shape[-2:]).float()
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    y = F.interpolate(y, size=size, mode=mode, **kwargs)
    return y.reshape(*x.shape[:-2], *size).to(x.dtype)


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


@register_scenario("nyuv2")
class NYUv2(RealScenario):
    """NYUv2 (MTAN/LibMTL .npy layout): segmentation, depth, normals of one image; real data."""

    name = "nyuv2"
    description = ("NYUv2 (MTAN/LibMTL .npy layout): 13-class segmentation, depth, surface "
                   "normals; real data")
    heterogeneity = "single_input"
    folder = "nyuv2"
    backbone = "resnet18"
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
        return TrainingSetup(epochs=200, batch_size=128, optimizer="adam", lr=1e-4,
                             eval_batch_size=16)

    def _read(self, root: Path, split: str, ids: list[str], size: tuple[int, int]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, segs, depths, normals = [], [], [], []
        for i in ids:
            try:
                img = np.load(root / split / "image" / f"{i}.npy")
                seg = np.load(root / split / "label" / f"{i}.npy")
                dep = np.load(root / split / "depth" / f"{i}.npy")
                nor = np.load(root / split / "normal" / f"{i}.npy")
            except (OSError, ValueError) as err:
                raise DataMissingError(f"nyuv2: cannot read sample {split}/{i} ({err}); "
                                       f"expected layout {self.layout}") from None
            if img.ndim != 3 or img.shape[-1] != 3 or seg.shape != img.shape[:2]:
                raise DataMissingError(
                    f"nyuv2: sample {split}/{i} has image {img.shape} and label {seg.shape}; "
                    "expected (H, W, 3) and (H, W) as in MTAN's preprocessed release")
            images.append(_resize(torch.from_numpy(np.moveaxis(img, -1, 0).astype(np.float32)),
                                  size, "bilinear"))
            segs.append(_resize(torch.from_numpy(seg.astype(np.int64)), size, "nearest"))
            depths.append(_resize(torch.from_numpy(
                np.moveaxis(dep.reshape(*dep.shape[:2], -1), -1, 0).astype(np.float32)),
                size, "nearest"))
            normals.append(_resize(torch.from_numpy(
                np.moveaxis(nor, -1, 0).astype(np.float32)), size, "nearest"))
        seg_t = torch.stack(segs)
        seg_t[(seg_t < 0) | (seg_t >= 13)] = IGNORE_INDEX
        return torch.stack(images), {"segmentation": seg_t, "depth": torch.stack(depths),
                                     "normal": torch.stack(normals)}

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_data(profile, data_root)
        root = self.root(data_root)
        h, w, n_train, n_val = PROFILE_DATA[profile]
        train_ids = _sample_ids(root / "train" / "image")[:n_train]
        test_ids = _sample_ids(root / "val" / "image")[:n_val]
        if len(train_ids) < 2:
            raise DataMissingError(f"nyuv2: {root / 'train'} needs at least 2 samples")
        x, y = self._read(root, "train", train_ids, (h, w))
        n_hold = max(1, int(round(0.1 * len(train_ids))))
        tr, va, _ = split_indices(len(train_ids), (n_hold / len(train_ids), 0.0), DATA_SEED)
        train = Split(x[tr], {k: v[tr] for k, v in y.items()})
        val = Split(x[va], {k: v[va] for k, v in y.items()})
        del x, y
        test_x, test_y = self._read(root, "val", test_ids, (h, w))
        smoke = profile == "smoke"
        return ScenarioData(
            name=self.name, heterogeneity="single_input", tasks=TASKS, input_shape=(3, h, w),
            train=train, val=val, test=Split(test_x, test_y), training=self.setup(profile),
            backbone="resnet" if smoke else "resnet18",
            backbone_kwargs={"widths": (8, 16, 32, 64)} if smoke else {},
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
        hold = max(1, int(round(0.1 * train)))
        counts = split_sizes(train, (hold / train, 0.0))
        counts["test"] = test
        sizes = {split: {t.name: n for t in TASKS} for split, n in counts.items()}
        return self._nominal(profile, TASKS, (3, h, w), sizes)

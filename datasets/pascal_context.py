"""``pascal_context`` — PASCAL-Context multi-task (MTLoRA), single-input task heterogeneity.

Dataset: the PASCAL-Context multi-task split (Mottaghi et al., CVPR 2014; Chen et al., 2014 for
human parts) as released by Vandenhende et al.'s MTL repositories (MTI-Net / ATRC, "PASCAL_MT")
and read by MTLoRA (Agiza et al., CVPR 2024, §4.1): 4,998 training and 5,105 validation images.
Layout: ``<data_root>/PASCAL_MT/`` with ``JPEGImages/<id>.jpg``,
``ImageSets/Context/{train,val}.txt`` (one id per line), ``semseg/pascal-context/<id>.png``
(21 classes, 255 = ignore), ``human_parts/<id>.mat`` (PASCAL-Part annotations: ``anno`` →
objects with class index, mask and named parts), ``sal_distill/<id>.png`` (saliency, 0/255),
``normals_distill/<id>.png`` (RGB-encoded unit normals, ``n = 2·rgb/255 − 1``). The archive
``PASCAL_MT.tgz`` is linked from the ATRC / Multi-Task-Learning-PyTorch READMEs (no MD5).

Tasks (MTLoRA Table 1): ``semseg`` (21 classes; mIoU), ``human_parts`` (background + 6 parts:
head, torso, upper arms, lower arms/hands, upper legs, lower legs/feet, grouped as in Vandenhende
et al.; mIoU; images without a person are ignored), ``saliency`` (maxF and best-threshold IoU;
BCE loss), ``normals`` (cosine loss; mean angle error, then median and within-t°).

Splits: ``val`` is the test split (as in MTLoRA); 5 % of ``train`` (seeded, data seed 4998) is
held out for model selection.

Profiles: ``paper`` — MTLoRA's Swin-T schedule (reference configs): AdamW, lr 5e-4 (wd 0.05),
cosine, batch 32, 300 epochs; **deviation**: images at 128×128 instead of 448×448, so that the
whole split fits in memory (~6 GB of float32; 448² would need ~70 GB). ``smoke`` — the first 6
train / 3 val ids at 32×32, a narrow ResNet, 1 epoch (loader and layout checks, tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data import FileStatus, RealScenario, split_indices, split_sizes
from bench.metrics import IGNORE_INDEX
from bench.scenario import DataMissingError, ScenarioShape

DATA_SEED = 4998
PERSON_CLASS = 15
#: PASCAL-Part names -> grouped human-part classes (1 head, 2 torso, 3 upper arms,
#: 4 lower arms and hands, 5 upper legs, 6 lower legs and feet)
HUMAN_PARTS = {
    "hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "mouth": 1, "nose": 1, "rear": 1,
    "rebrow": 1, "reye": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "lhand": 4,
    "llarm": 4, "rhand": 4, "rlarm": 4, "luleg": 5, "ruleg": 5, "lfoot": 6, "llleg": 6,
    "rfoot": 6, "rlleg": 6,
}
#: folder -> file suffix, per task input
LAYOUT = {"JPEGImages": ".jpg", "semseg/pascal-context": ".png", "human_parts": ".mat",
          "sal_distill": ".png", "normals_distill": ".png"}
PROFILE_DATA = {"smoke": (32, 6, 3), "paper": (128, None, None)}
TASKS = (
    TaskSpec("semseg", "segmentation", 21, ("miou", "pixel_accuracy"), label="SemSeg"),
    TaskSpec("human_parts", "segmentation", 7, ("miou",), label="Human Parts"),
    TaskSpec("saliency", "saliency", 1, ("max_f", "sal_iou"), label="Saliency"),
    TaskSpec("normals", "normals", 3, ("angle_mean", "angle_median", "within_11"),
             label="Normals"),
)


def read_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A PASCAL-Part ``.mat`` as a grouped part map (0 background, 1-6 parts, -1 when the image
    has no person)."""
    from scipy.io import loadmat

    out = np.zeros(shape, dtype=np.int64)
    has_person = False
    objects = loadmat(str(path))["anno"][0][0][1][0]
    for obj in objects:
        if int(np.asarray(obj[1]).reshape(-1)[0]) != PERSON_CLASS:
            continue
        has_person = True
        parts = obj[3]
        if parts.size == 0:
            continue
        for part in parts[0]:
            name = str(np.asarray(part[0]).reshape(-1)[0])
            if name in HUMAN_PARTS:
                out[np.asarray(part[1]) > 0] = HUMAN_PARTS[name]
    if not has_person:
        out[:] = IGNORE_INDEX
    return out


def _resize(arr: torch.Tensor, size: int, nearest: bool) -> torch.Tensor:
    """Resize a ``(H, W)`` or ``(C, H, W)`` tensor to ``size``² (nearest for labels)."""
    import torch.nn.functional as F

    x = arr.reshape(1, -1, *arr.shape[-2:]).float()
    if nearest:
        y = F.interpolate(x, size=(size, size), mode="nearest")
    else:
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.reshape(*arr.shape[:-2], size, size).to(arr.dtype)


@register_scenario("pascal_context")
class PascalContext(RealScenario):
    """PASCAL-Context multi-task (MTLoRA/ATRC layout): semseg, parts, saliency, normals."""

    name = "pascal_context"
    description = ("PASCAL-Context multi-task (MTLoRA/ATRC PASCAL_MT layout): semseg, human "
                   "parts, saliency, normals; real data")
    heterogeneity = "single_input"
    folder = "PASCAL_MT"
    backbone = "resnet18"
    source = "PASCAL_MT release of Vandenhende et al. (as used by ATRC and MTLoRA)"
    layout = ("PASCAL_MT/{JPEGImages/<id>.jpg, ImageSets/Context/{train,val}.txt, "
              "semseg/pascal-context/<id>.png, human_parts/<id>.mat, sal_distill/<id>.png, "
              "normals_distill/<id>.png}")
    where = ("the PASCAL_MT.tgz link of github.com/SimonVandenhende/Multi-Task-Learning-PyTorch "
             "(also used by github.com/scale-lab/MTLoRA)")

    def ids(self, split: str, data_root_: Path | None = None) -> list[str]:
        path = self.root(data_root_) / "ImageSets" / "Context" / f"{split}.txt"
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        root = self.root(data_root_)
        statuses = []
        for split in ("train", "val"):
            rel = f"ImageSets/Context/{split}.txt"
            if not (root / rel).is_file():
                statuses.append(FileStatus(rel, False, "missing"))
                continue
            ids = self.ids(split, data_root_)
            statuses.append(FileStatus(rel, bool(ids), f"{len(ids)} ids" if ids else "empty"))
            for folder, suffix in LAYOUT.items():
                absent = [i for i in ids if not (root / folder / f"{i}{suffix}").is_file()]
                statuses.append(FileStatus(
                    f"{folder}/ ({split})", not absent,
                    f"{len(ids) - len(absent)}/{len(ids)} files" + (
                        f", e.g. {absent[0]}{suffix} missing" if absent else "")))
        return statuses

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=4, lr=1e-3, eval_batch_size=8)
        return TrainingSetup(epochs=300, batch_size=32, optimizer="adamw", lr=5e-4,
                             weight_decay=0.05, scheduler="cosine", eval_batch_size=32)

    def _read(self, root: Path, ids: list[str], size: int
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from PIL import Image

        xs: list[torch.Tensor] = []
        ys: dict[str, list[torch.Tensor]] = {t.name: [] for t in TASKS}

        def png(rel: str) -> np.ndarray[Any, Any]:
            with Image.open(root / rel) as img:
                return np.asarray(img)

        for i in ids:
            try:
                with Image.open(root / "JPEGImages" / f"{i}.jpg") as img:
                    image = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
                h, w = image.shape[:2]
                seg = png(f"semseg/pascal-context/{i}.png").astype(np.int64)
                parts = read_human_parts(root / "human_parts" / f"{i}.mat", (h, w))
                sal = png(f"sal_distill/{i}.png").astype(np.float32)
                normals = png(f"normals_distill/{i}.png").astype(np.float32)
            except (OSError, ValueError, KeyError, IndexError) as err:
                raise DataMissingError(f"pascal_context: cannot read sample {i} ({err}); "
                                       f"expected layout {self.layout}") from None
            seg[seg == 255] = IGNORE_INDEX
            sal = sal[..., 0] if sal.ndim == 3 else sal
            sal_t = np.where(sal > 127, 1.0, 0.0).astype(np.float32)
            n = normals[..., :3] * 2.0 / 255.0 - 1.0
            n[np.linalg.norm(n, axis=-1) < 0.5] = 0.0  # invalid pixels carry no direction
            xs.append(_resize(torch.from_numpy(np.moveaxis(image, -1, 0).copy()), size, False))
            ys["semseg"].append(_resize(torch.from_numpy(seg), size, True))
            ys["human_parts"].append(_resize(torch.from_numpy(parts), size, True))
            ys["saliency"].append(_resize(torch.from_numpy(sal_t), size, True))
            ys["normals"].append(_resize(torch.from_numpy(np.moveaxis(n, -1, 0).copy()), size,
                                         True))
        return torch.stack(xs), {k: torch.stack(v) for k, v in ys.items()}

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_data(profile, data_root)
        root = self.root(data_root)
        size, n_train, n_val = PROFILE_DATA[profile]
        train_ids = self.ids("train", data_root)[:n_train]
        test_ids = self.ids("val", data_root)[:n_val]
        x, y = self._read(root, train_ids, size)
        n_hold = max(1, int(round(0.05 * len(train_ids))))
        tr, va, _ = split_indices(len(train_ids), (n_hold / len(train_ids), 0.0), DATA_SEED)
        train = Split(x[tr], {k: v[tr] for k, v in y.items()})
        val = Split(x[va], {k: v[va] for k, v in y.items()})
        test_x, test_y = self._read(root, test_ids, size)
        smoke = profile == "smoke"
        return ScenarioData(
            name=self.name, heterogeneity="single_input", tasks=TASKS,
            input_shape=(3, size, size), train=train, val=val, test=Split(test_x, test_y),
            training=self.setup(profile), backbone="resnet" if smoke else "resnet18",
            backbone_kwargs={"widths": (8, 16, 32, 64)} if smoke else {},
            description=self.description)

    #: the PASCAL_MT release: train and val (= test) images, for estimates before a download
    published_sizes = {"train": 4998, "val": 5105}

    def nominal_shape(self, profile: str) -> ScenarioShape:
        """Published image counts (capped as ``PROFILE_DATA``), 5 % of the training images
        held out for validation as :meth:`load` does."""
        self.check_profile(profile)
        size, n_train, n_val = PROFILE_DATA[profile]
        train, test = self.published_sizes["train"], self.published_sizes["val"]
        train, test = min(train, n_train or train), min(test, n_val or test)  # caps: None = all
        hold = max(1, int(round(0.05 * train)))
        counts = split_sizes(train, (hold / train, 0.0))
        counts["test"] = test
        sizes = {split: {t.name: n for t in TASKS} for split, n in counts.items()}
        return self._nominal(profile, TASKS, (3, size, size), sizes)

"""``pascal_context`` — PASCAL-Context multi-task (MTLoRA), single-input task heterogeneity.

Dataset: the PASCAL-Context multi-task split (Mottaghi et al., CVPR 2014; Chen et al., 2014 for
human parts) as released by Vandenhende et al.'s MTL repositories (MTI-Net / ATRC, "PASCAL_MT")
and read by MTLoRA (Agiza et al., CVPR 2024, §4.1): 4,998 training and 5,105 validation images.
Layout: ``<data_root>/PASCAL_MT/`` with ``JPEGImages/<id>.jpg``,
``ImageSets/Context/{train,val}.txt`` (one id per line), ``semseg/pascal-context/<id>.png``
(21 classes, 255 = ignore; ``semseg/VOC12/<id>.png`` first where present),
``human_parts/<id>.mat`` (PASCAL-Part annotations: ``anno`` → objects with class index, mask
and named parts), ``sal_distill/<id>.png`` (saliency, 0/255), ``normals_distill/<id>.png``
(RGB-encoded unit normals, ``n = 2·rgb/255 − 1``). The archive
``PASCAL_MT.tgz`` is linked from the ATRC / Multi-Task-Learning-PyTorch READMEs (no MD5).

Tasks (MTLoRA Table 1): ``semseg`` (21 classes; mIoU), ``human_parts`` (background + 6 parts:
head, torso, upper arms, lower arms/hands, upper legs, lower legs/feet, grouped as in Vandenhende
et al.; mIoU; images without a person are ignored), ``saliency`` (IoU — Table 1's "mIoU" —
and maxF, both as MTLoRA evaluates them; class-balanced BCE), ``normals`` (L1 on normalised
vectors; mean angle error, then median and within-t°). The losses are weighted 1 / 2 / 5 / 10
(semseg / parts / saliency / normals) as in MTLoRA's training script.

Splits: ``val`` is the test split (as in MTLoRA); 5 % of ``train`` (seeded, data seed 4998) is
held out for model selection.

Models: under ``paper`` every method runs on MTLoRA's encoder, the ImageNet-1k Swin-T at 448²
(``swin_t``, ``pretrained=True``), so that HPS is Table 1's "MTL - Full Fine Tuning" and
Single-task its "Single Task" reference of Δm%; methods that need a convolutional encoder
(Cross-Stitch, ...) are skipped there.

Profiles: ``paper`` — MTLoRA's Swin-T schedule (reference code and configs): batch 128, AdamW
(wd 0.05), lr 5e-4 × 128/512 after 20 warm-up epochs, cosine to 5e-6 × 128/512 over 300
epochs, gradients clipped at norm 5; training augmentation (flip, rotation ±20°, scale
0.75-1.25), images at 448×448; samples are read from disk batch by batch
(:mod:`bench.data.streaming`: 448² float tensors of the whole split would take ~70 GB). ``smoke`` —
the first 6 train / 3 val ids at 32×32, a narrow ResNet, 1 epoch (loader and layout checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data.metrics import IGNORE_INDEX
from bench.data.real import FileStatus, RealScenario, field_samples, held_out_split
from bench.data.scenario import ScenarioShape
from bench.data.streaming import Key, LazySamples
from bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pascal_sample

#: the share of the training folder held out for model selection
HELD_OUT = 0.05
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
#: (semantic maps are read from ``semseg/VOC12`` when a file is there, as the reference does)
LAYOUT = {"JPEGImages": ".jpg", "semseg/pascal-context": ".png", "human_parts": ".mat",
          "sal_distill": ".png", "normals_distill": ".png"}
#: profile -> (image size, max train ids, max val ids; None = all)
PROFILE_DATA = {"smoke": (32, 6, 3), "paper": (448, None, None)}
#: MTLoRA's losses and their fixed weights (semseg 1, parts 2, saliency 5, normals 10)
TASKS = (
    TaskSpec("semseg", "segmentation", 21, ("miou", "pixel_accuracy"), label="SemSeg"),
    TaskSpec("human_parts", "segmentation", 7, ("miou",), label="Human Parts",
             loss_weight=2.0),
    TaskSpec("saliency", "saliency", 1, ("sal_iou", "max_f"), label="Saliency",
             loss="balanced_bce", loss_weight=5.0),
    TaskSpec("normals", "normals", 3, ("angle_mean", "angle_median", "within_11"),
             label="Normals", loss="normals_l1", loss_weight=10.0),
)


def read_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A PASCAL-Part ``.mat`` as a grouped part map (0 background, 1-6 parts); -1 (ignored)
    everywhere when no person of the image has part annotations, as in the reference loaders."""
    from scipy.io import loadmat

    out = np.zeros(shape, dtype=np.int64)
    annotated = False
    objects = loadmat(str(path))["anno"][0][0][1][0]
    for obj in objects:
        parts = obj[3]
        if int(np.asarray(obj[1]).reshape(-1)[0]) != PERSON_CLASS or parts.size == 0:
            continue
        annotated = True
        for part in parts[0]:
            name = str(np.asarray(part[0]).reshape(-1)[0])
            if name in HUMAN_PARTS:
                out[np.asarray(part[1]) > 0] = HUMAN_PARTS[name]
    if not annotated:
        out[:] = IGNORE_INDEX
    return out


def semseg_path(root: Path, sample: str) -> Path | None:
    """The semantic map of ``sample``: ``semseg/VOC12/<id>.png`` when present, else
    ``semseg/pascal-context/<id>.png`` (the reference loaders' order), or None."""
    for folder in ("VOC12", "pascal-context"):
        path = root / "semseg" / folder / f"{sample}.png"
        if path.is_file():
            return path
    return None


def _png(path: Path) -> np.ndarray[Any, Any]:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


#: field -> how bench.data.transforms resamples it
FIELD_KINDS = {"image": "image", "semseg": "label", "human_parts": "label",
               "saliency": "saliency", "normals": "normals"}


def read_field(root: Path, sample: str, field: str, size: int, key: Key | None = None
               ) -> torch.Tensor:
    """One sample's ``field`` (``image`` or a task) at ``size``², through MTLoRA's training
    augmentation when ``key`` is given (:func:`bench.data.transforms.pascal_sample`: flip, rotation,
    scale) and its resize: the image bicubic, normalised with ImageNet's mean and std (the
    Swin-T's pretraining) ``(3, S, S)``; label maps nearest — ``semseg`` (255 → ignored),
    ``human_parts`` (:func:`read_human_parts`), ``saliency`` (0/1 floats, threshold 127),
    ``normals`` (``(3, S, S)``, ``2·rgb/255 − 1``, zero where the encoded vector is invalid)."""
    from PIL import Image

    if field == "image":
        with Image.open(root / "JPEGImages" / f"{sample}.jpg") as img:
            image = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        x = pascal_sample(torch.from_numpy(np.moveaxis(image, -1, 0).copy()), "image", key, size)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        return (x - mean) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    if field == "semseg":
        path = semseg_path(root, sample)
        if path is None:
            raise OSError(f"no semseg/VOC12/{sample}.png nor semseg/pascal-context/{sample}.png")
        raw = _png(path).astype(np.int64)
        raw[raw == 255] = IGNORE_INDEX
    elif field == "human_parts":
        with Image.open(root / "JPEGImages" / f"{sample}.jpg") as img:  # header only
            width, height = img.size
        raw = read_human_parts(root / "human_parts" / f"{sample}.mat", (height, width))
    elif field == "saliency":
        sal = _png(root / "sal_distill" / f"{sample}.png").astype(np.float32)
        sal = sal[..., 0] if sal.ndim == 3 else sal
        raw = np.where(sal > 127, 1.0, 0.0).astype(np.float32)
    elif field == "normals":
        encoded = _png(root / "normals_distill" / f"{sample}.png").astype(np.float32)
        n = encoded[..., :3] * 2.0 / 255.0 - 1.0
        n[np.linalg.norm(n, axis=-1) < 0.5] = 0.0  # invalid pixels carry no direction
        raw = np.moveaxis(n, -1, 0).copy()
    else:
        raise KeyError(f"unknown field {field!r}")
    return pascal_sample(torch.from_numpy(raw), FIELD_KINDS[field], key, size)


@register_scenario("pascal_context")
class PascalContext(RealScenario):
    """PASCAL-Context multi-task (MTLoRA/ATRC layout): semseg, parts, saliency, normals."""

    name = "pascal_context"
    description = ("PASCAL-Context multi-task (MTLoRA/ATRC PASCAL_MT layout): semseg, human "
                   "parts, saliency, normals; real data")
    heterogeneity = "single_input"
    folder = "PASCAL_MT"
    backbone = "swin_t"
    data_version = "3"  # 3: MTLoRA's losses, weights and saliency evaluation; 448², streamed
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
                absent = [i for i in ids if not (root / folder / f"{i}{suffix}").is_file()
                          and not (folder.startswith("semseg") and semseg_path(root, i))]
                statuses.append(FileStatus(
                    f"{folder}/ ({split})", not absent,
                    f"{len(ids) - len(absent)}/{len(ids)} files" + (
                        f", e.g. {absent[0]}{suffix} missing" if absent else "")))
        return statuses

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=4, lr=1e-3, eval_batch_size=8)
        # MTLoRA's reference configuration: batch 128 (its config's default); lr 5e-4, its
        # warm-up start 5e-7 and floor 5e-6, all scaled by batch / 512 as its training script
        # does; 20 warm-up epochs, cosine, 300 epochs, AdamW wd 0.05, gradient norm clipped at 5
        return TrainingSetup(epochs=300, batch_size=128, optimizer="adamw", lr=5e-4 * 128 / 512,
                             weight_decay=0.05, scheduler="cosine", warmup_epochs=20,
                             min_lr=5e-6 * 128 / 512, grad_clip=5.0, eval_batch_size=32)

    def _samples(self, root: Path, ids: list[str], size: int, split: str
                 ) -> tuple[LazySamples, dict[str, LazySamples]]:
        """The images and each task's label maps of ``ids``, read from disk per batch."""
        shapes = {"image": (3, size, size), "semseg": (size, size),
                  "human_parts": (size, size), "saliency": (size, size),
                  "normals": (3, size, size)}
        return field_samples(
            lambda i, field, key: read_field(root, ids[i], field, size, key), len(ids), shapes,
            self.name, split, lambda i: ids[i], self.layout,
            errors=(OSError, ValueError, KeyError, IndexError))

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_data(profile, data_root)
        root = self.root(data_root)
        size, n_train, n_val = PROFILE_DATA[profile]
        train_ids = self.ids("train", data_root)[:n_train]
        test_ids = self.ids("val", data_root)[:n_val]
        tr, va = held_out_split(len(train_ids), HELD_OUT, DATA_SEED)
        train = Split(*self._samples(root, [train_ids[i] for i in tr.tolist()], size, "train"))
        val = Split(*self._samples(root, [train_ids[i] for i in va.tolist()], size, "val"))
        test = Split(*self._samples(root, test_ids, size, "test"))
        return ScenarioData(
            name=self.name, heterogeneity="single_input", tasks=TASKS,
            input_shape=(3, size, size), train=train, val=val, test=test,
            training=self.setup(profile), backbone=self.backbone_of(profile),
            backbone_kwargs=self.backbone_kwargs_of(profile), description=self.description)

    #: the PASCAL_MT release: train and val (= test) images, for estimates before a download
    published_sizes = {"train": 4998, "val": 5105}

    def nominal_shape(self, profile: str) -> ScenarioShape:
        """Published image counts (capped as ``PROFILE_DATA``), 5 % of the training images
        held out for validation as :meth:`load` does."""
        self.check_profile(profile)
        size, n_train, n_val = PROFILE_DATA[profile]
        train, test = self.published_sizes["train"], self.published_sizes["val"]
        train, test = min(train, n_train or train), min(test, n_val or test)  # caps: None = all
        return self._nominal_train_test(profile, TASKS, (3, size, size), train, test, HELD_OUT)

"""``medmnist_mola`` / ``medmnist_2d`` — MedMNIST v2, multi-input task heterogeneity.

Dataset: MedMNIST v2 (Yang et al., "MedMNIST v2 — A large-scale lightweight benchmark for 2D and
3D biomedical image classification", Scientific Data 2023; CC BY 4.0), the official ``.npz``
release at 28×28: one file per subset, ``<data_root>/medmnist/<flag>.npz`` with keys
``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``,
``test_labels`` (images ``(N, 28, 28)`` or ``(N, 28, 28, 3)`` uint8, labels ``(N, 1)`` or
``(N, 14)``). URLs, MD5s, label names, channels and task types come from the ``medmnist``
package's ``INFO`` dict; ``python -m bench data download medmnist_mola`` fetches the files.

* ``medmnist_mola`` — the nine subsets of MoLA (ICML 2024) App. A / Table 4, one task each:
  PathMNIST (Colon), OCTMNIST (Retinal), OrganCMNIST, BloodMNIST (Cell), BreastMNIST,
  DermaMNIST (Skin), OrganAMNIST, OrganSMNIST, PneumoniaMNIST (Table 4's "Chest": the chest
  X-ray subset the reference code trains, ``pneumoniamnist`` in MediaBrain-SJTU/MoLA's MedMNIST
  dataset; not the multi-label ChestMNIST).
* ``medmnist_2d`` — every 2D subset of MedMNIST v2 (12 tasks).

Each subset is a task with its own inputs and label space (MoLA's multi-input task
heterogeneity). Inputs are ``(3, S, S)`` floats normalised to [-1, 1] (``(x/255 − 0.5)/0.5``,
as MoLA's reference and MedMNIST's examples), converted from the uint8 arrays batch by batch
(:mod:`bench.data.streaming`, :func:`bench.data.transforms.medmnist_batch`), flipped horizontally at
random in training; grey subsets are repeated over 3 channels as a view (no memory cost).
Multi-class and binary subsets are classification (accuracy, MoLA's metric), RetinaMNIST's
ordinal grades included; ChestMNIST is ``multilabel`` (MedMNIST's ACC at 0.5, then AUC).
The official train/val/test splits are kept.

Profiles: ``paper`` — MoLA App. B and the reference code: images upsampled to 224², ResNet-18 from
ImageNet weights, batches of 128 drawn from all subsets pooled (an epoch is one pass over them; each
task's loss weighted by its share of the batch), SGD lr 0.05, momentum 0.9, weight decay 1e-4,
cosine schedule, 100 epochs; all samples (~0.6 GB of uint8 in memory for the nine subsets).
``smoke`` — the first 64/32/32 train/val/test samples of each subset at 28², a narrow ResNet, 1
epoch (for checking a download and for tests).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api import ScenarioData, Split, TaskSpec, TrainingSetup, register_scenario
from bench.data.real import DataFile, FileStatus, RealScenario, check_file, md5sum, verify_checksums
from bench.data.scenario import DataMissingError, ScenarioShape
from bench.data.streaming import LazySamples
from bench.data.transforms import medmnist_batch

MOLA_SUBSETS = ("pathmnist", "octmnist", "organcmnist", "bloodmnist", "breastmnist",
                "dermamnist", "organamnist", "organsmnist", "pneumoniamnist")
#: MoLA Table 4's column names
MOLA_LABELS = {"pathmnist": "Colon", "octmnist": "Retinal", "organcmnist": "OrganC",
               "bloodmnist": "Cell", "breastmnist": "Breast", "dermamnist": "Skin",
               "organamnist": "OrganA", "organsmnist": "OrganS", "pneumoniamnist": "Chest"}
SPLITS = ("train", "val", "test")
SMOKE_COUNTS = {"train": 64, "val": 32, "test": 32}
#: the paper profile's input size: MoLA's reference upsamples the 28² images for its ResNet-18
PAPER_SIZE = 224


def info() -> dict[str, Any]:
    """``medmnist.INFO`` (the package's metadata: URLs, MD5s, labels, channels, task types);
    the package is an install extra (``pip install -e ".[medmnist]"``)."""
    try:
        from medmnist import INFO
    except ImportError:
        raise DataMissingError('the MedMNIST scenarios need the medmnist package: pip install '
                               '-e ".[medmnist]" (else pip install "mtl-hetero-bench[medmnist]")'
                               ) from None

    return INFO


def subsets_2d() -> tuple[str, ...]:
    return tuple(flag for flag in info() if not flag.endswith("3d"))


def task_spec(flag: str, label: str = "") -> TaskSpec:
    meta = info()[flag]
    n = len(meta["label"])
    if meta["task"].startswith("multi-label"):
        return TaskSpec(flag, "multilabel", n, ("ml_accuracy", "ml_auc"), label=label or flag)
    return TaskSpec(flag, "classification", n, ("accuracy",), label=label or flag)


def read_npz(path: Path, flag: str, limits: dict[str, int] | None = None, size: int = 28
             ) -> dict[str, tuple[LazySamples, torch.Tensor]]:
    """One MedMNIST ``.npz`` as ``{split: (images, labels)}``: the images stay uint8 in memory
    and become ``(N, 3, size, size)`` floats in [-1, 1] batch by batch
    (:func:`bench.data.transforms.medmnist_batch`: flipped in training)."""
    meta = info()[flag]
    multilabel = meta["task"].startswith("multi-label")
    try:
        npz = np.load(path)
    except (OSError, ValueError) as err:
        raise DataMissingError(f"{path} is not a readable .npz file ({err}); re-download it "
                               f"with `python -m bench data download medmnist_2d`") from None
    with npz:
        needed = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        absent = [k for k in needed if k not in npz.files]
        if absent:
            raise DataMissingError(
                f"{path} lacks keys {absent} (has {sorted(npz.files)}); expected the official "
                f"MedMNIST layout with keys {', '.join(needed)}")
        out = {}
        for split in SPLITS:
            n = limits.get(split) if limits else None
            images = npz[f"{split}_images"][:n]
            labels = npz[f"{split}_labels"][:n]
            if images.ndim not in (3, 4) or len(images) != len(labels):
                raise DataMissingError(f"{path}: {split}_images has shape {images.shape} and "
                                       f"{split}_labels {labels.shape}; expected (N, H, W[, 3]) "
                                       "and (N, K) with the same N")
            x = LazySamples.from_array(np.ascontiguousarray(images),
                                       partial(medmnist_batch, size=size), (3, size, size),
                                       f"{flag}/{split}")
            y = torch.from_numpy(np.asarray(labels))
            y = y.float() if multilabel else y.reshape(len(y), -1)[:, 0].long()
            out[split] = (x, y)
        return out


def input_size(profile: str) -> int:
    """The side of a profile's inputs: :data:`PAPER_SIZE` in the paper profile, else the
    release's 28."""
    return PAPER_SIZE if profile == "paper" else 28


def _check_keys(path: Path, status: FileStatus) -> FileStatus:
    needed = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    try:
        with np.load(path) as npz:
            absent = [k for k in needed if k not in npz.files]
    except (OSError, ValueError) as err:
        return FileStatus(status.path, False, f"not a readable .npz file ({err})")
    if absent:
        return FileStatus(status.path, False, f"lacks keys {absent} of the official layout")
    return status


class MedMNIST(RealScenario):
    """MedMNIST v2 subsets, one task each (multi-input task heterogeneity)."""

    heterogeneity = "multi_input"
    folder = "medmnist"
    backbone = "resnet18"
    data_version = "3"  # 3: PneumoniaMNIST as the ninth MoLA task; 224², flips, ImageNet ResNet
    source = "MedMNIST v2 official .npz files (zenodo.org/records/10519652)"
    where = "https://zenodo.org/records/10519652 (or `python -m bench data download NAME`)"
    subsets: tuple[str, ...] = MOLA_SUBSETS
    labels: dict[str, str] = {}

    @property
    def layout(self) -> str:  # type: ignore[override]
        return ("medmnist/<flag>.npz for flag in " + ", ".join(self.subsets)
                + " (keys train_images, train_labels, val_*, test_*)")

    def files(self) -> list[DataFile]:
        meta = info()
        return [DataFile(f"{flag}.npz", meta[flag]["url"], meta[flag]["MD5"])
                for flag in self.subsets]

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        verify = verify_checksums() if verify is None else verify
        statuses = []
        for f in self.files():
            status = check_file(self.root(data_root_), f.path, f.md5, verify)
            if status.ok:  # the keys of the official layout (reads the zip directory only)
                status = _check_keys(self.root(data_root_) / f.path, status)
            statuses.append(status)
        return statuses

    def setup(self, profile: str) -> TrainingSetup:
        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=16, lr=1e-3, eval_batch_size=256)
        # MoLA App. B and its reference: batches of 128 drawn from all subsets pooled, each
        # task's loss weighted by its share of the batch
        return TrainingSetup(epochs=100, batch_size=128, optimizer="sgd", lr=0.05,
                             momentum=0.9, weight_decay=1e-4, scheduler="cosine",
                             eval_batch_size=1024, sampling="pooled", loss_share=True)

    def load(self, profile: str, data_root: Path | None = None) -> ScenarioData:
        self.check_profile(profile)
        root = self.root(data_root)
        verify = verify_checksums()
        limits = SMOKE_COUNTS if profile == "smoke" else None
        size = input_size(profile)
        splits: dict[str, dict[str, dict[str, Any]]] = {
            s: {"inputs": {}, "targets": {}} for s in SPLITS}
        for f in self.files():
            flag = f.path[:-len(".npz")]
            path = root / f.path
            if not path.is_file():
                raise DataMissingError(self.missing_message([FileStatus(f.path, False,
                                                                        "missing")], data_root))
            if verify and f.md5 and md5sum(path) != f.md5:
                raise DataMissingError(
                    f"{path}: MD5 {md5sum(path)} does not match the official release "
                    f"({f.md5}, medmnist.INFO[{flag!r}]['MD5']); re-download it with "
                    f"`python -m bench data download {self.name}`, or pass --no-verify "
                    f"(BENCH_VERIFY_CHECKSUMS=0) to use this copy anyway")
            for split, (x, y) in read_npz(path, flag, limits, size).items():
                splits[split]["inputs"][flag] = x
                splits[split]["targets"][flag] = y
        tasks = tuple(task_spec(flag, self.labels.get(flag, "")) for flag in self.subsets)
        return ScenarioData(
            name=self.name, heterogeneity="multi_input", tasks=tasks, input_shape=(3, size, size),
            train=Split(**splits["train"]), val=Split(**splits["val"]),
            test=Split(**splits["test"]), training=self.setup(profile),
            backbone=self.backbone_of(profile),
            backbone_kwargs=self.backbone_kwargs_of(profile),
            shared_label_space=False, description=self.description,
        )

    def nominal_shape(self, profile: str) -> ScenarioShape:
        """Split sizes from ``medmnist.INFO[flag]['n_samples']`` (smoke: capped at
        ``SMOKE_COUNTS``), at the profile's input size (3 channels, as :meth:`load`)."""
        self.check_profile(profile)
        sizes: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        for flag in self.subsets:
            for split in SPLITS:
                count = info()[flag]["n_samples"][split]
                sizes[split][flag] = (min(count, SMOKE_COUNTS[split]) if profile == "smoke"
                                      else count)
        tasks = tuple(task_spec(flag, self.labels.get(flag, "")) for flag in self.subsets)
        size = input_size(profile)
        return self._nominal(profile, tasks, (3, size, size), sizes)


@register_scenario("medmnist_mola")
class MedMNISTMoLA(MedMNIST):
    """MedMNIST v2, MoLA's nine 2D subsets (Table 4), one task each; real data."""

    name = "medmnist_mola"
    description = "MedMNIST v2, MoLA's nine 2D subsets (Table 4), one task each; real data"
    subsets = MOLA_SUBSETS
    labels = MOLA_LABELS


@register_scenario("medmnist_2d")
class MedMNIST2D(MedMNIST):
    """MedMNIST v2, all twelve 2D subsets, one task each; real data."""

    name = "medmnist_2d"
    description = "MedMNIST v2, all twelve 2D subsets, one task each; real data"

    @property
    def subsets(self) -> tuple[str, ...]:  # type: ignore[override]
        return subsets_2d()

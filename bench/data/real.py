"""Real datasets: where they live, layout and checksum checks, resumable downloads, ``bench data``.

* **Data root.** ``--data-root DIR`` (``run`` and ``data``), else ``$BENCH_DATA_ROOT``, else
  ``./data``. Each dataset has its own folder under it (``medmnist/``, ``VLCS/``, ...; see the
  scenario files in ``datasets/`` and the README's "Real datasets").
* **Checksums.** Files with a published checksum (MedMNIST's MD5s in ``medmnist.INFO``) are
  verified by ``bench data check`` and by the loaders; ``--no-verify`` (or
  ``BENCH_VERIFY_CHECKSUMS=0``) waives it, e.g. for a re-packed copy of a release.
* **Downloads** (``bench data download NAME``, where a public URL exists): into ``<file>.part``,
  resumed with an HTTP ``Range`` request when interrupted (within the call, and by a later call),
  MD5-verified, then renamed into place; a file whose checksum does not match is deleted.
* **Errors** are :class:`~bench.data.scenario.DataMissingError` with one line: what is missing, the
  expected layout and where to get it; the CLI prints it and exits with code 2 before any run.

:class:`RealScenario` is the base class of the real-dataset scenario plugins.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data.arguments import (  # noqa: F401  (data_root & co. are this module's API too)
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    VERIFY_ENV,
    add_data_arguments,
    add_data_parser,
    apply_data_arguments,
    data_root,
    verify_checksums,
)
from bench.data.scenario import DataMissingError, Scenario, ScenarioShape, TaskSpec

if TYPE_CHECKING:
    from bench.data.streaming import Key, LazySamples
    from bench.data.transforms import ClassificationPipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: the narrow ResNet of the ``smoke`` profiles
SMOKE_WIDTHS = (8, 16, 32, 64)
_VERIFIED: dict[tuple[str, int, int], str] = {}


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, cached per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


@dataclass(frozen=True)
class DataFile:
    """One file of a release: its path under the data root, public URL and MD5 (if any)."""

    path: str
    url: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class FileStatus:
    path: str
    ok: bool
    detail: str


class RealScenario(Scenario):
    """Base class of scenarios read from the data root.

    Subclasses set ``folder`` (under the data root), ``layout`` (the expected layout, one line)
    and ``where`` (where to get the data), and implement :meth:`inventory` (what is there and
    what is not) and :meth:`load`; :meth:`files` lists downloadable files.
    """

    needs_data = True
    profiles: tuple[str, ...] = ("smoke", "paper")
    folder: str = ""
    layout: str = ""
    where: str = ""
    #: whether the paper profile's encoder starts from ImageNet weights (as the reference
    #: implementation of the scenario's paper does)
    paper_pretrained: bool = True

    def backbone_of(self, profile: str | None = None) -> str:
        """``smoke``: a narrow ResNet; otherwise the scenario's paper backbone."""
        return "resnet" if profile == "smoke" else self.backbone

    def backbone_kwargs_of(self, profile: str | None = None) -> dict[str, Any]:
        if profile == "smoke":
            return {"widths": SMOKE_WIDTHS}
        return {"pretrained": True} if profile == "paper" and self.paper_pretrained else {}

    def root(self, data_root_: Path | None = None) -> Path:
        return data_root(data_root_) / self.folder

    def files(self) -> list[DataFile]:
        """Files with a public URL / checksum (``bench data download``)."""
        return []

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        """One status per expected file or folder (layout, and checksums when ``verify``)."""
        raise NotImplementedError

    def missing_message(self, problems: Iterable[FileStatus], data_root_: Path | None = None
                        ) -> str:
        bad = list(problems)
        shown = "; ".join(f"{p.path}: {p.detail}" for p in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        how = (f"run `python -m bench data download {self.name}`" if self.files()
               and any(f.url for f in self.files()) else f"get it from {self.where}")
        return (f"data for scenario {self.name!r} missing or malformed under "
                f"{self.root(data_root_)}: {shown}{more}; expected layout {self.layout}; {how} "
                f"(data root: --data-root or ${DATA_ROOT_ENV}; `python -m bench data check "
                f"{self.name}` lists every file)")

    def check_data(self, profile: str, data_root_: Path | None = None) -> None:
        self.check_profile(profile)
        problems = [s for s in self.inventory(data_root_, verify_checksums()) if not s.ok]
        if problems:
            raise DataMissingError(self.missing_message(problems, data_root_))

    def shape(self, profile: str, data_root_: Path | None = None) -> ScenarioShape | None:
        """Read off the data when they are present, else :meth:`nominal_shape`."""
        try:
            self.check_data(profile, data_root_)
        except DataMissingError:
            return self.nominal_shape(profile)
        return super().shape(profile, data_root_)

    def nominal_shape(self, profile: str) -> ScenarioShape | None:
        """The shape of ``profile`` from the dataset's published sizes, for cost estimates
        before a download; None when they are unknown."""
        return None

    def _nominal_train_test(self, profile: str, tasks: tuple[TaskSpec, ...],
                            input_shape: tuple[int, int, int], train: int, test: int,
                            share: float) -> ScenarioShape:
        """The nominal shape of a single-input release with ``train`` and ``test`` samples, a
        ``share`` of train held out for model selection (:func:`held_out_split`)."""
        _, val = held_out_split(train, share, 0)
        counts = {"train": train - len(val), "val": len(val), "test": test}
        sizes = {split: {t.name: n for t in tasks} for split, n in counts.items()}
        return self._nominal(profile, tasks, input_shape, sizes)

    def _nominal(self, profile: str, tasks: tuple[TaskSpec, ...],
                 input_shape: tuple[int, int, int], sizes: dict[str, dict[str, int]],
                 shared_label_space: bool = False) -> ScenarioShape:
        """A nominal shape on the encoder the loaders use (:meth:`backbone_of`)."""
        return ScenarioShape(
            self.name, self.heterogeneity, tasks, input_shape, self.backbone_of(profile),
            self.backbone_kwargs_of(profile), shared_label_space, sizes, nominal=True)


# ------------------------------------------------------------------ layout helpers
def check_file(root: Path, rel: str, md5: str | None, verify: bool) -> FileStatus:
    path = root / rel
    if not path.is_file():
        return FileStatus(rel, False, "missing")
    if md5 and verify:
        got = md5sum(path)
        if got != md5:
            return FileStatus(rel, False, f"MD5 {got} does not match the official {md5} "
                                          "(re-download it, or pass --no-verify to use it anyway)")
        return FileStatus(rel, True, "MD5 ok")
    return FileStatus(rel, True, "present" + (" (checksum not verified)" if md5 else ""))


def list_images(folder: Path) -> list[Path]:
    """Image files directly under ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_dir(parent: Path, *names: str) -> Path | None:
    """The subfolder of ``parent`` whose name matches one of ``names`` case-insensitively
    (spaces, '-' and '_' alike)."""
    if not parent.is_dir():
        return None

    def norm(s: str) -> str:
        return s.lower().replace(" ", "").replace("_", "").replace("-", "")

    wanted = {norm(n) for n in names}
    for child in sorted(parent.iterdir()):
        if child.is_dir() and norm(child.name) in wanted:
            return child
    return None


def image_files(paths: list[Path], pipeline: ClassificationPipeline, name: str) -> LazySamples:
    """Image files read on demand through ``pipeline`` (:mod:`bench.data.transforms`): its
    training-time augmentation when the engine passes a sample's key, else its test-time
    transform; ``(3, size, size)`` normalised floats."""
    from PIL import Image

    from bench.data.streaming import LazySamples

    def read(i: int, key: Key | None) -> Any:
        try:
            with Image.open(paths[i]) as image:
                return pipeline(image, key)
        except (OSError, ValueError) as err:
            raise DataMissingError(f"cannot read image {paths[i]} ({err}); replace the file "
                                   "or remove it from the dataset folder") from None

    return LazySamples.per_sample(read, len(paths), (3, pipeline.size, pipeline.size), name)


def field_samples(read: Callable[[int, str, Key | None], Any], n: int,
                  shapes: dict[str, tuple[int, ...]], scenario: str, split: str,
                  sample_name: Callable[[int], str], layout: str,
                  errors: tuple[type[Exception], ...] = (OSError, ValueError)
                  ) -> tuple[LazySamples, dict[str, LazySamples]]:
    """The ``n`` samples of a dense dataset whose image and label maps are separate files, one
    :class:`~bench.data.streaming.LazySamples` per field of ``shapes``: ``read(i, field, key)``
    reads one field of sample ``i``; a read that raises one of ``errors`` becomes a one-line
    :class:`DataMissingError` naming the field and ``sample_name(i)``. Returns the ``image``
    field and the others (the targets)."""
    from bench.data.streaming import LazySamples

    def reader(field: str) -> Callable[[int, Key | None], Any]:
        def read_one(i: int, key: Key | None) -> Any:
            try:
                return read(i, field, key)
            except errors as err:
                raise DataMissingError(f"{scenario}: cannot read {field} of sample "
                                       f"{sample_name(i)} ({err}); expected layout {layout}"
                                       ) from None
        return read_one

    lazy = {field: LazySamples.per_sample(reader(field), n, shape,
                                          f"{scenario}/{split}/{field}")
            for field, shape in shapes.items()}
    return lazy.pop("image"), lazy


def split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[Any, Any, Any]:
    """A seeded permutation of ``range(n)`` cut into train / val / test
    (``fractions`` = val and test shares)."""
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def held_out_split(n: int, share: float, seed: int) -> tuple[Any, Any]:
    """A seeded split of a release's ``n`` training samples into train and a held-out ``share``
    (at least one sample) for model selection, for releases with a train and a test folder."""
    hold = max(1, int(round(share * n)))
    train, val, _ = split_indices(n, (hold / n, 0.0), seed)
    return train, val


def split_sizes(n: int, fractions: tuple[float, float]) -> dict[str, int]:
    """Train / val / test sizes of :func:`split_indices` (the same rounding)."""
    train, val, test = split_indices(n, fractions, 0)
    return {"train": len(train), "val": len(val), "test": len(test)}


# ------------------------------------------------------------------ download
class DownloadError(DataMissingError):
    """A download that failed or whose checksum did not match (nothing is left in place)."""


def download(url: str, dest: Path, md5: str | None = None, *, retries: int = 3,
             chunk: int = 1 << 16, timeout: float = 60.0, progress: bool = True,
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    An interrupted transfer (connection dropped, short body) is resumed from the bytes already
    in ``dest.part`` up to ``retries`` times; a later call resumes it too. When ``md5`` is given
    and does not match, the partial file is deleted and :class:`DownloadError` raised.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and md5 and md5sum(dest) == md5:
        return dest
    part = dest.with_name(dest.name + ".part")
    bar = None
    attempt = 0
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            request = urllib.request.Request(url, headers={"User-Agent": "mtl-hetero-bench"})
            if have:
                request.add_header("Range", f"bytes={have}-")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    status = getattr(resp, "status", 200)
                    if have and status != 206:  # the server ignored Range: start over
                        have = 0
                    length = resp.headers.get("Content-Length")
                    total = have + int(length) if length is not None else None
                    if bar is None:
                        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                   unit_divisor=1024, desc=dest.name, disable=not progress,
                                   file=sys.stderr, dynamic_ncols=True)
                    else:
                        bar.reset(total=total)
                        bar.update(have)
                    got = have
                    with open(part, "ab" if have else "wb") as fh:
                        while True:
                            block = resp.read(chunk)
                            if not block:
                                break
                            fh.write(block)
                            got += len(block)
                            bar.update(len(block))
                    if total is not None and got < total:
                        raise ConnectionError(f"connection closed after {got} of {total} bytes")
            except urllib.error.HTTPError as err:
                if err.code == 416 and have:  # nothing left to fetch: the part is complete
                    pass
                else:
                    raise DownloadError(f"download of {url} failed: HTTP {err.code} "
                                        f"{err.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"download of {url} interrupted ({err}); {part} keeps the "
                        f"{part.stat().st_size if part.exists() else 0} bytes received: run the "
                        "same command again to resume") from None
                sleep(min(2.0 ** attempt, 30.0))
                continue
            break
    finally:
        if bar is not None:
            bar.close()
    if md5:
        got_md5 = md5sum(part)
        if got_md5 != md5:
            part.unlink(missing_ok=True)
            raise DownloadError(f"checksum mismatch for {url}: MD5 {got_md5}, expected {md5}; "
                                "the file was deleted")
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------------ CLI
def _real_scenario(name: str) -> RealScenario:
    from bench.registry import scenarios

    scen = scenarios.get(name)()
    if not isinstance(scen, RealScenario):
        raise DataMissingError(f"scenario {name!r} needs no data files (it is generated in "
                               "memory); real datasets: " + ", ".join(real_scenario_names()))
    return scen


def real_scenario_names() -> list[str]:
    from bench.registry import scenarios

    return [n for n in scenarios.list() if getattr(scenarios.get(n), "needs_data", False)]


def cmd_data(args: argparse.Namespace) -> int:
    apply_data_arguments(args)
    if args.action == "list":
        for name in real_scenario_names():
            scen = _real_scenario(name)
            print(f"{name:<16} {scen.root()}  layout: {scen.layout}")
        return 0
    if not args.name:
        raise DataMissingError(f"`data {args.action}` needs a scenario name; one of "
                               + ", ".join(real_scenario_names()))
    scen = _real_scenario(args.name)
    if args.action == "check":
        verify = verify_checksums()
        statuses = scen.inventory(None, verify)
        print(f"{scen.name}: {scen.root()} (checksums {'verified' if verify else 'not verified'})")
        for st in statuses:
            print(f"  {'ok' if st.ok else 'MISSING' if st.detail == 'missing' else 'BAD':8} "
                  f"{st.path}: {st.detail}")
        bad = [s for s in statuses if not s.ok]
        if bad:
            print(f"error: {scen.missing_message(bad)}", file=sys.stderr)
            return 2
        print(f"{scen.name}: all {len(statuses)} entries present")
        return 0
    # download
    files = [f for f in scen.files() if f.url]
    if not files:
        raise DataMissingError(f"no public download URL for {scen.name!r}: get it from "
                               f"{scen.where} and place it as {scen.root()}/ with layout "
                               f"{scen.layout}")
    root = data_root()
    if root.exists() and not root.is_dir():
        raise DataMissingError(f"the data root {root} is a file, not a folder; pass "
                               f"--data-root DIR (a folder) or set ${DATA_ROOT_ENV} to one")
    try:
        scen.root().mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataMissingError(f"cannot create {scen.root()} ({err.strerror or err}); pass a "
                               "writable folder with --data-root DIR") from None
    verify = verify_checksums()
    for f in files:
        dest = scen.root() / f.path
        if dest.is_file() and (not f.md5 or not verify or md5sum(dest) == f.md5):
            print(f"ok       {f.path} (already there)", file=sys.stderr)
            continue
        assert f.url is not None
        download(f.url, dest, f.md5 if verify else None)
        print(f"fetched  {f.path}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ DomainBed folders
class DomainBedScenario(RealScenario):
    """Base of the domain-heterogeneity datasets in DomainBed's layout
    (``<folder>/<domain>/<class>/<image>``; Gulrajani & Lopez-Paz, ICLR 2021): each domain is a
    task, all share one label space (the sorted class folders, identical in every domain).

    Splits: each domain's images are split by a seeded permutation into 80 / 10 / 10 % train /
    val / test (MoLA does not publish its split; DomainBed holds out 20 %). Images are read
    from disk batch by batch (:mod:`bench.data.streaming`; only the file list is held in memory)
    through MoLA's reference pipeline (:data:`bench.data.transforms.DOMAINBED_CLIP`: random resized
    crop 224, flip, colour jitter, grey p = 0.1 in training; short-side resize and centre crop
    at test; CLIP mean/std); ``smoke`` uses it at 32².
    """

    heterogeneity = "domain"
    backbone = "resnet18"
    data_version = "2"  # 2: MoLA's reference pipeline (augmentation, CLIP mean/std), streamed
    #: (task name, table label, folder name and aliases)
    domains: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    num_classes: int = 0
    data_seed: int = 0
    #: the paper profile's epochs (MoLA's reference code: VLCS 10, Office-Home 60)
    paper_epochs: int = 0
    #: profile -> max images per class and domain (None = all)
    profile_caps: dict[str, int | None] = {"smoke": 6, "paper": None}

    def domain_dirs(self, data_root_: Path | None = None) -> dict[str, Path | None]:
        root = self.root(data_root_)
        return {task: find_dir(root, *names) for task, _, names in self.domains}

    def classes(self, folder: Path) -> list[str]:
        return sorted(d.name for d in folder.iterdir() if d.is_dir())

    def inventory(self, data_root_: Path | None = None, verify: bool | None = None
                  ) -> list[FileStatus]:
        statuses = []
        reference: list[str] | None = None
        for (_, _, names), folder in zip(self.domains, self.domain_dirs(data_root_).values()):
            if folder is None:
                statuses.append(FileStatus(names[0], False, "missing"))
                continue
            classes = self.classes(folder)
            empty = [c for c in classes if not list_images(folder / c)]
            if len(classes) != self.num_classes or empty:
                statuses.append(FileStatus(
                    folder.name, False, f"expected {self.num_classes} class folders with images, "
                                        f"found {len(classes)}" + (f" ({len(empty)} empty)"
                                                                   if empty else "")))
                continue
            if reference is not None and classes != reference:
                statuses.append(FileStatus(folder.name, False, "its class folders differ from "
                                                               "the first domain's"))
                continue
            reference = classes
            count = sum(len(list_images(folder / c)) for c in classes)
            statuses.append(FileStatus(folder.name, True, f"{len(classes)} classes, {count} "
                                                          "images"))
        return statuses

    def domain_tasks(self) -> tuple[TaskSpec, ...]:
        """One classification task per domain, all over the shared classes."""
        return tuple(TaskSpec(task, "classification", self.num_classes, ("accuracy",),
                              label=label) for task, label, _ in self.domains)

    def pipeline(self, profile: str) -> ClassificationPipeline:
        """MoLA's reference input pipeline; at 32² in the smoke profile."""
        from bench.data.transforms import DOMAINBED_CLIP

        return DOMAINBED_CLIP if profile == "paper" else replace(DOMAINBED_CLIP, size=32)

    def setup(self, profile: str) -> Any:
        from bench.data.scenario import TrainingSetup

        self.check_profile(profile)
        if profile == "smoke":
            return TrainingSetup(epochs=1, batch_size=16, lr=1e-3, eval_batch_size=256)
        # MoLA App. B: AdamW, lr 1e-4, batch 128; the reference code: batches drawn from all
        # domains pooled (each domain's mean loss summed), weight decay 1e-4, cosine over the
        # epochs, which it sets per dataset (paper_epochs)
        return TrainingSetup(epochs=self.paper_epochs, batch_size=128, optimizer="adamw",
                             lr=1e-4, weight_decay=1e-4, scheduler="cosine",
                             eval_batch_size=256, sampling="pooled")

    def load(self, profile: str, data_root: Path | None = None) -> Any:
        import torch

        from bench.data.scenario import ScenarioData, Split

        self.check_data(profile, data_root)
        cap = self.profile_caps[profile]
        pipeline = self.pipeline(profile)
        size = pipeline.size
        parts: dict[str, dict[str, dict[str, Any]]] = {
            s: {"inputs": {}, "targets": {}} for s in ("train", "val", "test")}
        for d_idx, ((task, _, _), folder) in enumerate(
                zip(self.domains, self.domain_dirs(data_root).values())):
            assert folder is not None
            items: list[tuple[Path, int]] = []
            for c_idx, cls in enumerate(self.classes(folder)):
                items += [(p, c_idx) for p in list_images(folder / cls)[:cap]]
            tr, va, te = split_indices(len(items), self.holdout, self.data_seed + d_idx)
            for split, idx in (("train", tr), ("val", va), ("test", te)):
                chosen = [items[i] for i in idx.tolist()]
                if not chosen:
                    raise DataMissingError(f"{self.name}: domain {folder} has too few images "
                                           f"for a {split} split")
                parts[split]["inputs"][task] = image_files([p for p, _ in chosen], pipeline,
                                                           f"{self.name}/{task}/{split}")
                parts[split]["targets"][task] = torch.tensor([c for _, c in chosen])
        return ScenarioData(
            name=self.name, heterogeneity="domain", tasks=self.domain_tasks(),
            input_shape=(3, size, size),
            train=Split(**parts["train"]), val=Split(**parts["val"]),
            test=Split(**parts["test"]), training=self.setup(profile),
            backbone=self.backbone_of(profile),
            backbone_kwargs=self.backbone_kwargs_of(profile),
            shared_label_space=True, description=self.description)

    #: images per domain (task name -> count) as published, for the nominal shape without data
    published_sizes: dict[str, int] = {}
    #: val and test shares of each domain (:meth:`load` and :meth:`nominal_shape`)
    holdout: tuple[float, float] = (0.1, 0.1)

    def nominal_shape(self, profile: str) -> ScenarioShape | None:
        """Published images per domain (smoke: the per-class cap times the classes), split as
        :meth:`load` splits them; None without published sizes."""
        self.check_profile(profile)
        if not self.published_sizes:
            return None
        size, cap = self.pipeline(profile).size, self.profile_caps[profile]
        sizes: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
        for task, _, _ in self.domains:
            count = self.published_sizes[task]
            if cap is not None:
                count = min(count, cap * self.num_classes)
            for split, n in split_sizes(count, self.holdout).items():
                sizes[split][task] = n
        return self._nominal(profile, self.domain_tasks(), (3, size, size), sizes,
                             shared_label_space=True)

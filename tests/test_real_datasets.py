"""Real datasets (issue 5): loaders on fixtures written in each release's exact on-disk format,
a real PneumoniaMNIST file, ``bench data check|download`` against a local HTTP server, the new
task kinds' losses and metrics, and the papers' reported numbers.

No network: fixtures are generated in ``tmp_path``; downloads go to a server on 127.0.0.1.
The real file is read from ``../shared/data`` (never copied into the repository) and the test
skips with its reason when it is absent.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data import real as bdata
from bench.data.metrics import METRICS, binary_auc, task_loss
from bench.data.scenario import DataMissingError
from bench.registry import scenarios

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PNEUMONIA = SHARED / "medmnist" / "pneumoniamnist.npz"
REAL = ("medmnist_mola", "medmnist_2d", "radimagenet", "vlcs", "officehome", "nyuv2",
        "pascal_context")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no data root and checksums on; the CLI's exports are undone."""
    monkeypatch.setenv(bdata.DATA_ROOT_ENV, "/nonexistent-bench-data")
    monkeypatch.setenv(bdata.VERIFY_ENV, "1")
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    torch.set_num_threads(1)


# ------------------------------------------------------------------ fixture writers
def write_medmnist(root: Path, flags: list[str], n: tuple[int, int, int] = (24, 8, 8)) -> None:
    from medmnist import INFO

    folder = root / "medmnist"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for flag in flags:
        meta = INFO[flag]
        arrays = {}
        for split, count in zip(("train", "val", "test"), n):
            shape = (count, 28, 28) + ((3,) if meta["n_channels"] == 3 else ())
            arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
            k = len(meta["label"])
            if meta["task"].startswith("multi-label"):
                arrays[f"{split}_labels"] = rng.integers(0, 2, (count, k), dtype=np.uint8)
            else:
                arrays[f"{split}_labels"] = rng.integers(0, k, (count, 1), dtype=np.uint8)
        np.savez_compressed(folder / f"{flag}.npz", **arrays)


def _save_image(path: Path, rng: np.random.Generator, size: tuple[int, int], mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def write_radimagenet(root: Path) -> None:
    rng = np.random.default_rng(1)
    base = root / "radimagenet" / "radiology_ai"
    regions = {"CT": ("lung", "abd"), "US": ("thyroid", "abd"),
               "MR": ("knee", "shoulder", "spine", "af", "abd", "brain", "hip")}
    for modality, anatomies in regions.items():
        for anatomy in anatomies:
            for label in ("normal", f"{anatomy}-lesion"):
                for k in range(10):
                    _save_image(base / modality / anatomy / label / f"{modality}-{k}.png", rng,
                                (20, 20), "L")


def write_domainbed(root: Path, folder: str, domains: list[str], classes: list[str],
                    per_class: int) -> None:
    rng = np.random.default_rng(2)
    for domain in domains:
        for cls in classes:
            for k in range(per_class):
                _save_image(root / folder / domain / cls / f"{k:05d}.jpg", rng, (12, 14), "RGB")


VLCS_CLASSES = ["bird", "car", "chair", "dog", "person"]


def write_vlcs(root: Path) -> None:
    write_domainbed(root, "VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"], VLCS_CLASSES, 4)


def write_officehome(root: Path) -> None:
    write_domainbed(root, "office_home", ["Art", "Clipart", "Product", "Real World"],
                    [f"class_{i:02d}" for i in range(65)], 2)


def write_nyuv2(root: Path, n_train: int = 6, n_val: int = 3) -> None:
    rng = np.random.default_rng(3)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            d = root / "nyuv2" / split
            for sub in ("image", "label", "depth", "normal"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            np.save(d / "image" / f"{i}.npy", rng.random((288, 384, 3), dtype=np.float32))
            label = rng.integers(-1, 13, (288, 384)).astype(np.float32)
            np.save(d / "label" / f"{i}.npy", label)
            depth = rng.random((288, 384, 1), dtype=np.float32) * 5
            depth[:10] = 0.0  # missing depth
            np.save(d / "depth" / f"{i}.npy", depth)
            normal = rng.normal(size=(288, 384, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[:5] = 0.0  # missing normals
            np.save(d / "normal" / f"{i}.npy", normal)


def _parts_mat(path: Path, shape: tuple[int, int], person: bool, parts_given: bool = True
               ) -> None:
    """A PASCAL-Part annotation: ``anno`` = (imname, objects); object = (class, class_ind,
    mask, parts); part = (part_name, mask)."""
    from scipy.io import savemat

    h, w = shape
    part_dtype = [("part_name", "O"), ("mask", "O")]
    head = np.zeros(shape, np.uint8)
    head[: h // 3, : w // 2] = 1
    torso = np.zeros(shape, np.uint8)
    torso[h // 3:, : w // 2] = 1
    parts = np.array([[("head", head), ("torso", torso)]], dtype=part_dtype)
    obj_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    cls = 15 if person else 7
    objects = np.array([[("person" if person else "car", np.array([[cls]]),
                          np.ones(shape, np.uint8),
                          parts if person and parts_given else np.zeros((0, 0)))]],
                       dtype=obj_dtype)
    anno = np.array([[(path.stem, objects)]], dtype=[("imname", "O"), ("objects", "O")])
    savemat(str(path), {"anno": anno})


def write_pascal(root: Path, n_train: int = 6, n_val: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    base = root / "PASCAL_MT"
    ids = {"train": [f"2008_{i:06d}" for i in range(n_train)],
           "val": [f"2009_{i:06d}" for i in range(n_val)]}
    (base / "ImageSets" / "Context").mkdir(parents=True)
    for split, names in ids.items():
        (base / "ImageSets" / "Context" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, i in enumerate(names):
            shape = (30, 40)
            _save_image(base / "JPEGImages" / f"{i}.jpg", rng, shape, "RGB")
            seg = rng.integers(0, 21, shape).astype(np.uint8)
            seg[0] = 255
            (base / "semseg" / "pascal-context").mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(base / "semseg" / "pascal-context" / f"{i}.png")
            (base / "human_parts").mkdir(exist_ok=True)
            _parts_mat(base / "human_parts" / f"{i}.mat", shape, person=k % 2 == 0)
            sal = (rng.random(shape) > 0.5).astype(np.uint8) * 255
            (base / "sal_distill").mkdir(exist_ok=True)
            Image.fromarray(sal).save(base / "sal_distill" / f"{i}.png")
            (base / "normals_distill").mkdir(exist_ok=True)
            _save_image(base / "normals_distill" / f"{i}.png", rng, shape, "RGB")


WRITERS = {"radimagenet": write_radimagenet, "vlcs": write_vlcs, "officehome": write_officehome,
           "nyuv2": write_nyuv2, "pascal_context": write_pascal,
           "medmnist_mola": lambda root: write_medmnist(root, list(scenarios.get(
               "medmnist_mola").subsets))}


# ------------------------------------------------------------------ listing
def test_list_scenarios_shows_the_real_datasets_with_their_heterogeneity(capsys) -> None:
    assert main(["list", "scenarios"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    expected = {"medmnist_mola": "multi-input", "medmnist_2d": "multi-input",
                "radimagenet": "multi-input", "vlcs": "[domain", "officehome": "[domain",
                "nyuv2": "single-input", "pascal_context": "single-input"}
    for name, kind in expected.items():
        assert name in lines, out
        assert kind in lines[name], lines[name]
        assert "paper" in scenarios.get(name).profiles


# ------------------------------------------------------------------ the real PneumoniaMNIST file
def _pneumonia_scenario() -> Any:
    """A MedMNIST scenario of the one subset PneumoniaMNIST (not registered)."""
    base = sys.modules[scenarios.get("medmnist_2d").__module__].MedMNIST
    return type("Pneumonia", (base,), {"name": "pneumonia_test",
                                       "subsets": ("pneumoniamnist",)})()


@pytest.mark.skipif(not PNEUMONIA.is_file(),
                    reason=f"real sample {PNEUMONIA} absent (only on the project's machine)")
def test_real_pneumoniamnist_loads_when_checksums_are_waived(monkeypatch) -> None:
    monkeypatch.setenv(bdata.VERIFY_ENV, "0")
    data = _pneumonia_scenario().load("paper", data_root=SHARED)
    assert data.train.size("pneumoniamnist") == 3882  # this copy's train split (official 4708)
    assert data.val.size("pneumoniamnist") == 524
    assert data.test.size("pneumoniamnist") == 624
    x = data.train.inputs["pneumoniamnist"][:64]  # converted from uint8 when taken
    assert x.shape == (64, 3, 224, 224)  # upsampled as MoLA's reference feeds its ResNet-18
    assert -1.0 <= float(x.min()) < float(x.max()) <= 1.0
    assert set(data.train.targets["pneumoniamnist"].unique().tolist()) == {0, 1}


@pytest.mark.skipif(not PNEUMONIA.is_file(),
                    reason=f"real sample {PNEUMONIA} absent (only on the project's machine)")
def test_real_pneumoniamnist_trains_in_the_smoke_profile(monkeypatch) -> None:
    """Real chest X-rays (MoLA's ninth MedMNIST task) through the engine: one smoke epoch of
    HPS and of MoLA-Grad on the file's first samples, finite losses and accuracies."""
    from bench.models.method import resolve_method
    from bench.run.engine import train

    monkeypatch.setenv(bdata.VERIFY_ENV, "0")
    scen = _pneumonia_scenario()
    data = scen.load("smoke", data_root=SHARED)
    assert data.train.size("pneumoniamnist") == 64 and data.input_shape == (3, 28, 28)
    for method in ("hps", "mola_grad"):
        result = train(resolve_method(method), scen, data, data.training, seed=0)
        accuracy = result.test_metrics["pneumoniamnist"]["accuracy"]
        assert 0.0 <= accuracy <= 100.0
        assert all(math.isfinite(v) for h in result.history for v in h["val_task_losses"])


@pytest.mark.skipif(not PNEUMONIA.is_file(),
                    reason=f"real sample {PNEUMONIA} absent (only on the project's machine)")
def test_real_pneumoniamnist_is_rejected_when_checksums_are_enforced() -> None:
    scen = _pneumonia_scenario()
    with pytest.raises(DataMissingError) as err:
        scen.load("paper", data_root=SHARED)
    msg = str(err.value)
    assert "\n" not in msg
    assert "f5b994ec7c2fe8bc81ae15cbab7c3df8" in msg  # what the file is
    assert "28209eda62fecd6e6a2d98b1501bb15f" in msg  # what the official release is
    assert "--no-verify" in msg
    with pytest.raises(DataMissingError):
        scen.check_data("paper", SHARED)


# ------------------------------------------------------------------ loaders on fixtures
def test_every_2d_medmnist_subset_loads(tmp_path: Path, monkeypatch) -> None:
    from medmnist import INFO

    flags = [f for f in INFO if not f.endswith("3d")]
    assert len(flags) == 12
    write_medmnist(tmp_path, flags)
    monkeypatch.setenv(bdata.VERIFY_ENV, "0")
    data = scenarios.get("medmnist_2d")().load("smoke", tmp_path)
    assert data.task_names == flags
    for task in data.tasks:
        x = data.train.inputs[task.name]
        assert x.shape == (24, 3, 28, 28)
        y = data.test.targets[task.name]
        if task.name == "chestmnist":
            assert task.kind == "multilabel" and task.num_outputs == 14
            assert y.shape == (8, 14) and y.dtype == torch.float32
        else:
            assert task.kind == "classification" and y.dtype == torch.long
            assert task.num_outputs == len(INFO[task.name]["label"])
    # a batch of a grey subset shares one channel's storage (a view), colour ones do not
    assert data.train.inputs["octmnist"][:4].stride(1) == 0
    assert data.train.inputs["pathmnist"][:4].stride(1) != 0


@pytest.mark.parametrize("name,tasks,input_shape", [
    ("radimagenet", 11, (3, 32, 32)),
    ("vlcs", 4, (3, 32, 32)),
    ("officehome", 4, (3, 32, 32)),
    ("nyuv2", 3, (3, 72, 96)),
    ("pascal_context", 4, (3, 32, 32)),
])
def test_fixture_loads(tmp_path: Path, name: str, tasks: int, input_shape: tuple) -> None:
    WRITERS[name](tmp_path)
    scen = scenarios.get(name)()
    assert all(s.ok for s in scen.inventory(tmp_path, True)), scen.inventory(tmp_path, True)
    data = scen.load("smoke", tmp_path)
    assert len(data.tasks) == tasks and data.input_shape == input_shape
    assert data.heterogeneity == scen.heterogeneity
    for split in (data.train, data.val, data.test):
        for t in data.tasks:
            assert split.size(t.name) > 0
            assert tuple(split.inputs[t.name].shape[1:] if isinstance(split.inputs, dict)
                         else split.inputs.shape[1:]) == input_shape
    if name == "officehome":
        assert {t.num_outputs for t in data.tasks} == {65} and data.shared_label_space
    if name == "radimagenet":
        assert [t.label for t in data.tasks][:4] == ["Lung", "Abdomen (CT)", "Thyroid",
                                                     "Abdomen (US)"]
    if name == "nyuv2":
        seg = data.train.targets["segmentation"][:]
        assert seg.dtype == torch.long and int(seg.min()) == -1 and int(seg.max()) <= 12
        assert data.train.targets["normal"].shape[1:] == (3, 72, 96)
        assert data.test.size("segmentation") == 3  # the val folder is the test split
    if name == "pascal_context":
        parts = torch.cat([data.train.targets["human_parts"][:],
                           data.val.targets["human_parts"][:]])
        values = set(parts.unique().tolist())
        assert {-1, 0, 1, 2} <= values  # ignored (no person), background, head, torso
        assert set(data.test.targets["saliency"][:].unique().tolist()) <= {0.0, 1.0}


def test_pascal_context_reads_as_the_reference_loaders(tmp_path: Path) -> None:
    """VOC12 semantic maps first, ImageNet-normalised bicubic images, human parts ignored when
    no person carries part annotations."""
    from PIL import Image

    write_pascal(tmp_path)
    module = sys.modules[scenarios.get("pascal_context").__module__]
    root = tmp_path / "PASCAL_MT"
    sample = "2008_000000"
    (root / "semseg" / "VOC12").mkdir(parents=True)
    Image.fromarray(np.full((30, 40), 7, np.uint8)).save(root / "semseg" / "VOC12" /
                                                         f"{sample}.png")
    assert set(module.read_field(root, sample, "semseg", 16).unique().tolist()) == {7}
    other = module.read_field(root, "2008_000001", "semseg", 16)  # no VOC12 file: Context's
    assert len(other.unique()) > 2
    Image.fromarray(np.full((30, 40, 3), 255, np.uint8)).save(root / "JPEGImages" /
                                                              f"{sample}.jpg")
    image = module.read_field(root, sample, "image", 16)
    want = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(image[:, 5, 5], want, atol=0.03)  # JPEG rounding
    _parts_mat(root / "human_parts" / f"{sample}.mat", (30, 40), person=True,
               parts_given=False)
    assert set(module.read_human_parts(root / "human_parts" / f"{sample}.mat", (30, 40))
               .reshape(-1).tolist()) == {-1}
    annotated = module.read_human_parts(root / "human_parts" / "2008_000002.mat", (30, 40))
    assert set(annotated.reshape(-1).tolist()) == {0, 1, 2}


# ------------------------------------------------------------------ the whole pipeline
@pytest.mark.parametrize("name", ["vlcs", "medmnist_mola", "nyuv2"])
def test_fixture_through_training_record_and_leaderboard(tmp_path: Path, name: str,
                                                         capsys) -> None:
    """One dataset of each heterogeneity type: load -> 1-epoch training -> record -> table."""
    root = tmp_path / "data"
    WRITERS[name](root)
    results, board = tmp_path / "results", tmp_path / "leaderboard.md"
    code = main(["run", "--method", "hps", "--scenario", name, "--seeds", "0", "--profile",
                 "smoke", "--jobs", "1", "--results-dir", str(results), "--leaderboard",
                 str(board), "--data-root", str(root), "--no-verify"])
    assert code == 0, capsys.readouterr().err
    (record_path,) = list(results.rglob("seed0-*.json"))
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["profile"] == "smoke"
    assert record["epochs"] == 1
    scen = scenarios.get(name)()
    assert set(record["metrics"]["test"]) == {t.name for t in scen.load("smoke", root).tasks}
    for metrics in record["metrics"]["test"].values():
        assert all(math.isfinite(v) for v in metrics.values())
    assert name in board.read_text()


def test_missing_data_is_one_line_exit_2_and_nothing_written(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    code = main(["run", "--method", "hps", "--scenario", "vlcs", "--seeds", "0", "--profile",
                 "smoke", "--results-dir", str(results), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Caltech101" in lines[0] and "expected layout" in lines[0]
    assert "DomainBed" in lines[0]  # where to get it
    assert "Traceback" not in err
    assert not results.exists()


def test_malformed_npz_is_refused_before_training(tmp_path: Path, capsys) -> None:
    write_medmnist(tmp_path, list(scenarios.get("medmnist_mola").subsets))
    bad = tmp_path / "medmnist" / "bloodmnist.npz"
    np.savez(bad, train_images=np.zeros((2, 28, 28), np.uint8))
    results = tmp_path / "results"
    code = main(["run", "--method", "hps", "--scenario", "medmnist_mola", "--seeds", "0",
                 "--profile", "smoke", "--results-dir", str(results), "--data-root",
                 str(tmp_path), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "bloodmnist.npz" in err and "lacks keys" in err
    assert not results.exists()


def test_run_all_skips_real_datasets_without_data(tmp_path: Path, capsys) -> None:
    from bench.run.plan import expand

    plan = expand(None, None, [0], "smoke", run_all=True)
    assert any(s == "vlcs" and reason.startswith("data missing") for _, s, reason in plan.skipped)
    assert not {r.scenario for r in plan.runs} & set(REAL)
    # a dry run plans them anyway, to show what they would cost
    assert main(["run", "--method", "hps", "--profile", "smoke", "--seeds", "0", "--dry-run",
                 "--jobs", "1", "--results-dir", str(tmp_path / "results")]) == 0
    captured = capsys.readouterr()
    assert "data missing for vlcs" in captured.err
    assert "todo  smoke    vlcs" in captured.out


def test_data_check_lists_what_is_missing_and_checksums(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "medmnist_mola", "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("MISSING") == 9
    assert "pathmnist.npz" in captured.out
    assert len(captured.err.strip().splitlines()) == 1
    write_medmnist(tmp_path, list(scenarios.get("medmnist_mola").subsets))
    assert main(["data", "check", "medmnist_mola", "--data-root", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert out.count("BAD") == 9 and "does not match the official" in out
    assert main(["data", "check", "medmnist_mola", "--data-root", str(tmp_path),
                 "--no-verify"]) == 0
    assert "all 9 entries present" in capsys.readouterr().out


def test_download_without_public_url_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["data", "download", "radimagenet", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "radimagenet.com" in err[0]


# ------------------------------------------------------------------ downloads
class _Server:
    """Serves ``payload`` at /file.npz; ``drop_first`` sends only half the body once (with the
    full Content-Length) and closes the connection; Range requests get 206."""

    def __init__(self, payload: bytes, drop_first: bool = False) -> None:
        self.payload = payload
        self.drop_first = drop_first
        self.requests: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = outer.payload[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(outer.payload) - 1}/"
                                     f"{len(outer.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.drop_first:
                    outer.drop_first = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/file.npz"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> Iterator[bytes]:
    yield np.random.default_rng(5).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


def test_download_success(tmp_path: Path, payload: bytes) -> None:
    md5 = hashlib.md5(payload).hexdigest()
    with _Server(payload) as server:
        dest = bdata.download(server.url, tmp_path / "f.npz", md5, progress=False)
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]
    assert server.requests == [None]


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, payload: bytes) -> None:
    with _Server(payload) as server, pytest.raises(bdata.DownloadError, match="checksum"):
        bdata.download(server.url, tmp_path / "f.npz", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(tmp_path: Path, payload: bytes) -> None:
    md5 = hashlib.md5(payload).hexdigest()
    with _Server(payload, drop_first=True) as server:
        dest = bdata.download(server.url, tmp_path / "f.npz", md5, progress=False,
                              sleep=lambda s: None)
    assert dest.read_bytes() == payload
    assert server.requests[0] is None
    assert server.requests[1] == f"bytes={len(payload) // 2}-"  # resumed, not restarted
    assert not (tmp_path / "f.npz.part").exists()


def test_cli_download_fetches_and_verifies(tmp_path: Path, monkeypatch, capsys) -> None:
    write_medmnist(tmp_path / "src", ["breastmnist"])
    payload = (tmp_path / "src" / "medmnist" / "breastmnist.npz").read_bytes()
    md5 = hashlib.md5(payload).hexdigest()
    cls = type(scenarios.get("medmnist_mola")())
    with _Server(payload) as server:
        monkeypatch.setattr(cls, "files", lambda self: [bdata.DataFile("breastmnist.npz",
                                                                      server.url, md5)])
        root = tmp_path / "root"
        assert main(["data", "download", "medmnist_mola", "--data-root", str(root)]) == 0
        assert (root / "medmnist" / "breastmnist.npz").read_bytes() == payload
        # a second call finds the verified file and fetches nothing
        assert main(["data", "download", "medmnist_mola", "--data-root", str(root)]) == 0
        assert len(server.requests) == 1
    assert "already there" in capsys.readouterr().err


def test_medmnist_download_urls_and_md5_come_from_medmnist_info() -> None:
    from medmnist import INFO

    files = scenarios.get("medmnist_mola")().files()
    assert [f.path for f in files] == [f"{flag}.npz" for flag in
                                       scenarios.get("medmnist_mola").subsets]
    for f in files:
        flag = f.path[:-4]
        assert f.url == INFO[flag]["url"] and f.md5 == INFO[flag]["MD5"]


# ------------------------------------------------------------------ task kinds and metrics
def _metric(name: str, pred: torch.Tensor, target: torch.Tensor, k: int = 3) -> float:
    acc = METRICS[name].factory(k)
    acc.update(pred, target)
    return acc.compute()


def test_multilabel_auc_and_accuracy() -> None:
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(200, 4, generator=gen) > 0.6).float()
    logits = torch.randn(200, 4, generator=gen) + 1.5 * target
    logits[:50, 0] = 0.25  # ties
    ref = np.mean([roc_auc_score(target[:, k].numpy(), logits[:, k].numpy()) for k in range(4)])
    assert _metric("ml_auc", logits, target, 4) == pytest.approx(100 * ref, abs=1e-9)
    acc = ((logits > 0) == (target > 0.5)).float().mean(0).mean() * 100
    assert _metric("ml_accuracy", logits, target, 4) == pytest.approx(float(acc))
    # a union head (Uniform) with more columns: the first K are the task's
    wide = torch.cat([logits, torch.randn(200, 3, generator=gen)], 1)
    assert _metric("ml_auc", wide, target, 4) == pytest.approx(100 * ref, abs=1e-9)
    assert binary_auc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None
    loss = task_loss("multilabel", wide, target)
    assert float(loss) == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target)))


def test_normal_metrics_and_loss() -> None:
    # target (0, 0, 1); prediction rotated by known angles about the x axis
    angles = torch.tensor([5.0, 10.0, 20.0, 25.0, 40.0, 0.0])
    rad = torch.deg2rad(angles)
    pred = torch.stack([torch.zeros(6), torch.sin(rad), torch.cos(rad)]).reshape(1, 3, 1, 6) * 3
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 6).clone()
    target[..., 5] = 0.0  # missing: ignored
    valid = angles[:5]
    assert _metric("angle_mean", pred, target) == pytest.approx(float(valid.mean()), abs=1e-4)
    assert _metric("angle_median", pred, target) == pytest.approx(20.0, abs=0.05)
    assert _metric("within_11", pred, target) == pytest.approx(40.0)
    assert _metric("within_22", pred, target) == pytest.approx(60.0)
    assert _metric("within_30", pred, target) == pytest.approx(80.0)
    loss = task_loss("normals", pred, target)
    assert float(loss) == pytest.approx(float(1 - torch.cos(torch.deg2rad(valid)).mean()),
                                        abs=1e-6)
    assert METRICS["angle_mean"].higher_is_better is False
    assert METRICS["within_11"].higher_is_better is True


def test_depth_and_saliency_ignore_invalid_pixels() -> None:
    target = torch.tensor([[[[0.0, 2.0, 4.0]]]])
    pred = torch.tensor([[[[9.0, 3.0, 4.0]]]])
    assert float(task_loss("depth", pred, target)) == pytest.approx(0.5)
    assert _metric("depth_abs_err", pred, target) == pytest.approx(0.5)
    sal_t = torch.tensor([[[1.0, 0.0, -1.0, 1.0]]])
    logits = torch.tensor([[[[5.0, -5.0, 5.0, -5.0]]]])
    # every threshold in 0.2-0.9: tp 1, fp 0, fn 1 -> precision 1, recall 0.5 (β² = 1)
    assert _metric("max_f", logits, sal_t, 1) == pytest.approx(100 * 2 * 0.5 / 1.5)
    assert _metric("sal_iou", logits, sal_t, 1) == pytest.approx(50.0)


def test_saliency_is_averaged_over_images_as_mtlora_evaluates_it() -> None:
    """Per-image IoU / precision / recall at thresholds 0.2-0.9, averaged over images, best
    threshold; an image with no foreground predicted nor present counts IoU 1."""
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    # image 0: p = 0.95, 0.6, 0.1, 0.1; image 1: nothing above 0.15
    prob = torch.tensor([[[0.95, 0.6, 0.1, 0.1]], [[0.15, 0.15, 0.15, 0.15]]])
    logits = torch.logit(prob).unsqueeze(1)
    # threshold 0.2-0.55: image 0 IoU 1 (both found), image 1 IoU 1 (both empty) -> mean 1
    assert _metric("sal_iou", logits, target, 1) == pytest.approx(100.0)
    # image 1 has no foreground: precision and recall 0 there, so mean P = R = 0.5 at best
    assert _metric("max_f", logits, target, 1) == pytest.approx(50.0, abs=1e-6)


def test_pascal_losses_and_weights() -> None:
    from bench.data.metrics import balanced_bce_loss, normals_l1_loss

    target = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)  # 2nd unknown
    pred = torch.tensor([[2.0, 5.0], [0.0, 5.0], [0.0, 5.0]]).view(1, 3, 1, 2)
    assert float(normals_l1_loss(pred, target)) == pytest.approx(0.0)  # normalised: exact
    pred[0, 1, 0, 0] = 2.0  # (2, 2, 0)/|.| = (.707, .707, 0): L1 = (.293 + .707 + 0) / 3
    assert float(normals_l1_loss(pred, target)) == pytest.approx(1 / 3)
    sal = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    logits = torch.zeros(1, 1, 1, 4)  # BCE = log 2 everywhere
    # w = 3/4 on the positive, 1/4 on each negative, over 4 pixels
    want = (0.75 * math.log(2) + 3 * 0.25 * math.log(2)) / 4
    assert float(balanced_bce_loss(logits, sal)) == pytest.approx(want)
    assert float(task_loss("saliency", logits, sal, "balanced_bce")) == pytest.approx(want)
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        task_loss("normals", pred, target, "l3")
    tasks = {t.name: t for t in sys.modules[scenarios.get("pascal_context").__module__].TASKS}
    assert [tasks[t].loss_weight for t in ("semseg", "human_parts", "saliency", "normals")] \
        == [1.0, 2.0, 5.0, 10.0]
    assert tasks["saliency"].metrics[0] == "sal_iou"  # Table 1's saliency column


# ------------------------------------------------------------------ paper setups and numbers
def test_paper_profiles_follow_the_papers() -> None:
    # the nine subsets MoLA's reference trains, in its order; Table 4's "Chest" is PneumoniaMNIST
    assert scenarios.get("medmnist_mola").subsets == (
        "pathmnist", "octmnist", "organcmnist", "bloodmnist", "breastmnist", "dermamnist",
        "organamnist", "organsmnist", "pneumoniamnist")
    med = scenarios.get("medmnist_mola")().setup("paper")
    assert (med.optimizer, med.lr, med.momentum, med.weight_decay, med.scheduler, med.epochs,
            med.batch_size) == ("sgd", 0.05, 0.9, 1e-4, "cosine", 100, 128)
    rad = scenarios.get("radimagenet")().setup("paper")
    assert (rad.optimizer, rad.lr) == ("sgd", 0.05)
    for name in ("vlcs", "officehome"):
        s = scenarios.get(name)().setup("paper")
        assert (s.optimizer, s.lr, s.batch_size) == ("adamw", 1e-4, 128)
    nyu = scenarios.get("nyuv2")().setup("paper")
    assert (nyu.optimizer, nyu.lr, nyu.batch_size) == ("adam", 1e-4, 128)
    for name, epochs in (("vlcs", 10), ("officehome", 60)):  # MoLA's reference code
        s = scenarios.get(name)().setup("paper")
        assert (s.epochs, s.scheduler, s.weight_decay) == (epochs, "cosine", 1e-4)
    assert (nyu.scheduler, nyu.step_size, nyu.gamma, nyu.epochs) == ("step", 100, 0.5, 200)
    pascal = scenarios.get("pascal_context")().setup("paper")  # MTLoRA's reference code
    assert (pascal.optimizer, pascal.epochs, pascal.batch_size) == ("adamw", 300, 128)
    assert pascal.lr == pytest.approx(5e-4 * 128 / 512)  # its lr scaled by batch / 512
    assert (pascal.warmup_epochs, pascal.grad_clip, pascal.weight_decay) == (20, 5.0, 0.05)
    assert pascal.min_lr == pytest.approx(5e-6 * 128 / 512)
    for name in REAL:  # MoLA App. B's ResNet-18; MTLoRA's Swin-T on PASCAL-Context
        want = "swin_t" if name == "pascal_context" else "resnet18"
        assert scenarios.get(name)().backbone_of("paper") == want


def test_paper_results_are_complete_and_consistent() -> None:
    from bench.report.paper_results import load, tables_for

    data = load()
    assert {"mola", "mtlora"} <= set(data["sources"])
    ids = {t["id"] for t in data["tables"]}
    assert ids == {"mola_table1", "mola_table2", "mola_table3", "mola_table4", "mola_table5",
                   "mtlora_table1"}
    for table in data["tables"]:
        assert table["source"] in data["sources"]
        assert table["scenario"] in scenarios
        for row, values in table["rows"].items():
            assert len(values) == len(table["columns"]), (table["id"], row)
        if table["metrics"][-1] == "avg_accuracy":  # Avg = mean of the columns (as printed)
            for row, values in table["rows"].items():
                assert sum(values[:-1]) / len(values[:-1]) == pytest.approx(values[-1],
                                                                             abs=0.05), row
    assert len(tables_for("radimagenet")[0]["columns"]) == 12  # 11 regions + Avg
    t5 = tables_for("nyuv2")[0]
    assert t5["rows"]["MoLA-Grad"][-1] == -9.17 and t5["rows"]["HSP"][-1] == 4.72
    mt = tables_for("pascal_context")[0]["rows"]
    assert [mt[f"MTLoRA (r={r})"][-1] for r in (16, 32, 64)] == [4.95, 6.08, 8.34]


def test_task_loss_weights_scale_the_training_losses(tiny_scenario) -> None:
    from dataclasses import replace

    from bench.models.method import build_model, resolve_method
    from bench.run.engine import compute_losses

    _, data = tiny_scenario("single_input")
    weighted = replace(data, tasks=tuple(replace(t, loss_weight=w)
                                         for t, w in zip(data.tasks, (1.0, 3.0, 0.5))))
    torch.manual_seed(0)
    model = build_model(resolve_method("hps"), data)
    index = {t: torch.arange(4) for t in data.task_names}
    plain, _ = compute_losses(model, data, data.train, index, fused=True)
    scaled, _ = compute_losses(model, weighted, weighted.train, index, fused=True)
    assert torch.allclose(scaled, plain * torch.tensor([1.0, 3.0, 0.5]))

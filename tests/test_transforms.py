"""The papers' input pipelines (bench.data.transforms): per-sample seeded draws shared by all
fields, geometry conventions (flip, rotation, scale-crop) checked against exact cases,
normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import bench.data.transforms as T


def _photo(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------ classification
def test_resized_crop_box_respects_area_ratio_and_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = T.resized_crop_box(rng, 300, 200, (0.7, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        share = w * h / (300 * 200)
        assert 0.65 <= share <= 1.0
    # impossible scales fall back to the largest centred crop of an allowed ratio
    assert T.resized_crop_box(np.random.default_rng(0), 400, 100, (1.0, 1.0),
                              (1.0, 1.0)) == (150, 0, 100, 100)


def test_classification_pipeline_test_transform_is_resize_crop_normalise() -> None:
    pipe = T.ClassificationPipeline(size=8, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                                    std=(0.5, 0.5, 0.5))
    white = Image.new("RGB", (20, 10), (255, 255, 255))
    x = pipe(white, None)
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.ones(3, 8, 8))
    resized = T.ClassificationPipeline(size=4, resize=6)(white, None)
    assert resized.shape == (3, 4, 4)
    want = (1 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD)
    assert torch.allclose(resized[:, 0, 0], want, atol=1e-5)


def test_classification_pipeline_training_draws_are_per_key() -> None:
    image = _photo()
    pipe = T.DOMAINBED_CLIP
    a, again, other = pipe(image, (0, 1, 2)), pipe(image, (0, 1, 2)), pipe(image, (0, 1, 3))
    assert a.shape == (3, 224, 224)
    assert torch.equal(a, again) and not torch.equal(a, other)
    assert not torch.equal(a, pipe(image, None))


def test_color_jitter_and_grayscale_change_colours_only() -> None:
    image = _photo()
    flat = T.ClassificationPipeline(size=20, crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3))
    grey = T.ClassificationPipeline(size=20, crop_scale=(1.0, 1.0), crop_ratio=(4 / 3, 4 / 3),
                                    grayscale_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    g = grey(image, (5,))
    assert torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])
    jittered = T.ClassificationPipeline(size=20, crop_scale=(1.0, 1.0),
                                        crop_ratio=(4 / 3, 4 / 3), jitter=(0.4, 0.4, 0.4, 0.4))
    assert not torch.allclose(flat(image, (5,)), jittered(image, (5,)))


def test_medmnist_batch_upsamples_flips_per_key_and_normalises() -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    images[:, :, :14] = 255  # left half white
    keys = [(0, 0, i) for i in range(4)]
    x = T.medmnist_batch(images, keys, 56)
    assert x.shape == (4, 3, 56, 56) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    flipped = [bool(T.sample_rng(k).random() < 0.5) for k in keys]
    for i, f in enumerate(flipped):
        assert float(x[i, 0, 10, 5]) == (-1.0 if f else 1.0)
    assert x.stride(1) == 0  # grey: one channel shared
    test = T.medmnist_batch(images, None, 28)
    assert torch.equal(test[:, 0, :, :14], torch.ones(4, 28, 14))


# ------------------------------------------------------------------ dense geometry
def test_warp_without_augmentation_is_a_resize() -> None:
    field = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6)
    assert torch.equal(T.warp(field, "label", (4, 6)), field)
    up = T.warp(field, "label", (8, 12))
    assert torch.equal(up, field.repeat_interleave(2, 1).repeat_interleave(2, 2))
    labels = torch.randint(-1, 5, (5, 7))
    assert torch.equal(T.warp(labels.unsqueeze(0), "label", (5, 7))[0], labels)


def test_warp_flip_and_quarter_turn_follow_the_image_convention() -> None:
    field = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    assert torch.equal(T.warp(field, "label", (4, 4), flip=True), field.flip(-1))
    # +90° = counter-clockwise on screen (y points down), as cv2's rotation matrix
    turned = T.warp(field, "label", (4, 4), angle=90.0)
    assert torch.equal(turned, torch.rot90(field, 1, dims=(1, 2)))


def test_normals_turn_with_the_image() -> None:
    right = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    flipped = T.rotate_normals(right, 0.0, flip=True)
    assert torch.allclose(flipped[:, 0, 0], torch.tensor([-1.0, 0.0, 0.0]))
    turned = T.rotate_normals(right, 90.0, flip=False)  # x-axis turned a quarter on screen
    assert torch.allclose(turned[:, 0, 0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)
    unknown = T.rotate_normals(torch.zeros(3, 2, 2), 30.0, flip=True)
    assert torch.equal(unknown, torch.zeros(3, 2, 2))


def test_pascal_sample_fields_share_one_draw() -> None:
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(3, 30, 40, generator=rng)
    labels = torch.randint(0, 21, (30, 40), generator=rng)
    key = (1, 2, 3)
    p = T.pascal_params(key)
    assert -20 <= p["angle"] <= 20 and 0.75 <= p["scale"] <= 1.25
    img = T.pascal_sample(image, "image", key, 16)
    lab = T.pascal_sample(labels, "label", key, 16)
    assert img.shape == (3, 16, 16) and lab.shape == (16, 16) and lab.dtype == torch.long
    # a label map warped as one more image channel lands where the image's pixels land
    both = T.warp(torch.cat([image, labels.unsqueeze(0).float()]), "label", (16, 16),
                  p["angle"], p["scale"], p["flip"])
    assert torch.equal(both[3].long(), lab)
    assert torch.equal(T.pascal_sample(labels, "label", None, 16),
                       T.warp(labels.unsqueeze(0), "label", (16, 16))[0])
    ignored = torch.full((30, 40), -1)
    assert bool((T.pascal_sample(ignored, "label", key, 16) == -1).all())


@pytest.mark.parametrize("kind", ["image", "label", "depth", "normals"])
def test_nyuv2_scale_crop_and_flip(kind: str) -> None:
    height, width = 12, 16
    field = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width) + 1
    if kind == "normals":
        field = torch.cat([field, field, field])
    if kind == "label":
        field = field[0].long()
    key = next(k for k in ((0, 0, i) for i in range(100))
               if T.nyuv2_params(k, height, width)["scale"] == 1.5
               and T.nyuv2_params(k, height, width)["flip"])
    p = T.nyuv2_params(key, height, width)
    out = T.nyuv2_sample(field, kind, key, (height, width))
    assert out.shape == field.shape
    if kind == "label":
        top, left = p["top"], p["left"]
        assert int(out[0, -1]) == int(field[top, left])  # flipped: first crop column is last
    if kind == "depth":
        top, left = p["top"], p["left"]
        assert float(out[0, 0, -1]) == pytest.approx(float(field[0, top, left]) / 1.5)
    if kind == "normals":
        assert float(out[0, 0, -1]) < 0 < float(out[1, 0, -1])  # x negated by the flip
    assert torch.equal(T.nyuv2_sample(field, kind, None, (height, width)), field)

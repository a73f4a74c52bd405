"""The papers' input pipelines: training-time augmentation and test-time resizing.

Every random draw comes from the sample's own generator, ``sample_rng(key)``, where the engine
builds ``key`` from the run's seed, the training step and the sample's place in the batch: a
batch is augmented identically whichever thread decodes it, and the fields of one sample (its
image, label maps and normals, read by separate readers) draw identical parameters. ``key=None``
means evaluation: the deterministic test-time transform.

Pipelines (facts from the reference implementations, our code):

* :data:`DOMAINBED_CLIP` — MoLA's VLCS / Office-Home: random resized crop to 224 (scale 0.7-1,
  ratio 3/4-4/3, bicubic), horizontal flip, colour jitter 0.4 (brightness, contrast,
  saturation, hue, random order), grey with p = 0.1, CLIP mean/std; test: bicubic resize of the
  short side to 224 and a centre crop.
* :data:`RADIMAGENET_IMAGENET` — MoLA's RadImageNet: resize to 256, random resized crop to 224
  (scale 0.08-1), flip, ImageNet mean/std; test: resize to 256, centre crop 224.
* :func:`medmnist_batch` — MoLA's MedMNIST: 28² → 224² bilinear, flip (train), ``(x - .5)/.5``.
* :func:`nyuv2_sample` — LibMTL/MTAN's NYUv2: random scale-crop (scale 1, 1.2 or 1.5, depth
  divided by it) and a flip that negates the normals' x.
* :func:`pascal_sample` — MTLoRA's PASCAL-Context: flip (normals' x negated), rotation
  U(-20°, 20°) and scale U(0.75, 1.25) about the centre with zero borders (normal vectors
  rotated too), then a resize to S² (bicubic image and normals, nearest labels); test: the
  resize only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Key = tuple[int, ...]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def sample_rng(key: Key) -> np.random.Generator:
    """The generator of one sample's augmentation (the same key gives the same draws)."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


# ------------------------------------------------------------------ classification pipelines
def resized_crop_box(rng: np.random.Generator, width: int, height: int,
                     scale: tuple[float, float], ratio: tuple[float, float]
                     ) -> tuple[int, int, int, int]:
    """A random crop ``(left, top, w, h)`` covering a ``scale`` share of the area with aspect
    ratio in ``ratio`` (log-uniform), 10 tries, else the largest centred crop whose ratio is
    clamped into ``ratio`` (the usual random-resized-crop rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class ClassificationPipeline:
    """Image → normalised ``(C, size, size)`` tensor; random crop / flip / jitter in training."""

    size: int = 224
    #: resize the short side to this first (None: crop from the original image)
    resize: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    #: brightness, contrast, saturation, hue strengths (0: off)
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    grayscale_p: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, image: Any, key: Key | None) -> torch.Tensor:
        """``image`` is a PIL image; ``key`` None = the test-time transform."""
        import torchvision.transforms.functional as TF
        from PIL import Image

        resample = {"bilinear": Image.Resampling.BILINEAR,
                    "bicubic": Image.Resampling.BICUBIC}[self.interpolation]
        image = image.convert("RGB")
        if self.resize is not None:
            image = _resize_short(image, self.resize, resample)
        if key is None:
            if self.resize is None:
                image = _resize_short(image, self.size, resample)
            width, height = image.size
            left, top = (width - self.size) // 2, (height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            rng = sample_rng(key)
            left, top, w, h = resized_crop_box(rng, *image.size, self.crop_scale,
                                               self.crop_ratio)
            image = image.resize((self.size, self.size), resample,
                                 box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if any(self.jitter):
                image = _color_jitter(image, rng, self.jitter)
            if self.grayscale_p and rng.random() < self.grayscale_p:
                image = TF.to_grayscale(image, num_output_channels=3)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return ((x - mean) / std).contiguous()


def _resize_short(image: Any, side: int, resample: Any) -> Any:
    width, height = image.size
    if min(width, height) == side:
        return image
    if width <= height:
        return image.resize((side, int(side * height / width)), resample)
    return image.resize((int(side * width / height), side), resample)


def _color_jitter(image: Any, rng: np.random.Generator,
                  strengths: tuple[float, float, float, float]) -> Any:
    """Brightness, contrast, saturation (factors in [1 - s, 1 + s]) and hue (shift in
    [-s, s]), applied in a random order."""
    import torchvision.transforms.functional as TF

    ops = []
    for which, strength in enumerate(strengths):
        if not strength:
            continue
        if which == 3:
            ops.append((which, float(rng.uniform(-strength, strength))))
        else:
            ops.append((which, float(rng.uniform(max(0.0, 1 - strength), 1 + strength))))
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for position in rng.permutation(len(ops)):
        which, factor = ops[int(position)]
        image = adjust[which](image, factor)
    return image


#: MoLA's VLCS / Office-Home pipeline (reference code; CLIP normalisation)
DOMAINBED_CLIP = ClassificationPipeline(size=224, crop_scale=(0.7, 1.0),
                                        interpolation="bicubic", jitter=(0.4, 0.4, 0.4, 0.4),
                                        grayscale_p=0.1, mean=CLIP_MEAN, std=CLIP_STD)
#: MoLA's RadImageNet pipeline (reference code; ImageNet normalisation)
RADIMAGENET_IMAGENET = ClassificationPipeline(size=224, resize=256)


def medmnist_batch(images: np.ndarray, keys: Sequence[Key] | None, size: int) -> torch.Tensor:
    """uint8 MedMNIST images ``(N, H, W[, 3])`` → ``(N, 3, size, size)`` in [-1, 1]: bilinear
    upsampling (MoLA's reference feeds 224² to an ImageNet ResNet-18), a horizontal flip per
    sample in training, ``(x/255 − 0.5)/0.5``; grey images repeated over 3 channels."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if keys is not None:
        flip = torch.tensor([sample_rng(k).random() < 0.5 for k in keys])
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = (x - 0.5) / 0.5
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ------------------------------------------------------------------ dense pipelines
#: how each kind of field of a dense sample is resampled (the area from outside the image is 0:
#: black, background, not salient, unknown normal)
DENSE_MODES = {"image": "bicubic", "normals": "bicubic", "label": "nearest", "depth": "nearest",
               "saliency": "nearest"}


def warp(field: torch.Tensor, kind: str, out_size: tuple[int, int], angle: float = 0.0,
         scale: float = 1.0, flip: bool = False) -> torch.Tensor:
    """Resample a ``(C, H, W)`` field to ``out_size`` after an optional horizontal flip and a
    rotation by ``angle`` degrees (counter-clockwise) and zoom by ``scale`` about the centre;
    pixels from outside the image are 0. ``kind`` is a key of :data:`DENSE_MODES`."""
    mode = DENSE_MODES[kind]
    _, height, width = field.shape
    out_h, out_w = out_size
    # output pixel centres in the input's pixel coordinates (a plain resize)
    ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) * height / out_h - 0.5
    xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) * width / out_w - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    if angle or scale != 1.0:  # undo the rotation-and-zoom about the centre
        theta = math.radians(angle)
        cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
        dx, dy = gx - cx, gy - cy
        gx, gy = cos * dx - sin * dy + cx, sin * dx + cos * dy + cy
    if flip:
        gx = (width - 1) - gx
    grid = torch.stack([(gx + 0.5) / width * 2 - 1, (gy + 0.5) / height * 2 - 1], dim=-1)
    out = F.grid_sample(field.unsqueeze(0).to(torch.float32),
                        grid.unsqueeze(0).to(torch.float32), mode=mode, padding_mode="zeros",
                        align_corners=False)[0]
    return out if field.dtype.is_floating_point else out.round().to(field.dtype)


def rotate_normals(normals: torch.Tensor, angle: float, flip: bool) -> torch.Tensor:
    """The normal vectors of a flipped (x negated) and rotated image: their in-plane part
    turns with the image; zero vectors (unknown) stay zero, the rest are renormalised."""
    n = normals.clone()
    if flip:
        n[0] = -n[0]
    if angle:
        theta = math.radians(angle)
        # image y points down: a counter-clockwise turn on screen is clockwise in (x, y)
        x, y = n[0].clone(), n[1].clone()
        n[0] = math.cos(theta) * x + math.sin(theta) * y
        n[1] = -math.sin(theta) * x + math.cos(theta) * y
    norm = n.norm(dim=0, keepdim=True)
    return torch.where(norm > 1e-6, n / norm.clamp_min(1e-12), torch.zeros_like(n))


def pascal_params(key: Key | None) -> dict[str, Any]:
    """MTLoRA's PASCAL-Context augmentation of one sample (None: none)."""
    if key is None:
        return {"flip": False, "angle": 0.0, "scale": 1.0}
    rng = sample_rng(key)
    return {"flip": bool(rng.random() < 0.5), "angle": float(rng.uniform(-20.0, 20.0)),
            "scale": float(rng.uniform(0.75, 1.25))}


def pascal_sample(field: torch.Tensor, kind: str, key: Key | None, size: int) -> torch.Tensor:
    """One field of a PASCAL-Context sample at ``size``² after MTLoRA's augmentation. A label
    map that is entirely ignored (-1) stays so; normals are rotated with the image."""
    p = pascal_params(key)
    single = field.dim() == 2
    x = field.unsqueeze(0) if single else field
    if kind == "label" and bool((x == -1).all()):
        out = torch.full((x.shape[0], size, size), -1, dtype=x.dtype)
    else:
        out = warp(x, kind, (size, size), p["angle"], p["scale"], p["flip"])
        if kind == "normals":
            out = rotate_normals(out, p["angle"], p["flip"])
    return out[0] if single else out


def nyuv2_params(key: Key | None, height: int, width: int) -> dict[str, Any]:
    """LibMTL/MTAN's NYUv2 augmentation of one sample: scale in {1, 1.2, 1.5}, a crop of
    (H/scale, W/scale) at a random place, a horizontal flip (None: none)."""
    if key is None:
        return {"scale": 1.0, "top": 0, "left": 0, "flip": False}
    rng = sample_rng(key)
    scale = float(rng.choice([1.0, 1.2, 1.5]))
    h, w = int(height / scale), int(width / scale)
    return {"scale": scale, "top": int(rng.integers(0, height - h + 1)),
            "left": int(rng.integers(0, width - w + 1)), "flip": bool(rng.random() < 0.5)}


def nyuv2_sample(field: torch.Tensor, kind: str, key: Key | None,
                 size: tuple[int, int]) -> torch.Tensor:
    """One field of an NYUv2 sample at ``size`` after the random scale-crop and flip: the crop
    is resized back (image and normals bilinear, labels and depth nearest), depth divided by
    the scale (objects look closer), the normals' x negated by the flip."""
    single = field.dim() == 2
    x = field.unsqueeze(0) if single else field
    _, height, width = x.shape
    p = nyuv2_params(key, height, width)
    if p["scale"] != 1.0:
        h, w = int(height / p["scale"]), int(width / p["scale"])
        x = x[:, p["top"]:p["top"] + h, p["left"]:p["left"] + w]
    if tuple(x.shape[-2:]) != tuple(size):
        mode = "bilinear" if kind in ("image", "normals") else "nearest"
        kwargs = {"align_corners": True} if mode == "bilinear" else {}
        x = F.interpolate(x.unsqueeze(0).float(), size=size, mode=mode, **kwargs)[0].to(
            field.dtype)
    if kind == "depth" and p["scale"] != 1.0:
        x = x / p["scale"]
    if p["flip"]:
        x = x.flip(-1)
        if kind == "normals":
            x = x.clone()
            x[0] = -x[0]
    return x[0] if single else x

"""Image pre-processing as timm's eval transform does it, in NumPy + Pillow.

Resize the shorter side to floor(size / crop_pct) (bicubic, antialiased), center-crop to size,
scale to [0, 1], normalise per channel; NCHW float32. It runs anywhere (no torch), so the CPU
fallback, calibration and an app's reference implementation all see the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["crop_pct"]), d["interpolation"])


def resize_and_crop(img: Image.Image, size: int, pp: Preprocess) -> Image.Image:
    """torchvision's Resize(int) + CenterCrop(size), the rule timm's eval transform uses."""
    scale = math.floor(size / pp.crop_pct)
    w, h = img.size
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    img = img.resize((new_w, new_h), _RESAMPLE[pp.interpolation])
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, pp: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 image -> (1, 3, H, W) float32, normalised."""
    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def load_image(path: str | Path, size: int, pp: Preprocess) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return to_tensor(resize_and_crop(img.convert("RGB"), size, pp), pp)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for unreadable images
        raise UserError(f"cannot read image {path}: {e}") from None

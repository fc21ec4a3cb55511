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
from PIL import Image, ImageOps

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 8  # px: below this an image shows nothing a model can use
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


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as training pipelines see it (timm: ``convert("RGB")``), from any mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / 32-bit greyscale
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        if img.mode == "F" and a.max() <= 1.0:
            peak = 1.0
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency goes through RGBA (Pillow's advice)
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as upright 8-bit RGB: EXIF rotation applied; greyscale, palette, RGBA,
    CMYK and 16-bit images converted. Raises :class:`UserError` saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # Pillow's errors
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] or type(e).__name__}") from None
    if min(rgb.size) < MIN_SIDE:
        raise UserError(f"image {path} is {rgb.size[0]}x{rgb.size[1]} px, too small to use "
                        f"(under {MIN_SIDE} px on a side)")
    return rgb


def load_image(path: str | Path, size: int, pp: Preprocess) -> np.ndarray:
    return to_tensor(resize_and_crop(open_rgb(path), size, pp), pp)

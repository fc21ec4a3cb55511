"""Real images for calibration and evaluation.

``--calib DIR`` is searched recursively for image files as users have them (JPEG, PNG, BMP,
WebP, TIFF; greyscale, palette, RGBA, CMYK, 16-bit, EXIF-rotated: all converted to upright RGB).
Other files, unreadable images and images too small to use are skipped and listed. Without it, the real photos that ship inside declared dependencies are used
(scikit-image, scikit-learn, matplotlib): calibration from one set, evaluation from another.
More samples than photos are made by cropping the photos differently *before* the model's own
eval transform, so every sample is pre-processed exactly as the exported model expects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .preprocess import IMAGE_SUFFIXES, Preprocess, open_rgb, resize_and_crop, to_tensor

_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                   "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                   "retina.jpg", "ihc.png", "camera.png")


@dataclass(frozen=True)
class ImageSet:
    paths: tuple[Path, ...]
    source: str  # said in reports: where the images came from
    skipped: tuple[Path, ...] = ()  # files that are not images
    unusable: tuple[str, ...] = ()  # images that could not be used, each with the reason

    def notices(self, what: str) -> list[str]:
        """What was left out, in at most two lines."""
        out = []
        if self.skipped:
            names = ", ".join(p.name for p in self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
            out.append(f"{what}: skipped {len(self.skipped)} files that are not images ({names})")
        if self.unusable:
            listed = "; ".join(self.unusable[:5]) + ("; ..." if len(self.unusable) > 5 else "")
            out.append(f"{what}: skipped {len(self.unusable)} images that cannot be used: {listed}")
        return out


def find_images(folder: str | Path, what: str = "--calib") -> ImageSet:
    """Every usable image under ``folder`` (each one is decoded once to find out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}")
    images, skipped, unusable = [], [], []
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            p = Path(root) / f
            if f.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(p)
                continue
            try:
                open_rgb(p)
                images.append(p)
            except UserError as e:
                unusable.append(str(e).replace(str(p), p.name))
    if not images:
        found = f" ({len(unusable)} images could not be used: {'; '.join(unusable[:3])})" if unusable else ""
        raise UserError(f"{what} folder {folder} holds no usable image{found}; give a folder of "
                        f"photos ({', '.join(IMAGE_SUFFIXES)})")
    return ImageSet(tuple(images), f"{what} {folder}", tuple(skipped), tuple(unusable))


def bundled_photos() -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation): scikit-image's photos; scikit-learn's and matplotlib's."""
    import matplotlib
    import skimage
    import sklearn.datasets

    sk = Path(skimage.__file__).parent / "data"
    calib = tuple(sk / n for n in _SKIMAGE_PHOTOS if (sk / n).is_file())
    learn = Path(sklearn.datasets.__file__).parent / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    evaluation = tuple(p for p in (learn / "china.jpg", learn / "flower.jpg", mpl / "grace_hopper.jpg")
                       if p.is_file())
    if len(calib) < 4 or not evaluation:
        raise UserError("the bundled photos are missing (reinstall scikit-image, scikit-learn, "
                        "matplotlib) and no --calib folder was given")
    return (ImageSet(calib, "bundled photos (scikit-image)"),
            ImageSet(evaluation, "bundled photos (scikit-learn, matplotlib)"))


def _view(img: Image.Image, k: int, rng: np.random.Generator) -> Image.Image:
    """View 0 is the photo itself; later views crop 50-100 % of it and may mirror it."""
    if k == 0:
        return img
    w, h = img.size
    s = rng.uniform(0.5, 1.0)
    cw, ch = max(16, int(w * s)), max(16, int(h * s))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def image_batch(images: ImageSet, size: int, pp: Preprocess, count: int, seed: int = 0) -> np.ndarray:
    """``count`` samples (N, 3, size, size): every image once, then further views in turn."""
    rng = np.random.default_rng(seed)
    photos = [open_rgb(p) for p in images.paths]
    out = [to_tensor(resize_and_crop(_view(photos[i % len(photos)], i // len(photos), rng), size, pp), pp)
           for i in range(count)]
    return np.concatenate(out)


def split(images: ImageSet, eval_fraction: float = 0.25) -> tuple[ImageSet, ImageSet]:
    """A disjoint (calibration, evaluation) split by file, every 4th file held out."""
    if len(images.paths) < 2:
        raise UserError(f"{images.source} has one image: give --eval DIR or more images")
    step = max(2, round(1 / eval_fraction))
    held = tuple(p for i, p in enumerate(images.paths) if i % step == step - 1) or images.paths[-1:]
    kept = tuple(p for p in images.paths if p not in held)
    return (ImageSet(kept, images.source, images.skipped),
            ImageSet(held, f"{images.source} (held-out split)"))

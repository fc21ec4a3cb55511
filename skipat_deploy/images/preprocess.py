"""Image pre-processing as timm's eval transform does it, in NumPy + Pillow.

Resize the shorter side to floor(size / crop_pct) (bicubic, antialiased), center-crop to size,
scale to [0, 1], normalise per channel; NCHW float32. It runs anywhere (no torch), so the CPU
fallback, calibration and an app's reference implementation all see the same pixels.

The values come, field by field, from the command line (:class:`PreprocessOverrides`, "given"),
else from the checkpoint (timm's ``pretrained_cfg`` or training args), else the model spec's
default, which is a guess; each :class:`Preprocess` says which (``sources``, ``source``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import CheckpointError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 8  # px: below this an image shows nothing a model can use
# timm's interpolation names for Pillow's filters ("random" is a training augmentation).
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
INTERPOLATIONS = tuple(_RESAMPLE)
FIELDS = ("mean", "std", "crop_pct", "interpolation")
FLAGS = {"mean": "--mean R,G,B", "std": "--std R,G,B", "crop_pct": "--crop-pct F",
         "interpolation": "--interpolation NAME"}
GIVEN = "given"
CHECKPOINT = "checkpoint:"  # + where in (or beside) the file the values were found
DEFAULT = "default:"  # + the spec's name + GUESS
GUESS = " (a guess)"


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    # Where each value came from, in FIELDS order: GIVEN, CHECKPOINT + where, or DEFAULT + spec
    # name + GUESS ("" until a spec names its default). Not part of the transform: equal values
    # compare and hash equal whatever their source.
    sources: tuple[str, ...] = field(default=("",) * len(FIELDS), compare=False)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct,
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["crop_pct"]), d["interpolation"])

    @property
    def source(self) -> str:
        """Where the values came from: one source, or ``fields: source`` groups when they differ."""
        groups: dict[str, list[str]] = {}
        for name, src in zip(FIELDS, self.sources):
            groups.setdefault(src or DEFAULT.rstrip(":") + GUESS, []).append(name)
        if len(groups) == 1:
            return next(iter(groups))
        return "; ".join(f"{', '.join(names)}: {src}" for src, names in groups.items())

    @property
    def guessed(self) -> tuple[str, ...]:
        """The fields that are a spec's default: neither given nor read from the checkpoint."""
        return tuple(n for n, s in zip(FIELDS, self.sources) if not s or s.startswith(DEFAULT))

    def defaulting_to(self, spec_name: str) -> "Preprocess":
        """These values, the unsourced ones marked as ``spec_name``'s default (a guess)."""
        label = f"{DEFAULT}{spec_name}{GUESS}"
        return replace(self, sources=tuple(s or label for s in self.sources))

    def check(self) -> "Preprocess":
        """Refuse a value that cannot be right, naming where it came from."""
        for name, src in zip(FIELDS, self.sources):
            problem = _problem(name, getattr(self, name))
            if problem is None:
                continue
            shown = f"{name} {_show(getattr(self, name))}"
            if src.startswith(CHECKPOINT):
                raise CheckpointError(f"{shown} read from the checkpoint ({src.removeprefix(CHECKPOINT)}) "
                                      f"{problem}; give {FLAGS[name]}")
            raise UserError(f"{shown} ({src or 'default'}) {problem}")
        return self

    def guess_notice(self, spec_name: str) -> str | None:
        """The notice that names the guessed values and how to give them; None when none is."""
        guessed = self.guessed
        if not guessed:
            return None
        values = ", ".join(f"{n} {_show(getattr(self, n))}" for n in guessed)
        were = "were" if len(guessed) > 1 else "was"
        example = (" (timm's augreg ViTs: mean and std 0.5, crop_pct 0.9)"
                   if set(guessed) & {"mean", "std", "crop_pct"} else "")
        return (f"pre-processing is a guess: {values} ({spec_name}'s default) {were} neither given "
                f"nor found in the checkpoint; if the model was trained otherwise{example}, pass "
                + " ".join(FLAGS[n] for n in guessed))


@dataclass(frozen=True)
class PreprocessOverrides:
    """Pre-processing values that replace a spec's defaults; None = not set. Both what the user
    gives (``--mean 0.5,0.5,0.5`` ...) and what a checkpoint carries (timm's ``pretrained_cfg``)."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        # Lists, ints and a single mean / std value (timm: every channel's) as the fields' types;
        # a value that cannot be converted is kept as found, for check() to show.
        for name in ("mean", "std"):
            object.__setattr__(self, name, _floats(getattr(self, name)))
        if isinstance(self.crop_pct, int) and not isinstance(self.crop_pct, bool):
            object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if isinstance(self.interpolation, str):
            object.__setattr__(self, "interpolation", self.interpolation.strip().lower())

    def __bool__(self) -> bool:
        return any(getattr(self, n) is not None for n in FIELDS)

    @classmethod
    def parse(cls, mean: str | None = None, std: str | None = None, crop_pct: str | None = None,
              interpolation: str | None = None) -> "PreprocessOverrides":
        """From the command line's text, checked."""
        return cls(_triple(mean, "--mean"), _triple(std, "--std"), _number(crop_pct, "--crop-pct"),
                   interpolation).check()

    @classmethod
    def from_config(cls, cfg: dict) -> "PreprocessOverrides":
        """The pre-processing in a timm ``pretrained_cfg`` or training-args dict, read as timm
        reads it: None, "" and [] are not set. Not checked here: :meth:`Preprocess.check`
        refuses a bad value only if it is used."""
        def get(key):
            v = cfg.get(key)
            return None if v is None or (isinstance(v, (str, list, tuple)) and not v) else v

        return cls(*(get(k) for k in FIELDS))

    def check(self) -> "PreprocessOverrides":
        """Refuse given values that cannot be right: one line naming the flag."""
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None and (problem := _problem(name, value)) is not None:
                raise UserError(f"{FLAGS[name].split()[0]} {_show(value)} {problem}")
        return self

    def apply_to(self, pp: Preprocess, source: str) -> Preprocess:
        """``pp`` with the values set here, each marked as coming from ``source``."""
        values = {n: getattr(self, n) for n in FIELDS if getattr(self, n) is not None}
        sources = tuple(source if n in values else s for n, s in zip(FIELDS, pp.sources))
        return replace(pp, **values, sources=sources)

    def refuse_for(self, model: str | Path) -> None:
        """An exported model's pre-processing is in its metadata: overriding it there is refused
        rather than silently ignored."""
        if self:
            flags = ", ".join(FLAGS[n].split()[0] for n in FIELDS if getattr(self, n) is not None)
            raise UserError(f"{flags}: for --ckpt only; {model} carries its own pre-processing "
                            "in its metadata")


def resolve(default: Preprocess, found=(), given: PreprocessOverrides | None = None) -> Preprocess:
    """Value by value: ``given`` beats ``found`` (``(overrides, where)`` read from a checkpoint,
    lowest precedence first), which beats ``default``; checked."""
    pp = default
    for overrides, where in found:
        pp = overrides.apply_to(pp, CHECKPOINT + where)
    if given:
        pp = given.check().apply_to(pp, GIVEN)
    return pp.check()


def _triple(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(t) for t in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"{flag} {text!r} must be three comma-separated numbers R,G,B, e.g. 0.5,0.5,0.5")
    return values


def _number(text: str | float | None, flag: str) -> float | None:
    if text is None or isinstance(text, float):
        return text
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{flag} {text!r} must be a number, e.g. 0.9") from None


parse_rgb, parse_number = _triple, _number  # the command line's --mean / --std, --crop-pct


def _problem(name: str, value) -> str | None:
    """Why ``value`` cannot be this field's, or None."""
    if name in ("mean", "std"):
        if not (isinstance(value, tuple) and len(value) == 3
                and all(isinstance(v, float) and math.isfinite(v) for v in value)):
            return "must be three numbers R,G,B"
        # timm's values are for pixels scaled to [0, 1]; 123.7 is the 0-255 scale's mean.
        if name == "mean" and not all(0.0 <= v <= 1.0 for v in value):
            return "must lie in [0, 1] (pixels are scaled to [0, 1] first; divide 0-255 values by 255)"
        if name == "std" and not all(0.0 < v <= 1.0 for v in value):
            return "must lie in (0, 1] (pixels are scaled to [0, 1] first; divide 0-255 values by 255)"
    elif name == "crop_pct":
        if not (isinstance(value, float) and 0.0 < value <= 1.0):
            return "must be in (0, 1] (the center crop's share of the resized image)"
    elif value not in INTERPOLATIONS:
        return f"must be one of {', '.join(INTERPOLATIONS)}"
    return None


def _floats(value):
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        value = [value]
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return value
    return values * 3 if len(values) == 1 else values


def _show(value) -> str:
    if isinstance(value, tuple) and all(isinstance(v, float) for v in value):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else repr(value)


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

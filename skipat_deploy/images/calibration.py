"""Real images for calibration and evaluation.

``--calib DIR`` is searched recursively for image files as users have them (JPEG, PNG, BMP,
WebP, TIFF; greyscale, palette, RGBA, CMYK, 16-bit, EXIF-rotated: all converted to upright RGB).
Other files are skipped and listed. Only file names are listed to choose the samples: a seeded
draw of ``--num-calib`` images spread over the folder's subfolders (:func:`draw`), and only the
drawn ones are decoded; an unreadable or too small drawn image is listed and replaced by another
draw. Without it, the real photos that ship inside declared dependencies are used
(scikit-image, scikit-learn, matplotlib): calibration from one set, evaluation from another.
More samples than photos are made by cropping the photos differently *before* the model's own
eval transform, so every sample is pre-processed exactly as the exported model expects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import UserError
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
    root: Path | None = None  # the folder the paths are reported relative to (None: bundled photos)
    pool: _Pool | None = field(default=None, compare=False, repr=False)  # replacement draws

    def files(self) -> list[str]:
        """The files, as reported: relative to the folder given, or the bundled photos' names."""
        if self.root is None:
            return [p.name for p in self.paths]
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def skipped_notice(self, what: str) -> list[str]:
        if not self.skipped:
            return []
        names = ", ".join(p.name for p in self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
        return [f"{what}: skipped {len(self.skipped)} files that are not images ({names})"]

    def unusable_notice(self, what: str) -> list[str]:
        if not self.unusable:
            return []
        listed = "; ".join(self.unusable[:5]) + ("; ..." if len(self.unusable) > 5 else "")
        again = ", each replaced by another draw where one was left" if self.root is not None else ""
        return [f"{what}: skipped {len(self.unusable)} images that cannot be used{again}: {listed}"]

    def notices(self, what: str) -> list[str]:
        """What was left out, in at most two lines."""
        return self.skipped_notice(what) + self.unusable_notice(what)


@dataclass(frozen=True)
class Listing:
    """The image files under a folder, by name only (nothing decoded), grouped by top-level
    subfolder (files directly in the folder form the group ``"."``)."""
    folder: Path
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (subfolder, sorted paths relative to it)
    skipped: tuple[Path, ...]
    what: str

    @property
    def count(self) -> int:
        return sum(len(f) for _, f in self.groups)

    def path(self, g: int, i: int) -> Path:
        name, files = self.groups[g]
        return self.folder / name / files[i] if name != "." else self.folder / files[i]


def list_images(folder: str | Path, what: str = "--calib") -> Listing:
    """The image files under ``folder`` (recursive), by name: the only work that grows with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}")
    groups: dict[str, list[str]] = {}
    skipped = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel = os.path.relpath(root, folder)
        top, _, rest = rel.replace(os.sep, "/").partition("/")
        for f in sorted(files):
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in IMAGE_SUFFIXES:
                skipped.append(Path(root) / f)
            else:
                groups.setdefault(top, []).append(f"{rest}/{f}" if rest else f)
    if not groups:
        raise UserError(f"{what} folder {folder} holds no usable image; give a folder of "
                        f"photos ({', '.join(IMAGE_SUFFIXES)})")
    return Listing(folder, tuple((g, tuple(sorted(groups[g]))) for g in sorted(groups)),
                   tuple(skipped), what)


def spread(sizes: Sequence[int], n: int, seed: int | Sequence[int] = 0) -> list[int]:
    """The group each of ``n`` draws comes from (fewer if the groups hold fewer), groups given
    by their sizes in order (subfolders here, classes for ``evaluate``): round-robin over the
    groups while ``n`` allows one from each non-empty group, else ``n`` groups chosen by a
    ``seed``-ed draw in proportion to their size, in order. Which member of a group is drawn
    is the caller's seeded choice."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n = min(n, int(sizes.sum()))
    live = np.flatnonzero(sizes)
    if n < len(live):
        rng = np.random.default_rng(seed)
        return sorted(int(g) for g in rng.choice(live, n, replace=False, p=sizes[live] / sizes[live].sum()))
    out: list[int] = []
    taken = np.zeros_like(sizes)
    while len(out) < n:
        for g in live:
            if len(out) < n and taken[g] < sizes[g]:
                out.append(int(g))
                taken[g] += 1
    return out


class NoUsableImage(UserError):
    """Nothing drawn from a folder could be used (``unusable``: each file with its reason)."""

    def __init__(self, message: str, unusable: tuple[str, ...]):
        super().__init__(message)
        self.unusable = unusable


class _Pool:
    """Seeded draws without replacement from a :class:`Listing`: a permutation per subfolder,
    taken in order, so every draw (calibration, held-out, replacements) is disjoint from the
    others. Failed decodes are bounded: after ``16 + 2 x drawn`` no more replacements."""

    def __init__(self, listing: Listing, seed: int):
        self.listing, self.seed = listing, seed
        self._perm: dict[int, np.ndarray] = {}
        self._next = [0] * len(listing.groups)
        self._where: dict[Path, int] = {}  # drawn path -> its group
        self.drawn = self.failed = 0

    def left(self, g: int) -> int:
        return len(self.listing.groups[g][1]) - self._next[g]

    def take(self, g: int) -> Path:
        if g not in self._perm:
            rng = np.random.default_rng([self.seed, g])
            self._perm[g] = rng.permutation(len(self.listing.groups[g][1]))
        i = int(self._perm[g][self._next[g]])
        self._next[g] += 1
        self.drawn += 1
        p = self.listing.path(g, i)
        self._where[p] = g
        return p

    def draw(self, n: int) -> list[Path]:
        """``n`` files (fewer if the folder has fewer left), spread over the sorted subfolders
        by :func:`spread`; a seeded draw inside each."""
        sizes = [self.left(g) for g in range(len(self.listing.groups))]
        key = [self.seed, len(self.listing.groups), self.drawn]
        return [self.take(g) for g in spread(sizes, n, key)]

    def replace(self, p: Path) -> Path | None:
        """Another file for ``p``, which could not be used: from its subfolder, else any."""
        self.failed += 1
        if self.failed > 16 + 2 * self.drawn:
            return None
        g0 = self._where.get(p, 0)
        for k in range(len(self.listing.groups)):
            g = (g0 + k) % len(self.listing.groups)
            if self.left(g):
                return self.take(g)
        return None


def draw(listing: Listing, n: int, seed: int = 0, held_out: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """A seeded sample of ``n`` files of ``listing`` spread over its subfolders (see
    :meth:`_Pool.draw`), and with ``held_out`` a disjoint sample of that many drawn the same
    way (when the folder has fewer files than both need, a quarter is held out, at least one).
    Nothing is decoded: :func:`load_samples` decodes and replaces unusable files."""
    what, folder = listing.what, listing.folder
    pool = _Pool(listing, seed)
    if held_out:
        total = listing.count
        if total < 2:
            raise UserError(f"{what} {folder} has one image: give --eval DIR or more images")
        if total < n + held_out:
            held_out = min(held_out, max(1, total // 4))
            n = min(n, total - held_out)
    calib = ImageSet(tuple(pool.draw(n)), f"{what} {folder}", listing.skipped, root=folder, pool=pool)
    if not held_out:
        return calib, None
    return calib, ImageSet(tuple(pool.draw(held_out)), f"{what} {folder} (held-out split)",
                           root=folder, pool=pool)


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


def load_samples(images: ImageSet, size: int, pp: Preprocess, count: int,
                 seed: int = 0) -> tuple[ImageSet, np.ndarray]:
    """``count`` samples (N, 3, size, size): every image once, then further views in turn; and
    the set of files actually used. Each file is decoded once at most and turned into its sample
    at once; the photos themselves are kept only when further views of them are needed (then
    there are fewer photos than samples). An unusable file is listed and, for a drawn set,
    replaced by another draw."""
    rng = np.random.default_rng(seed)
    keep = len(images.paths) < count
    queue, i = list(images.paths), 0
    used: list[Path] = []
    photos: list[Image.Image] = []
    out: list[np.ndarray] = []
    unusable = list(images.unusable)
    while i < len(queue) and len(used) < count:
        p = queue[i]
        i += 1
        try:
            img = open_rgb(p)
        except UserError as e:
            name = p.relative_to(images.root).as_posix() if images.root else p.name
            unusable.append(str(e).replace(str(p), name))
            again = images.pool.replace(p) if images.pool is not None else None
            if again is not None:
                queue.insert(i, again)
            continue
        used.append(p)
        out.append(to_tensor(resize_and_crop(img, size, pp), pp))
        if keep:
            photos.append(img)
    if not used:
        where = f"{images.source.split(' ')[0]} folder {images.root}" if images.root else images.source
        raise NoUsableImage(f"{where} holds no usable image: none of the "
                            f"{len(unusable)} drawn could be used ({'; '.join(unusable[:3])}); give a "
                            f"folder of photos ({', '.join(IMAGE_SUFFIXES)})", tuple(unusable))
    if len(used) < count and not photos:  # files failed with none left to replace them
        photos = [open_rgb(p) for p in used]
    for j in range(len(used), count):
        view = _view(photos[j % len(used)], j // len(used), rng)
        out.append(to_tensor(resize_and_crop(view, size, pp), pp))
    got = ImageSet(tuple(used), images.source, images.skipped, tuple(unusable), images.root)
    return got, np.concatenate(out)


def load_split(calib: ImageSet, held_out: ImageSet, size: int, pp: Preprocess, num_calib: int,
               num_eval: int, seed: int = 0) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray, list[str]]:
    """:func:`load_samples` for a calibration draw and the held-out draw of the same folder
    (:func:`draw` with ``held_out``), and the notices to show. In a small folder every file is
    drawn, so an unusable one has no replacement left: when either side then holds no usable
    image, the usable files of both are split again (a quarter held out, at least one), and a
    folder with a single usable photo calibrates and reports on it, saying so. A folder with no
    usable image at all is still one error."""
    try:
        calib_got, xc = load_samples(calib, size, pp, num_calib, seed=seed)
    except NoUsableImage as e:
        calib_got, xc, calib_bad = None, None, e
    try:
        held_got, xe = load_samples(held_out, size, pp, num_eval, seed=seed + 1)
    except NoUsableImage as e:
        held_got, xe, held_bad = None, None, e
    if calib_got is not None and held_got is not None:
        return (calib_got, xc, held_got, xe, calib_got.unusable_notice("--calib")
                + held_got.unusable_notice("--calib (held out)"))
    if calib_got is None and held_got is None:
        raise calib_bad
    usable = [*(calib_got.paths if calib_got else ()), *(held_got.paths if held_got else ())]
    unusable = (*(calib_got.unusable if calib_got else calib_bad.unusable),
                *(held_got.unusable if held_got else held_bad.unusable))
    source = calib.source
    if len(usable) == 1:
        one = ImageSet(tuple(usable), source, calib.skipped, unusable, calib.root)
        calib_got, xc = load_samples(one, size, pp, num_calib, seed=seed)
        held_got, xe = load_samples(replace(one, unusable=(), source=f"{source} (the calibration photo, reused)"),
                                    size, pp, num_eval, seed=seed + 1)
        reused = (f"--calib: {calib_got.files()[0]} is the only usable image, so the quality report "
                  "is measured on the photo that calibrated the model (not held out); give --eval "
                  "DIR or more images for a held-out figure")
        return calib_got, xc, held_got, xe, calib_got.unusable_notice("--calib") + [reused]
    k = max(1, len(usable) // 4)
    calib_set = ImageSet(tuple(usable[:-k]), source, calib.skipped, unusable, calib.root)
    held_set = ImageSet(tuple(usable[-k:]), held_out.source, root=calib.root)
    calib_got, xc = load_samples(calib_set, size, pp, num_calib, seed=seed)
    held_got, xe = load_samples(held_set, size, pp, num_eval, seed=seed + 1)
    split = (f"--calib: the held-out split was made again from the {len(usable)} usable images "
             f"({len(usable) - k} to calibrate, {k} held out)")
    return calib_got, xc, held_got, xe, calib_got.unusable_notice("--calib") + [split]


def image_batch(images: ImageSet, size: int, pp: Preprocess, count: int, seed: int = 0) -> np.ndarray:
    """``count`` samples (N, 3, size, size): every image once, then further views in turn."""
    return load_samples(images, size, pp, count, seed)[1]

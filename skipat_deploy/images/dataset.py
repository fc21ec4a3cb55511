"""Labelled image datasets as users hold them (for ``evaluate``).

Layouts, tried in this order:

- ``--labels FILE``: a CSV of ``path,label`` rows (a header row naming its columns is
  recognised, so Kaggle's ``LOC_val_solution.csv`` and Imagenette's ``noisy_imagenette.csv``
  work as they come; an ``is_valid`` column keeps the validation rows), or a text file of
  ``filename label`` lines (Caffe's ``val.txt``). Paths are relative to the data folder; a path
  without its extension is matched by file stem.
- Class folders named by WordNet ID (``n01440764/``: ImageNet after ``valprep.sh``, Imagenette,
  Imagewoof) or by class index (``243/``).
- The ImageNet validation layout: a flat folder of images beside a ground-truth file, found in
  the folder or its parent (``LOC_val_solution.csv``, ``val.txt``, or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` with ``map_clsloc.txt`` or ``meta.mat``).
- A dataset root holding ``train/`` and ``val/`` (Imagenette's): its ``val/``.

Labels are class indices in the ImageNet-1k order or WordNet IDs (mapped into that order).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .calibration import spread
from ..core.errors import UserError
from .imagenet import synset_index
from .preprocess import IMAGE_SUFFIXES

WNID = re.compile(r"^n\d{8}$")
GROUND_TRUTH_FILES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt", "val.txt",
                      "val_labels.txt", "ground_truth.txt")
PATH_COLUMNS = ("path", "file", "filename", "image", "image_id", "imageid", "img")
LABEL_COLUMNS = ("label", "class", "class_id", "target", "noisy_labels_0", "predictionstring", "wnid")


class DatasetError(UserError):
    """The data folder or the labels file cannot be read as a labelled dataset."""


@dataclass(frozen=True)
class LabelledImages:
    root: Path
    items: tuple[tuple[Path, int], ...]  # (image file, class index), in a stable order
    layout: str  # how the labels were found, said in the report
    notices: tuple[str, ...] = field(default=())

    @property
    def labels(self) -> np.ndarray:
        return np.array([c for _, c in self.items], dtype=np.int64)

    @property
    def num_classes_seen(self) -> int:
        return len({c for _, c in self.items})


def parse_label(text: str, where: str) -> int:
    """A class index (``243``) or an ImageNet-1k WordNet ID (``n02108915``)."""
    text = text.strip().split()[0] if text.strip() else ""
    if text.isdigit():
        return int(text)
    if WNID.match(text):
        index = synset_index().get(text)
        if index is None:
            raise DatasetError(f"{where}: {text} is not one of the ImageNet-1k classes")
        return index
    raise DatasetError(f"{where}: label {text!r} is neither a class index nor a WordNet ID "
                       "(n01440764)")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def load_dataset(root: str | Path, labels: str | Path | None = None) -> LabelledImages:
    """The labelled images under ``root`` (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: not a folder")
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise DatasetError(f"--labels {labels}: file not found")
        return _from_list(root, labels, f"labels from {labels.name}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = [d.name for d in subdirs]
    if names and all(WNID.match(n) for n in names):
        return _class_folders(root, subdirs, "class folders named by WordNet ID")
    if names and all(n.isdigit() for n in names):
        return _class_folders(root, subdirs, "class folders named by class index")
    if "val" in names and not any(_is_image(p) for p in root.iterdir()):
        ds = load_dataset(root / "val")
        return replace(ds, layout=f"{ds.layout} (val/ of {root.name})")
    for folder in (root, root.parent):
        for name in GROUND_TRUTH_FILES:
            if (folder / name).is_file():
                return _from_list(root, folder / name, f"ImageNet validation layout ({name})")
    found = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    raise DatasetError(
        f"--data {root}: no labels found. Expected class folders named by WordNet ID (n01440764) "
        f"or class index (243)" + (f", found folders {found}" if names else "")
        + f"; or images with a ground-truth file ({', '.join(GROUND_TRUTH_FILES[:3])}); "
        "or pass --labels FILE (CSV of path,label)")


def _class_folders(root: Path, subdirs: list[Path], layout: str) -> LabelledImages:
    items = []
    for d in subdirs:
        label = parse_label(d.name, f"folder {d.name}")
        items += [(p, label) for p in _images_under(d)]
    if not items:
        raise DatasetError(f"--data {root}: the class folders hold no images "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    loose = [p for p in root.iterdir() if _is_image(p)]
    notices = (f"{len(loose)} image(s) directly in {root} (outside any class folder) were "
               "ignored",) if loose else ()
    return LabelledImages(root, tuple(items), layout, notices)


def _rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and "," in lines[0]:
        return [[c.strip() for c in row] for row in csv.reader(lines)]
    return [ln.split() for ln in lines]


def _devkit_map(gt: Path, root: Path) -> dict[int, int]:
    """devkit ILSVRC2012_ID (1-based, not the 1k order) -> class index, from the devkit's files."""
    for folder in dict.fromkeys((gt.parent, root, root.parent)):
        clsloc = folder / "map_clsloc.txt"
        if clsloc.is_file():
            pairs = [ln.split()[:2] for ln in clsloc.read_text().splitlines() if ln.strip()]
            return {int(i): parse_label(w, str(clsloc)) for w, i in pairs}
        meta = folder / "meta.mat"
        if meta.is_file():
            from scipy.io import loadmat  # MATLAB data, no code: safe to read

            synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
            return {int(s["ILSVRC2012_ID"]): synset_index()[str(s["WNID"])]
                    for s in synsets if int(s["num_children"]) == 0}
    raise DatasetError(f"{gt.name} numbers classes by devkit ID, not in the 1k order: put the "
                       "devkit's data/map_clsloc.txt or meta.mat beside it, or pass --labels")


def _from_list(root: Path, path: Path, layout: str) -> LabelledImages:
    rows = _rows(path)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    by_name: dict[str, Path] = {}
    for p in _images_under(root):
        by_name.setdefault(p.name, p)
        by_name.setdefault(p.stem, p)
    if path.name == "ILSVRC2012_validation_ground_truth.txt":
        devkit = _devkit_map(path, root)
        rows = [[f"ILSVRC2012_val_{i + 1:08d}", str(devkit[int(r[0])])] for i, r in enumerate(rows)]
    path_col, label_col, valid_col = 0, 1, None
    header = [c.lower().replace(" ", "_") for c in rows[0]]
    has_header = len(rows[0]) >= 2 and not _looks_like_label(rows[0][1]) and any(
        c in PATH_COLUMNS or c in LABEL_COLUMNS for c in header)
    if has_header:
        path_col = next((header.index(c) for c in PATH_COLUMNS if c in header), 0)
        label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if label_col is None:
            raise DatasetError(f"{path}: no label column (one of {', '.join(LABEL_COLUMNS)}) in "
                               f"the header {rows[0]}")
        valid_col = header.index("is_valid") if "is_valid" in header else None
        rows = rows[1:]
    items, missing = [], []
    for n, row in enumerate(rows, start=2 if has_header else 1):
        if len(row) <= max(path_col, label_col):
            raise DatasetError(f"{path}, row {n}: expected a path and a label, got {row}")
        if valid_col is not None and row[valid_col].strip().lower() not in ("true", "1", "yes"):
            continue
        label = parse_label(row[label_col], f"{path}, row {n}")
        rel = row[path_col]
        image = root / rel
        if not image.is_file():
            image = by_name.get(Path(rel).name) or by_name.get(rel)
        if image is None or not image.is_file():
            missing.append(rel)
            continue
        items.append((image, label))
    if not items:
        raise DatasetError(f"{path}: none of its {len(rows)} rows names an image under {root}")
    notices = ()
    if missing:
        notices = (f"{len(missing)} image(s) listed in {path.name} are not under {root} and were "
                   f"skipped (first: {missing[0]})",)
    return LabelledImages(root, tuple(items), layout, notices)


def _looks_like_label(text: str) -> bool:
    text = text.strip().split()[0] if text.strip() else ""
    return text.isdigit() or bool(WNID.match(text))


def stratified_indices(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices (ascending) of a seeded sample of ``n`` of ``labels`` stratified by class: the
    classes in sorted order, spread as calibration spreads subfolders (round-robin while ``n``
    allows every class, else a seeded choice of classes; :func:`~skipat_deploy.images.calibration.spread`)
    and a seeded permutation inside each class; all of them when ``n`` is None or too many."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n < 1:
        raise DatasetError(f"the sample size must be at least 1, got {n}")
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    perms = [m[np.random.default_rng([seed, int(c)]).permutation(len(m))] for c, m in zip(classes, members)]
    taken = [0] * len(classes)
    out = []
    for g in spread([len(m) for m in members], n, [seed, len(classes)]):
        out.append(perms[g][taken[g]])
        taken[g] += 1
    return np.sort(np.asarray(out, dtype=np.int64))


def stratified_subset(ds: LabelledImages, n: int | None, seed: int = 0) -> LabelledImages:
    """``n`` items of ``ds`` stratified by class (:func:`stratified_indices`), in the dataset's
    order; all of them when ``n`` is None or at least the dataset's size."""
    if n is None or n >= len(ds.items):
        return ds
    if n < 1:
        raise DatasetError(f"--num-samples must be at least 1, got {n}")
    return replace(ds, items=tuple(ds.items[i] for i in stratified_indices(ds.labels, n, seed)))

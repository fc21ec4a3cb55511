"""Photo folders the benchmarks calibrate and evaluate on, made from the photos bundled with
declared dependencies (skipat_deploy.images.calibration.bundled_photos)."""

from __future__ import annotations

from pathlib import Path

from skipat_deploy.images import calibration


def copy_into(folder: Path, photos) -> Path:
    """``photos`` (paths) copied into ``folder`` (made); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos:
        (folder / p.name).write_bytes(Path(p).read_bytes())
    return folder


def photo_folders(tmp: Path) -> dict[str, Path]:
    """``calib``: scikit-image's photos; ``eval``: scikit-learn's and matplotlib's."""
    calib, evaluation = calibration.bundled_photos()
    return {"calib": copy_into(tmp / "calib", calib.paths), "eval": copy_into(tmp / "eval", evaluation.paths)}

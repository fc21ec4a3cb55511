"""Calibration samples: a seeded draw spread over the folder's subfolders, decoding only the
files drawn; unusable draws replaced; the held-out split disjoint; the files used reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skipat_deploy.images import calibration
from skipat_deploy.core.errors import UserError
from skipat_deploy.images.preprocess import Preprocess
from skipat_deploy.quant.quantize import QuantizeConfig, calibration_images

CLASSES = 10
PER_CLASS = 30


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    """10 class folders of 30 small JPEGs, an unreadable .jpg and a text file."""
    d = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        sub = d / f"class{c:02d}"
        sub.mkdir()
        for i in range(PER_CLASS):
            px = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(px, "RGB").save(sub / f"img{i:03d}.jpg")
    (d / "class03" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def _cls(path: str) -> str:
    return path.split("/")[0]


def _counting(monkeypatch) -> list[Path]:
    """Every file calibration decodes, in order."""
    opened: list[Path] = []
    real = calibration.open_rgb

    def counted(p):
        opened.append(Path(p))
        return real(p)

    monkeypatch.setattr(calibration, "open_rgb", counted)
    return opened


def test_the_draw_spreads_over_every_class_and_follows_the_seed(classes):
    listing = calibration.list_images(classes)
    assert listing.count == CLASSES * PER_CLASS + 1 and [p.name for p in listing.skipped] == ["notes.txt"]
    files = lambda seed: calibration.draw(listing, 20, seed)[0].files()  # noqa: E731
    got = files(0)
    assert len(got) == len(set(got)) == 20
    assert Counter(map(_cls, got)) == {f"class{c:02d}": 2 for c in range(CLASSES)}
    assert files(0) == got and files(1) != got
    few = calibration.draw(listing, 4, 0)[0].files()  # fewer than the classes: 4 of them
    assert len({_cls(f) for f in few}) == 4


def test_only_drawn_files_are_decoded_and_an_unusable_one_is_replaced(classes, monkeypatch):
    listing = calibration.list_images(classes)
    seed = next(s for s in range(200)  # a seed whose draw holds the broken file
                if "class03/broken.jpg" in calibration.draw(listing, 20, s)[0].files())
    drawn, _ = calibration.draw(listing, 20, seed)
    opened = _counting(monkeypatch)
    used, x = calibration.load_samples(drawn, 32, Preprocess(), 20, seed=seed)
    assert x.shape == (20, 3, 32, 32) and np.isfinite(x).all()
    assert len(opened) == 21 and len(set(opened)) == 21  # the 20 drawn + 1 replacement, once each
    assert set(opened) == set(drawn.paths) | set(used.paths)
    assert "class03/broken.jpg" not in used.files() and len(set(used.files())) == 20
    assert Counter(map(_cls, used.files()))["class03"] == 2  # replaced from the same class
    (notice,) = used.unusable_notice("--calib")
    assert "1 images that cannot be used" in notice and "class03/broken.jpg" in notice


def test_held_out_split_is_disjoint_and_spread(classes):
    cfg = QuantizeConfig(calib_dir=classes, num_calib=20, num_eval=10, seed=3)
    notices: list[str] = []
    calib, held = calibration_images(cfg, notices)
    assert len(calib.paths) == 20 and len(held.paths) == 10
    assert set(calib.paths).isdisjoint(held.paths)
    assert len({_cls(f) for f in held.files()}) == CLASSES
    assert "held-out" in held.source and any("held-out" in n for n in notices)
    assert any("notes.txt" in n for n in notices)


def test_eval_folder_is_sampled_too(classes, tmp_path):
    cfg = QuantizeConfig(calib_dir=classes, eval_dir=classes, num_calib=8, num_eval=10)
    calib, evaluation = calibration_images(cfg, [])
    assert len(evaluation.paths) == 10 and len({_cls(f) for f in evaluation.files()}) == CLASSES
    assert evaluation.source.startswith("--eval")


def test_more_samples_than_photos_decodes_each_photo_once(tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    drawn, _ = calibration.draw(calibration.list_images(tmp_path), 10)
    assert len(drawn.paths) == 3
    opened = _counting(monkeypatch)
    used, x = calibration.load_samples(drawn, 32, Preprocess(), 10)
    assert x.shape == (10, 3, 32, 32) and len(opened) == 3 and used.files() == drawn.files()


def test_a_folder_with_no_usable_image_is_one_user_error(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(40):
            (tmp_path / c / f"{i}.jpg").write_bytes(b"\xff\xd8 broken")
    (tmp_path / "a" / "tiny.png").write_bytes(b"")
    drawn, _ = calibration.draw(calibration.list_images(tmp_path), 8)
    with pytest.raises(UserError) as e:
        calibration.load_samples(drawn, 32, Preprocess(), 8)
    msg = str(e.value)
    assert "holds no usable image" in msg and "\n" not in msg and str(tmp_path) in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(UserError, match="holds no usable image"):
        calibration.list_images(empty)


def test_bundled_photos_are_named():
    calib, evaluation = calibration.bundled_photos()
    assert "astronaut.png" in calib.files() and "china.jpg" in evaluation.files()

"""Image folders as users have them: odd modes and encodings are converted, the unusable ones
are skipped with their reason, a folder with nothing usable is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skipat_deploy.images import calibration
from skipat_deploy.core.errors import UserError
from skipat_deploy.images.preprocess import Preprocess, open_rgb


def _photo(w=64, h=48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture()
def odd_folder(tmp_path):
    d = tmp_path / "odd"
    (d / "sub").mkdir(parents=True)
    p = _photo()
    p.convert("L").save(d / "grey.png")
    rgba = p.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "alpha.png")
    pal = p.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    p.convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    p.save(d / "sub" / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)).save(d / "deep16.png")
    _photo(20, 12).save(d / "small.png")  # smaller than the model input: upscaled
    _photo(4, 4).save(d / "tiny.png")  # too small to use
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


def test_odd_images_are_converted_and_unusable_ones_listed(odd_folder):
    listing = calibration.list_images(odd_folder)
    drawn, _ = calibration.draw(listing, listing.count)
    found, x = calibration.load_samples(drawn, 224, Preprocess(), 9)
    names = sorted(p.name for p in found.paths)
    assert names == ["alpha.png", "cmyk.jpg", "deep16.png", "grey.png", "palette.png",
                     "rotated.jpg", "small.png"]
    assert [p.name for p in found.skipped] == ["notes.txt"]
    reasons = " | ".join(found.unusable)
    assert "broken.jpg" in reasons and "tiny.png" in reasons and "too small" in reasons
    notices = found.notices("--calib")
    assert len(notices) == 2 and "2 images that cannot be used" in notices[1]
    assert x.shape == (9, 3, 224, 224) and np.isfinite(x).all()


def test_exif_rotation_and_16_bit_values(odd_folder):
    assert open_rgb(odd_folder / "sub" / "rotated.jpg").size == (48, 64)  # upright: portrait
    deep = np.asarray(open_rgb(odd_folder / "deep16.png"))
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255
    assert 100 < deep.mean() < 155  # a ramp over the whole range, not clipped to white


def test_a_folder_with_no_usable_image_is_one_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "readme.md").write_text("hello")
    with pytest.raises(UserError) as e:
        calibration.load_samples(calibration.draw(calibration.list_images(tmp_path), 4)[0], 224,
                                 Preprocess(), 4)
    msg = str(e.value)
    assert "no usable image" in msg and "broken.png" in msg and "\n" not in msg


@pytest.fixture()
def small_odd_folder(tmp_path):
    """Five good photos in odd modes, a truncated JPEG and a text file: a user's first folder."""
    d = tmp_path / "small"
    d.mkdir()
    p = _photo()
    p.convert("L").save(d / "grey.png")
    p.convert("RGBA").save(d / "rgba.png")
    p.convert("CMYK").save(d / "cmyk.jpg")
    p.convert("P", palette=Image.ADAPTIVE, colors=16).save(d / "palette.png")
    _photo(40, 30).save(d / "thumb.jpg")
    full = d / "thumb.jpg"
    (d / "broken.jpg").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    (d / "notes.txt").write_text("not an image")
    return d


def _seed_holding_out(listing, name: str) -> int:
    """A seed whose held-out split of ``listing`` (16 asked, a quarter given) is file ``name``."""
    for seed in range(100):
        _, held = calibration.draw(listing, 64, seed, held_out=16)
        if [p.name for p in held.paths] == [name]:
            return seed
    raise AssertionError(f"no seed holds out {name}")


def test_a_small_folder_whose_held_out_file_is_broken_splits_its_usable_photos(small_odd_folder):
    listing = calibration.list_images(small_odd_folder)
    seed = _seed_holding_out(listing, "broken.jpg")
    calib, held = calibration.draw(listing, 64, seed, held_out=16)
    got_c, xc, got_e, xe, notices = calibration.load_split(calib, held, 224, Preprocess(), 64, 16, seed)
    used_c, used_e = {p.name for p in got_c.paths}, {p.name for p in got_e.paths}
    assert len(used_c) == 4 and len(used_e) == 1 and not used_c & used_e  # still held out
    assert used_c | used_e == {"grey.png", "rgba.png", "cmyk.jpg", "palette.png", "thumb.jpg"}
    assert xc.shape == (64, 3, 224, 224) and xe.shape == (16, 3, 224, 224)
    said = " | ".join(notices)
    assert "broken.jpg" in said and "made again from the 5 usable images" in said


def test_a_folder_with_one_usable_photo_reuses_it_and_says_so(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    _photo().save(d / "good.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    listing = calibration.list_images(d)
    for seed in range(2):  # each file on each side once
        calib, held = calibration.draw(listing, 8, seed, held_out=4)
        got_c, _, got_e, xe, notices = calibration.load_split(calib, held, 64, Preprocess(), 8, 4, seed)
        assert [p.name for p in got_c.paths] == [p.name for p in got_e.paths] == ["good.png"]
        assert xe.shape == (4, 3, 64, 64)
        assert any("not held out" in n for n in notices) and any("bad.png" in n for n in notices)
    (d / "good.png").unlink()
    (d / "bad2.jpg").write_bytes(b"\xff\xd8 nope")
    calib, held = calibration.draw(calibration.list_images(d), 8, 0, held_out=4)
    with pytest.raises(UserError, match="holds no usable image"):
        calibration.load_split(calib, held, 64, Preprocess(), 8, 4, 0)

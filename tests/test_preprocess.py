"""Pre-processing equals timm's eval transform, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skipat_deploy.core.errors import UserError
from skipat_deploy.images.preprocess import Preprocess, load_image


@pytest.mark.parametrize("size,crop_pct,wh", [(224, 0.875, (320, 240)), (384, 1.0, (300, 500)),
                                              (224, 0.9, (224, 224))])
def test_matches_timm_eval_transform(tmp_path, size, crop_pct, wh):
    timm_data = pytest.importorskip("timm.data")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    pp = Preprocess(crop_pct=crop_pct)
    ours = load_image(tmp_path / "x.png", size, pp)
    tf = timm_data.create_transform(input_size=(3, size, size), crop_pct=crop_pct,
                                    interpolation="bicubic", mean=pp.mean, std=pp.std)
    want = tf(img.convert("RGB")).numpy()[None]
    assert ours.shape == want.shape == (1, 3, size, size)
    assert np.abs(ours - want).max() < 1e-5


def test_unreadable_image(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "x.jpg", 224, Preprocess())
    with pytest.raises(UserError, match="image not found"):
        load_image(tmp_path / "y.jpg", 224, Preprocess())

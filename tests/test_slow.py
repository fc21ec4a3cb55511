"""End-to-end exports of full-size models (marked slow: `pytest -m slow` runs them alone)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from skipat_deploy import api
from skipat_deploy.export import cpu_session

pytestmark = pytest.mark.slow

# The ViT-T / SkipAt-T parity set (53 MB) is not in the repository; a checkout beside the
# project's shared/ folder, or SKIPAT_GOLDEN_TINY, provides it.
TINY = Path(os.environ.get("SKIPAT_GOLDEN_TINY", Path(__file__).parents[2] / "shared/golden/tiny"))


@pytest.mark.parametrize("arch", ["vit_tiny_patch16", "skipat_tiny_patch16"])
def test_full_size_export_both_resolutions(tmp_path, arch):
    results = api.export(None, tmp_path, arch=arch, batch_size=2)
    assert [(r.resolution, r.grid) for r in results] == [(224, 14), (384, 24)]
    for r in results:
        assert r.max_abs_diff <= 1e-4 and r.output_shape == (2, 1000)


@pytest.mark.skipif(not TINY.is_dir(), reason="golden/tiny parity data not available")
@pytest.mark.parametrize("family,file", [("skipat", "skipat_tiny.t7"), ("vit", "vit_tiny.pth")])
def test_golden_tiny_parity(tmp_path, family, file):
    inputs, expected = np.load(TINY / "inputs.npz"), np.load(TINY / "expected.npz")
    for r in api.export(TINY / file, tmp_path, batch_size=2):
        got = cpu_session(r.path).run(None, {"image": inputs[f"x{r.resolution}"]})[0]
        want = expected[f"{family}_tiny_{r.resolution}"]
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("arch", ["vit_tiny_patch16", "skipat_tiny_patch16"])
def test_full_size_compile_every_node_on_the_npu(tmp_path, arch):
    """ViT-T / SkipAt-T at 224, quantized (w8a8) and compiled for the Galaxy S22 with CPU
    fallback off; the simulated NPU runs the context binary."""
    pytest.importorskip("onnxruntime_qnn")
    r = api.compile(None, tmp_path, device="Galaxy S22", arch=arch, precision="w8a8",
                    quant_backend="ort", num_calib=16, num_check=1)
    assert r.artifacts["context_binary"].stat().st_size > 1_000_000
    assert np.isfinite(r.check.sqnr_db) and r.check.num_samples == 1

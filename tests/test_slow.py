"""Full-size models. What the size is the subject of runs by default (SkipAt-T compiled
entirely to the NPU); the rest is `slow` (deselected by default; `pytest -m slow` runs it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from skipat_deploy import api
from skipat_deploy.export import cpu_session

# The ViT-T / SkipAt-T parity set (53 MB) is not in the repository; a checkout beside the
# project's shared/ folder, or SKIPAT_GOLDEN_TINY, provides it.
# The NPU's output of a full-size model at w8a8 against float. What the floor guards against
# is a graph that computes something else (a dropped quantizer, a misplaced op): its output is
# unrelated to float, noise at least as strong as the signal (0 dB or less). 3 dB is noise at
# most half the signal. (Perturbed random SkipAt-T weights, ORT w8a8, measured 8.1 dB on the NPU
# and 8.3 dB on the CPU: random full-size weights are hard to quantize; freshly initialised
# ones, whose outputs barely depend on the image, read 0.7 dB and are not used.)
FULL_SIZE_FLOOR_DB = 3.0
TINY = Path(os.environ.get("SKIPAT_GOLDEN_TINY", Path(__file__).parents[2] / "shared/golden/tiny"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny_patch16", "skipat_tiny_patch16"])
def test_full_size_export_both_resolutions(tmp_path, arch):
    results = api.export(None, tmp_path, arch=arch, batch_size=2)
    assert [(r.resolution, r.grid) for r in results] == [(224, 14), (384, 24)]
    for r in results:
        assert r.max_abs_diff <= 1e-4 and r.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.skipif(not TINY.is_dir(), reason="golden/tiny parity data not available")
@pytest.mark.parametrize("family,file", [("skipat", "skipat_tiny.t7"), ("vit", "vit_tiny.pth")])
def test_golden_tiny_parity(tmp_path, family, file):
    inputs, expected = np.load(TINY / "inputs.npz"), np.load(TINY / "expected.npz")
    for r in api.export(TINY / file, tmp_path, batch_size=2):
        got = cpu_session(r.path).run(None, {"image": inputs[f"x{r.resolution}"]})[0]
        want = expected[f"{family}_tiny_{r.resolution}"]
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("arch", ["skipat_tiny_patch16",
                                  pytest.param("vit_tiny_patch16", marks=pytest.mark.slow)])
def test_full_size_compile_every_node_on_the_npu(tmp_path, arch):
    """ViT-T / SkipAt-T at 224, quantized (w8a8) and compiled for the Galaxy S22 with CPU
    fallback off (success means every node is on the NPU); the simulated NPU runs the context
    binary and passes the NPU gate against the float model."""
    import torch

    from .conftest import random_state_dict

    pytest.importorskip("onnxruntime_qnn")
    ckpt = tmp_path / f"{arch}.pth"  # weights whose outputs differ from image to image
    torch.save(random_state_dict(arch, seed=1), ckpt)
    r = api.compile(None, tmp_path, ckpt=ckpt, device="Galaxy S22", precision="w8a8",
                    quant_backend="ort", num_calib=16, npu_samples=1)
    assert r.check.gate == "passed" and r.check.num_samples == 1
    print(f"{arch}: NPU vs float {r.check.npu_vs_float_sqnr_db:.1f} dB, CPU QDQ vs float "
          f"{r.check.qdq_vs_float_sqnr_db:.1f} dB, NPU vs CPU QDQ {r.check.sqnr_db:.1f} dB")
    assert r.check.npu_vs_float_sqnr_db > FULL_SIZE_FLOOR_DB

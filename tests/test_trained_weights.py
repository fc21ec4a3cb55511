"""The INT8 path on weights shaped like trained ones (tests/conftest.py
``trained_like_state_dict``): negative and zero LayerNorm gains, outlier channels, LayerScale
with zero entries, pruned units, a head with all-zero rows, float16 storage, in every layout."""

from __future__ import annotations

import copy
import sys

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.models.checkpoint import load_weights
from skipat_deploy.cli import app
from skipat_deploy.core.errors import RewriteError
from skipat_deploy.export import run_qdq_cpu
from skipat_deploy.models.registry import build_model
from skipat_deploy.quant import rotate
from skipat_deploy.quant.rewrite import check_float_equivalent, prepare

from .conftest import LAYOUTS, trained_like_state_dict

# --npu-samples 0: the NPU figure has its own tests (test_inspect.py); it costs a simulator run
FAST = dict(num_calib=8, num_eval=4, npu_samples=0)


def _model(name: str, seed: int = 2):
    arch = LAYOUTS[name]
    return load_weights(build_model(arch), trained_like_state_dict(arch, seed), name).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("rotates", [True, False])
def test_the_quantizers_rewrites_keep_the_function(name, rotates):
    model = _model(name)
    x = _images(1)
    with torch.no_grad():
        ref = model(x)
        prepared = prepare(model, x, rotates)  # raises RewriteError if it does not
        assert _rel(prepared(x), ref) <= 1e-5
        assert _rel(prepared(_images(9)), model(_images(9))) <= 1e-5  # not only on calibration


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_cpu_int8_rotations_keep_the_function(name):
    model = _model(name)
    with torch.no_grad():
        rotated = rotate.rotate_values(rotate.rotate_residual_stream(copy.deepcopy(model)))
    assert check_float_equivalent(model, rotated, _images(3), "test") <= 1e-6


def test_float16_checkpoints_load_and_rewrite(trained_like_ckpts):
    loaded = api.load(trained_like_ckpts["skipat_layerscale_fp16"],
                      skip_indices=LAYOUTS["skipat_layerscale"].skip_indices)
    assert loaded.info.storage_dtype == "float16"
    model = load_weights(build_model(loaded.arch), loaded.state_dict, loaded.spec.name).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    prepare(model, _images(4), rotates=True)


@pytest.mark.parametrize("where", ["rotation", "fold"])
def test_a_rewrite_that_changes_the_function_is_caught(where, monkeypatch):
    """The check compares against the model's own float32 rounding: a perturbation of one
    layer's weights by 0.1 % is far above it."""
    model = _model("skipat_layerscale")
    target = rotate if where == "rotation" else sys.modules["skipat_deploy.quant.equalize"]
    fn_name = "rotate_heads" if where == "rotation" else "fold_norm_affine"
    original = getattr(target, fn_name)

    def broken(m, *a, **k):
        out = original(m, *a, **k)
        with torch.no_grad():
            m.patch_embed.proj.weight.mul_(1.001)
        return out

    monkeypatch.setattr(target, fn_name, broken)
    with pytest.raises(RewriteError, match="changed what the model computes"):
        prepare(model, _images(5), rotates=where == "rotation")


def test_a_broken_rewrite_stops_quantize_with_one_line_and_nothing_written(
        trained_like_ckpts, tmp_path, monkeypatch):
    original = rotate.rotate_heads

    def broken(m, *a, **k):
        out = original(m, *a, **k)
        with torch.no_grad():
            m.head.bias.add_(0.01)
        return out

    monkeypatch.setattr(rotate, "rotate_heads", broken)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["quantize", "--ckpt", str(trained_like_ckpts["vit"]), "--out",
                                 str(out), "--precision", "w8a8", "--backend", "ort",
                                 "--num-calib", "4", "--num-eval", "2"])
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "changed what the model computes" in lines[0]
    assert "Traceback" not in r.output
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("precision, backend", [("w8a16", "aimet"), ("w8a8", "aimet"),
                                                ("mixed", "aimet"), ("w8a16", "ort"),
                                                ("w8a8", "ort")])
def test_a_head_with_zero_rows_quantizes(precision, backend, trained_like_ckpts, tmp_path):
    """Most head rows are zero with bias -10. Their int32 bias used to saturate (weight scale
    near 0 times input scale), so the QDQ model output ~0 there, and the check refused it."""
    # 16 held-out samples: on 4, one-step rounding flips between the simulation and the QDQ
    # model decide the pooled figure (mixed: 30.6 vs 32.1 dB on 4, 30.6 vs 30.8 on 16)
    r = api.quantize(trained_like_ckpts["vit"], tmp_path, precision=precision, backend=backend,
                     num_calib=8, num_eval=16, npu_samples=0, resolution=112)  # the head's subject
    if r.sim_quality is not None:
        assert r.quality.sqnr_db >= r.sim_quality.sqnr_db - 1.0  # within 1 dB of the simulation
    sd = trained_like_state_dict(LAYOUTS["vit"], seed=2)
    live = sd["head.weight"].abs().sum(1) > 0
    graph = onnx.load(str(r.qdq_onnx)).graph
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
    dead = run_qdq_cpu(r.qdq_onnx, x)[:, ~live.numpy()]
    assert np.abs(dead - -10.0).max() < 0.5, "the zero rows' bias did not survive quantization"
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10  # a quantized model


@pytest.mark.parametrize("precision, backend", [("w8a8", "ort"), ("w8a8", "aimet")])
def test_negative_layernorm_gains_quantize_like_the_original(precision, backend, tmp_path):
    """The same function with every 3rd LayerNorm gain (and bias) negated and the Linear that
    reads it negated to match: rotated INT8 used to compute another function (-0.6 dB)."""
    from .conftest import random_state_dict

    arch = LAYOUTS["vit"]
    sd = random_state_dict(arch, seed=1)  # gains near +1: the reference
    flipped = {k: v.clone() for k, v in sd.items()}
    c = torch.arange(0, arch.embed_dim, 3)
    for i in range(arch.depth):
        for norm, reader in (("norm1", "attn.qkv"), ("norm2", "mlp.fc1")):
            flipped[f"blocks.{i}.{norm}.weight"][c] *= -1
            flipped[f"blocks.{i}.{norm}.bias"][c] *= -1
            flipped[f"blocks.{i}.{reader}.weight"][:, c] *= -1
    results = []
    for name, weights in (("original", sd), ("flipped", flipped)):
        torch.save(weights, tmp_path / f"{name}.pth")
        results.append(api.quantize(tmp_path / f"{name}.pth", tmp_path / name, precision=precision,
                                    backend=backend, **FAST))
    a, b = results
    assert a.rotated and b.rotated
    assert abs(a.quality.sqnr_db - b.quality.sqnr_db) < 1.0


@pytest.mark.parametrize("precision", ["w8a16", "w8a8"])
def test_skipat_with_layerscale_quantizes(precision, trained_like_ckpts, tmp_path):
    """A skipped block's LayerScale used to be dropped (folded into an attention projection
    that never runs): 3 dB at every precision."""
    # 16 held-out images, not 4: a dropped LayerScale moves every image, while one image's
    # one-step rounding flip ahead of the final LayerNorm (a CLS token of tiny spread) moved
    # the pooled SQNR of 4 images by 1.8 dB (0.4 dB over 16).
    r = api.quantize(trained_like_ckpts["skipat_layerscale"], tmp_path, precision=precision,
                     skip_indices=LAYOUTS["skipat_layerscale"].skip_indices, **{**FAST, "num_eval": 16})
    assert r.quality.sqnr_db >= r.sim_quality.sqnr_db - 1.0
    assert r.quality.sqnr_db > (25 if precision == "w8a16" else 12)

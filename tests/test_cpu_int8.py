"""The CPU INT8 model: what it quantizes, that it is what predict and bundle take, its quality,
and the paired-ratio interval the CPU figures carry."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from skipat_deploy import api
from skipat_deploy.export import read_metadata
from skipat_deploy.measure.latency import ratio_interval
from skipat_deploy.models.config import ArchConfig
from skipat_deploy.models.registry import build_model
from skipat_deploy.quant import rotate
from skipat_deploy.quant.cpu import CpuInt8Config, quantize_cpu

from .conftest import random_state_dict


@pytest.fixture(scope="module")
def cpu_int8(tmp_path_factory, nano_ckpts):
    out = tmp_path_factory.mktemp("cpu")
    ck = api.load(nano_ckpts["skipat_nano_patch16"])
    return quantize_cpu(ck, out, CpuInt8Config(resolution=224, num_calib=8, num_eval=4))


def test_only_ops_with_fast_integer_kernels_are_quantized(cpu_int8):
    assert cpu_int8.path.name.endswith(".cpu_int8.onnx") and cpu_int8.report.is_file()
    graph = onnx.load(str(cpu_int8.path)).graph
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weights = {i.name for i in graph.initializer}
    for n in graph.node:
        if not n.input:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        fed = n.input[0] in dq_out
        if n.op_type in ("Gemm", "Conv"):
            assert fed, f"{n.name} (group {group}) should be 8-bit"
        if n.op_type == "MatMul" and n.input[1] not in weights and n.input[1] not in dq_out:
            assert not fed, f"{n.name} should stay float"
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert not fed, f"{n.name}: the CPU runs it float"
    gemm_out = {n.output[0] for n in graph.node if n.op_type in ("Gemm", "MatMul")}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in gemm_out for n in graph.node)
    assert list(cpu_int8.float_ops) == ["MatMul (activation x activation)"]
    meta = read_metadata(cpu_int8.path)
    assert meta["quantization"]["target"] == "cpu" and meta["resolution"] == 224
    assert cpu_int8.quality.sqnr_db > 20 and cpu_int8.rotated


def test_predict_takes_the_cpu_model(cpu_int8, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(img)
    (p,) = api.predict(cpu_int8.path, [img], top_k=3)
    assert len(p.top) == 3 and abs(sum(c.probability for c in p.top)) <= 1.0


@pytest.mark.parametrize("layer_scale", [False, True])
def test_value_rotation_keeps_the_function(layer_scale):
    arch = ArchConfig("vit", 64, 3, 1, num_classes=10, layer_scale=layer_scale)
    model = build_model(arch)
    model.load_state_dict(random_state_dict(arch, seed=3))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        rotate.rotate_residual_stream(model)
        rotate.rotate_values(model)
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max())


def test_paired_ratio_interval_covers_the_true_ratio():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(1000):
        base = rng.lognormal(np.log(0.04), 0.3, 60)  # a noisy shared machine
        times = np.stack([base * rng.lognormal(0, 0.05, 60), 0.9 * base * rng.lognormal(0, 0.05, 60)], 1)
        r = ratio_interval(times, 1, 0)
        hits += r.low <= 0.9 <= r.high
    assert 0.93 <= hits / 1000 <= 0.995
    quiet = np.stack([np.full(30, 0.04), np.full(30, 0.036)], 1)
    assert ratio_interval(quiet, 1, 0).relative_half_width < 1e-9

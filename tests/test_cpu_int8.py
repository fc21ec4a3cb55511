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


def _worst_pair_sums(path) -> dict[str, int]:
    """Per u8 x s8 integer op of the model file: the largest sum of two u8 x s8 products that
    ONNX Runtime's kernels add in one 16-bit step on x86 without VNNI (255 x (|w_a| + |w_b|) for
    the weight integers stored in the file; which weights are paired:
    :func:`skipat_deploy.quant.cpu.weight_pairs`). u8 x u8 is widened first: left out."""
    from onnx import numpy_helper

    from skipat_deploy.quant.cpu import weight_pairs

    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv") or n.input[0] not in dq or n.input[1] not in dq:
            continue
        act, w = init[dq[n.input[0]].input[2]], init[dq[n.input[1]].input[0]]
        if act.dtype == np.uint8 and w.dtype == np.int8:
            out[n.name] = int(255 * weight_pairs(n, w)[1].max())
    return out


def test_the_default_cpu_int8_model_cannot_saturate_on_any_cpu(tmp_path, nano_ckpts):
    """The file itself says it: no u8 x s8 pair of products can leave int16, so the result holds
    on x86 without VNNI as on every other CPU. The vnni flavour keeps 8-bit weights (pairs reach
    255 x 254), which is what makes this test able to fail."""
    from skipat_deploy.devices import CPU_ENCODINGS
    from skipat_deploy.export import run_qdq_cpu
    from skipat_deploy.quant.cpu import run_cpu

    r = api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path / "any", target="cpu", num_calib=8, num_eval=4)
    sums = _worst_pair_sums(r.path)
    meta = read_metadata(r.path)["quantization"]
    assert meta["cpu_isa"] == "any" and set(meta["encoding"]["holds_on"]) == {"x86", "x86-vnni", "arm", "arm-dot"}
    assert sums and all(v <= 32767 for v in sums.values()), sums
    # On this host's integer kernels the model computes what its QDQ semantics say, up to
    # float rounding (a code flipped here and there): far below the model's own quantization
    # noise. Saturation costs more than that noise (DINOv2 on x86 without VNNI: 12.5 dB
    # against 26.4 exact).
    from skipat_deploy.core.metrics import sqnr_db

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    exact, kernels = run_qdq_cpu(r.path, x), run_cpu(r.path, x)
    assert sqnr_db(exact, kernels) > r.quality.sqnr_db + 6
    v = api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path / "vnni", target="cpu", num_calib=8,
                     num_eval=4, cpu_isa="vnni")
    assert read_metadata(v.path)["quantization"]["encoding"] == CPU_ENCODINGS["u8s8"].to_json()
    assert max(_worst_pair_sums(v.path).values()) > 32767


def test_a_cpu_int8_model_on_a_host_it_was_not_made_for_is_said(monkeypatch):
    from skipat_deploy.devices import CPU_ENCODINGS, CpuHost, cpu_int8_warning

    vnni = dict(target="cpu", encoding=CPU_ENCODINGS["u8s8"].to_json())
    avx2 = CpuHost("AMD EPYC", "x86_64", False, 2, "1.32.0")
    said = cpu_int8_warning(vnni, "m.cpu_int8.onnx", avx2)
    assert said and "saturation" in said and "AMD EPYC" in said and "--cpu-isa any" in said
    assert cpu_int8_warning(dict(target="cpu"), "old.cpu_int8.onnx", avx2)  # made before: u8 x s8
    assert cpu_int8_warning(vnni, "m", CpuHost("Xeon", "x86_64", True, 2, "1.32.0")) is None
    assert cpu_int8_warning(vnni, "m", CpuHost("Cortex-A78", "aarch64", False, 2, "1.32.0")) is None
    anyc = dict(target="cpu", encoding=CPU_ENCODINGS["u8s8_rr"].to_json())
    assert cpu_int8_warning(anyc, "m", avx2) is None
    assert cpu_int8_warning(dict(target="npu"), "m.qdq.onnx", avx2) is None

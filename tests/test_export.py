"""ONNX export: golden parity, static shapes, no Erf, metadata, determinism, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from skipat_deploy.export import onnx_export as export_mod
from skipat_deploy.models.checkpoint import load_checkpoint
from skipat_deploy.core.errors import ExportValidationError, ResolutionError
from skipat_deploy.export import ExportConfig, export_onnx, read_metadata
from skipat_deploy.models.checkpoint import fresh_checkpoint
from skipat_deploy.export import cpu_session, validate_onnx

from .conftest import onnx_files


@pytest.fixture(scope="module")
def golden_exports(golden, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden_export")
    return {
        fam: {r.resolution: r for r in export_onnx(load_checkpoint(path), out / fam)}
        for fam, path in golden["ckpt"].items()
    }


@pytest.mark.parametrize("family", ["skipat", "vit"])
@pytest.mark.parametrize("res", [224, 384])
def test_golden_parity_onnx(golden, golden_exports, family, res):
    r = golden_exports[family][res]
    y = cpu_session(r.path).run(None, {"image": golden["inputs"][f"x{res}"]})[0]
    want = golden["expected"][f"{family}_micro_{res}"]
    assert np.abs(y - want).max() <= 1e-4
    assert y.argmax() == want.argmax()
    assert r.max_abs_diff <= 1e-4 and r.simplify_max_abs_diff <= 1e-5


def test_graph_is_static_and_npu_friendly(golden_exports):
    for r in (golden_exports["skipat"][384], golden_exports["vit"][224]):
        m = onnx.load(str(r.path))
        ops = {n.op_type for n in m.graph.node}
        assert "Erf" not in ops and "Gelu" in ops
        assert not ops & {"Shape", "NonZero", "If", "Loop", "Range"}
        for v in list(m.graph.input) + list(m.graph.output):
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            assert all(d > 0 for d in dims), (v.name, dims)
        consts = {i.name for i in m.graph.initializer} | {
            o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
        for n in m.graph.node:
            if n.op_type == "Reshape":
                assert n.input[1] in consts, f"{n.name} has a computed shape"
        assert m.opset_import[0].version == 20


def test_metadata(golden, golden_exports):
    r = golden_exports["skipat"][384]
    meta = read_metadata(r.path)
    assert meta == r.metadata
    assert meta["family"] == "skipat" and meta["skip_indices"] == [3, 4, 5, 6, 7, 8]
    assert (meta["resolution"], meta["grid"], meta["num_tokens"]) == (384, 24, 577)
    assert meta["trained_grid"] == 14 and meta["num_classes"] == 1000
    assert meta["preprocess"]["crop_pct"] == 0.875 and len(meta["preprocess"]["mean"]) == 3
    assert meta["source"]["sha256"] == load_checkpoint(golden["ckpt"]["skipat"]).info.sha256
    assert meta["source"]["storage_dtype"] == "float16"
    assert meta["tool_version"] and meta["torch_version"]
    assert json.loads(json.dumps(meta)) == meta


def test_export_is_byte_identical(tmp_path, nano_ckpts):
    ckpt = load_checkpoint(nano_ckpts["skipat_nano_patch16"])
    a = export_onnx(ckpt, tmp_path / "a", ExportConfig(resolutions=(224,)))[0]
    b = export_onnx(ckpt, tmp_path / "b", ExportConfig(resolutions=(224,)))[0]
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.sha256 == b.sha256


def test_batch_and_headless(tmp_path):
    ckpt = fresh_checkpoint("vit_small_patch14_dinov2")
    (r,) = export_onnx(ckpt, tmp_path, ExportConfig(resolutions=(112,), batch_size=2))
    assert r.path.name == "vit_small_patch14_dinov2_112_b2.onnx"
    assert r.output_name == "features" and r.output_shape == (2, 384)
    assert r.input_shape == (2, 3, 112, 112)


@pytest.mark.parametrize("res", [225, 0, -16, 100])
def test_bad_resolution_writes_nothing(tmp_path, nano_ckpts, res):
    ckpt = load_checkpoint(nano_ckpts["vit_nano_patch16"])
    with pytest.raises(ResolutionError, match=f"resolution {res} is not a positive multiple"):
        export_onnx(ckpt, tmp_path, ExportConfig(resolutions=(224, res)))
    assert onnx_files(tmp_path) == []


def test_failed_validation_leaves_no_onnx(tmp_path, nano_ckpts, monkeypatch):
    """A model that disagrees with PyTorch never appears at the final path."""
    ckpt = load_checkpoint(nano_ckpts["vit_nano_patch16"])
    def bad_validate(path, feeds, expected, atol, rtol, session=None):
        expected = [{k: v + 1e-2 for k, v in e.items()} for e in expected]
        return validate_onnx(path, feeds, expected, atol, rtol, session)

    monkeypatch.setattr(export_mod, "validate_onnx", bad_validate)
    with pytest.raises(ExportValidationError) as e:
        export_onnx(ckpt, tmp_path, ExportConfig(resolutions=(224,)))
    assert 9e-3 < e.value.max_abs_diff < 1.1e-2
    assert onnx_files(tmp_path) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_validation_reports_names_then_shapes(tmp_path, nano_ckpts):
    ckpt = load_checkpoint(nano_ckpts["vit_nano_patch16"])
    (r,) = export_onnx(ckpt, tmp_path, ExportConfig(resolutions=(224,)))
    x = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(ExportValidationError, match="outputs are \\['logits'\\], expected \\['probs'\\]"):
        validate_onnx(str(r.path), [{"image": x}], [{"probs": np.zeros((1, 1000))}], 1e-4, 0)
    with pytest.raises(ExportValidationError, match="output logits has shape \\[1, 1000\\], expected \\[1, 10\\]"):
        validate_onnx(str(r.path), [{"image": x}], [{"logits": np.zeros((1, 10))}], 1e-4, 0)

"""The typed model artifact (skipat_deploy.export.artifact): one reader says what each ONNX file
made here is, with its metadata as a typed record and its float model found by name and sha256.
Costs about 15 s (an ORT w8a8 and a CPU INT8 model of the nano ViT at 112 px)."""

from __future__ import annotations

import onnx
import pytest

from skipat_deploy import api
from skipat_deploy.core.errors import UserError
from skipat_deploy.export.artifact import CPU_INT8, FLOAT, QDQ, read_model

FAST = dict(resolution=112, num_calib=4, num_eval=2)


@pytest.fixture(scope="module")
def made(tmp_path_factory, nano_ckpts):
    out = tmp_path_factory.mktemp("artifacts")
    q = api.quantize(nano_ckpts["vit_nano_patch16"], out, precision="w8a8", quant_backend="ort",
                     npu_samples=0, **FAST)
    cpu = api.cpu_int8(nano_ckpts["vit_nano_patch16"], out, **FAST)
    return q, cpu


def test_each_artifact_kind_is_read_for_what_it_is(made):
    q, cpu = made
    float_onnx = q.qdq_onnx.parent / read_model(q.qdq_onnx).quantization.float_onnx["file"]
    f = read_model(float_onnx)
    assert f.kind == FLOAT and not f.int8 and f.quantization is None
    assert f.metadata["resolution"] == 112 and "preprocess" in f.metadata

    n = read_model(q.qdq_onnx)
    assert n.kind == QDQ and n.int8
    assert (n.quantization.target, n.quantization.precision, n.quantization.backend) == ("npu", "w8a8", "ort")
    assert n.quantization.device == "Galaxy S22" and n.quantization.hexagon == "v69"
    assert n.float_model() == (float_onnx, "")
    assert n.aimet_dir() is None  # the ORT backend writes no .aimet folder

    c = read_model(cpu.path)
    assert c.kind == CPU_INT8 and c.int8
    assert c.quantization.target == "cpu" and c.quantization.record["cpu_isa"] == "any"


def test_the_float_model_is_trusted_only_by_its_recorded_sha256(made, tmp_path):
    q, _ = made
    folder = tmp_path / "copy"
    folder.mkdir()
    qdq = folder / q.qdq_onnx.name
    qdq.write_bytes(q.qdq_onnx.read_bytes())
    name = read_model(qdq).quantization.float_onnx["file"]
    assert read_model(qdq).float_model() == (None, f"{name}, the float model it was quantized from, is not beside it")
    (folder / name).write_bytes((q.qdq_onnx.parent / name).read_bytes() + b"\0")
    path, why = read_model(qdq).float_model()
    assert path is None and "sha256 differs" in why


def test_a_model_another_tool_made_has_no_record(made, tmp_path):
    q, _ = made
    m = onnx.load(str(q.qdq_onnx))
    del m.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(m, str(foreign))
    a = read_model(foreign)
    assert a.kind == QDQ and a.quantization is None and a.metadata == {}
    assert a.float_model()[0] is None and "does not name the float model" in a.float_model()[1]


def test_what_is_not_a_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        read_model(tmp_path / "nope.onnx")
    (tmp_path / "x.onnx").write_text("not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        read_model(tmp_path / "x.onnx")

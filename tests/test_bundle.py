"""App bundles: build one for a tiny model, verify it, and catch every kind of tampering."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.bundle import BundleError, manifest_schema
from skipat_deploy.cli import app

pytest.importorskip("onnxruntime_qnn")


@pytest.fixture(scope="module")
def built(tmp_path_factory, nano_ckpts):
    out = tmp_path_factory.mktemp("bundle")
    r = api.bundle(nano_ckpts["skipat_nano_patch16"], out, precision="w8a16", num_calib=8, zip=True)
    return r


def _copy(built, tmp_path):
    dst = tmp_path / built.folders[0].name
    shutil.copytree(built.folders[0], dst)
    return dst


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_bundle_holds_every_artifact_and_a_valid_manifest(built):
    (folder,) = built.folders
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    stem, tag = "skipat_nano_patch16_224", "skipat_nano_patch16_224_w8a16_v69"
    assert names == sorted([
        f"{stem}.onnx", f"{stem}.cpu_int8.onnx", f"{tag}.qdq.onnx", f"{tag}.aimet/model.onnx",
        f"{tag}.aimet/model.encodings", f"{tag}.sm8450.ctx.onnx", f"{tag}.sm8450.ctx_qnn.bin",
        "labels.txt", "manifest.json"])
    m = _manifest(folder)
    jsonschema.validate(m, manifest_schema())
    roles = {f["role"] for f in m["files"]}
    assert roles == {"float_onnx", "qdq_onnx", "cpu_int8_onnx", "aimet_onnx", "aimet_encodings",
                     "context_onnx", "context_binary", "labels"}
    (cpu,) = [f for f in m["files"] if f["role"] == "cpu_int8_onnx"]
    assert "cpu_int8" in cpu["path"] and cpu["precision"] == "int8"
    (binary,) = [f for f in m["files"] if f["role"] == "context_binary"]
    assert (binary["device"], binary["soc"], binary["hexagon"]) == ("Galaxy S22", "SM8450", "v69")
    assert binary["qdq_model"] == f"{tag}.qdq.onnx"
    (qdq,) = [f for f in m["files"] if f["role"] == "qdq_onnx"]
    assert (qdq["precision"], qdq["hexagon"]) == ("w8a16", "v69") and "io_quantization" not in qdq
    assert binary["qnn_sdk"] == m["tools"]["qnn_sdk"] and binary["qnn_sdk"] in binary["min_runtime"]
    (inp,) = m["inputs"]
    assert inp["shape"] == [1, 3, 224, 224] and inp["layout"] == "NCHW"
    assert inp["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert inp["quantization"]["dtype"] == "uint16" and inp["quantization"]["scale"] > 0
    assert m["outputs"][0]["shape"] == [1, 1000] and m["outputs"][0]["quantization"]
    assert m["model"]["skip_indices"] == [3, 4, 5, 6, 7, 8] and m["model"]["grid"] == 14
    assert len(m["model"]["source"]["sha256"]) == 64
    assert m["tools"]["qnn_sdk"] and m["tools"]["aimet_torch"]
    sources = {x["name"]: x["source"] for x in m["measurements"]}
    assert "HTP simulator" in sources["npu_vs_cpu_sqnr"] and "cpu" in sources["sqnr_vs_float"]
    # the NPU gate's figures: the simulator's output against float, beside the CPU QDQ model's
    assert sources["npu_vs_float_sqnr"] == "QNN HTP simulator (onnxruntime-qnn, x86-64)"
    assert sources["cpu_qdq_vs_float_sqnr"].startswith("cpu")
    assert (folder / "labels.txt").read_text().splitlines()[0] == "tench"
    assert built.zips[0].is_file() and built.zips[0].stat().st_size > 0


def test_verify_accepts_the_bundle_and_says_which_runtime_it_needs(built):
    r = api.verify(built.folders[0])
    assert r.files_checked == 8 and len(r.smoke) == 3
    assert all(shape == [1, 1000] for shape in r.smoke.values())
    (needs,) = r.runtimes.values()
    assert needs.startswith("QNN / QAIRT 2.") and "or newer" in needs


@pytest.mark.parametrize("suffix", [".ctx_qnn.bin", ".ctx.onnx", ".qdq.onnx", "_224.onnx",
                                    "model.encodings", "labels.txt"])
def test_verify_names_a_tampered_file(built, tmp_path, suffix):
    folder = _copy(built, tmp_path)
    (victim,) = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffix)]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256") as e:
        api.verify(folder)
    assert str(victim) in str(e.value)


def test_verify_catches_missing_files_and_bad_manifests(built, tmp_path):
    folder = _copy(built, tmp_path)
    (folder / "labels.txt").unlink()
    with pytest.raises(BundleError, match="labels.txt: missing"):
        api.verify(folder)
    folder = _copy(built, tmp_path / "b")
    m = _manifest(folder)
    del m["inputs"][0]["layout"]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not follow the manifest schema at inputs/0"):
        api.verify(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        api.verify(folder)
    with pytest.raises(BundleError, match="no manifest.json"):
        api.verify(tmp_path)


def test_cli_verify_fails_in_one_line_naming_the_binary(built, tmp_path):
    folder = _copy(built, tmp_path)
    (binary,) = folder.glob("*.bin")
    data = bytearray(binary.read_bytes())
    data[0] ^= 1
    binary.write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["verify", str(folder)])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith(f"error: {binary}:")
    assert CliRunner().invoke(app, ["verify", str(built.folders[0])]).exit_code == 0


def test_bundle_quantizes_once_per_hexagon_version(tmp_path, nano_ckpts, monkeypatch):
    """The S22 and the XR2 Gen 2 (QCS8450) are v69, the S24 v75: two QDQ models, each binary
    compiled from the one of its version."""
    from skipat_deploy import pipeline

    versions = []
    real = pipeline.quantize

    def counted(ckpt, out_dir, cfg, step):
        versions.append(cfg.device)
        return real(ckpt, out_dir, cfg, step)

    monkeypatch.setattr(pipeline, "quantize", counted)
    r = api.bundle(nano_ckpts["vit_nano_patch16"], tmp_path,
                   devices=("Galaxy S22", "Galaxy S24", "QCS8450"), precision="w8a8",
                   quant_backend="ort", num_calib=8)
    assert versions == ["Galaxy S22", "Galaxy S24"]
    (folder,) = r.folders
    m = _manifest(folder)
    qdq = {f["hexagon"]: f["path"] for f in m["files"] if f["role"] == "qdq_onnx"}
    assert qdq == {"v69": "vit_nano_patch16_224_w8a8_v69_ort.qdq.onnx",
                   "v75": "vit_nano_patch16_224_w8a8_v75_ort.qdq.onnx"}
    binaries = [f for f in m["files"] if f["role"] == "context_binary"]
    assert [(b["soc"], b["qdq_model"]) for b in binaries] == [
        ("SM8450", qdq["v69"]), ("SM8650", qdq["v75"]), ("QCS8450", qdq["v69"])]
    gated = [x for x in m["measurements"] if x["name"] == "npu_vs_float_sqnr"]
    assert sorted(x["subject"] for x in gated) == sorted(b["path"] for b in binaries)
    assert api.verify(folder).files_checked == len(m["files"])


def test_bundle_bad_input_leaves_nothing(tmp_path, nano_ckpts):
    from skipat_deploy.errors import UserError

    with pytest.raises(UserError, match="unknown device"):
        api.bundle(nano_ckpts["vit_nano_patch16"], tmp_path, devices=("Galaxy S99",))
    with pytest.raises(UserError, match="multiple of the patch size"):
        api.bundle(nano_ckpts["vit_nano_patch16"], tmp_path, resolutions=(230,),
                   quant_backend="ort", precision="w8a8")
    assert list(tmp_path.iterdir()) == []

"""App bundles: build one for a tiny model, verify it, and catch every kind of tampering."""

from __future__ import annotations

import importlib
import json
import shutil
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.bundle import BundleError, manifest_schema
from skipat_deploy.cli import app
from skipat_deploy.core.files import sha256_file

pytest.importorskip("onnxruntime_qnn")


@pytest.fixture(scope="module")
def built(tmp_path_factory, nano_ckpts):
    out = tmp_path_factory.mktemp("bundle")
    # 112 px: what a bundle holds and proves does not depend on the grid
    r = api.bundle(nano_ckpts["skipat_nano_patch16"], out, precision="w8a16", num_calib=8, zip=True,
                   resolution=112)
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
    stem, tag = "skipat_nano_patch16_112", "skipat_nano_patch16_112_w8a16_v69"
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
    assert inp["shape"] == [1, 3, 112, 112] and inp["layout"] == "NCHW"
    assert inp["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert inp["quantization"]["dtype"] == "uint16" and inp["quantization"]["scale"] > 0
    assert m["outputs"][0]["shape"] == [1, 1000] and m["outputs"][0]["quantization"]
    assert m["model"]["skip_indices"] == [3, 4, 5, 6, 7, 8] and m["model"]["grid"] == 7
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


@pytest.mark.parametrize("suffix", [".ctx_qnn.bin", ".ctx.onnx", ".qdq.onnx", "_112.onnx",
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


# --------------------------------------------------------------------------------------------
# Hostile bundles: each refused in one line naming the entry, exit 2, nothing outside read.

def _write_manifest(folder, m):
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))


def _rehash(folder, rel):
    """Make the manifest agree with a changed file, as someone crafting a bundle would."""
    m = _manifest(folder)
    (e,) = [e for e in m["files"] if e["path"] == rel]
    e["sha256"], e["size_bytes"] = sha256_file(folder / rel), (folder / rel).stat().st_size
    _write_manifest(folder, m)


def _refused(target, *names):
    """`verify` through the CLI: exit 2, one line naming each of ``names``, no traceback."""
    res = CliRunner().invoke(app, ["verify", str(target)])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: ")
    for name in names:
        assert name in line
    return line


@pytest.fixture
def reads_only_under(monkeypatch):
    """The folders verify may hash, parse or run files in; anything else fails the test."""
    import onnx

    module = importlib.import_module("skipat_deploy.bundle.verify")
    allowed = []

    def guard(fn):
        def wrapped(path, *args, **kwargs):
            real = Path(path).resolve()
            assert any(real.is_relative_to(a) for a in allowed), f"verify read {real}"
            return fn(path, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(module, "sha256_file", guard(module.sha256_file))
    monkeypatch.setattr(module, "cpu_session", guard(module.cpu_session))
    monkeypatch.setattr(onnx, "load", guard(onnx.load))
    return allowed


def _guarded_copy(built, tmp_path, allowed):
    folder = _copy(built, tmp_path / "in")
    allowed.append(folder.resolve())
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_verify_refuses_a_listed_path_leading_out(built, tmp_path, reads_only_under, how):
    folder = _guarded_copy(built, tmp_path, reads_only_under)
    m = _manifest(folder)
    entry = m["files"][0]  # the float model, moved out of the folder, intact
    outside = tmp_path / "in" / "outside.onnx"
    (folder / entry["path"]).rename(outside)
    entry["path"] = "../outside.onnx" if how == "dotdot" else str(outside)
    _write_manifest(folder, m)
    _refused(folder, "manifest.json", repr(entry["path"]),
             "goes up out of the folder" if how == "dotdot" else "is absolute")


@pytest.mark.parametrize("what", ["file", "parent folder"])
def test_verify_refuses_a_symlink_leading_out(built, tmp_path, reads_only_under, what):
    folder = _guarded_copy(built, tmp_path, reads_only_under)
    (link,) = [folder / "labels.txt"] if what == "file" else folder.glob("*.aimet")
    outside = tmp_path / "elsewhere" / link.name
    outside.parent.mkdir()
    link.rename(outside)  # the same bytes: only where they are is wrong
    link.symlink_to(outside, target_is_directory=outside.is_dir())
    _refused(folder, f"{folder}/{link.name}", "outside the bundle folder")


def _point_external(model_path, location):
    """Move the first initializer's bytes out of the model: external data at ``location``."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    t = model.graph.initializer[0]
    data = onnx.numpy_helper.to_array(t).tobytes()
    for f in ("raw_data", "float_data", "int32_data", "int64_data"):
        t.ClearField(f)
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        t.external_data.add(key=k, value=v)
    model_path.write_bytes(model.SerializeToString())
    return t.name, data


@pytest.mark.parametrize("location, reason", [("../weights.bin", "goes up"),
                                              ("ABSOLUTE", "is absolute"),
                                              ("missing.bin", "is missing")])
def test_verify_refuses_external_data_outside_or_missing(built, tmp_path, reads_only_under,
                                                         location, reason):
    folder = _guarded_copy(built, tmp_path, reads_only_under)
    rel = _manifest(folder)["files"][0]["path"]
    outside = tmp_path / "in" / "weights.bin"
    location = str(outside) if location == "ABSOLUTE" else location
    name, data = _point_external(folder / rel, location)
    outside.write_bytes(data)  # there, and right: only where it is is wrong
    _rehash(folder, rel)
    _refused(folder, f"{folder}/{rel}", repr(name), "external data", reason)


@pytest.mark.parametrize("other", ["other_qnn.bin", "../evil_qnn.bin"])
def test_verify_refuses_a_context_model_naming_another_binary(built, tmp_path, reads_only_under,
                                                              other):
    import onnx

    folder = _guarded_copy(built, tmp_path, reads_only_under)
    (ctx,) = folder.glob("*.ctx.onnx")
    (binary,) = folder.glob("*.ctx_qnn.bin")
    target = (folder / other).resolve()
    shutil.copy(binary, target)
    m = _manifest(folder)
    if target.parent == folder:  # listed, for another device: still not this model's binary
        (b,) = [e for e in m["files"] if e["role"] == "context_binary"]
        m["files"].append({**b, "path": other, "device": "Galaxy S24", "soc": "SM8650",
                           "hexagon": "v75"})
        _write_manifest(folder, m)
    model = onnx.load(str(ctx))
    (node,) = [n for n in model.graph.node if n.op_type == "EPContext"]
    (attr,) = [a for a in node.attribute if a.name == "ep_cache_context"]
    assert attr.s == binary.name.encode()
    attr.s = other.encode()
    onnx.save(model, str(ctx))
    _rehash(folder, ctx.name)
    line = _refused(folder, f"{folder}/{ctx.name}", "EPContext", repr(other))
    assert ("not the context binary the manifest lists beside it" in line) == (
        target.parent == folder)


@pytest.mark.parametrize("extra", ["extra.txt", "alias.onnx", "more/x.bin"])
def test_verify_refuses_a_file_the_manifest_does_not_list(built, tmp_path, reads_only_under,
                                                         extra):
    folder = _guarded_copy(built, tmp_path, reads_only_under)
    path = folder / extra
    path.parent.mkdir(exist_ok=True)
    if extra == "alias.onnx":  # a symlink, even to a listed file inside
        path.symlink_to(folder / _manifest(folder)["files"][0]["path"])
    else:
        path.write_text("x")
    _refused(folder, f"{folder}/{extra}", "not listed in manifest.json")


def test_verify_accepts_the_zip(built):
    (z,) = built.zips
    assert not [p for p in z.parent.iterdir() if p.name.startswith(".")]  # no partial left
    r = api.verify(z)
    assert r.folder == z and r.files_checked == 8 and len(r.smoke) == 3
    res = CliRunner().invoke(app, ["verify", str(z)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output


def _hostile_zip(built, tmp_path, how):
    src, dst = built.zips[0], tmp_path / "hostile.zip"
    top = built.folders[0].name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        if how == "symlink":
            info = zipfile.ZipInfo(f"{top}/labels.txt.lnk")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zout.writestr(info, "/etc/passwd")
        elif how == "duplicate":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns; verify must refuse
                zout.writestr(f"{top}/labels.txt", "not the labels\n")
        else:
            name = {"dotdot": f"{top}/../../evil.txt", "absolute": "/tmp/evil.txt",
                    "backslash": f"{top}\\..\\..\\evil.txt", "two folders": "other/evil.txt",
                    "extra": f"{top}/evil.txt"}[how]
            zout.writestr(name, "x")
    return dst, top


@pytest.mark.parametrize("how", ["dotdot", "absolute", "backslash", "symlink", "duplicate",
                                 "two folders", "extra"])
def test_verify_refuses_a_hostile_zip(built, tmp_path, how):
    z, top = _hostile_zip(built, tmp_path, how)
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.iterdir())
    reason = {"dotdot": "goes up", "absolute": "is absolute", "backslash": "backslash",
              "symlink": "is a symlink", "duplicate": "appears twice", "two folders": "one folder",
              "extra": f"{z}:{top}/evil.txt: not listed"}[how]
    _refused(z, str(z), reason)
    after = set(tmp.iterdir())
    assert not [p for p in after - before if "skipat-verify" in p.name or "evil" in p.name]


def test_schema_path_pattern_refuses_paths_leading_out(built):
    m = _manifest(built.folders[0])
    for bad in ("../x", "/abs", "a/../b", "a\\b", "C:x"):
        m["files"][0]["path"] = bad
        with pytest.raises(jsonschema.ValidationError, match="does not match"):
            jsonschema.validate(m, manifest_schema())
    m["files"][0]["path"] = "x.aimet/model.onnx"
    jsonschema.validate(m, manifest_schema())


def test_bundle_quantizes_once_per_hexagon_version(tmp_path, nano_ckpts, monkeypatch):
    """The S22 and the XR2 Gen 2 (QCS8450) are v69, the S24 v75: two QDQ models, each binary
    compiled from the one of its version."""
    from skipat_deploy.commands import bundle as command

    versions = []
    real = command.quantize

    def counted(ckpt, out_dir, cfg, step, **kw):
        versions.append(cfg.device)
        return real(ckpt, out_dir, cfg, step, **kw)

    monkeypatch.setattr(command, "quantize", counted)
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
    from skipat_deploy.core.errors import UserError

    with pytest.raises(UserError, match="unknown device"):
        api.bundle(nano_ckpts["vit_nano_patch16"], tmp_path, devices=("Galaxy S99",))
    with pytest.raises(UserError, match="multiple of the patch size"):
        api.bundle(nano_ckpts["vit_nano_patch16"], tmp_path, resolutions=(230,),
                   quant_backend="ort", precision="w8a8")
    assert list(tmp_path.iterdir()) == []

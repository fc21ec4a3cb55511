"""Compilation for the NPU: local QNN context binaries on the HTP simulator, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.cli import app
from skipat_deploy.npu.compile import CompileConfig, compile_local
from skipat_deploy.core.errors import UserError

pytest.importorskip("onnxruntime_qnn")

# --npu-samples 0: the NPU figure has its own tests (test_inspect.py); it costs a simulator run
FAST = dict(num_calib=8, num_eval=4, npu_samples=0)


@pytest.fixture(scope="module")
def qdq_for(tmp_path_factory, nano_ckpts):
    """(device, resolution) -> a w8a16 QDQ SkipAt nano model quantized for it (ONNX Runtime
    quantization: seconds), made once each, all in one folder."""
    d = tmp_path_factory.mktemp("qdq")
    made = {}

    def make(device, resolution=224):
        if (device, resolution) not in made:
            made[device, resolution] = api.quantize(
                nano_ckpts["skipat_nano_patch16"], d, precision="w8a16", backend="ort",
                device=device, resolution=resolution, **FAST).qdq_onnx
        return made[device, resolution]

    return make


@pytest.fixture(scope="module")
def qdq(qdq_for):
    return qdq_for("Galaxy S22")


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_local_compile_writes_a_context_binary_that_runs_on_the_htp(tmp_path, qdq):
    from skipat_deploy.devices import resolve_device
    from skipat_deploy.npu.qnn import htp_session

    r = compile_local(qdq, tmp_path, CompileConfig(device="s22"))
    stem = "skipat_nano_patch16_224_w8a16_v69_ort.sm8450"
    assert _files(tmp_path) == sorted([f"{stem}.ctx.onnx", f"{stem}.ctx_qnn.bin", f"{stem}.compile.json"])
    # The EPContext model points at the .bin by its relative name and loads, strictly, from
    # the output folder.
    ctx = onnx.load(str(r.artifacts["context_onnx"]))
    (node,) = ctx.graph.node
    assert node.op_type == "EPContext"
    attrs = {a.name: a for a in node.attribute}
    assert attrs["ep_cache_context"].s.decode() == f"{stem}.ctx_qnn.bin"
    assert attrs["embed_mode"].i == 0
    sess = htp_session(r.artifacts["context_onnx"], resolve_device("Galaxy S22"))
    y = sess.run(None, {"image": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert y.shape == (1, 1000) and np.isfinite(y).all()
    # The simulated NPU agrees with the CPU QDQ model (w8a16: tens of dB).
    assert r.check.sqnr_db > 30 and r.check.top1_agreement == 1.0 and r.check.num_samples == 2
    assert "real photos" in r.check.inputs
    record = json.loads(r.record.read_text())
    assert record["soc"] == "SM8450" and record["hexagon"] == "v69"
    assert record["check"]["sqnr_db"] == pytest.approx(r.check.sqnr_db)
    assert record["versions"]["qnn_sdk"]
    # The NPU gate: the float model beside the QDQ model (named in its metadata) is the reference.
    assert r.check.float_model == "skipat_nano_patch16_224.onnx" and r.check.gate == "passed"
    assert record["check"]["npu_vs_float_sqnr_db"] == pytest.approx(r.check.npu_vs_float_sqnr_db)
    assert r.notices == []


def test_aimet_w8a8_binary_passes_the_npu_gate_against_float(tmp_path, nano_ckpts):
    """The NPU (HTP simulator), the CPU QDQ model and the float model on the same held-out
    photos: the NPU's noise against float is within double the CPU QDQ model's."""
    from skipat_deploy.core.metrics import QDQ_EXCESS_NOISE_DB

    q = api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path, precision="w8a8", **FAST)
    r = compile_local(q.qdq_onnx, tmp_path / "out", CompileConfig(device="Galaxy S22"))
    c = r.check
    assert c.float_model == q.float_onnx.name and c.gate == "passed" and "real photos" in c.inputs
    assert np.isfinite(c.npu_vs_float_sqnr_db) and np.isfinite(c.qdq_vs_float_sqnr_db)
    assert c.npu_vs_float_sqnr_db >= c.qdq_vs_float_sqnr_db - QDQ_EXCESS_NOISE_DB


def test_a_broken_npu_output_is_refused_and_nothing_is_written(tmp_path, qdq, monkeypatch):
    from skipat_deploy.npu import compile as compile_mod

    real = compile_mod.run_htp

    def broken(sess, x):  # what a mis-compiled binary would compute: mostly noise
        y = real(sess, x)
        return y + 3 * y.std() * np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)

    monkeypatch.setattr(compile_mod, "run_htp", broken)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compile", "--model", str(qdq), "--out", str(out)])
    assert res.exit_code == 4, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: skipat_nano_patch16_224_w8a16_v69_ort.sm8450.ctx_qnn.bin refused "
                           "by the NPU gate") and "vs the float model" in line, line
    assert "CPU QDQ model" in line and line.count(" dB") >= 3
    assert _files(out) == []


def test_models_for_two_targets_live_side_by_side(qdq_for):
    from skipat_deploy.export import read_metadata
    from skipat_deploy.core.files import sha256_file

    s22, s24 = qdq_for("Galaxy S22"), qdq_for("Galaxy S24")
    assert s22.parent == s24.parent and s22.is_file() and s24.is_file()
    assert (s22.name, s24.name) == ("skipat_nano_patch16_224_w8a16_v69_ort.qdq.onnx",
                                    "skipat_nano_patch16_224_w8a16_v75_ort.qdq.onnx")
    for path, hexagon in ((s22, "v69"), (s24, "v75")):
        meta = read_metadata(path)["quantization"]
        assert (meta["hexagon"], meta["precision"], meta["backend"]) == (hexagon, "w8a16", "ort")
        # both name the one float model beside them (re-exported byte for byte)
        float_onnx = path.parent / meta["float_onnx"]["file"]
        assert sha256_file(float_onnx) == meta["float_onnx"]["sha256"]


def test_a_model_for_another_hexagon_version_is_one_line(tmp_path, qdq_for):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compile", "--model", str(qdq_for("Galaxy S24")),
                                   "--device", "Galaxy S22", "--out", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: skipat_nano_patch16_224_w8a16_v75_ort.qdq.onnx was quantized for Hexagon v75 but "
        "Galaxy S22 has v69: quantize for it (--device) or compile with --ckpt"]
    assert not out.exists()


def test_a_foreign_qdq_model_compiles_with_notices(tmp_path, qdq):
    """No skipat-deploy metadata: the Hexagon version and the float model are unknown."""
    m = onnx.load(str(qdq))
    del m.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(m, str(foreign))
    r = compile_local(foreign, tmp_path / "out", CompileConfig(device="Galaxy S22", npu_samples=1))
    target, gate = r.notices
    assert "does not say which Hexagon version" in target and "Galaxy S22 (Hexagon v69)" in target
    assert gate.startswith("the NPU gate did not run: foreign.onnx does not name the float model")
    assert r.check.gate.startswith("not run:") and r.check.npu_vs_float_sqnr_db is None
    assert json.loads(r.record.read_text())["check"]["gate"] == r.check.gate


def _erf_model(path):
    """A tiny QDQ graph with an Erf, which the QNN HTP backend does not support."""
    q = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Erf", ["xd"], ["e"], name="the_erf"),
        helper.make_node("QuantizeLinear", ["e", "s", "z"], ["eq"]),
        helper.make_node("DequantizeLinear", ["eq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], initializer=q)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_a_node_the_npu_cannot_run_is_named_and_nothing_is_written(tmp_path):
    from skipat_deploy.npu.qnn import NpuPlacementError

    model = _erf_model(tmp_path / "erf.onnx")
    out = tmp_path / "out"
    with pytest.raises(NpuPlacementError) as e:
        compile_local(model, out)
    assert "the_erf (Erf)" in str(e.value) and "not supported" in str(e.value)
    assert e.value.rejected[0].node == "the_erf"
    assert _files(out) == []


@pytest.mark.parametrize("kwargs, msg", [
    (dict(device="Galaxy S99"), "unknown device"),
    (dict(backend="cloud"), "--backend 'cloud': choose one of local, hub"),
    (dict(target_runtime="tflite"), "needs --backend hub"),
    (dict(target_runtime="coreml", backend="hub"), "--target-runtime 'coreml': choose one of"),
])
def test_bad_options(tmp_path, qdq, kwargs, msg):
    with pytest.raises(UserError, match=msg):
        api.compile(qdq, tmp_path, **kwargs)
    assert _files(tmp_path) == []


def test_bad_models(tmp_path, qdq, nano_ckpts):
    with pytest.raises(UserError, match="model not found"):
        api.compile(tmp_path / "missing.onnx", tmp_path)
    float_onnx = qdq.with_name("skipat_nano_patch16_224.onnx")
    with pytest.raises(UserError, match="float model"):
        api.compile(float_onnx, tmp_path / "o")
    with pytest.raises(UserError, match="not a readable ONNX"):
        api.compile(nano_ckpts["vit_nano_patch16"], tmp_path / "o")
    aimet = tmp_path / "m.aimet"
    aimet.mkdir()
    with pytest.raises(UserError, match="only --backend hub takes a .aimet folder"):
        api.compile(aimet, tmp_path / "o")


def test_cli_compile_from_a_checkpoint_json(tmp_path, nano_ckpts):
    res = CliRunner().invoke(app, ["compile", "--ckpt", str(nano_ckpts["vit_nano_patch16"]),
                                   "--precision", "w8a8", "--quant-backend", "ort",
                                   "--num-calib", "8", "--num-check", "1", "--out", str(tmp_path),
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    kinds = {a["kind"]: a for a in doc["artifacts"]}
    assert {"qdq_onnx", "context_onnx", "context_binary", "compile_record"} <= set(kinds)
    assert kinds["context_binary"]["size_bytes"] > 0 and len(kinds["context_binary"]["sha256"]) == 64
    names = {m["name"]: m for m in doc["measurements"]}
    assert "HTP simulator" in names["npu_vs_cpu_sqnr"]["source"]
    assert np.isfinite(names["npu_vs_cpu_sqnr"]["value"])
    # the NPU gate's figures, the NPU's from the simulator, never presented as phone data
    assert names["npu_vs_float_sqnr"]["source"] == "QNN HTP simulator (onnxruntime-qnn, x86-64)"
    assert names["cpu_qdq_vs_float_sqnr"]["source"].startswith("cpu")
    (result,) = doc["results"]
    assert result["check"]["gate"] == "passed"
    assert not any("latency" in m["name"] for m in doc["measurements"])


def test_cli_compile_error_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["compile", "--model", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: model not found: {tmp_path / 'nope.onnx'}"]


# --------------------------------------------------------------------------------------------
# AI Hub: the real qai_hub client against the loopback fake (tests/hub_fake).

@pytest.fixture
def hub(fake_hub, monkeypatch):
    """The fake AI Hub with our own polling and retry waits made instant."""
    from skipat_deploy.npu import hub as hub_mod

    monkeypatch.setattr(hub_mod, "_sleep", lambda seconds: None)
    monkeypatch.setattr(hub_mod, "RETRY_DELAYS", (0.0, 0.0))
    return fake_hub


def _hub_compile(qdq, out, **kw):
    return api.compile(qdq, out, backend="hub", **kw)


def test_hub_not_configured_is_one_line_and_quick(tmp_path, qdq, monkeypatch):
    import time

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "nowhere" / "client.ini"))
    t = time.perf_counter()
    res = CliRunner().invoke(app, ["compile", "--model", str(qdq), "--backend", "hub",
                                   "--out", str(tmp_path / "out")])
    assert time.perf_counter() - t < 5
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: AI Hub is not configured") and "qai-hub configure --api_token" in line
    assert "QAIHUB_CLIENT_INI" in line and not (tmp_path / "out").exists()


def test_hub_compile_downloads_the_binary_and_records_the_job(tmp_path, qdq, hub):
    r = _hub_compile(qdq, tmp_path, qairt_version="2.40")
    stem = "skipat_nano_patch16_224_w8a16_v69_ort.sm8450"
    (job,) = hub.jobs.values()
    assert job.kind == "compile" and job.device_name == "Samsung Galaxy S22 (Family)"
    assert job.options == "--target_runtime qnn_context_binary --qairt_version 2.40"
    binary = r.artifacts["target_model"]
    assert binary == tmp_path / f"{stem}.hub.bin"
    assert binary.read_bytes().startswith(b"FAKE-QNN-CONTEXT-BINARY")
    record = json.loads((tmp_path / f"{stem}.hub.json").read_text())
    (entry,) = record["jobs"].values()
    assert entry["id"] == job.job_id and entry["status"] == "SUCCESS" and entry["url"].startswith(hub.url)
    assert r.jobs[0]["id"] == job.job_id and r.check is None
    assert json.loads(r.record.read_text())["backend"] == "hub"


def test_hub_rerun_resumes_instead_of_resubmitting(tmp_path, qdq, hub, monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    hub.polls_until_done = 3

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub_mod, "_sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _hub_compile(qdq, tmp_path)
    (job,) = hub.jobs.values()
    assert not job.finished and not list(tmp_path.glob("*.bin"))
    monkeypatch.setattr(hub_mod, "_sleep", lambda s: None)
    r = _hub_compile(qdq, tmp_path)
    assert len(hub.jobs) == 1 and hub.count_requests("POST", "/jobs") == 1
    assert r.jobs[0]["id"] == job.job_id and any("resumed" in n for n in r.notices)
    _hub_compile(qdq, tmp_path)  # a finished job: resumed again, nothing new submitted
    assert len(hub.jobs) == 1


def test_hub_transient_failures_are_retried(tmp_path, qdq, hub):
    hub.fail_next("/jobs/", 503, count=9, method="GET")  # more than the client's own 7 tries
    r = _hub_compile(qdq, tmp_path)
    assert r.artifacts["target_model"].is_file()


def test_hub_persistent_outage_is_one_line(tmp_path, qdq, hub):
    from skipat_deploy.npu.hub import HubError

    hub.fail_next("/jobs/", 500, count=None, method="GET")
    with pytest.raises(HubError, match="AI Hub stayed unavailable"):
        _hub_compile(qdq, tmp_path)
    assert not list(tmp_path.glob("*.bin"))


def test_hub_wrong_token_is_one_line(tmp_path, qdq, hub, monkeypatch):
    ini = tmp_path / "bad.ini"
    ini.write_text(hub.ini_path.read_text().replace(hub.token, "not-the-token"))
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    res = CliRunner().invoke(app, ["compile", "--model", str(qdq), "--backend", "hub",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 3
    (line,) = res.output.strip().splitlines()
    assert "AI Hub at" in line and "rejected the API token" in line


def test_hub_failed_job_names_the_reason_and_a_rerun_resubmits(tmp_path, qdq, hub):
    from skipat_deploy.npu.compile import CompileError

    hub.job_outcome = ("FAILED", "Op Erf is not supported on this target")
    with pytest.raises(CompileError, match="FAILED: Op Erf is not supported") as e:
        _hub_compile(qdq, tmp_path)
    assert hub.url in str(e.value) and not list(tmp_path.glob("*.bin"))
    hub.job_outcome = None
    r = _hub_compile(qdq, tmp_path)
    assert len(hub.jobs) == 2 and any("FAILED" in n for n in r.notices)


@pytest.mark.parametrize("runtime, suffix", [("onnx", ".hub.onnx.zip"), ("tflite", ".hub.tflite"),
                                              ("precompiled_qnn_onnx", ".hub.onnx.zip")])
def test_hub_target_runtimes(tmp_path, qdq, hub, runtime, suffix):
    r = _hub_compile(qdq, tmp_path, target_runtime=runtime)
    assert r.artifacts["target_model"].name.endswith(suffix)
    assert next(iter(hub.jobs.values())).options == f"--target_runtime {runtime}"


def test_hub_takes_the_aimet_folder(tmp_path, qdq, hub):
    """A .aimet folder (float ONNX + encodings; AIMET's own export is covered in
    test_quantize) goes up as one directory model."""
    folder = tmp_path / "vit_nano_patch16_224_w8a16_v69.aimet"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(qdq.with_name("skipat_nano_patch16_224.onnx").read_bytes())
    (folder / "model.encodings").write_text('{"version": "2.0.0", "activation_encodings": []}')
    r = _hub_compile(folder, tmp_path / "c")
    (model,) = [m for m in hub.models.values() if m.files]
    assert sorted(Path(f).name for f in model.files) == ["model.encodings", "model.onnx"]
    assert r.artifacts["target_model"].name == "vit_nano_patch16_224_w8a16_v69.sm8450.hub.bin"
    # no QDQ model beside it to say which Hexagon version it was made for
    assert any("does not say which Hexagon version" in n for n in r.notices)


# --------------------------------------------------------------------------------------------
# Every Hexagon version, fp16, weight sharing

@pytest.mark.parametrize("device,soc,hexagon", [
    ("Galaxy S21", "SM8350", "v68"), ("X Elite", "SC8380XP", "v73"), ("Galaxy S24", "SM8650", "v75"),
    ("Galaxy S25", "SM8750", "v79"), ("Galaxy S26", "SM8850", "v81")])
def test_local_compile_for_every_hexagon_version(tmp_path, qdq_for, device, soc, hexagon):
    # at 112 px: what differs between Hexagon versions is the ops and their precisions, not the grid
    r = compile_local(qdq_for(device, 112), tmp_path, CompileConfig(device=device, npu_samples=1))
    assert (r.soc, r.hexagon) == (soc, hexagon) and r.artifacts["context_binary"].stat().st_size > 0
    assert soc.lower() in r.artifacts["context_binary"].name
    assert r.check.num_samples == 1 and r.check.gate == "passed"


def test_fp16_compiles_a_float_model_where_the_htp_can(tmp_path, nano_ckpts):
    r = api.compile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=tmp_path, device="Galaxy S24",
                    precision="fp16", npu_samples=1)
    assert ".fp16." in r.artifacts["context_binary"].name and r.check.sqnr_db > 30
    out = tmp_path / "rb3"
    with pytest.raises(UserError, match="QCS6490.*cannot run --fp16.*w8a16"):
        api.compile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=out, device="RB3 Gen 2",
                    precision="fp16")
    assert not out.exists()


def test_weight_shared_binary_for_two_resolutions(tmp_path, nano_ckpts):
    ck = nano_ckpts["skipat_nano_patch16"]
    q = [api.quantize(ck, tmp_path / "q", resolution=r, precision="w8a8", backend="ort",
                      device="Galaxy S24", **FAST).qdq_onnx for r in (112, 224)]
    shared = api.compile_shared(q, tmp_path / "shared", device="Galaxy S24", npu_samples=1)
    assert len(shared) == 2 and shared[0].artifacts["context_binary"] == shared[1].artifacts["context_binary"]
    assert all(r.check.num_samples == 1 and "on its own" in r.check.runs_on for r in shared)
    assert all(r.check.gate == "passed" for r in shared)
    binary = shared[0].artifacts["context_binary"]
    for r in shared:  # each EPContext model points at the shared binary
        (node,) = onnx.load(str(r.artifacts["context_onnx"])).graph.node
        attrs = {a.name: a for a in node.attribute}
        assert attrs["ep_cache_context"].s.decode() == binary.name
    separate = [compile_local(m, tmp_path / "sep", CompileConfig(device="Galaxy S24", npu_samples=1))
                for m in q]
    total = sum(r.artifacts["context_binary"].stat().st_size for r in separate)
    assert binary.stat().st_size < 0.85 * total
    with pytest.raises(UserError, match="does not support weight-shared"):
        api.compile_shared(q, tmp_path / "s22", device="Galaxy S22")

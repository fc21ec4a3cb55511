"""The real qai-hub 0.56 client, end to end against the fake AI Hub of tests/hub_fake.

These tests pin down both the fake and the client behaviour our deployment code relies on:
which exceptions the client raises for 401 / 429 / 5xx, what ``job.wait()`` returns for a
failed job, what ``download_target_model`` writes per target runtime, the shape of
``download_profile()``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import qai_hub
import qai_hub.client
from qai_hub.public_rest_api import APIException

from .hub_fake import (
    QNN_CONTEXT_BINARY_MARKER,
    FakeLayer,
    ProfileConfig,
    default_outputs,
    fake_context_binary,
)

S22 = "Samsung Galaxy S22 (Family)"
IMAGE_SPEC = {"image": ((1, 3, 224, 224), "float32")}
ONNX_BYTES = b"\x08\x07fake onnx graph bytes" * 8


@pytest.fixture
def client(fake_hub):
    return fake_hub.make_client()


@pytest.fixture
def onnx_path(tmp_path) -> Path:
    path = tmp_path / "vit_tiny.onnx"
    path.write_bytes(ONNX_BYTES)
    return path


@pytest.fixture
def aimet_dir(tmp_path) -> Path:
    path = tmp_path / "vit_tiny.aimet"
    path.mkdir()
    (path / "model.onnx").write_bytes(ONNX_BYTES)
    (path / "model.encodings").write_text(json.dumps({"activation_encodings": {}}))
    return path


def _compile(client, model, runtime: str, extra: str = "", device: str = S22):
    return client.submit_compile_job(
        model,
        device=qai_hub.Device(device),
        input_specs=IMAGE_SPEC,
        options=f"--target_runtime {runtime} {extra}".strip(),
    )


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)


# ------------------------------------------------------------------------------------ devices


def test_devices_by_name_attributes_and_os(client):
    names = [d.name for d in client.get_devices()]
    assert names == [
        "Samsung Galaxy S22 (Family)",
        "Samsung Galaxy S22 5G",
        "Samsung Galaxy S22 Ultra 5G",
        "Samsung Galaxy S23 (Family)",
        "Samsung Galaxy S24 (Family)",
        "Samsung Galaxy S25 (Family)",
    ]
    (s23,) = client.get_devices(name="Samsung Galaxy S23 (Family)")
    assert s23.os == "13" and "chipset:qualcomm-snapdragon-8gen2" in s23.attributes
    gen1 = client.get_devices(attributes=["chipset:qualcomm-snapdragon-8gen1"])
    assert {d.name for d in gen1} == set(names[:3])
    assert [
        d.name for d in client.get_devices(attributes="chipset:qualcomm-snapdragon-8-elite")
    ] == ["Samsung Galaxy S25 (Family)"]
    assert [d.os for d in client.get_devices(os="[13,15)", attributes="os:android")] == ["13", "14"]
    assert client.get_devices(name="Nokia 3310") == []


def test_device_resolution_inside_submit(client, fake_hub, onnx_path):
    model = client.upload_model(onnx_path)
    by_chipset = client.submit_compile_job(
        model,
        device=qai_hub.Device(attributes="chipset:qualcomm-snapdragon-8gen2"),
        options="--target_runtime qnn_context_binary",
    )
    assert by_chipset.device.name == "Samsung Galaxy S23 (Family)"
    assert fake_hub.jobs[by_chipset.job_id].device_name == "Samsung Galaxy S23 (Family)"
    # several devices match a chipset: the fake selects the first (they share the newest OS)
    gen1 = client.submit_compile_job(
        model, device=qai_hub.Device(attributes="chipset:qualcomm-snapdragon-8gen1")
    )
    assert gen1.device.name == S22
    assert fake_hub.jobs[gen1.job_id].target_runtime == "tflite"  # Hub's default runtime
    with pytest.raises(qai_hub.UserError, match="is not available"):
        client.submit_compile_job(model, device=qai_hub.Device("Nokia 3310"))


# ------------------------------------------------------------------------------------ config


def test_fixture_ini_drives_client_and_module_functions(fake_hub):
    ini = fake_hub.ini_path.read_text()
    assert "[api]" in ini and f"api_token = {fake_hub.token}" in ini
    assert f"api_url = {fake_hub.url}" in ini and f"web_url = {fake_hub.url}" in ini
    assert len(qai_hub.Client().get_devices()) == 6
    assert len(qai_hub.get_devices()) == 6  # the module-level client reads the same ini
    assert qai_hub.Client().config.verbose is True  # no `verbose` key means verbose
    frameworks = qai_hub.get_frameworks()
    assert {f.api_version for f in frameworks} == {"2.37", "2.40"}


# ------------------------------------------------------------------------------------ uploads


def test_upload_onnx_file_and_get_model(client, fake_hub, onnx_path):
    model = client.upload_model(onnx_path)
    assert model.model_type == qai_hub.SourceModelType.ONNX
    record = fake_hub.models[model.model_id]
    assert record.data == ONNX_BYTES and record.upload_complete and not record.is_directory
    assert record.sha256 == hashlib.sha256(ONNX_BYTES).hexdigest()
    again = client.get_model(model.model_id)
    assert (again.model_id, again.name, again.model_type) == (
        model.model_id,
        "vit_tiny.onnx",
        qai_hub.SourceModelType.ONNX,
    )
    assert fake_hub.count_requests("PUT", "/_storage/") == 1


def test_upload_aimet_directory_is_zipped_by_the_client(client, fake_hub, aimet_dir):
    model = client.upload_model(aimet_dir)
    assert model.model_type == qai_hub.SourceModelType.AIMET_ONNX
    record = fake_hub.models[model.model_id]
    assert record.is_directory and record.name == "vit_tiny.aimet"
    assert sorted(record.files) == ["vit_tiny.aimet/model.encodings", "vit_tiny.aimet/model.onnx"]
    assert record.files["vit_tiny.aimet/model.onnx"] == ONNX_BYTES


def test_multipart_upload_in_several_parts(client, fake_hub, tmp_path):
    fake_hub.max_part_size = 64
    path = tmp_path / "big.onnx"
    data = bytes(range(256)) * 2
    path.write_bytes(data)
    model = client.upload_model(path)
    assert fake_hub.count_requests("PUT", f"/_storage/models/{model.model_id}/") == 8
    assert fake_hub.models[model.model_id].data == data


# ------------------------------------------------------------------------------------ compile


def test_compile_qnn_context_binary(client, fake_hub, onnx_path, tmp_path):
    model = client.upload_model(onnx_path)
    job = _compile(client, model, "qnn_context_binary", "--qairt_version 2.40")
    assert isinstance(job, qai_hub.CompileJob)
    assert job.job_id.startswith("j") and job.url == f"{fake_hub.url}/jobs/{job.job_id}/"
    assert job.get_status().success
    assert job.wait().code == "SUCCESS"

    record = fake_hub.jobs[job.job_id]
    assert record.kind == "compile" and record.model_id == model.model_id
    assert record.options == "--target_runtime qnn_context_binary --qairt_version 2.40"
    assert record.qairt_version == "2.40" and record.device_name == S22

    target = job.get_target_model()
    assert target.model_type == qai_hub.SourceModelType.QNN_CONTEXT_BINARY
    assert target.metadata[qai_hub.ModelMetadataKey.QAIRT_SDK_VERSION] == "2.40.0"
    assert target.input_spec == {None: [qai_hub.TensorSpec("image", "float32", (1, 3, 224, 224))]}

    path = job.download_target_model(str(tmp_path / "vit"))
    assert path == str(tmp_path / "vit.bin")  # the client appends the server's extension
    data = Path(path).read_bytes()
    assert data.startswith(QNN_CONTEXT_BINARY_MARKER)
    assert hashlib.sha256(ONNX_BYTES).hexdigest().encode() in data
    assert data == fake_context_binary(hashlib.sha256(ONNX_BYTES).hexdigest())


@pytest.mark.parametrize("runtime", ["onnx", "precompiled_qnn_onnx"])
def test_compile_onnx_targets_download_a_zipped_onnx_dir(client, onnx_path, tmp_path, runtime):
    job = _compile(client, client.upload_model(onnx_path), runtime)
    path = job.download_target_model(str(tmp_path / "vit.onnx"))
    # '.onnx.zip' is appended even to a name ending in '.onnx'
    assert path == str(tmp_path / "vit.onnx.onnx.zip")
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        root = names[0].split("/")[0]
        assert root.endswith(".onnx")
        assert zf.read(f"{root}/model.onnx") == ONNX_BYTES
        if runtime == "precompiled_qnn_onnx":
            assert names == [f"{root}/model.bin", f"{root}/model.onnx"]
            assert zf.read(f"{root}/model.bin").startswith(QNN_CONTEXT_BINARY_MARKER)
        else:
            assert names == [f"{root}/model.onnx"]
    # into an existing directory: the server's file name is used
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert (
        Path(job.download_target_model(str(out_dir))).name
        == f"job_{job.job_id}_optimized_{runtime}.onnx.zip"
    )


def test_compile_onnx_target_as_bare_file(client, fake_hub, onnx_path, tmp_path):
    fake_hub.onnx_outputs_zipped = False
    job = _compile(client, client.upload_model(onnx_path), "onnx")
    path = job.download_target_model(str(tmp_path / "vit"))
    assert path == str(tmp_path / "vit.onnx") and Path(path).read_bytes() == ONNX_BYTES


def test_compile_tflite_and_aimet_source(client, fake_hub, aimet_dir, tmp_path):
    model = client.upload_model(aimet_dir)
    job = _compile(client, model, "tflite")
    path = job.download_target_model(str(tmp_path / "vit"))
    assert path.endswith("vit.tflite")
    data = Path(path).read_bytes()
    assert data[4:8] == b"TFL3" and b"FAKE-TFLITE-MODEL" in data
    onnx_job = _compile(client, model, "onnx")
    with zipfile.ZipFile(onnx_job.download_target_model(str(tmp_path / "v2"))) as zf:
        # encodings are consumed, the graph comes back as model.onnx
        assert [n.split("/")[-1] for n in zf.namelist() if not n.endswith("/")] == ["model.onnx"]


def test_unsupported_target_runtime_is_a_user_error(client, onnx_path):
    with pytest.raises(qai_hub.UserError, match="coreml"):
        _compile(client, client.upload_model(onnx_path), "coreml")


def test_get_job_resumes_without_submitting(client, fake_hub, onnx_path, tmp_path):
    job = _compile(
        client, client.upload_model(onnx_path), "qnn_context_binary", "--qairt_version 2.40"
    )
    job_id = job.job_id
    posts_before = fake_hub.count_requests("POST")

    resumed = qai_hub.Client().get_job(job_id)  # a fresh client, configured from client.ini
    assert isinstance(resumed, qai_hub.CompileJob)
    assert resumed.options == "--target_runtime qnn_context_binary --qairt_version 2.40"
    assert resumed.device.name == S22
    assert resumed.wait().success
    path = resumed.download_target_model(str(tmp_path / "resumed"))
    assert Path(path).read_bytes().startswith(QNN_CONTEXT_BINARY_MARKER)
    assert fake_hub.count_requests("POST") == posts_before
    assert len(fake_hub.jobs) == 1


def test_unknown_job_id_is_a_user_error(client):
    with pytest.raises(qai_hub.UserError, match="could not be found"):
        client.get_job("jdoesnotexist")


# ------------------------------------------------------------------------------------ inference


def _compiled_target(client, onnx_path):
    return _compile(client, client.upload_model(onnx_path), "qnn_context_binary").get_target_model()


def test_inference_outputs_and_profile(client, fake_hub, onnx_path, tmp_path):
    target = _compiled_target(client, onnx_path)
    image = _image()
    job = client.submit_inference_job(
        target,
        qai_hub.Device(S22),
        inputs={"image": [image]},
        options="--qairt_version 2.40",
        profile=True,
    )
    assert isinstance(job, qai_hub.InferenceJob) and job.profiling
    assert job.wait().success
    assert job.shapes == {"image": ((1, 3, 224, 224), "float32")}

    outputs = job.download_output_data()
    assert list(outputs) == ["logits"] and outputs["logits"][0].shape == (1, 1000)
    expected = default_outputs({"image": [image]}, fake_hub.output_shapes)
    np.testing.assert_array_equal(outputs["logits"][0], expected["logits"][0])

    profile = job.download_profile()
    assert set(profile) == {"execution_summary", "execution_detail"}
    summary = profile["execution_summary"]
    assert summary["estimated_inference_time"] == 1234  # microseconds
    assert summary["first_load_time"] == 123_456
    assert summary["inference_memory_peak_range"] == (11_111_111, 22_222_222)  # bytes
    assert summary["estimated_inference_peak_memory"] == 22_222_222
    assert summary["all_inference_times"] == [1234, 1235, 1236, 1237, 1238]
    units = [layer["compute_unit"] for layer in profile["execution_detail"]]
    assert units.count("NPU") == 6 and units.count("GPU") == 1 and units.count("CPU") == 1
    assert set(profile["execution_detail"][0]) == {"name", "type", "compute_unit", "execution_time"}

    saved = job.download_profile(str(tmp_path / "profile"))
    assert saved == str(tmp_path / "profile.json")
    assert (
        json.loads(Path(saved).read_text())["execution_summary"]["estimated_inference_time"] == 1234
    )

    record = fake_hub.jobs[job.job_id]
    assert (
        record.kind == "inference" and record.profile and record.options == "--qairt_version 2.40"
    )
    np.testing.assert_array_equal(fake_hub.datasets[record.dataset_id].entries["image"][0], image)


def test_inference_hook_output_shapes_and_profile_numbers(client, fake_hub, onnx_path):
    fake_hub.output_shapes = {"logits": (1, 10), "features": ((1, 197, 192), "float16")}
    target = _compiled_target(client, onnx_path)
    fake_hub.profile = ProfileConfig(
        estimated_inference_time_us=4321,
        inference_memory_peak_range=(1_000, 2_000),
        layers=[FakeLayer("conv", "Conv2d", "NPU", 7), FakeLayer("argmax", "ArgMax", "CPU")],
    )
    job = client.submit_inference_job(target, qai_hub.Device(S22), inputs={"image": [_image()]})
    outputs = job.download_output_data()
    assert outputs["logits"][0].shape == (1, 10) and outputs["features"][0].dtype == np.float16
    profile = job.download_profile()
    assert profile["execution_summary"]["estimated_inference_time"] == 4321
    assert profile["execution_summary"]["inference_memory_peak_range"] == (1_000, 2_000)
    assert profile["execution_detail"] == [
        {"name": "conv", "type": "Conv2d", "compute_unit": "NPU", "execution_time": 7},
        {"name": "argmax", "type": "ArgMax", "compute_unit": "CPU"},
    ]

    fake_hub.inference_fn = lambda inputs: {
        "logits": [x.reshape(-1)[:5] * 2 for x in inputs["image"]]
    }
    images = [_image(1), _image(2)]
    job = client.submit_inference_job(
        target, qai_hub.Device(S22), inputs={"image": images}, profile=False
    )
    outputs = job.download_output_data()
    assert len(outputs["logits"]) == 2
    np.testing.assert_allclose(outputs["logits"][1], images[1].reshape(-1)[:5] * 2)
    assert job.download_profile() == {}  # no profiling, no profile


def test_inference_on_uploaded_onnx_and_resume(client, fake_hub, onnx_path):
    job = client.submit_inference_job(
        str(onnx_path), qai_hub.Device(S22), inputs={"x": [np.ones((2, 3), np.float32)]}
    )
    job_id = job.job_id
    posts = fake_hub.count_requests("POST")
    resumed = client.get_job(job_id)
    assert isinstance(resumed, qai_hub.InferenceJob) and resumed.profiling
    assert resumed.inputs.dataset_id == fake_hub.jobs[job_id].dataset_id
    assert resumed.download_output_data()["logits"][0].shape == (1, 1000)
    assert resumed.download_profile()["execution_summary"]["estimated_inference_time"] == 1234
    assert fake_hub.count_requests("POST") == posts


def test_inference_input_names_checked_against_compiled_model(client, onnx_path):
    target = _compiled_target(client, onnx_path)
    job = client.submit_inference_job(target, qai_hub.Device(S22), inputs={"pixels": [_image()]})
    status = job.wait()
    assert status.failure and "expected ['image'], got ['pixels']" in status.message


def test_profile_job_without_inputs(client, onnx_path):
    target = _compiled_target(client, onnx_path)
    job = client.submit_inference_job(target, qai_hub.Device(S22), profile=True)
    assert job.download_output_data() is None  # random inputs: no output dataset
    assert job.download_profile()["execution_summary"]["first_load_time"] == 123_456


# ------------------------------------------------------------------------------------ faults


def test_wrong_token_is_user_error_without_retries(fake_hub, onnx_path):
    bad = fake_hub.make_client(token="not-the-token")
    with pytest.raises(qai_hub.UserError, match="Failed to authenticate"):
        bad.get_devices()
    with pytest.raises(qai_hub.UserError, match="Failed to authenticate"):
        bad.upload_model(onnx_path)
    assert fake_hub.request_log[0].status == 401
    assert fake_hub.count_requests() == 2  # 401 is not retried
    assert fake_hub.models == {}


def test_transient_503_is_retried_by_the_client(client, fake_hub, onnx_path):
    fake_hub.fail_next("/api/v1/devices/", 503, count=2)
    assert len(client.get_devices()) == 6
    assert fake_hub.count_requests("GET", "/api/v1/devices/") == 3  # urllib3 Retry

    model = client.upload_model(onnx_path)
    fake_hub.fail_next("/api/v1/jobs/", 503, count=2, method="POST")
    job = _compile(client, model, "qnn_context_binary")
    assert fake_hub.count_requests("POST", "/api/v1/jobs/") == 3  # backoff on the POST
    assert list(fake_hub.jobs) == [job.job_id]


def test_transient_storage_errors_are_retried(client, fake_hub, onnx_path, tmp_path):
    fake_hub.fail_next("/_storage/models/", 503, count=1, method="PUT")
    model = client.upload_model(onnx_path)
    assert fake_hub.models[model.model_id].data == ONNX_BYTES
    job = _compile(client, model, "qnn_context_binary")
    fake_hub.fail_next("/_storage/models/", 500, count=2, method="GET")
    path = job.download_target_model(str(tmp_path / "vit"))
    assert Path(path).read_bytes().startswith(QNN_CONTEXT_BINARY_MARKER)


@pytest.mark.parametrize("status", [500, 503])
def test_persistent_5xx_is_internal_error(client, fake_hub, onnx_path, status):
    fake_hub.fail_next("/api/v1/devices/", status, count=None)
    with pytest.raises(qai_hub.InternalError) as info:
        client.get_devices()
    assert fake_hub.count_requests("GET", "/devices/") == 7  # 1 + 6 urllib3 retries
    assert type(info.value.__cause__).__name__ == "RetryError"
    expected = "is unavailable right now" if status == 503 else "reported errors"
    assert expected in str(info.value)
    fake_hub.clear_faults()

    model = client.upload_model(onnx_path)
    fake_hub.fail_next("/api/v1/jobs/", status, count=None, method="POST")
    with pytest.raises(qai_hub.InternalError) as info:
        _compile(client, model, "qnn_context_binary")
    assert isinstance(info.value.__cause__, APIException)
    assert info.value.__cause__.status_code == status
    assert fake_hub.count_requests("POST", "/api/v1/jobs/") == 7  # backoff, 7 tries
    assert fake_hub.jobs == {}


def test_429(client, fake_hub, onnx_path):
    # GET: urllib3 retries 429 like a 5xx, then the client reports an InternalError
    fake_hub.fail_next("/api/v1/devices/", 429, count=None)
    with pytest.raises(qai_hub.InternalError):
        client.get_devices()
    fake_hub.clear_faults()

    model = client.upload_model(onnx_path)
    # job creation, single device: 7 tries, then RateLimitedError (retry=True is not used)
    fake_hub.fail_next("/api/v1/jobs/", 429, count=None, method="POST")
    with pytest.raises(qai_hub.client.RateLimitedError):
        _compile(client, model, "qnn_context_binary")
    assert fake_hub.count_requests("POST", "/api/v1/jobs/") == 7

    # inference creation (retry=True): 20, 40, 60, ... s waits for up to 10 minutes
    fake_hub.sleeps.clear()
    with pytest.raises(qai_hub.client.RateLimitedError, match="10 minutes"):
        client.submit_inference_job(
            model, qai_hub.Device(S22), inputs={"x": [np.ones(3, np.float32)]}
        )
    assert fake_hub.sleeps.polling()[:4] == [20.0, 40.0, 60.0, 60.0]
    fake_hub.clear_faults()

    # a short burst of 429s is absorbed by the client's backoff
    fake_hub.fail_next("/api/v1/jobs/", 429, count=3, method="POST")
    job = client.submit_inference_job(
        model, qai_hub.Device(S22), inputs={"x": [np.ones(3, np.float32)]}
    )
    assert job.wait().success


def test_failed_jobs_report_their_reason(client, fake_hub, onnx_path, tmp_path):
    model = client.upload_model(onnx_path)
    fake_hub.job_outcome = {"compile": ("FAILED", "Op GridSample is not supported on HTP")}
    job = _compile(client, model, "qnn_context_binary")
    status = job.wait()  # returns, does not raise
    assert isinstance(status, qai_hub.JobStatus)
    assert status.failure and not status.success and status.code == "FAILED"
    assert status.message == "Op GridSample is not supported on HTP"
    assert fake_hub.jobs[job.job_id].state == "FAILED"
    # the seeded target model exists, but has no file: the download is a 404 -> UserError
    with pytest.raises(qai_hub.UserError, match="no file to download"):
        job.download_target_model(str(tmp_path / "vit"))
    resumed = client.get_job(job.job_id)
    assert resumed.get_status().message == "Op GridSample is not supported on HTP"

    fake_hub.job_outcome = ("FAILED", "Device lost")
    job = client.submit_inference_job(
        model, qai_hub.Device(S22), inputs={"x": [np.ones(3, np.float32)]}
    )
    assert job.wait().message == "Device lost"
    assert job.download_output_data() is None
    assert job.download_profile() == {}

    fake_hub.job_outcome = None
    fake_hub.inference_fn = lambda inputs: 1 / 0
    job = client.submit_inference_job(
        model, qai_hub.Device(S22), inputs={"x": [np.ones(3, np.float32)]}
    )
    assert "ZeroDivisionError" in job.wait().message


def test_slow_jobs_report_intermediate_states(client, fake_hub, onnx_path):
    model = client.upload_model(onnx_path)
    fake_hub.polls_until_done = 3
    job = _compile(client, model, "qnn_context_binary")  # submit polls once: CREATED
    status = job.get_status()
    assert status.code == "OPTIMIZING_MODEL" and status.running
    assert job.wait().success  # OPTIMIZING_MODEL, sleep, SUCCESS
    assert fake_hub.jobs[job.job_id].state_history == [
        "CREATED",
        "OPTIMIZING_MODEL",
        "OPTIMIZING_MODEL",
        "SUCCESS",
    ]
    assert fake_hub.sleeps.polling() == [10.0]  # Job._polling_interval, never really slept

    fake_hub.polls_until_done = 100
    job = _compile(client, model, "qnn_context_binary")
    with pytest.raises(TimeoutError):
        job.wait(timeout=25)  # counted in (skipped) sleep seconds


def test_verbose_client_from_ini_waits_through_inference_states(fake_hub, onnx_path):
    fake_hub.polls_until_done = 2
    client = qai_hub.Client()  # verbose: 1 s sleeps, status bar per state
    job = client.submit_inference_job(
        str(onnx_path), qai_hub.Device(S22), inputs={"x": [np.ones(3, np.float32)]}
    )
    assert job.wait().success
    assert fake_hub.jobs[job.job_id].state_history[:3] == [
        "CREATED",
        "PROVISIONING_DEVICE",
        "SUCCESS",
    ]
    assert fake_hub.errors == [] and fake_hub.unhandled == []

"""A test double of Qualcomm AI Hub's REST API, spoken to by the real ``qai_hub`` client 0.56.

`FakeHubServer` is a loopback HTTP server (``http.server.ThreadingHTTPServer`` in a daemon
thread) that answers the requests the real client makes under ``{api_url}/api/v1/...``:
protobuf bodies (``application/x-protobuf``, messages from ``qai_hub.public_api_pb2``), token
authentication (``Authorization: token <api_token>``), and presigned-URL style uploads and
downloads served by the same server under ``/_storage/...``. It never offers S3 credentials, so
the client always takes its plain-HTTP (multipart-URL / form-POST / GET-URL) transfer path.

Nothing here compiles or runs a model. Compiled "models" are marked bytes (a QNN context binary
is ``FAKE-QNN-CONTEXT-BINARY sha256=<sha256 of the uploaded model>``), inference outputs are
deterministic pseudo-random arrays (or whatever ``server.inference_fn`` returns), and every
number in a profile (``ProfileConfig``) is a made-up default or a value the test set: none of
them are measurements of anything.

Supported client calls: ``get_devices`` / ``Device`` resolution, ``get_frameworks``,
``upload_model`` (single files and zipped directory models such as ``.aimet``), ``get_model``,
``submit_compile_job`` (target runtimes tflite, qnn_context_binary, qnn_dlc, onnx,
precompiled_qnn_onnx), ``submit_inference_job`` / ``submit_profile_job`` (with or without
inputs, with or without profiling), ``get_job``, ``Job.wait`` / ``get_status``,
``download_target_model``, ``download_output_data``, ``download_profile``, ``upload_dataset``,
``get_dataset``. Fault injection: wrong token -> 401, ``fail_next`` (any status, N times),
``job_outcome`` (FAILED with a reason), ``polls_until_done`` (intermediate states).

Typical use (see ``fixture.py`` for the pytest fixture)::

    with FakeHubServer() as server:
        client = server.make_client()
        model = client.upload_model("model.onnx")
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import re
import secrets
import shlex
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import h5py
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from qai_hub import public_api_pb2 as pb

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DEFAULT_DEVICES",
    "QNN_CONTEXT_BINARY_MARKER",
    "FakeDataset",
    "FakeDevice",
    "FakeHubServer",
    "FakeJob",
    "FakeLayer",
    "FakeModel",
    "ProfileConfig",
    "RecordedRequest",
    "default_outputs",
    "fake_context_binary",
]

HUB_VERSION = "fake-aihub-for-qai-hub-0.56"
QNN_CONTEXT_BINARY_MARKER = b"FAKE-QNN-CONTEXT-BINARY"
TFLITE_MARKER = b"FAKE-TFLITE-MODEL"
QNN_DLC_MARKER = b"FAKE-QNN-DLC"
ONNX_MARKER = b"FAKE-ONNX-MODEL"

PROTOBUF = "application/x-protobuf"
DAY = 24 * 3600

# Wire values of JobState, keyed by the names the client reports (qai_hub.JobStatus.State).
_STATE_TO_PB = {
    "CREATED": pb.JobState.JOB_STATE_CREATED,
    "OPTIMIZING_MODEL": pb.JobState.JOB_STATE_OPTIMIZING_MODEL,
    "PROVISIONING_DEVICE": pb.JobState.JOB_STATE_PROVISIONING_DEVICE,
    "MEASURING_PERFORMANCE": pb.JobState.JOB_STATE_MEASURING_PERFORMANCE,
    "RUNNING_INFERENCE": pb.JobState.JOB_STATE_RUNNING_INFERENCE,
    "SUCCESS": pb.JobState.JOB_STATE_DONE,
    "FAILED": pb.JobState.JOB_STATE_FAILED,
}
FINAL_STATES = ("SUCCESS", "FAILED")

# Tensor dtypes the client can decode (qai_hub.api_utils._STR_TO_TETRA_TYPE).
_DTYPE_TO_PB = {
    "float16": pb.TensorDtype.TENSOR_DTYPE_FLOAT16,
    "float32": pb.TensorDtype.TENSOR_DTYPE_FLOAT32,
    "int32": pb.TensorDtype.TENSOR_DTYPE_INT32,
    "int8": pb.TensorDtype.TENSOR_DTYPE_INT8,
    "uint8": pb.TensorDtype.TENSOR_DTYPE_UINT8,
    "int16": pb.TensorDtype.TENSOR_DTYPE_INT16,
    "uint16": pb.TensorDtype.TENSOR_DTYPE_UINT16,
    "int64": pb.TensorDtype.TENSOR_DTYPE_INT64,
    "bool": pb.TensorDtype.TENSOR_DTYPE_BOOL,
}
_PB_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PB.items()}

# target runtime -> (model type of the compiled model, download filename extension)
_TARGET_RUNTIMES = {
    "tflite": (pb.ModelType.MODEL_TYPE_TFLITE, ".tflite"),
    "qnn_context_binary": (pb.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY, ".bin"),
    "qnn_dlc": (pb.ModelType.MODEL_TYPE_QNN_DLC, ".dlc"),
    "onnx": (pb.ModelType.MODEL_TYPE_ONNX, ".onnx.zip"),
    "precompiled_qnn_onnx": (pb.ModelType.MODEL_TYPE_ONNX, ".onnx.zip"),
}
DEFAULT_TARGET_RUNTIME = "tflite"  # what AI Hub compiles to when no --target_runtime is given


# --------------------------------------------------------------------------------------------
# Public data records (what tests inspect and configure)
# --------------------------------------------------------------------------------------------


@dataclass
class FakeDevice:
    """A device the fake knows; ``attributes`` are the strings ``get_devices`` filters on."""

    name: str
    os: str
    attributes: list[str]
    soc_description: str = ""

    def os_version(self) -> tuple[int, ...]:
        return _version_tuple(self.os)


# chipset attribute -> (Hexagon version, SoC description)
_CHIPSETS = {
    "qualcomm-snapdragon-8gen1": ("v69", "Snapdragon 8 Gen 1"),
    "qualcomm-snapdragon-8gen2": ("v73", "Snapdragon 8 Gen 2"),
    "qualcomm-snapdragon-8gen3": ("v75", "Snapdragon 8 Gen 3"),
    "qualcomm-snapdragon-8-elite": ("v79", "Snapdragon 8 Elite"),
}


def _android_phone(name: str, os: str, chipset: str) -> FakeDevice:
    hexagon, soc = _CHIPSETS[chipset]
    attributes = [
        f"chipset:{chipset}",
        "format:phone",
        "framework:onnx",
        "framework:qnn",
        "framework:tflite",
        f"hexagon:{hexagon}",
        "os:android",
        "vendor:samsung",
    ]
    return FakeDevice(name=name, os=os, attributes=attributes, soc_description=soc)


DEFAULT_DEVICES: tuple[FakeDevice, ...] = (
    _android_phone("Samsung Galaxy S22 (Family)", "12", "qualcomm-snapdragon-8gen1"),
    _android_phone("Samsung Galaxy S22 5G", "12", "qualcomm-snapdragon-8gen1"),
    _android_phone("Samsung Galaxy S22 Ultra 5G", "12", "qualcomm-snapdragon-8gen1"),
    _android_phone("Samsung Galaxy S23 (Family)", "13", "qualcomm-snapdragon-8gen2"),
    _android_phone("Samsung Galaxy S24 (Family)", "14", "qualcomm-snapdragon-8gen3"),
    _android_phone("Samsung Galaxy S25 (Family)", "15", "qualcomm-snapdragon-8-elite"),
)

# (name, api_version, api_tags, full_version): invented version numbers.
DEFAULT_FRAMEWORKS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("QAIRT", "2.37", ("default",), "2.37.0.000000"),
    ("QAIRT", "2.40", ("latest",), "2.40.0.000000"),
)


@dataclass
class FakeLayer:
    """One ``execution_detail`` entry of a profile. ``compute_unit`` is NPU, GPU or CPU;
    ``execution_time_us`` is in microseconds (None: the field is left out, as some runtimes
    do)."""

    name: str
    type: str
    compute_unit: str = "NPU"
    execution_time_us: int | None = None


def _default_layers() -> list[FakeLayer]:
    return [
        FakeLayer("/patch_embed/proj/Conv", "Conv2d", "NPU", 111),
        FakeLayer("/blocks.0/norm1/LayerNormalization", "LayerNorm", "NPU", 22),
        FakeLayer("/blocks.0/attn/qkv/MatMul", "MatMul", "NPU", 333),
        FakeLayer("/blocks.0/attn/Softmax", "Softmax", "NPU", 44),
        FakeLayer("/blocks.0/mlp/fc1/MatMul", "MatMul", "NPU", 555),
        FakeLayer("/blocks.0/mlp/act/Gelu", "Gelu", "GPU", 66),
        FakeLayer("/head/Gemm", "FullyConnected", "NPU", 77),
        FakeLayer("/ArgMax", "ArgMax", "CPU", 8),
    ]


@dataclass
class ProfileConfig:
    """The numbers an inference job with ``profile=True`` reports. All invented.

    Times are microseconds, memory is bytes, ranges are ``(lower, upper)``. They reach the
    client as a ``ProfileDetail`` protobuf (major 1, minor 2), which
    ``InferenceJob.download_profile()`` turns into ``execution_summary`` /
    ``execution_detail``: ``estimated_inference_time_us`` becomes
    ``estimated_inference_time``, ``first_load_time_us`` ``first_load_time``,
    ``inference_memory_peak_range`` ``inference_memory_peak_range`` and its upper bound
    ``estimated_inference_peak_memory``, and so on.
    """

    estimated_inference_time_us: int = 1234
    first_load_time_us: int = 123_456
    warm_load_time_us: int = 23_456
    compile_time_us: int = 345_678
    inference_memory_peak_range: tuple[int, int] = (11_111_111, 22_222_222)
    inference_memory_increase_range: tuple[int, int] = (1_111_111, 2_222_222)
    first_load_memory_peak_range: tuple[int, int] = (33_333_333, 44_444_444)
    first_load_memory_increase_range: tuple[int, int] = (3_333_333, 4_444_444)
    warm_load_memory_peak_range: tuple[int, int] = (5_555_555, 6_666_666)
    warm_load_memory_increase_range: tuple[int, int] = (555_555, 666_666)
    compile_memory_peak_range: tuple[int, int] = (77_777_777, 88_888_888)
    compile_memory_increase_range: tuple[int, int] = (7_777_777, 8_888_888)
    iterations: int = 5  # length of the all_*_times lists
    layers: list[FakeLayer] = field(default_factory=_default_layers)

    def to_pb(self) -> pb.ProfileDetail:
        def usage(peak: tuple[int, int], increase: tuple[int, int]):
            return pb.ProfileDetail.MemoryUsage(
                peak=pb.Range(lower=int(peak[0]), upper=int(peak[1])),
                increase=pb.Range(lower=int(increase[0]), upper=int(increase[1])),
            )

        def series(first: int) -> list[int]:
            return [int(first) + i for i in range(self.iterations)]

        detail = pb.ProfileDetail(
            major_version=1,
            minor_version=2,
            execution_time=int(self.estimated_inference_time_us),
            after_execution_peak_memory=int(self.inference_memory_peak_range[1]),
            cold_load_time=int(self.first_load_time_us),
            after_cold_load_peak_memory=int(self.first_load_memory_peak_range[1]),
            warm_load_time=int(self.warm_load_time_us),
            after_warm_load_peak_memory=int(self.warm_load_memory_peak_range[1]),
            compile_time=int(self.compile_time_us),
            after_compile_peak_memory=int(self.compile_memory_peak_range[1]),
            compile_memory=usage(
                self.compile_memory_peak_range, self.compile_memory_increase_range
            ),
            cold_load_memory=usage(
                self.first_load_memory_peak_range, self.first_load_memory_increase_range
            ),
            warm_load_memory=usage(
                self.warm_load_memory_peak_range, self.warm_load_memory_increase_range
            ),
            execution_memory=usage(
                self.inference_memory_peak_range, self.inference_memory_increase_range
            ),
            all_compile_times=series(self.compile_time_us),
            all_cold_load_times=series(self.first_load_time_us),
            all_warm_load_times=series(self.warm_load_time_us),
            all_execution_times=series(self.estimated_inference_time_us),
        )
        for i, layer in enumerate(self.layers):
            unit = layer.compute_unit.upper()
            detail_layer = detail.layer_details.add(
                name=layer.name,
                id=str(i),
                layer_type_name=layer.type,
                compute_unit=pb.ComputeUnit.Value(f"COMPUTE_UNIT_{unit}"),
            )
            if layer.execution_time_us is not None:
                detail_layer.execution_time = int(layer.execution_time_us)
        return detail


@dataclass
class FakeModel:
    """A model record: uploaded by the client, or the target model of a compile job."""

    model_id: str
    name: str
    model_type: int  # pb.ModelType value
    is_directory: bool
    creation_time: float
    project_id: str = ""
    data: bytes | None = None  # the file (a zip for directory models)
    upload_complete: bool = False
    producer_id: str = ""  # compile job that produces it (target models)
    filename: str = ""  # name given to the client on download
    input_spec: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    output_spec: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    metadata: dict[int, str] = field(default_factory=dict)  # pb.ModelMetadataKey -> value
    declared_size: int | None = None
    upload_id: str = ""
    parts: dict[int, bytes] = field(default_factory=dict)
    part_count: int = 0

    @property
    def model_type_name(self) -> str:
        return pb.ModelType.Name(self.model_type)

    @property
    def sha256(self) -> str | None:
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()

    @property
    def files(self) -> dict[str, bytes]:
        """Members of a directory model's zip ({} for single-file models)."""
        if not self.is_directory or self.data is None:
            return {}
        with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
            return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


@dataclass
class FakeDataset:
    dataset_id: str
    name: str
    creation_time: float
    expiration_time: float | None
    permanent: bool = False
    project_id: str = ""
    data: bytes | None = None  # h5 file in the client's dataset layout
    upload_complete: bool = False

    @property
    def entries(self) -> dict[str, list[np.ndarray]]:
        """The dataset as ``{name: [array per sample]}`` (the client's DatasetEntries)."""
        if self.data is None:
            return {}
        return read_h5_entries(self.data)


@dataclass
class FakeJob:
    """What the fake recorded about a submitted job.

    ``kind`` is "compile" or "inference" (profile jobs are inference jobs with
    ``profile=True``). ``options`` is the exact options string the client sent;
    ``parsed_options`` maps each ``--flag`` to its value (True for bare flags).
    ``state`` is the state the job last reported (a ``qai_hub.JobStatus.State`` name) and
    ``state_history`` every state reported, one per status poll.
    """

    job_id: str
    kind: str
    name: str
    options: str
    parsed_options: dict[str, Any]
    device: FakeDevice
    model_id: str
    creation_time: float
    project_id: str = ""
    polls_until_done: int = 0
    final_state: str = "SUCCESS"
    failure_reason: str | None = None
    polls: int = 0
    state_history: list[str] = field(default_factory=list)
    # compile jobs
    target_runtime: str | None = None
    target_model_id: str | None = None
    input_specs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    # inference jobs
    profile: bool = False
    dataset_id: str | None = None
    output_dataset_id: str | None = None
    profile_config: ProfileConfig | None = None

    @property
    def device_name(self) -> str:
        return self.device.name

    @property
    def qairt_version(self) -> str | None:
        value = self.parsed_options.get("qairt_version")
        return value if isinstance(value, str) else None

    @property
    def in_progress_states(self) -> tuple[str, ...]:
        # Must match the client's lists (CompileJob / InferenceJob __init__): in verbose mode
        # the client looks the reported state up in them.
        if self.kind == "compile":
            return ("CREATED", "OPTIMIZING_MODEL")
        last = "MEASURING_PERFORMANCE" if self.profile else "RUNNING_INFERENCE"
        return ("CREATED", "PROVISIONING_DEVICE", last)

    @property
    def state(self) -> str:
        if self.state_history:
            return self.state_history[-1]
        return self.final_state if self.polls_until_done <= 0 else "CREATED"

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def _advance(self) -> str:
        """One status poll: intermediate states for the first ``polls_until_done`` polls."""
        self.polls += 1
        if self.polls <= self.polls_until_done:
            states = self.in_progress_states
            reported = states[min(self.polls - 1, len(states) - 1)]
        else:
            reported = self.final_state
        self.state_history.append(reported)
        return reported


class RecordedRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    body_size: int


@dataclass
class _Fault:
    substring: str
    status: int
    remaining: int | None  # None: forever
    method: str | None
    body: bytes
    headers: list[tuple[str, str]]


class _HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    truncate_to: int | None = None  # send only this many body bytes, then drop the connection


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def fake_context_binary(source_sha256: str) -> bytes:
    """The bytes of the fake's "QNN context binary" for an uploaded model with this sha256."""
    return (
        QNN_CONTEXT_BINARY_MARKER
        + f" sha256={source_sha256}\n".encode()
        + b"Not a QNN context binary: produced by the fake AI Hub of tests/hub_fake.\n"
    )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.strip().split("."):
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def _os_matches(device_os: str, wanted: str) -> bool:
    """Exact version ("13") or right-open interval ("[12,14)", "[13,)", "[,14)")."""
    wanted = wanted.strip()
    if not wanted:
        return True
    have = _version_tuple(device_os)
    if wanted.startswith("[") and wanted.endswith(")"):
        low, _, high = wanted[1:-1].partition(",")
        if low and have < _version_tuple(low):
            return False
        return not (high and have >= _version_tuple(high))
    return have == _version_tuple(wanted)


def parse_options(options: str) -> dict[str, Any]:
    """``"--target_runtime onnx --truncate_64bit_io"`` -> ``{"target_runtime": "onnx",
    "truncate_64bit_io": True}``; also accepts ``--flag=value``."""
    tokens = shlex.split(options or "")
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            key = token[2:]
            if "=" in key:
                key, value = key.split("=", 1)
                parsed[key] = value
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                parsed[key] = tokens[i + 1]
                i += 1
            else:
                parsed[key] = True
        i += 1
    return parsed


def _timestamp(t: float) -> Timestamp:
    return Timestamp(seconds=int(t), nanos=int((t - int(t)) * 1e9))


def _tensor_list_pb(specs: Iterable[tuple[str, tuple[int, ...], str]]) -> pb.NamedTensorTypeList:
    out = pb.NamedTensorTypeList()
    for name, shape, dtype in specs:
        if dtype not in _DTYPE_TO_PB:
            continue
        out.types.add(
            name=name,
            tensor_type=pb.TensorType(shape=[int(d) for d in shape], dtype=_DTYPE_TO_PB[dtype]),
        )
    return out


def _tensor_list_from_pb(tl: pb.NamedTensorTypeList) -> list[tuple[str, tuple[int, ...], str]]:
    return [
        (
            t.name,
            tuple(int(d) for d in t.tensor_type.shape),
            _PB_TO_DTYPE.get(t.tensor_type.dtype, "float32"),
        )
        for t in tl.types
    ]


def _normalize_shape_spec(spec: Any) -> tuple[tuple[int, ...], str]:
    """``(1, 1000)`` or ``((1, 1000), "float16")`` -> (shape, dtype)."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (tuple, list)):
        return tuple(int(d) for d in spec[0]), str(spec[1])
    return tuple(int(d) for d in spec), "float32"


def default_outputs(
    inputs: Mapping[str, list[np.ndarray]],
    output_shapes: Mapping[str, Any],
) -> dict[str, list[np.ndarray]]:
    """The fake's default inference outputs: per sample and output name, standard-normal values
    seeded by a hash of the output name and that sample's input bytes (deterministic; different
    inputs give different outputs). ``output_shapes`` values are a shape or (shape, dtype)."""
    n_samples = max((len(v) for v in inputs.values()), default=1)
    outputs: dict[str, list[np.ndarray]] = {}
    for name, spec in output_shapes.items():
        shape, dtype = _normalize_shape_spec(spec)
        samples = []
        for s in range(n_samples):
            digest = hashlib.sha256(name.encode())
            for key in sorted(inputs):
                if s < len(inputs[key]):
                    digest.update(np.ascontiguousarray(inputs[key][s]).tobytes())
            rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
            samples.append(rng.standard_normal(shape).astype(dtype))
        outputs[name] = samples
    return outputs


def write_h5_entries(entries: Mapping[str, Any]) -> bytes:
    """``{name: [arrays]}`` -> h5 bytes in the layout the client reads (data/<i>/batch_<j>)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5f:
        for index, (name, samples) in enumerate(entries.items()):
            if not isinstance(samples, (list, tuple)):
                samples = [samples]
            for j, arr in enumerate(samples):
                h5f.create_dataset(f"data/{index}/batch_{j}", data=np.asarray(arr))
            group = h5f[f"data/{index}"]
            group.attrs["order"] = index
            group.attrs["name"] = name
            group.attrs["batch_count"] = len(samples)
    return buf.getvalue()


def read_h5_entries(data: bytes) -> dict[str, list[np.ndarray]]:
    """Inverse of `write_h5_entries` (and of the client's dataset upload format)."""
    with h5py.File(io.BytesIO(data), "r") as h5f:
        groups = list(h5f["data"].values())
        groups.sort(key=lambda g: int(g.attrs.get("order", 0)))
        return {
            str(g.attrs["name"]): [
                np.array(g[f"batch_{j}"]) for j in range(int(g.attrs["batch_count"]))
            ]
            for g in groups
        }


def _parse_multipart_form(content_type: str, body: bytes) -> dict[str, bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise _HttpError(400, "multipart body without boundary")
    delimiter = b"--" + match.group(1).encode()
    fields: dict[str, bytes] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part[2:].partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = content[:-2] if content.endswith(b"\r\n") else content
    return fields


def _json_error(status: int, detail: str) -> _Response:
    return _Response(status, json.dumps({"detail": detail}).encode())


def _s3_error(status: int, code: str, message: str) -> _Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()
    return _Response(status, body, "application/xml")


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeAIHub/0.56"
    protocol_version = "HTTP/1.0"  # one request per connection; bodies always sized

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_HEAD(self):
        self._handle("HEAD")

    def log_message(self, format, *args):
        pass  # keep test output clean; server.request_log has everything

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        hub: FakeHubServer = self.server.hub  # type: ignore[attr-defined]
        body = self._read_body()
        response = hub._dispatch(method, self.path, self.headers, body)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers:
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            if response.truncate_to is None:
                self.wfile.write(response.body)
            else:  # a download cut short: Content-Length promises more than arrives
                self.wfile.write(response.body[: response.truncate_to])
                self.wfile.flush()
                self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeHubServer:
    """A fake AI Hub on ``http://127.0.0.1:<port>`` for the real ``qai_hub`` client.

    Configuration (set any time; job settings are captured when a job is submitted):

    - ``token``: the only API token accepted; any other gets HTTP 401 on every API call.
    - ``devices``: list of `FakeDevice` (defaults: Galaxy S22/S23/S24/S25 families).
    - ``job_outcome``: None (success), ``("FAILED", "reason")``, ``"SUCCESS"``, a dict
      ``{"compile": ..., "inference": ...}``, or a callable ``(FakeJob) -> outcome``.
    - ``polls_until_done``: status polls (GET /jobs/<id>/) that report an intermediate state
      (CREATED -> OPTIMIZING_MODEL, or CREATED -> PROVISIONING_DEVICE -> MEASURING_PERFORMANCE /
      RUNNING_INFERENCE) before the final state. 0 (default): jobs are done at once.
    - ``output_shapes``: ``{name: shape | (shape, dtype)}`` of default inference outputs.
    - ``inference_fn``: optional ``(inputs: {name: [np.ndarray]}) -> {name: [np.ndarray] |
      np.ndarray}``; if it raises, the job ends FAILED with the exception as reason.
    - ``profile``: a `ProfileConfig`, or a callable ``(FakeJob) -> ProfileConfig``.
    - ``max_part_size``: multipart upload part size handed to the client (bytes).
    - ``onnx_outputs_zipped``: onnx / precompiled_qnn_onnx targets download as a zipped
      ``.onnx`` directory (default, ``<name>.onnx.zip``) or, if False, a bare ``.onnx`` file.
    - ``default_qairt_version``: the QAIRT version stamped on compiled models when the job's
      options have no ``--qairt_version``.
    - ``strict_inputs``: fail inference jobs whose input names / shapes differ from the compiled
      model's input spec (default True).

    Records: ``requests`` ((method, path) per request), ``request_log`` (`RecordedRequest`),
    ``jobs`` / ``models`` / ``datasets`` (id -> record), ``errors`` (tracebacks of fake-side
    bugs, answered with HTTP 500), ``unhandled`` (requests without a route, answered 404).
    """

    def __init__(self, token: str = "fake-hub-token", host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.host = host
        self.port = port
        self.devices: list[FakeDevice] = [
            FakeDevice(d.name, d.os, list(d.attributes), d.soc_description) for d in DEFAULT_DEVICES
        ]
        self.frameworks = list(DEFAULT_FRAMEWORKS)
        self.job_outcome: Any = None
        self.polls_until_done: int = 0
        self.output_shapes: dict[str, Any] = {"logits": (1, 1000)}
        self.inference_fn: Callable[[dict[str, list[np.ndarray]]], Mapping[str, Any]] | None = None
        self.profile: ProfileConfig | Callable[[FakeJob], ProfileConfig] = ProfileConfig()
        self.max_part_size: int = 8 * 1024 * 1024
        self.onnx_outputs_zipped: bool = True
        self.default_qairt_version: str = "2.37"
        self.strict_inputs: bool = True

        self.requests: list[tuple[str, str]] = []
        self.request_log: list[RecordedRequest] = []
        self.jobs: dict[str, FakeJob] = {}
        self.models: dict[str, FakeModel] = {}
        self.datasets: dict[str, FakeDataset] = {}
        self.errors: list[str] = []
        self.unhandled: list[tuple[str, str]] = []
        self.ini_path: Path | None = None
        self.sleeps: Any = None  # set by the pytest fixture: the client's (faked) sleeps

        self._faults: list[_Fault] = []
        self._truncations: list[list] = []  # [substring, remaining, keep]
        self._counters: dict[str, int] = {}
        self._secret = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeHubServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-aihub-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, to be used as both ``api_url`` and ``web_url`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- conveniences for tests

    def make_client(self, token: str | None = None, verbose: bool = False):
        """A real ``qai_hub.Client`` pointed at this server (``token`` defaults to the valid
        one)."""
        import qai_hub

        return qai_hub.Client(
            config=qai_hub.ClientConfig(
                api_token=self.token if token is None else token,
                api_url=self.url,
                web_url=self.url,
                verbose=verbose,
            )
        )

    def write_client_ini(self, path: str | Path, verbose: bool | None = None) -> Path:
        """Write a client.ini (``[api]`` api_token / api_url / web_url, plus ``verbose`` if
        given; the client treats a missing ``verbose`` as True) and remember it in
        ``ini_path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "[api]",
            f"api_token = {self.token}",
            f"api_url = {self.url}",
            f"web_url = {self.url}",
        ]
        if verbose is not None:
            lines.append(f"verbose = {verbose}")
        path.write_text("\n".join(lines) + "\n")
        self.ini_path = path
        return path

    def fail_next(
        self,
        endpoint_substring: str,
        status: int,
        count: int | None = 1,
        *,
        method: str | None = None,
        body: str | bytes | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path contains ``endpoint_substring`` (and,
        if given, whose method is ``method``) with HTTP ``status``, then behave normally again.
        ``count=None`` fails them forever. Faults apply before authentication, to API, storage
        and web paths alike. ``retry_after`` adds a Retry-After header (which urllib3 honours
        for 413/429/503)."""
        if isinstance(body, str):
            body = body.encode()
        if body is None:
            body = json.dumps({"detail": f"Injected fault: HTTP {status}"}).encode()
        headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
        with self._lock:
            self._faults.append(
                _Fault(endpoint_substring, status, count, method and method.upper(), body, headers)
            )

    def truncate_next(self, endpoint_substring: str, count: int | None = 1, keep: float = 0.5) -> None:
        """Answer the next ``count`` GETs whose path contains ``endpoint_substring`` normally,
        but cut the body after ``keep`` of its bytes and drop the connection (a truncated
        download; the Content-Length header still promises the whole body)."""
        with self._lock:
            self._truncations.append([endpoint_substring, count, keep])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._truncations.clear()

    def count_requests(self, method: str | None = None, contains: str = "") -> int:
        """Number of recorded requests with this method (any if None) whose path contains
        ``contains``."""
        return sum(
            1
            for m, p in list(self.requests)
            if (method is None or m == method.upper()) and contains in p
        )

    def jobs_of_kind(self, kind: str) -> list[FakeJob]:
        return [j for j in self.jobs.values() if j.kind == kind]

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, method: str, raw_path: str, headers, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        with self._lock:
            self.requests.append((method, path))
            index = len(self.request_log)
            self.request_log.append(RecordedRequest(method, path, query, 0, len(body)))
        try:
            response = self._route(method, path, query, headers, body)
            if method == "GET" and response.status == 200:
                response.truncate_to = self._take_truncation(path, len(response.body))
        except _HttpError as e:
            response = _json_error(e.status, e.detail)
        except Exception:  # noqa: BLE001  (a bug in the fake: answer 500, keep the traceback)
            tb = traceback.format_exc()
            with self._lock:
                self.errors.append(tb)
            response = _json_error(500, "Fake AI Hub internal error:\n" + tb)
        with self._lock:
            self.request_log[index] = self.request_log[index]._replace(status=response.status)
        return response

    def _take_truncation(self, path: str, size: int) -> int | None:
        with self._lock:
            for t in self._truncations:
                substring, remaining, keep = t
                if substring in path and (remaining is None or remaining > 0):
                    if remaining is not None:
                        t[1] = remaining - 1
                    return int(size * keep)
        return None

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.substring not in path or (fault.method and fault.method != method):
                    continue
                if fault.remaining is None:
                    return fault
                if fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
        return None

    def _route(self, method: str, path: str, query, headers, body: bytes) -> _Response:
        fault = self._take_fault(method, path)
        if fault is not None:
            return _Response(fault.status, fault.body, "application/json", list(fault.headers))

        if path.startswith("/_storage/"):
            return self._storage(method, path, query, headers, body)
        if path.startswith("/api/v1/"):
            auth = headers.get("Authorization", "")
            if auth != f"token {self.token}":
                return _json_error(401, "Invalid token.")
            rel = path[len("/api/v1/") :]
            project = ""
            m = re.match(r"projects/([^/]+)/(jobs|models|datasets)/$", rel)
            if m:
                project, rel = m.group(1), m.group(2) + "/"
            return self._api(method, rel, query, body, project)
        m = re.match(r"/(jobs|models|datasets)/([^/]+)/?$", path)
        if method == "GET" and m:
            html = f"<html><body>Fake AI Hub: {m.group(1)[:-1]} {m.group(2)}</body></html>"
            return _Response(200, html.encode(), "text/html")
        return self._unhandled(method, path)

    def _unhandled(self, method: str, path: str) -> _Response:
        with self._lock:
            self.unhandled.append((method, path))
        return _json_error(404, f"Not found (the fake AI Hub has no route for {method} {path}).")

    def _api(self, method: str, rel: str, query, body: bytes, project: str) -> _Response:
        routes: list[tuple[str, str, Callable[..., _Response]]] = [
            ("GET", r"users/auth/user/", self._get_user),
            ("GET", r"devices/", self._get_devices),
            ("GET", r"frameworks/", self._get_frameworks),
            ("POST", r"models/", self._create_model),
            ("GET", r"models/", self._list_models),
            ("GET", r"models/(?P<id>[^/]+)/", self._get_model),
            ("PATCH", r"models/(?P<id>[^/]+)/", self._patch_model),
            ("GET", r"models/(?P<id>[^/]+)/multipart_upload/", self._model_upload_urls),
            ("POST", r"models/(?P<id>[^/]+)/multipart_upload/", self._model_upload_complete),
            ("GET", r"models/(?P<id>[^/]+)/download/", self._model_download),
            ("POST", r"datasets/", self._create_dataset),
            ("GET", r"datasets/(?P<id>[^/]+)/", self._get_dataset),
            ("PATCH", r"datasets/(?P<id>[^/]+)/", self._patch_dataset),
            ("GET", r"datasets/(?P<id>[^/]+)/upload_url/", self._dataset_upload_url),
            ("GET", r"datasets/(?P<id>[^/]+)/download_data/", self._dataset_download),
            ("POST", r"jobs/", self._create_job),
            ("GET", r"jobs/(?P<id>[^/]+)/", self._get_job),
            ("PATCH", r"jobs/(?P<id>[^/]+)/", self._patch_job),
            ("GET", r"jobs/(?P<id>[^/]+)/result/", self._get_job_result),
        ]
        for route_method, pattern, handler in routes:
            m = re.fullmatch(pattern, rel)
            if m and route_method == method:
                with self._lock:
                    return handler(query=query, body=body, project=project, **m.groupdict())
        return self._unhandled(method, "/api/v1/" + rel)

    # ---------------------------------------------------------------- ids, urls, pbs

    def _new_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}fake{n:04d}"

    def _sign(self, path: str) -> str:
        return hmac.new(self._secret, path.encode(), hashlib.sha256).hexdigest()[:32]

    def _presigned(self, path: str) -> str:
        return f"{self.url}{path}?X-Amz-Expires=3600&X-Amz-Signature={self._sign(path)}"

    @staticmethod
    def _pb(message) -> _Response:
        return _Response(200, message.SerializeToString(), PROTOBUF)

    def _model_pb(self, model: FakeModel) -> pb.Model:
        m = pb.Model(
            model_id=model.model_id,
            name=model.name,
            model_type=model.model_type,
            creation_time=_timestamp(model.creation_time),
            is_directory=model.is_directory,
            file_upload_complete=model.upload_complete,
            input_spec=_tensor_list_pb(model.input_spec),
            output_spec=_tensor_list_pb(model.output_spec),
            metadata=pb.ModelMetadata(entries=model.metadata),
        )
        if model.project_id:
            m.project_id = model.project_id
        if model.producer_id:
            m.producer_id = model.producer_id
        return m

    def _dataset_pb(self, ds: FakeDataset) -> pb.Dataset:
        d = pb.Dataset(
            dataset_id=ds.dataset_id,
            name=ds.name,
            creation_time=_timestamp(ds.creation_time),
            permanent=ds.permanent,
            file_upload_complete=ds.upload_complete,
        )
        if ds.expiration_time is not None:
            d.expiration_time.CopyFrom(_timestamp(ds.expiration_time))
        if ds.project_id:
            d.project_id = ds.project_id
        return d

    @staticmethod
    def _device_pb(device: FakeDevice) -> pb.Device:
        return pb.Device(
            name=device.name,
            os=device.os,
            attributes=device.attributes,
            soc_description=device.soc_description,
        )

    def _require_model(self, model_id: str) -> FakeModel:
        model = self.models.get(model_id)
        if model is None:
            raise _HttpError(404, "Not found.")
        return model

    def _require_dataset(self, dataset_id: str) -> FakeDataset:
        ds = self.datasets.get(dataset_id)
        if ds is None:
            raise _HttpError(404, "Not found.")
        return ds

    def _require_job(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise _HttpError(404, "Not found.")
        return job

    # ---------------------------------------------------------------- users, devices

    def _get_user(self, **_) -> _Response:
        return self._pb(
            pb.User(id=1, first_name="Fake", last_name="User", email="fake@example.invalid")
        )

    def _match_devices(self, name: str, os: str, attributes: list[str]) -> list[FakeDevice]:
        return [
            d
            for d in self.devices
            if (not name or d.name == name)
            and _os_matches(d.os, os)
            and all(a in d.attributes for a in attributes)
        ]

    def _get_devices(self, query, **_) -> _Response:
        name = query.get("name", [""])[0]
        os = query.get("os", [""])[0]
        attributes = [a for a in query.get("attributes", []) if a]
        select = query.get("select", ["False"])[0].lower() in ("true", "1")
        found = self._match_devices(name, os, attributes)
        if select and found:
            # one device: the latest OS, first in table order among equals
            newest = max(d.os_version() for d in found)
            found = [next(d for d in found if d.os_version() == newest)]
        out = pb.DeviceList(total_query_count=len(found))
        for d in found:
            out.devices.append(self._device_pb(d))
        return self._pb(out)

    def _get_frameworks(self, **_) -> _Response:
        out = pb.FrameworkList(total_query_count=len(self.frameworks))
        for name, api_version, tags, full in self.frameworks:
            out.frameworks.add(
                name=name, api_version=api_version, api_tags=list(tags), full_version=full
            )
        return self._pb(out)

    # ---------------------------------------------------------------- models

    def _create_model(self, body: bytes, project: str, **_) -> _Response:
        req = pb.Model.FromString(body)
        model = FakeModel(
            model_id=self._new_id("m"),
            name=req.name,
            model_type=req.model_type,
            is_directory=req.is_directory,
            creation_time=time.time(),
            project_id=project,
        )
        model.filename = model.name
        if model.is_directory and not model.filename.endswith(".zip"):
            model.filename += ".zip"
        self.models[model.model_id] = model
        return self._pb(
            pb.CreateUpdateResponse(
                id=model.model_id, creation_time=_timestamp(model.creation_time)
            )
        )

    def _list_models(self, **_) -> _Response:
        out = pb.ModelList(total_query_count=len(self.models))
        for model in reversed(list(self.models.values())):
            out.models.append(self._model_pb(model))
        return self._pb(out)

    def _get_model(self, id: str, **_) -> _Response:
        return self._pb(self._model_pb(self._require_model(id)))

    def _patch_model(self, id: str, body: bytes, **_) -> _Response:
        model = self._require_model(id)
        req = pb.Model.FromString(body)
        if req.HasField("name"):
            model.name = req.name
        return self._pb(pb.CreateUpdateResponse(id=model.model_id))

    def _model_upload_urls(self, id: str, query, **_) -> _Response:
        model = self._require_model(id)
        if model.upload_complete:
            raise _HttpError(400, "The model file was already uploaded.")
        size = int(query.get("file_size", ["0"])[0])
        model.declared_size = size
        model.part_count = max(1, math.ceil(size / self.max_part_size))
        model.upload_id = secrets.token_hex(8)
        model.parts = {}
        urls = [
            self._presigned(f"/_storage/models/{id}/{model.upload_id}/part/{n}")
            for n in range(1, model.part_count + 1)
        ]
        multipart = pb.FileMultipartUploadURL(
            urls=urls, upload_id=model.upload_id, max_part_size=self.max_part_size
        )
        if query.get("supports_s3_credentials", ["false"])[0] == "true":
            return self._pb(pb.FileUploadResponse(multipart_url=multipart))
        return self._pb(multipart)

    def _model_upload_complete(self, id: str, body: bytes, **_) -> _Response:
        model = self._require_model(id)
        req = pb.FileMultipartUploadComplete.FromString(body)
        if req.upload_id != model.upload_id:
            raise _HttpError(400, "Unknown upload id.")
        expected = [
            '"' + hashlib.md5(model.parts[n]).hexdigest() + '"' for n in sorted(model.parts)
        ]
        if (
            sorted(model.parts) != list(range(1, model.part_count + 1))
            or list(req.etags) != expected
        ):
            raise _HttpError(400, "Multipart upload incomplete or ETags do not match.")
        data = b"".join(model.parts[n] for n in sorted(model.parts))
        if model.declared_size is not None and len(data) != model.declared_size:
            raise _HttpError(400, f"Uploaded {len(data)} bytes, announced {model.declared_size}.")
        if model.is_directory:
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    tops = {n.split("/")[0] for n in zf.namelist()}
            except zipfile.BadZipFile:
                raise _HttpError(400, "A directory model must be uploaded as a zip.") from None
            if len(tops) != 1:
                raise _HttpError(400, "A zipped model must hold exactly one base directory.")
        model.data = data
        model.parts = {}
        model.upload_complete = True
        return self._pb(pb.CreateUpdateResponse(id=model.model_id))

    def _model_available(self, model: FakeModel) -> bool:
        if not model.upload_complete or model.data is None:
            return False
        if model.producer_id:
            producer = self.jobs.get(model.producer_id)
            return producer is not None and producer.state == "SUCCESS"
        return True

    def _model_download(self, id: str, query, **_) -> _Response:
        model = self._require_model(id)
        if not self._model_available(model):
            raise _HttpError(
                404, f"Model {id} has no file to download (not uploaded or not produced)."
            )
        info = pb.FileDownloadURL(
            url=self._presigned(f"/_storage/models/{id}/{model.filename}"), filename=model.filename
        )
        if query.get("supports_s3_credentials", ["false"])[0] == "true":
            return self._pb(pb.FileDownloadResponse(url=info))
        return self._pb(info)

    # ---------------------------------------------------------------- datasets

    def _create_dataset(self, body: bytes, project: str, **_) -> _Response:
        req = pb.Dataset.FromString(body)
        now = time.time()
        ds = FakeDataset(
            dataset_id=self._new_id("d"),
            name=req.name,
            creation_time=now,
            expiration_time=None if req.permanent else now + 30 * DAY,
            permanent=req.permanent,
            project_id=project or req.project_id,
        )
        self.datasets[ds.dataset_id] = ds
        resp = pb.CreateUpdateResponse(id=ds.dataset_id, creation_time=_timestamp(now))
        if ds.expiration_time is not None:
            # Without it the client would date the dataset's expiry to 1970 (expired).
            resp.expiration_time.CopyFrom(_timestamp(ds.expiration_time))
        return self._pb(resp)

    def _get_dataset(self, id: str, **_) -> _Response:
        return self._pb(self._dataset_pb(self._require_dataset(id)))

    def _patch_dataset(self, id: str, body: bytes, **_) -> _Response:
        ds = self._require_dataset(id)
        req = pb.Dataset.FromString(body)
        if req.file_upload_complete:
            if ds.data is None:
                raise _HttpError(400, "No dataset file was uploaded.")
            try:
                read_h5_entries(ds.data)
            except (OSError, KeyError, ValueError) as e:
                raise _HttpError(400, f"The dataset is not a valid h5 dataset: {e}") from None
            ds.upload_complete = True
        if req.HasField("name"):
            ds.name = req.name
        return self._pb(pb.CreateUpdateResponse(id=ds.dataset_id))

    def _dataset_upload_url(self, id: str, query, **_) -> _Response:
        self._require_dataset(id)
        info = pb.FileUploadURL(
            url=self._presigned(f"/_storage/datasets/{id}/upload"),
            file_field_name="file",
            fields={"key": f"datasets/{id}/dataset.h5"},
        )
        if query.get("supports_s3_credentials", ["false"])[0] == "true":
            return self._pb(pb.FileUploadResponse(url=info))
        return self._pb(info)

    def _dataset_download(self, id: str, query, **_) -> _Response:
        ds = self._require_dataset(id)
        if not ds.upload_complete:
            raise _HttpError(404, f"Dataset {id} has no file to download.")
        filename = f"dataset_{id}.h5"
        info = pb.FileDownloadURL(
            url=self._presigned(f"/_storage/datasets/{id}/{filename}"), filename=filename
        )
        if query.get("supports_s3_credentials", ["false"])[0] == "true":
            return self._pb(pb.FileDownloadResponse(url=info))
        return self._pb(info)

    # ---------------------------------------------------------------- storage ("S3")

    def _storage(self, method: str, path: str, query, headers, body: bytes) -> _Response:
        if query.get("X-Amz-Signature", [""])[0] != self._sign(path):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature is invalid.")
        with self._lock:
            m = re.fullmatch(r"/_storage/models/([^/]+)/([^/]+)/part/(\d+)", path)
            if m and method == "PUT":
                model = self.models.get(m.group(1))
                if model is None or model.upload_id != m.group(2):
                    return _s3_error(404, "NoSuchUpload", "The upload does not exist.")
                model.parts[int(m.group(3))] = body
                return _Response(
                    200, b"", "text/plain", [("ETag", f'"{hashlib.md5(body).hexdigest()}"')]
                )
            m = re.fullmatch(r"/_storage/datasets/([^/]+)/upload", path)
            if m and method == "POST":
                ds = self.datasets.get(m.group(1))
                if ds is None:
                    return _s3_error(404, "NoSuchKey", "The dataset does not exist.")
                form = _parse_multipart_form(headers.get("Content-Type", ""), body)
                if "file" not in form:
                    return _s3_error(400, "InvalidArgument", "The form has no file field.")
                ds.data = form["file"]
                return _Response(204, b"", "text/plain")
            m = re.fullmatch(r"/_storage/(models|datasets)/([^/]+)/([^/]+)", path)
            if m and method in ("GET", "HEAD"):
                if m.group(1) == "models":
                    model = self.models.get(m.group(2))
                    data = (
                        model.data if model is not None and self._model_available(model) else None
                    )
                else:
                    ds = self.datasets.get(m.group(2))
                    data = ds.data if ds is not None and ds.upload_complete else None
                if data is None:
                    return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
                return _Response(200, data, "application/octet-stream")
        return _s3_error(405, "MethodNotAllowed", f"{method} is not allowed on {path}.")

    # ---------------------------------------------------------------- jobs

    def _resolve_outcome(self, job: FakeJob) -> tuple[str, str | None]:
        outcome = self.job_outcome
        if callable(outcome):
            outcome = outcome(job)
        if isinstance(outcome, Mapping):
            outcome = outcome.get(job.kind)
        if outcome is None:
            return "SUCCESS", None
        if isinstance(outcome, str):
            outcome = (outcome, None)
        state, reason = outcome[0].upper(), (outcome[1] if len(outcome) > 1 else None)
        if state in ("DONE", "SUCCEEDED"):
            state = "SUCCESS"
        if state not in FINAL_STATES:
            raise ValueError(f"job_outcome state must be SUCCESS or FAILED, not {state!r}")
        if state == "FAILED" and not reason:
            reason = "Job failed (fake AI Hub)."
        return state, reason if state == "FAILED" else None

    def _find_device(self, device_pb: pb.Device) -> FakeDevice:
        for d in self.devices:
            if d.name == device_pb.name and (not device_pb.os or d.os == device_pb.os):
                return d
        found = self._match_devices(device_pb.name, device_pb.os, list(device_pb.attributes))
        if not found:
            raise _HttpError(
                400, f"Device {device_pb.name!r} (os {device_pb.os!r}) is not available."
            )
        return found[0]

    def _create_job(self, query, body: bytes, project: str, **_) -> _Response:
        req = pb.Job.FromString(body)
        kind = req.WhichOneof("job")
        if kind == "compile_job":
            job = self._create_compile_job(req.compile_job, query, project)
        elif kind == "inference_job":  # 0.56 sends profile jobs as inference jobs too
            job = self._create_inference_job(req.inference_job, project)
        else:
            raise _HttpError(400, f"The fake AI Hub does not run {kind} jobs.")
        self.jobs[job.job_id] = job
        return self._pb(
            pb.CreateUpdateResponse(id=job.job_id, creation_time=_timestamp(job.creation_time))
        )

    def _source_model_for_job(self, model_id: str) -> FakeModel:
        model = self.models.get(model_id)
        if model is None:
            raise _HttpError(400, f"Model {model_id!r} does not exist.")
        if not model.upload_complete:
            raise _HttpError(400, f"Model {model_id} has no uploaded file.")
        if model.producer_id:
            producer = self.jobs.get(model.producer_id)
            if producer is None or producer.final_state != "SUCCESS":
                raise _HttpError(400, f"Model {model_id} was not produced: its compile job failed.")
        return model

    def _create_compile_job(self, cj: pb.CompileJob, query, project: str) -> FakeJob:
        source = self._source_model_for_job(cj.model.model_id)
        devices = list(cj.devices.devices) or ([cj.device] if cj.HasField("device") else [])
        if not devices:
            raise _HttpError(400, "A compile job needs a device.")
        parsed = parse_options(cj.options)
        runtime = parsed.get("target_runtime", DEFAULT_TARGET_RUNTIME)
        if runtime not in _TARGET_RUNTIMES:
            raise _HttpError(
                400,
                f"--target_runtime {runtime!r} is not supported by the fake AI Hub "
                f"(supported: {', '.join(_TARGET_RUNTIMES)}).",
            )
        now = time.time()
        job = FakeJob(
            job_id=self._new_id("j"),
            kind="compile",
            name=cj.name,
            options=cj.options,
            parsed_options=parsed,
            device=self._find_device(devices[0]),
            model_id=source.model_id,
            creation_time=now,
            project_id=project,
            polls_until_done=int(self.polls_until_done),
            target_runtime=runtime,
            input_specs=_tensor_list_from_pb(cj.tensor_type_list) or list(source.input_spec),
        )
        job.final_state, job.failure_reason = self._resolve_outcome(job)
        if query.get("seed_target_model", ["false"])[0] == "true" or job.final_state == "SUCCESS":
            target = self._make_target_model(job, source)
            job.target_model_id = target.model_id
        return job

    def _make_target_model(self, job: FakeJob, source: FakeModel) -> FakeModel:
        model_type, ext = _TARGET_RUNTIMES[job.target_runtime or DEFAULT_TARGET_RUNTIME]
        zipped = ext == ".onnx.zip" and self.onnx_outputs_zipped
        if ext == ".onnx.zip" and not zipped:
            ext = ".onnx"
        stem = f"job_{job.job_id}_optimized_{job.target_runtime}"
        qairt = job.qairt_version or self.default_qairt_version
        if qairt in ("default", "latest"):
            qairt = next(
                (f[1] for f in self.frameworks if qairt in f[2]), self.default_qairt_version
            )
        metadata: dict[int, str] = {}
        if job.target_runtime in ("qnn_context_binary", "qnn_dlc", "precompiled_qnn_onnx"):
            full = qairt if qairt.count(".") >= 2 else f"{qairt}.0"
            metadata = {
                pb.ModelMetadataKey.MODEL_METADATA_KEY_QAIRT_SDK_VERSION: full,
                pb.ModelMetadataKey.MODEL_METADATA_KEY_QNN_SDK_VERSION: full,
                pb.ModelMetadataKey.MODEL_METADATA_KEY_QNN_CONTEXT_BIN_SOC_MODEL: (
                    job.device.soc_description
                ),
            }
        target = FakeModel(
            model_id=self._new_id("m"),
            name=stem + ext[: -len(".zip")] if zipped else stem + ext,
            model_type=model_type,
            is_directory=zipped,
            creation_time=job.creation_time,
            project_id=job.project_id,
            producer_id=job.job_id,
            filename=stem + ext,
            input_spec=list(job.input_specs),
            output_spec=[(n, *_normalize_shape_spec(s)) for n, s in self.output_shapes.items()],
            metadata=metadata,
        )
        if job.final_state == "SUCCESS":
            target.data = self._compiled_bytes(job, source, stem, zipped)
            target.upload_complete = True
        self.models[target.model_id] = target
        return target

    def _compiled_bytes(self, job: FakeJob, source: FakeModel, stem: str, zipped: bool) -> bytes:
        sha = source.sha256 or ""
        runtime = job.target_runtime
        if runtime == "qnn_context_binary":
            return fake_context_binary(sha)
        if runtime == "qnn_dlc":
            return QNN_DLC_MARKER + f" sha256={sha}\n".encode()
        if runtime == "tflite":
            # bytes 4..8 spell TFL3, like a FlatBuffer TFLite file, so the client recognises it
            return b"\x1c\x00\x00\x00TFL3" + TFLITE_MARKER + f" sha256={sha}\n".encode()
        # onnx / precompiled_qnn_onnx: the uploaded ONNX graph (and its external data) as is
        files = self._onnx_files(source)
        if runtime == "precompiled_qnn_onnx":
            files["model.bin"] = fake_context_binary(sha)
        if not zipped:
            return files["model.onnx"]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{stem}.onnx/", "")
            for name, data in files.items():
                zf.writestr(f"{stem}.onnx/{name}", data)
        return buf.getvalue()

    @staticmethod
    def _onnx_files(source: FakeModel) -> dict[str, bytes]:
        """model.onnx (+ external data files) of the source model; marker bytes if the source
        is not ONNX (e.g. a TorchScript upload)."""
        data = source.data or b""
        if not source.is_directory:
            if source.name.endswith(".onnx"):
                return {"model.onnx": data}
            return {"model.onnx": ONNX_MARKER + f" sha256={source.sha256}\n".encode()}
        files: dict[str, bytes] = {}
        for member, content in source.files.items():
            base = member.split("/")[-1]
            if base.endswith(".onnx"):
                files["model.onnx"] = content
            elif not base.endswith(".encodings"):
                files[base] = content
        files.setdefault("model.onnx", ONNX_MARKER + f" sha256={source.sha256}\n".encode())
        return files

    def _resolve_profile(self, job: FakeJob) -> ProfileConfig:
        profile = self.profile
        if callable(profile):
            profile = profile(job)
        return profile

    def _create_inference_job(self, ij: pb.InferenceJob, project: str) -> FakeJob:
        model = self._source_model_for_job(ij.model.model_id)
        profile = bool(ij.is_profiling_on)
        now = time.time()
        job = FakeJob(
            job_id=self._new_id("j"),
            kind="inference",
            name=ij.name,
            options=ij.options,
            parsed_options=parse_options(ij.options),
            device=self._find_device(ij.device),
            model_id=model.model_id,
            creation_time=now,
            project_id=project,
            polls_until_done=int(self.polls_until_done),
            profile=profile,
            input_specs=list(model.input_spec),
        )
        entries: dict[str, list[np.ndarray]] | None = None
        if ij.HasField("dataset") and ij.dataset.dataset_id:
            ds = self.datasets.get(ij.dataset.dataset_id)
            if ds is None or not ds.upload_complete:
                raise _HttpError(
                    400, f"Dataset {ij.dataset.dataset_id!r} does not exist or is incomplete."
                )
            job.dataset_id = ds.dataset_id
            entries = ds.entries
            job.input_specs = [
                (name, tuple(samples[0].shape), str(samples[0].dtype))
                for name, samples in entries.items()
                if samples
            ]
        job.final_state, job.failure_reason = self._resolve_outcome(job)
        if job.final_state == "SUCCESS" and entries is not None:
            self._run_inference(job, model, entries)
        if job.final_state == "SUCCESS" and profile:
            job.profile_config = self._resolve_profile(job)
        return job

    def _run_inference(
        self, job: FakeJob, model: FakeModel, entries: dict[str, list[np.ndarray]]
    ) -> None:
        if self.strict_inputs and model.input_spec:
            expected = {name: shape for name, shape, _ in model.input_spec}
            got = {name: tuple(samples[0].shape) for name, samples in entries.items() if samples}
            if list(expected) != list(got):
                job.final_state = "FAILED"
                job.failure_reason = (
                    "Input names do not match the model: "
                    f"expected {list(expected)}, got {list(got)}."
                )
                return
            for name, shape in expected.items():
                if got[name] != shape:
                    job.final_state = "FAILED"
                    job.failure_reason = (
                        f"Input {name!r} has shape {got[name]}; the model expects {shape}."
                    )
                    return
        try:
            if self.inference_fn is not None:
                raw = self.inference_fn({k: list(v) for k, v in entries.items()})
                outputs = {
                    name: [np.asarray(a) for a in value]
                    if isinstance(value, (list, tuple))
                    else [np.asarray(value)]
                    for name, value in raw.items()
                }
            else:
                outputs = default_outputs(entries, self.output_shapes)
        except Exception as e:  # noqa: BLE001  (whatever the test's hook raises fails the job)
            job.final_state = "FAILED"
            job.failure_reason = f"Inference failed: {type(e).__name__}: {e}"
            return
        now = time.time()
        out = FakeDataset(
            dataset_id=self._new_id("d"),
            name=f"job_{job.job_id}_output",
            creation_time=now,
            expiration_time=now + 30 * DAY,
            project_id=job.project_id,
            data=write_h5_entries(outputs),
            upload_complete=True,
        )
        self.datasets[out.dataset_id] = out
        job.output_dataset_id = out.dataset_id

    def _job_pb(self, job: FakeJob) -> pb.Job:
        state = _STATE_TO_PB[job.state]
        model = self.models[job.model_id]
        device = self._device_pb(job.device)
        if job.kind == "compile":
            cj = pb.CompileJob(
                compile_job_id=job.job_id,
                name=job.name,
                options=job.options,
                job_state=state,
                model=self._model_pb(model),
                device=device,
                devices=pb.DeviceList(devices=[device], total_query_count=1),
                tensor_type_list=_tensor_list_pb(job.input_specs),
                target_tensor_type_list=_tensor_list_pb(job.input_specs),
                creation_time=_timestamp(job.creation_time),
            )
            if job.project_id:
                cj.project_id = job.project_id
            if job.target_model_id:
                cj.target_model.CopyFrom(self._model_pb(self.models[job.target_model_id]))
            if job.state == "FAILED" and job.failure_reason:
                cj.failure_reason = job.failure_reason
            return pb.Job(compile_job=cj, hub_version=HUB_VERSION)
        ij = pb.InferenceJob(
            inference_job_id=job.job_id,
            name=job.name,
            options=job.options,
            job_state=state,
            model=self._model_pb(model),
            device=device,
            creation_time=_timestamp(job.creation_time),
            is_profiling_on=job.profile,
        )
        if job.project_id:
            ij.project_id = job.project_id
        if job.dataset_id:
            ij.dataset.CopyFrom(self._dataset_pb(self.datasets[job.dataset_id]))
        specs = _tensor_list_pb(job.input_specs)
        if specs.types:
            ij.tensor_type_list.CopyFrom(specs)
        if job.state == "FAILED" and job.failure_reason:
            ij.failure_reason = job.failure_reason
        if job.state == "SUCCESS" and job.profile_config is not None:
            cfg = job.profile_config
            ij.execution_time = int(cfg.estimated_inference_time_us)
            ij.execution_peak_memory.CopyFrom(
                pb.Range(
                    lower=int(cfg.inference_memory_peak_range[0]),
                    upper=int(cfg.inference_memory_peak_range[1]),
                )
            )
        return pb.Job(inference_job=ij, hub_version=HUB_VERSION)

    def _get_job(self, id: str, **_) -> _Response:
        job = self._require_job(id)
        job._advance()
        return self._pb(self._job_pb(job))

    def _patch_job(self, id: str, body: bytes, **_) -> _Response:
        job = self._require_job(id)
        req = pb.JobPublicUpdate.FromString(body)
        job.name = req.name
        return self._pb(pb.CreateUpdateResponse(id=job.job_id))

    def _get_job_result(self, id: str, **_) -> _Response:
        job = self._require_job(id)
        if job.state != "SUCCESS":
            raise _HttpError(404, f"Job {id} has no result ({job.state}).")
        if job.kind == "compile":
            return self._pb(
                pb.JobResult(compile_job_result=pb.CompileJobResult(compile_job_id=job.job_id))
            )
        result = pb.InferenceJobResult(
            inference_job_id=job.job_id, output_dataset_id=job.output_dataset_id or ""
        )
        if job.profile_config is not None:
            result.detail.CopyFrom(job.profile_config.to_pb())
        return self._pb(pb.JobResult(inference_job_result=result))

"""The bundle manifest: what an app needs to know about each file of a bundle folder.

:func:`write_manifest` describes a folder that already holds a quantization's outputs and the
context binaries compiled from them: every file's role, size and sha256, the I/O contract read
off the models themselves, tool versions and what was measured. Schema:
``skipat_deploy/data/manifest.schema.json``.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from .. import __version__
from ..core.errors import UserError
from ..export import read_metadata
from ..core.files import sha256_file
from ..core.metrics import Figure
from ..images.imagenet import imagenet_classes
from ..npu import qnn

if TYPE_CHECKING:  # types only: `verify` should not import torch
    from ..npu.config import CompileResult
    from ..quant import QuantizeResult
    from ..quant.cpu import CpuInt8Result

SCHEMA_VERSION = 1
# The results' figures a manifest carries: how close each model is to float, and the NPU's
# check (what an app team needs to trust a file), not how long making it took.
QUALITY = ("sqnr_vs_float", "cosine_vs_float_mean", "top1_agreement_vs_float", "npu_vs_cpu_sqnr",
           "npu_vs_float_sqnr", "cpu_qdq_vs_float_sqnr")
MANIFEST = "manifest.json"


class BundleError(UserError):
    """A bundle does not verify: names the file and what is wrong."""


def manifest_schema() -> dict:
    text = resources.files("skipat_deploy").joinpath("data/manifest.schema.json").read_text()
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# The I/O contract, read off the models themselves.

def _initializer(graph, name: str):
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    return None


def io_quantization(qdq_path: Path) -> dict[str, dict]:
    """Scale / zero point of the QuantizeLinear that consumes each graph input and of the
    DequantizeLinear that produces each graph output: what an app feeding or reading integer
    tensors needs."""
    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    found: dict[str, dict] = {}
    for node in graph.node:
        tensor = None
        if node.op_type == "QuantizeLinear" and node.input[0] in inputs:
            tensor = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in outputs:
            tensor = node.output[0]
        if tensor is None or tensor in found:
            continue
        scale = _initializer(graph, node.input[1])
        zero = _initializer(graph, node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            continue
        found[tensor] = {
            "scale": float(scale.reshape(())),
            "zero_point": 0 if zero is None else int(zero.reshape(())),
            "dtype": "int8" if zero is None else str(zero.dtype),
        }
    return found


def _tensors(path: Path, which: str) -> list[dict]:
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    values = graph.input if which == "input" else graph.output
    out = []
    for v in values:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        out.append({"name": v.name, "shape": [d.dim_value for d in t.shape.dim],
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
    return out


def io_contract(float_onnx: Path, qdq_onnx: Path) -> tuple[list[dict], list[dict]]:
    meta = read_metadata(float_onnx)
    quant = io_quantization(qdq_onnx)
    inputs = _tensors(float_onnx, "input")
    for t in inputs:
        t["layout"] = meta.get("input", {}).get("layout", "NCHW")
        pp = meta.get("preprocess", {})
        t["preprocess"] = {
            "color": "RGB, values scaled to [0, 1] before normalisation",
            "resize": f"shorter side to round({meta.get('resolution')} / crop_pct), {pp.get('interpolation')}",
            "crop": f"center {meta.get('resolution')} x {meta.get('resolution')}",
            "crop_pct": pp.get("crop_pct"),
            "interpolation": pp.get("interpolation"),
            "mean": pp.get("mean"),
            "std": pp.get("std"),
        }
        if meta.get("preprocess_source"):  # given, read from the checkpoint, or a guess
            t["preprocess"]["source"] = meta["preprocess_source"]
        t["quantization"] = quant.get(t["name"])
    outputs = _tensors(float_onnx, "output")
    for t in outputs:
        t["meaning"] = ("class logits (softmax for probabilities; labels.txt)" if meta.get("num_classes")
                        else "features: the class token after the final LayerNorm")
        t["quantization"] = quant.get(t["name"])
    return inputs, outputs


# --------------------------------------------------------------------------------------------
# The manifest

def tool_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"skipat_deploy": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "aimet-torch", "qai-hub"):
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    try:
        out["qnn_sdk"] = qnn.sdk_versions()["qnn_sdk"]
    except UserError:
        out["qnn_sdk"] = None
    return out


def _file_entry(folder: Path, path: Path, role: str, **extra) -> dict:
    return {"path": path.relative_to(folder).as_posix(), "role": role,
            "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            **{k: v for k, v in extra.items() if v is not None}}


def write_manifest(folder: Path, quantized: list[QuantizeResult], compiled: list[CompileResult],
                   cpu: CpuInt8Result | None = None) -> Path:
    """Describe ``folder`` (which holds the ``quantized`` models, one per Hexagon version, the
    first device's first, and the ``compiled`` context binaries) in ``manifest.json``; adds
    ``labels.txt`` for ImageNet heads. The manifest is validated against its schema before it
    is written."""
    first = quantized[0]
    edges = io_quantization(first.qdq_onnx)  # the top-level inputs / outputs say these
    files = [_file_entry(folder, first.float_onnx, "float_onnx")]
    measurements = []
    for q in quantized:
        made_for = dict(precision=q.precision, hexagon=q.hexagon)
        own = io_quantization(q.qdq_onnx)
        files.append(_file_entry(folder, q.qdq_onnx, "qdq_onnx", **made_for,
                                 io_quantization=own if own != edges else None,
                                 chosen_for=_chosen_for(q.search)))
        if q.aimet_dir is not None:
            for f in sorted(q.aimet_dir.iterdir()):
                role = "aimet_encodings" if f.suffix == ".encodings" else "aimet_onnx"
                files.append(_file_entry(folder, f, role, **made_for))
        measurements += [_measure(f) for f in q.figures() if f.name in QUALITY]
    gated = set()  # QDQ models whose CPU figure on the gate's samples is already listed
    for c in compiled:
        where = dict(device=c.device, soc=c.soc, hexagon=c.hexagon,
                     qdq_model=c.model.relative_to(folder).as_posix())
        binary = c.artifacts["context_binary"]
        files.append(_file_entry(folder, c.artifacts["context_onnx"], "context_onnx", **where))
        sdk = c.versions.get("qnn_sdk")
        files.append(_file_entry(folder, binary, "context_binary", **where,
                                 qnn_sdk=sdk, min_runtime=min_runtime(sdk)))
        for f in c.figures():
            if f.name == "cpu_qdq_vs_float_sqnr":  # one per QDQ model, however many devices
                if c.model in gated:
                    continue
                gated.add(c.model)
            if f.name in QUALITY:
                measurements.append(_measure(f))
    if cpu is not None:  # the fallback where there is no NPU: ONNX Runtime's integer kernels
        files.append(_file_entry(folder, cpu.path, "cpu_int8_onnx", precision="int8",
                                 cpu_isa=cpu.cpu_isa, encoding=cpu.encoding))
        measurements += [_measure(f) for f in cpu.figures() if f.name in QUALITY]
    meta = read_metadata(first.float_onnx)
    if meta["num_classes"] == 1000:
        labels = folder / "labels.txt"
        labels.write_text("\n".join(imagenet_classes()) + "\n")
        files.append(_file_entry(folder, labels, "labels"))
    inputs, outputs = io_contract(first.float_onnx, first.qdq_onnx)
    manifest = {
        "schema": "skipat-deploy/manifest",
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "name": meta["model_name"], "family": meta["family"],
            "embed_dim": meta["embed_dim"], "depth": meta["depth"],
            "num_heads": meta["num_heads"], "patch_size": meta["patch_size"],
            "skip_indices": meta["skip_indices"], "resolution": meta["resolution"],
            "grid": meta["grid"], "num_tokens": meta["num_tokens"],
            "num_classes": meta["num_classes"], "source": meta["source"],
        },
        "inputs": inputs,
        "outputs": outputs,
        "files": files,
        "tools": tool_versions(),
        "measurements": measurements,
    }
    path = folder / MANIFEST
    validate_manifest(manifest, path)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def min_runtime(qnn_sdk: str | None) -> str | None:
    """A context binary loads only on a QNN / QAIRT runtime at least as new as the SDK that
    built it; an older one fails with "could not create context from binary"."""
    if not qnn_sdk:
        return None
    return f"QNN / QAIRT {qnn_sdk} or newer on the device"


def _chosen_for(search: dict | None) -> dict | None:
    """What ``--precision auto`` chose the model for (None: a fixed precision)."""
    if search is None:
        return None
    c = search["candidates"][search["chosen"]]
    timed = {} if c.get("latency_ms") is None else {
        "latency_ms": c["latency_ms"], "latency_measured_on": search["measured_on"]}
    return {"goal": search["goal"], "candidate": c["name"], "sqnr_db": c["sqnr_db"],
            "sqnr_low_db": c["sqnr_low_db"], "cost_estimate": c["cost"], **timed}


def _measure(f: Figure) -> dict:
    return {"name": f.name, "value": float(f.value), "unit": f.unit, "source": f.source,
            **({"host": f.host} if f.host else {}), "subject": Path(f.subject).name}


def validate_manifest(manifest: dict, where: Path) -> None:
    import jsonschema

    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise BundleError(f"{where}: does not follow the manifest schema at {path}: {e.message}") from None

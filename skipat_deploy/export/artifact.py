"""What an ONNX file made here is, read once: the typed model artifact.

Every stage after export reads models that an earlier one wrote: the float export
(``<stem>.onnx``), the NPU's QDQ model (``<tag>.qdq.onnx``, with the ``<tag>.aimet/`` folder
AI Hub takes beside it) and the CPU INT8 model (``<stem>.cpu_int8.onnx``). :func:`read_model`
says which one a file is, from its graph (a QuantizeLinear node makes it INT8) and its
skipat-deploy metadata (``quantization.target``: ``cpu`` for the CPU INT8 model), and finds
its siblings: the float model a QDQ model was quantized from is trusted only under the name and
sha256 its metadata records (the NPU gate's and ``inspect``'s reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..core.errors import UserError
from ..core.files import model_stem, sha256_file

METADATA_KEY = "skipat_deploy"  # the ONNX metadata_props key every stage writes its record under
FLOAT, QDQ, CPU_INT8 = "float", "qdq", "cpu_int8"
KINDS = (FLOAT, QDQ, CPU_INT8)


@dataclass(frozen=True)
class Quantization:
    """The ``quantization`` record a quantized model's metadata carries (what ``quantize`` or
    the CPU INT8 model wrote); ``record`` keeps every key, for reports that copy it."""

    target: str  # npu (the QDQ model) | cpu (the CPU INT8 model)
    precision: str | None
    backend: str | None
    device: str | None = None
    hexagon: str | None = None
    float_onnx: dict | None = None  # {"file", "sha256"}: the float model it was quantized from
    record: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, d: dict) -> "Quantization":
        return cls(d.get("target", "npu"), d.get("precision"), d.get("backend"), d.get("device"),
                   d.get("hexagon"), d.get("float_onnx"), dict(d))


@dataclass(frozen=True)
class ModelArtifact:
    """An ONNX model made by a stage: its ``kind`` (float | qdq | cpu_int8), its export
    metadata (resolution, pre-processing, classes; empty when another tool made it) and, for a
    quantized model, its :class:`Quantization` (None when the metadata does not say)."""

    path: Path
    kind: str
    metadata: dict
    quantization: Quantization | None

    @property
    def int8(self) -> bool:
        return self.kind != FLOAT

    def float_model(self) -> tuple[Path | None, str]:
        """The float ONNX this model was quantized from, found beside it under the recorded name
        with the recorded sha256; or None and why it is not known."""
        recorded = self.quantization.float_onnx if self.quantization else None
        if not recorded:
            return None, (f"{self.path.name} does not name the float model it was quantized from "
                          "(made by another tool or an older skipat-deploy)")
        path = self.path.parent / recorded["file"]
        if not path.is_file():
            return None, f"{recorded['file']}, the float model it was quantized from, is not beside it"
        if sha256_file(path) != recorded["sha256"]:
            return None, (f"{path.name} beside it is not the float model it was quantized from "
                          "(its sha256 differs)")
        return path, ""

    def aimet_dir(self) -> Path | None:
        """The ``.aimet`` folder ``quantize`` wrote beside a QDQ model (AIMET), if there."""
        d = self.path.with_name(f"{model_stem(self.path)}.aimet")
        return d if d.is_dir() else None


def qdq_beside(aimet_dir: Path) -> Path:
    """The QDQ model a ``.aimet`` folder was written with (same tag)."""
    return aimet_dir.with_name(f"{model_stem(aimet_dir)}.qdq.onnx")


def _load_graph(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None


def is_quantized(graph: onnx.GraphProto) -> bool:
    """Whether a graph holds quantizers (the one test of "is this an INT8 model")."""
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def metadata_of(model: onnx.ModelProto) -> dict:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return {}


def read_model(path: str | Path) -> ModelArtifact:
    """What the ONNX file at ``path`` is (see the module docstring); its weights are not read."""
    path = Path(path)
    model = _load_graph(path)
    meta = metadata_of(model)
    record = meta.get("quantization")
    quantization = Quantization.from_record(record) if record else None
    if not is_quantized(model.graph):
        kind = FLOAT
    else:
        kind = CPU_INT8 if quantization is not None and quantization.target == "cpu" else QDQ
    return ModelArtifact(path, kind, meta, quantization)


def read_metadata(path: str | Path) -> dict:
    """The skipat-deploy metadata of a model (empty when another tool made it), without loading
    its weights."""
    return read_model(path).metadata

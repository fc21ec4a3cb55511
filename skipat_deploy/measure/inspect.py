"""Where a quantized model loses accuracy, and where the NPU departs from the CPU: the float
model, the QDQ model on ONNX Runtime's CPU and the QDQ model on the HTP backend (the simulator
on x86-64), tensor by tensor, on the same held-out images.

Every quantized activation (a ``QuantizeLinear`` reading a computed tensor, with its
``DequantizeLinear``) is one row, in graph order: the value the next ops read (the
DequantizeLinear's output) is made a graph output of the QDQ model on the CPU and on the HTP,
and the tensor the quantizer reads is taken from the float reference. Pooled over the samples:

* ``qdq_vs_float_db``, ``npu_vs_float_db``, ``npu_vs_qdq_db``: SQNR of one against the other;
* ``op_vs_float_db``: the op's output in the QDQ model before its quantizer, against float;
* ``rounding_sqnr_db``: the SQNR one rounding to this tensor's grid gives, its signal power
  against uniform rounding noise ``scale² / 12``: the tensor's own quantization noise;
* ``qdq_drop_db``: how far ``qdq_vs_float_db`` falls from that of the quantized tensors the
  op reads (the noisiest of them; from its own ``rounding_sqnr_db`` for an op that reads none;
  from ``op_vs_float_db`` for an op that only moves elements, :data:`DATA_MOVEMENT`);
* ``npu_drop_db``: how much further the NPU falls behind the CPU QDQ model against float at
  this op (``qdq_vs_float_db - npu_vs_float_db``) than at the tensors the op reads: where the
  NPU's arithmetic costs accuracy. (``npu_vs_qdq_db`` itself drifts down along the graph as
  two roundings of every tensor compound, so its own drops say little.)

* ``qdq_added_noise``: the noise the activation quantizer itself adds, its output against
  the op's output before it in the QDQ model, as a fraction of that tensor's power: rounding
  alone gives about ``scale² / 12`` of it, a range that clips gives far more. Unlike a fall in
  dB it does not grow where an op amplifies the noise it reads (``q kᵀ`` of two noisy
  operands, a LayerNorm removing the mean that hid it): a quantizer clipping the residual
  stream is named itself, not the attention product three ops later, and an 8-bit weight on
  the 16-bit image (a 45 dB fall that adds little) does not outrank it.

Named: ``largest_qdq_drop`` (the largest ``qdq_added_noise``: the activation quantizer that
hurts most),
``first_npu_divergence`` (the first row where the NPU differs from the CPU QDQ model by more
than that tensor's own quantization noise: ``npu_vs_qdq_db < rounding_sqnr_db``) and
``largest_npu_drop`` (the op where the NPU loses most: the one whose NPU noise against float
beyond the CPU QDQ model's, as a fraction of the tensor's power, grows most from that at its
inputs; noises add, so a 16-bit tensor 30 dB behind at 56 dB does not outrank an 8-bit softmax
15 dB behind at 18 dB).

The float reference, per tensor, is the first of these that holds every quantized tensor by
name: the float model (``--float``, else the one the QDQ model's metadata names, checked by
sha256 as compile's NPU gate does), the float graph AIMET quantized (``<stem>.aimet/``: the
rewrites, rotation included, in float), or the QDQ graph itself with its activation quantizers
removed (float activations, weights as quantized). A model that was rotated or split before
quantizing computes other tensors than the float model, so name matching against the float
model would compare unlike things; the output figures are always against the float model.

Exposing every activation as an output on the HTP: the session is strict (no CPU fallback),
the number of partitions QNN made is recorded (the EPContext nodes of the context model it
writes; 1 for every ViT, SkipAt and DINOv2 graph tried), and the model's own output is checked
to be unchanged by the exposure on the first sample. (Exposing the QuantizeLinear outputs, the
integers, instead breaks strict placement.) The HTP dequantizes what it returns with its own
rounding of each scale (up to 0.3 of a step off at the top of a tiny softmax range), so the
NPU's values are put back on the quantizer's grid: the integers it computed, dequantized with
the model's scale. A value far off the grid is not one the NPU computes with (the image's Q/DQ
on the graph input comes back as a float copy): that row's NPU columns stay empty, with a
notice. When the exposed graph cannot be placed, only the model's outputs are compared on the
NPU, with a notice.

``onnxruntime.quantization.qdq_loss_debug`` is not used for the runs: its augmentation appends
a float Reshape per tensor (ops outside any QDQ unit, which the HTP would have to place), its
activation matching relies on the tensor names ONNX Runtime's quantizer writes (AIMET's export
names them otherwise), and ``collect_activations`` holds every sample's tensors at once; here
the sums are streamed, one sample at a time.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..images import calibration
from ..devices import DEFAULT_DEVICE, DeviceProfile, resolve_device
from ..core.errors import UserError
from ..export import sample_inputs
from ..export.artifact import ModelArtifact, read_model
from ..core.files import model_stem, sha256_file
from ..core.options import check_declared, option
from ..images.preprocess import Preprocess
from ..core.staging import staged

Step = Callable[[str], None]
HTP_SIMULATOR = "QNN HTP simulator (onnxruntime-qnn, x86-64)"
TWIN = "the QDQ graph with its activation quantizers removed (float activations, weights as quantized)"
# Ops that only move, select or join elements: exact on quantized inputs, so the quantized
# tensors they read, taken over the elements they keep, have the SQNR of their output before
# its quantizer (a class-token Gather keeps one token of 197: the pooled SQNR of its input says
# nothing about that token).
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Slice",
                           "Split", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Concat", "Identity",
                           "Tile", "DepthToSpace", "SpaceToDepth", "MaxPool", "Requantize"})
_BITS = {TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16, TensorProto.INT16: 16,
         TensorProto.INT32: 32, TensorProto.UINT4: 4, TensorProto.INT4: 4}


@dataclass(frozen=True)
class InspectConfig:
    # None: the device the model was quantized for, else DEFAULT_DEVICE
    device: str | None = option(None, "Target phone whose HTP runs the NPU side (default: the device the model was quantized for).")
    # None: the one the QDQ model's metadata names, beside it
    float_model: Path | None = option(None, "The float ONNX it was quantized from (default: the one its metadata names, beside it, checked by sha256).", flag="--float")
    # None: the held-out photos compile's NPU gate uses
    images: Path | None = option(None, "Folder of images (seeded draw; default: the held-out photos compile's NPU gate uses).")
    # the HTP simulator takes seconds per image
    num_samples: int = option(4, "Samples run through all three (the x86-64 HTP simulator takes seconds each).", minimum=1)
    # run the HTP side where onnxruntime-qnn is installed
    npu: bool = option(True, "Run the NPU side on the HTP simulator (needs onnxruntime-qnn).", flag="--npu/--no-npu")

    def check(self, model: ModelArtifact) -> DeviceProfile:
        check_declared(self)
        if self.float_model is not None:
            if not Path(self.float_model).is_file():
                raise UserError(f"--float model not found: {self.float_model}")
            if read_model(self.float_model).int8:
                raise UserError(f"--float {Path(self.float_model).name} is a quantized model: give "
                                "the float .onnx the QDQ model was made from")
        if self.images is not None and not Path(self.images).is_dir():
            raise UserError(f"--images folder not found: {self.images}")
        made_for = model.quantization.device if model.quantization else None
        return resolve_device(self.device or made_for or DEFAULT_DEVICE)


@dataclass(frozen=True)
class Quantizer:
    """One quantized activation of the QDQ graph."""

    index: int
    tensor: str  # what the QuantizeLinear reads
    exposed: str  # its DequantizeLinear's output: what the next ops read
    op: str  # the op that computes ``tensor`` ("input" for a graph input)
    layer: str
    bits: int
    scale: float  # the largest, for a per-channel quantizer
    noise_power: float  # uniform rounding noise: mean(scale²) / 12
    zero_point: float | None  # None for a per-channel quantizer
    inputs: tuple[int, ...]  # quantizers upstream whose values that op reads


@dataclass
class TensorRow:
    index: int
    tensor: str
    op: str
    layer: str
    bits: int
    scale: float
    rounding_sqnr_db: float | None
    op_vs_float_db: float | None  # the op's output in the QDQ model, before its quantizer
    qdq_vs_float_db: float | None
    npu_vs_float_db: float | None
    npu_vs_qdq_db: float | None
    qdq_drop_db: float | None
    npu_drop_db: float | None  # how much further the NPU falls behind the CPU QDQ model vs float here
    # the noise this activation quantizer adds (its output against its input, in the QDQ
    # model), as a fraction of its input's power: what largest_qdq_drop ranks by
    qdq_added_noise: float | None = None


@dataclass
class InspectResult:
    model: Path
    float_model: Path | None  # the output figures' reference; None: not known
    float_reference: str  # where the per-tensor float values come from
    device: str
    soc: str
    hexagon: str
    inputs: str  # what the samples are
    num_samples: int
    npu: str  # what the NPU columns come from, or why they are empty
    npu_partitions: int | None  # QNN partitions of the graph that ran on the HTP
    layers: list[TensorRow]
    output: dict  # the model's first output: SQNR of QDQ and NPU against float, and each other
    largest_qdq_drop: dict | None
    first_npu_divergence: dict | None
    largest_npu_drop: dict | None  # where the NPU falls furthest behind the CPU QDQ model vs float
    files: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = str(self.model)
        d["float_model"] = None if self.float_model is None else str(self.float_model)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return _finite(d)


# --------------------------------------------------------------------------------------------
# The graph

def _load(path: Path, weights: bool = True) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            out[n.output[0]] = n.attribute[0].t
    return out


def _array(consts: dict, name: str) -> np.ndarray | None:
    t = consts.get(name)
    return None if t is None else numpy_helper.to_array(t)


def _bits(q: onnx.NodeProto, consts: dict) -> int:
    dtype = next((a.i for a in q.attribute if a.name == "output_dtype" and a.i), None)
    if dtype is None and len(q.input) > 2 and q.input[2] in consts:
        dtype = consts[q.input[2]].data_type
    return _BITS.get(dtype, 8)


def _param_layer(name: str) -> str | None:
    """``blocks.3.mlp.fc1.weight_q`` -> ``blocks.3.mlp.fc1``: the module a weight belongs to."""
    head, dot, tail = name.rpartition(".")
    if dot and head and tail.startswith(("weight", "bias")) and "." in head:
        return head
    return None


def _layer(node: onnx.NodeProto, producer: dict) -> str:
    """The node's module path (``/blocks.0/attn/qkv/MatMul`` -> ``blocks.0.attn.qkv``), else
    the module of a named weight it reads, else its own name."""
    path = [p for p in node.name.split("/") if p]
    if len(path) > 1:
        return ".".join(path[:-1])
    for i in node.input:
        p = producer.get(i)
        source = p.input[0] if p is not None and p.op_type == "DequantizeLinear" else i
        if (layer := _param_layer(source)) is not None:
            return layer
    return node.name or node.op_type


def activation_quantizers(model: onnx.ModelProto) -> list[Quantizer]:
    """The quantized activations of a QDQ graph, in graph order, each with the quantizers
    upstream of it (through ops that are not quantized: shape ops, ORT's unquantized Reshape)."""
    g = model.graph
    consts = _constants(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in g.input}
    found: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    row_of: dict[str, int] = {}
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in consts:
            continue
        dqs = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        for t in [n.output[0], *(d.output[0] for d in dqs)]:
            row_of[t] = len(found)
        found.append((n, dqs[0]))

    memo: dict[str, frozenset] = {}

    def upstream(t: str) -> frozenset:
        if t in row_of:
            return frozenset((row_of[t],))
        if t in memo:
            return memo[t]
        memo[t] = frozenset()  # cycles cannot happen in a valid graph; guard anyway
        node = producer.get(t)
        if node is None or t in consts:
            return memo[t]
        memo[t] = frozenset().union(*(upstream(i) for i in node.input if i)) if node.input else frozenset()
        return memo[t]

    rows = []
    for k, (q, dq) in enumerate(found):
        src = q.input[0]
        node = producer.get(src)
        if src in row_of:  # requantized: a DequantizeLinear's output quantized again
            inputs, op, layer = (row_of[src],), "Requantize", _layer(node, producer)
        elif node is None:
            inputs, op, layer = (), "input" if src in graph_inputs else "?", src
        else:
            inputs = tuple(sorted(frozenset().union(*(upstream(i) for i in node.input if i))))
            op, layer = node.op_type, _layer(node, producer)
        scale = _array(consts, q.input[1])
        scale = np.ones(1, np.float32) if scale is None else scale.astype(np.float64).ravel()
        zero = _array(consts, q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros(1)
        zero = None if zero is None or scale.size > 1 else float(np.asarray(zero).ravel()[0])
        rows.append(Quantizer(k, src, dq.output[0], op, layer, _bits(q, consts), float(scale.max()),
                              float(np.mean(scale**2)) / 12.0, zero, inputs))
    return rows


def float_twin(model: onnx.ModelProto, rows: list[Quantizer]) -> onnx.ModelProto:
    """``model`` with every activation QuantizeLinear -> DequantizeLinear pair an Identity:
    the same graph, same tensor names, float activations; weights stay as quantized."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    g = twin.graph
    activation_q = {r.tensor for r in rows}
    q_out = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in activation_q}
    keep = []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in q_out:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            n = helper.make_node("Identity", [q_out[n.input[0]]], [n.output[0]], name=n.name)
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return twin


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return {o for n in g.node for o in n.output} | {i.name for i in g.input}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in dict.fromkeys(names):
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def _cpu(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    """Exact graph semantics: no fusion (Q/DQ stay separate ops), as :func:`run_qdq_cpu`."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# References and samples

def _float_model(model: ModelArtifact, cfg: InspectConfig, notices: list[str]) -> Path | None:
    if cfg.float_model is not None:
        return Path(cfg.float_model)
    path, why = model.float_model()
    if path is None:
        notices.append(f"no float model: {why}; give --float X.onnx for figures against float "
                       "(the per-tensor float values come from the QDQ graph itself)")
    return path


def _float_names(rows: list[Quantizer], names: set[str]) -> list[str | None]:
    """Each row's tensor in a float graph holding ``names``: what its quantizer reads, else what
    its DequantizeLinear writes (a graph output keeps its name there), else, for a tensor
    quantized again (16 -> 8 bit before a MatMul), the float value of the one it requantizes."""
    out: list[str | None] = []
    for r in rows:
        if r.tensor in names:
            out.append(r.tensor)
        elif r.exposed in names:
            out.append(r.exposed)
        else:
            out.append(out[r.inputs[0]] if r.op == "Requantize" and r.inputs else None)
    return out


def _float_graph(model: Path, qdq: onnx.ModelProto, rows: list[Quantizer], float_path: Path | None,
                 notices: list[str]) -> tuple[onnx.ModelProto, str, bool]:
    """The per-tensor float reference (see the module docstring): the model, what it is, and
    whether it is the float model itself."""
    candidates = []
    if float_path is not None:
        candidates.append((float_path, f"the float model {float_path.name}", True))
    aimet = read_model(model).aimet_dir()
    if aimet is not None:
        graphs = sorted(aimet.glob("*.onnx"))
        if len(graphs) == 1:
            candidates.append((graphs[0], f"the float graph AIMET quantized ({aimet.name}/{graphs[0].name})", False))
    for path, what, is_float in candidates:
        graph = _load(path)
        names = _tensor_names(graph)
        if all(n is not None for n in _float_names(rows, names)):
            return graph, what, is_float
    if float_path is not None:
        notices.append(f"the QDQ graph's tensors are not all in {float_path.name} (the model was "
                       "rewritten before quantizing: rotated, split or exported by AIMET), so the "
                       f"per-tensor float values come from {TWIN}; the output figures are against "
                       f"{float_path.name}")
    return float_twin(qdq, rows), TWIN, False


def _samples(model: Path, cfg: InspectConfig, shape: tuple, notices: list[str]) -> tuple[np.ndarray, str]:
    """(N, 1, C, H, W) samples: ``--images`` pre-processed as the model's metadata says, else
    the held-out photos compile's NPU gate uses (seeded noise without metadata)."""
    n = cfg.num_samples
    if cfg.images is None:
        x, described, _ = sample_inputs(model, n, shape)
        return x, described
    meta = read_model(model).metadata
    if "preprocess" not in meta:
        raise UserError(f"{model.name} has no skipat-deploy pre-processing metadata, so --images "
                        "cannot be prepared for it; leave --images out (seeded noise inputs)")
    chosen, _ = calibration.draw(calibration.list_images(cfg.images, "--images"), n, seed=0)
    got, x = calibration.load_samples(chosen, int(meta["resolution"]),
                                      Preprocess.from_dict(meta["preprocess"]), n, seed=0)
    notices.extend(chosen.skipped_notice("--images") + got.unusable_notice("--images"))
    return x[:, None], f"{n} samples of {len(got.paths)} photos from {got.source}"


# --------------------------------------------------------------------------------------------
# The NPU side

@dataclass
class _Npu:
    session: ort.InferenceSession | None
    exposes: bool  # every activation, or the model's outputs only
    what: str
    partitions: int | None


def _placed(model: Path, ctx: Path, device: DeviceProfile) -> tuple[ort.InferenceSession, int]:
    """A strict HTP session (every node on the NPU), and how many partitions QNN made of the
    graph: the EPContext nodes of the context model it writes beside ``ctx``."""
    from ..npu import qnn

    sess = qnn.htp_session(model, device, context_file=ctx)
    nodes = onnx.load(str(ctx), load_external_data=False).graph.node
    return sess, sum(n.op_type == "EPContext" for n in nodes)


def _npu(model: Path, exposed: Path, tmp: Path, device: DeviceProfile, notices: list[str],
         step: Step) -> tuple[_Npu, dict[str, str]]:
    from ..npu import qnn

    try:
        versions = qnn.sdk_versions()
    except UserError as e:
        notices.append(f"NPU columns are empty: {e}")
        return _Npu(None, False, f"not run: {e}", None), {}
    where = f"{HTP_SIMULATOR}, {device.soc} (Hexagon {device.hexagon})"
    step(f"placing the graph with every activation as an output on the HTP ({device.soc})")
    try:
        sess, parts = _placed(exposed, tmp / "exposed.ctx.onnx", device)
        return _Npu(sess, True, where, parts), versions
    except Exception as e:  # noqa: BLE001 - the EP's refusal comes as several exception types
        why = str(e).splitlines()[0][:200]
    try:
        sess, parts = _placed(model, tmp / "model.ctx.onnx", device)
    except Exception:  # noqa: BLE001
        rejected = qnn.rejected_nodes(model, device)
        named = "; ".join(f"{r.node} ({r.op_type}): {r.reason}" for r in rejected[:3]) or why
        notices.append(f"NPU columns are empty: {model.name} does not run entirely on the "
                       f"{device.soc} NPU ({named})")
        return _Npu(None, False, f"not run: the model is not placed on the NPU ({named})", None), versions
    notices.append(f"exposing every activation as an output broke the model's placement on the "
                   f"HTP ({why}): the NPU columns give the model's outputs only")
    return _Npu(sess, False, where + "; the model's outputs only", parts), versions


def _exposure_check(model: Path, device: DeviceProfile, feed: dict, got: list[np.ndarray],
                    n_out: int, notices: list[str]) -> None:
    """The model's own outputs must not change when its activations are exposed."""
    from ..core.metrics import sqnr_db
    from ..npu import qnn

    sess = qnn.htp_session(model, device)
    with qnn.native_output():
        want = sess.run(None, feed)
    for w, g in zip(want, got[:n_out]):
        if not np.array_equal(w, g):
            notices.append(f"exposing the activations changed the NPU's own output ({sqnr_db(w, g):.1f} "
                           "dB SQNR against the model as given, first sample): the HTP compiles the "
                           "exposed graph differently; read the NPU columns with that in mind")
            return


# --------------------------------------------------------------------------------------------
# Sums and figures

class _Sums:
    """Per row, pooled over samples: signal powers and squared differences."""

    KEYS = ("ff", "qq", "nn", "fq", "fn", "qn", "fp", "pp", "pq", "size")

    def __init__(self, n: int):
        self.s = {k: np.zeros(n) for k in self.KEYS}
        self.have_f = np.ones(n, bool)
        self.have_n = np.zeros(n, bool)
        self.off_grid = np.zeros(n, bool)  # the NPU's value is not on the quantizer's grid

    def add(self, quant: Quantizer, f: np.ndarray | None, pre: np.ndarray, q: np.ndarray,
            n: np.ndarray | None) -> None:
        i = quant.index
        if n is not None and quant.zero_point is not None and n.size:
            # a float copy is off the grid everywhere (half its values by over a quarter step);
            # a quantized tensor the HTP dequantizes with its own rounding of the scale drifts
            # off it only toward the top of its range
            k = n.astype(np.float64) / quant.scale + quant.zero_point
            self.off_grid[i] |= bool(np.mean(np.abs(k - np.rint(k)) > 0.25) > 0.25)
            # compare the integers the NPU computed, dequantized with the model's own scale
            n = (np.rint(k) - quant.zero_point) * quant.scale
        q = q.astype(np.float64).ravel()
        self.s["qq"][i] += q @ q
        self.s["size"][i] += q.size
        pre = pre.astype(np.float64).ravel()
        self.s["pp"][i] += pre @ pre
        self.s["pq"][i] += np.sum((q - pre) ** 2)
        if f is None or f.size != q.size:
            self.have_f[i] = False
        else:
            f = f.astype(np.float64).ravel()
            self.s["ff"][i] += f @ f
            self.s["fq"][i] += np.sum((f - q) ** 2)
            self.s["fp"][i] += np.sum((f - pre) ** 2)
        if n is not None:
            n = n.astype(np.float64).ravel()
            self.have_n[i] = True
            self.s["nn"][i] += n @ n
            self.s["qn"][i] += np.sum((q - n) ** 2)
            if self.have_f[i] and f is not None and f.size == n.size:
                self.s["fn"][i] += np.sum((f - n) ** 2)


def _db(signal: float, noise: float) -> float | None:
    if signal <= 0:
        return None  # no signal: SQNR undefined
    return math.inf if noise <= 0 else 10 * math.log10(signal / noise)


def _rows(quantizers: list[Quantizer], sums: _Sums) -> list[TensorRow]:
    s = sums.s
    rows = []
    for q in quantizers:
        i = q.index
        f_ok, n_ok = bool(sums.have_f[i]), bool(sums.have_n[i] and not sums.off_grid[i])
        rows.append(TensorRow(
            index=i, tensor=q.tensor, op=q.op, layer=q.layer, bits=q.bits, scale=q.scale,
            rounding_sqnr_db=_db(s["qq"][i] / max(s["size"][i], 1), q.noise_power) if q.noise_power else None,
            op_vs_float_db=_db(s["ff"][i], s["fp"][i]) if f_ok else None,
            qdq_vs_float_db=_db(s["ff"][i], s["fq"][i]) if f_ok else None,
            npu_vs_float_db=_db(s["ff"][i], s["fn"][i]) if f_ok and n_ok else None,
            npu_vs_qdq_db=_db(s["qq"][i], s["qn"][i]) if n_ok else None,
            qdq_drop_db=None, npu_drop_db=None))
    for q, r in zip(quantizers, rows):
        r.npu_drop_db = _npu_drop(q, r, rows)
        if s["pp"][q.index] > 0:
            r.qdq_added_noise = float(s["pq"][q.index] / s["pp"][q.index])
        if r.qdq_vs_float_db is None or math.isinf(r.qdq_vs_float_db):
            continue
        if q.op in DATA_MOVEMENT:
            ref = r.op_vs_float_db
        else:
            before = [rows[j].qdq_vs_float_db for j in q.inputs]
            before = [b for b in before if b is not None and not math.isinf(b)]
            ref = min(before) if before else r.rounding_sqnr_db
        if ref is not None and not math.isinf(ref):
            r.qdq_drop_db = ref - r.qdq_vs_float_db
        elif ref is not None:  # exact before its quantizer (the input image): against one rounding
            r.qdq_drop_db = (r.rounding_sqnr_db or r.qdq_vs_float_db) - r.qdq_vs_float_db
    return rows


def _behind(r: TensorRow) -> float | None:
    """How far the NPU is behind the CPU QDQ model against float at ``r`` (dB; negative: ahead)."""
    q, n = r.qdq_vs_float_db, r.npu_vs_float_db
    if q is None or n is None or math.isinf(q) or math.isinf(n):
        return None
    return q - n


def _npu_drop(q: Quantizer, r: TensorRow, rows: list[TensorRow]) -> float | None:
    """How much further behind the CPU QDQ model (against float) the NPU falls at this op than
    at the quantized tensors it reads (the furthest behind of them; 0 for an op that reads
    none). None for ops that only move elements: they compute nothing (and may keep a subset
    the inputs' figures do not describe)."""
    own = _behind(r)
    if own is None or q.op in DATA_MOVEMENT:
        return None
    before = [b for j in q.inputs if (b := _behind(rows[j])) is not None]
    return own - (max(before) if before else 0.0)


def _excess_noise(r: TensorRow) -> float | None:
    """The NPU's noise against float beyond the CPU QDQ model's, as a fraction of the tensor's
    power (noises add, so this is what the NPU costs there)."""
    if _behind(r) is None:
        return None
    return 10 ** (-r.npu_vs_float_db / 10) - 10 ** (-r.qdq_vs_float_db / 10)


def _added_noise(q: Quantizer, r: TensorRow, rows: list[TensorRow]) -> float | None:
    """:func:`_excess_noise` at ``r`` less the most of it at the tensors the op reads."""
    own = _excess_noise(r)
    if own is None or r.npu_drop_db is None:
        return None
    before = [b for j in q.inputs if (b := _excess_noise(rows[j])) is not None]
    return own - (max(before) if before else 0.0)


def _named(rows: list[TensorRow], quantizers: list[Quantizer]) -> tuple[dict | None, dict | None, dict | None]:
    drops = [r for r in rows if r.qdq_added_noise is not None]
    largest = None
    if drops:
        r = max(drops, key=lambda r: r.qdq_added_noise)
        inputs = [rows[j].tensor for j in quantizers[r.index].inputs]
        largest = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                       qdq_drop_db=r.qdq_drop_db, qdq_added_noise=r.qdq_added_noise,
                       qdq_vs_float_db=r.qdq_vs_float_db,
                       inputs=inputs,
                       inputs_qdq_vs_float_db=[rows[j].qdq_vs_float_db for j in quantizers[r.index].inputs])
    first = None
    for r in rows:
        if (r.npu_vs_qdq_db is not None and r.rounding_sqnr_db is not None
                and r.npu_vs_qdq_db < r.rounding_sqnr_db):
            first = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                         npu_vs_qdq_db=r.npu_vs_qdq_db, rounding_sqnr_db=r.rounding_sqnr_db)
            break
    # Ranked by the noise the NPU adds there (a fraction of the tensor's power), not by dB: a
    # 16-bit tensor 30 dB behind at 56 dB SQNR costs nothing next to an 8-bit softmax 15 dB
    # behind at 18 dB.
    added = {r.index: a for r in rows if (a := _added_noise(quantizers[r.index], r, rows)) is not None}
    npu = None
    if added and max(added.values()) > 0:
        r = rows[max(added, key=added.get)]
        ins = quantizers[r.index].inputs
        npu = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                   npu_drop_db=r.npu_drop_db, added_noise=added[r.index], npu_vs_qdq_db=r.npu_vs_qdq_db,
                   npu_vs_float_db=r.npu_vs_float_db, qdq_vs_float_db=r.qdq_vs_float_db,
                   inputs=[rows[j].tensor for j in ins],
                   inputs_npu_vs_float_db=[rows[j].npu_vs_float_db for j in ins],
                   inputs_qdq_vs_float_db=[rows[j].qdq_vs_float_db for j in ins])
    return largest, first, npu


def _finite(x):
    """JSON has no infinity: an SQNR of identical tensors is written "inf"."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------
# The stage

def inspect(model: str | Path, out_dir: str | Path = "inspect", cfg: InspectConfig = InspectConfig(),
            step: Step = lambda msg: None) -> InspectResult:
    """Inspect the QDQ ``model`` (see the module docstring); writes ``<stem>.inspect.csv``,
    ``.json`` and ``.png`` into ``out_dir``, together."""
    t0 = time.perf_counter()
    result = measure(model, cfg, step)
    _write(result, Path(out_dir), step)
    result.seconds = time.perf_counter() - t0
    return result


def measure(model: str | Path, cfg: InspectConfig = InspectConfig(),
            step: Step = lambda msg: None) -> InspectResult:
    """What :func:`inspect` reports on the QDQ ``model``, without writing anything."""
    from ..core.metrics import sqnr_db

    t0 = time.perf_counter()
    artifact = read_model(model)
    model = artifact.path
    if not artifact.int8:
        raise UserError(f"{model.name} is not a QDQ model (no QuantizeLinear): give the .qdq.onnx "
                        "from `skipat-deploy quantize`")
    qdq = _load(model)
    device = cfg.check(artifact)
    notices: list[str] = []
    made_for = artifact.quantization.hexagon if artifact.quantization else None
    if made_for is not None and made_for != device.hexagon:
        notices.append(f"{model.name} was quantized for Hexagon {made_for}, inspected on {device.name}'s "
                       f"{device.hexagon} HTP (compile refuses that pairing)")
    quantizers = activation_quantizers(qdq)
    if not quantizers:
        raise UserError(f"{model.name} quantizes no activation (every QuantizeLinear reads a constant)")
    float_path = _float_model(artifact, cfg, notices)
    step("loading the float reference")
    fgraph, float_what, fgraph_is_float = _float_graph(model, qdq, quantizers, float_path, notices)
    fnames = _tensor_names(fgraph)
    f_inputs = {i.name for i in fgraph.graph.input}
    f_of = _float_names(quantizers, fnames)
    input_name = qdq.graph.input[0].name
    out_names = [o.name for o in qdq.graph.output]
    exposed = [q.exposed for q in quantizers]

    graph_inputs = {i.name for i in qdq.graph.input}
    pre = [q.tensor for q in quantizers if q.tensor not in graph_inputs]
    sess_q = _cpu(_with_outputs(qdq, exposed + pre))
    x, described = _samples(model, cfg, tuple(sess_q.get_inputs()[0].shape), notices)
    f_wanted = [n for n in f_of if n not in f_inputs]
    sess_f = _cpu(_with_outputs(fgraph, f_wanted))
    f_out0 = fgraph.graph.output[0].name
    sess_float = None if fgraph_is_float or float_path is None else _cpu(float_path)
    q_names = [o.name for o in sess_q.get_outputs()]

    with tempfile.TemporaryDirectory(prefix="skipat-inspect-") as tmp_s:
        npu = _Npu(None, False, "not run: --no-npu", None)
        versions: dict[str, str] = {}
        if cfg.npu:
            exposed_path = Path(tmp_s) / model.name
            onnx.save(_with_outputs(qdq, exposed), str(exposed_path))
            npu, versions = _npu(model, exposed_path, Path(tmp_s), device, notices, step)
        sums = _Sums(len(quantizers))
        outs = {"float": [], "qdq": [], "npu": []}
        if npu.session is not None:
            n_names = [o.name for o in npu.session.get_outputs()]
        for k, xi in enumerate(x):
            step(f"sample {k + 1}/{len(x)}: float, CPU QDQ" + (", HTP simulator" if npu.session else ""))
            feed = {input_name: xi}
            fo = dict(zip([o.name for o in sess_f.get_outputs()], sess_f.run(None, feed)))
            fo.update({n: xi for n in f_inputs})
            qo = dict(zip(q_names, sess_q.run(None, feed)))
            qo.update({n: xi for n in graph_inputs})
            no: dict[str, np.ndarray] = {}
            if npu.session is not None:
                from ..npu import qnn

                with qnn.native_output():
                    got = npu.session.run(None, feed)
                no = dict(zip(n_names, got))
                if k == 0 and npu.exposes:
                    _exposure_check(model, device, feed, got, len(out_names), notices)
            for q, fname in zip(quantizers, f_of):
                sums.add(q, fo.get(fname), qo[q.tensor], qo[q.exposed], no.get(q.exposed))
            outs["float"].append(fo[f_out0] if sess_float is None else sess_float.run(None, feed)[0])
            outs["qdq"].append(qo[out_names[0]])
            if out_names[0] in no:
                outs["npu"].append(no[out_names[0]])

    rows = _rows(quantizers, sums)
    off = [q.tensor for q in quantizers if sums.off_grid[q.index]]
    if off:
        notices.append(f"the HTP returned {len(off)} exposed tensor(s) off their quantization grid "
                       f"({', '.join(off[:3])}{', ...' if len(off) > 3 else ''}): not the quantized "
                       "values the NPU computes with (the QNN EP returns a Q/DQ pair on a graph "
                       "input as a float copy), so their NPU columns are left empty")
    largest, first, npu_drop = _named(rows, quantizers)
    ref = np.stack(outs["float"]) if float_path is not None else None
    cpu_out = np.stack(outs["qdq"])
    npu_out = np.stack(outs["npu"]) if outs["npu"] else None
    output = dict(tensor=out_names[0],
                  qdq_vs_float_db=None if ref is None else sqnr_db(ref, cpu_out),
                  npu_vs_float_db=None if ref is None or npu_out is None else sqnr_db(ref, npu_out),
                  npu_vs_qdq_db=None if npu_out is None else sqnr_db(cpu_out, npu_out))
    if npu.session is not None and first is None and npu.exposes:
        notices.append("no tensor departs from the CPU QDQ model by more than its own rounding "
                       "noise on the NPU")
    result = InspectResult(
        model=model, float_model=float_path, float_reference=float_what, device=device.name,
        soc=device.soc, hexagon=device.hexagon, inputs=described, num_samples=len(x), npu=npu.what,
        npu_partitions=npu.partitions, layers=rows, output=output, largest_qdq_drop=largest,
        first_npu_divergence=first, largest_npu_drop=npu_drop, versions=versions, notices=notices)
    if float_path is not None:
        result.versions["float_model_sha256"] = sha256_file(float_path)
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------
# Files

CSV_COLUMNS = ("index", "tensor", "op", "layer", "bits", "scale", "rounding_sqnr_db",
               "op_vs_float_db", "qdq_vs_float_db", "npu_vs_float_db", "npu_vs_qdq_db", "qdq_drop_db", "qdq_added_noise",
               "npu_drop_db")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) and v > 0 else "-inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


def _write(result: InspectResult, out_dir: Path, step: Step) -> None:
    stem = model_stem(result.model)
    names = {"inspect_csv": f"{stem}.inspect.csv", "inspect_json": f"{stem}.inspect.json",
             "inspect_png": f"{stem}.inspect.png"}
    step(f"writing {stem}.inspect.csv / .json / .png")
    with staged(out_dir) as stage:  # the three files move in together
        with open(stage.path(names["inspect_csv"]), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in result.layers:
                w.writerow([_cell(getattr(r, c)) for c in CSV_COLUMNS])
        write_chart(stage.path(names["inspect_png"]), result)
        result.files = {k: out_dir / v for k, v in names.items()}
        stage.path(names["inspect_json"]).write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _short(v) -> str:
    return "-" if v is None else "inf" if math.isinf(v) else f"{v:.1f}"


def write_chart(path: Path, result: InspectResult) -> None:
    """The three SQNR curves along the graph, the rounding SQNR dotted, the two named rows
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.layers
    idx = np.arange(len(rows))

    def curve(key):
        vals = [getattr(r, key) for r in rows]
        return np.array([np.nan if v is None or math.isinf(v) else v for v in vals], float)

    fig, ax = plt.subplots(figsize=(max(9, 0.02 * len(rows) + 6), 4.8), dpi=100)
    shown = [v for key in ("qdq_vs_float_db", "npu_vs_float_db", "npu_vs_qdq_db")
             for v in curve(key) if np.isfinite(v)]
    if shown:  # a constant tensor's 140 dB would flatten the rest: 100 dB is exact enough
        ax.set_ylim(min(shown) - 2, min(max(shown) + 2, 100))
    for key, label, style in (("qdq_vs_float_db", "CPU QDQ vs float", "-"),
                              ("npu_vs_float_db", "NPU vs float", "-"),
                              ("npu_vs_qdq_db", "NPU vs CPU QDQ", "-"),
                              ("rounding_sqnr_db", "one rounding (scale²/12)", ":")):
        y = curve(key)
        if np.isfinite(y).any():
            ax.plot(idx, y, style, lw=1.1, label=label)
    for mark, colour, label in ((result.largest_qdq_drop, "tab:red", "largest QDQ drop"),
                                (result.first_npu_divergence, "tab:purple", "first NPU divergence"),
                                (result.largest_npu_drop, "tab:brown", "largest NPU drop")):
        if mark is not None:
            ax.axvline(mark["index"], color=colour, ls="--", lw=1)
            ax.annotate(f"{label}: {mark['layer']} ({mark['op']})", (mark["index"], 1.0),
                        xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                        fontsize=7, color=colour)
    ax.set_xlabel(f"{len(rows)} quantized activations, input to output")
    ax.set_ylabel("SQNR (dB)")
    ax.set_xlim(-1, len(rows))
    ax.legend(loc="lower left", fontsize=8)
    o = result.output
    fig_title = (f"{result.model.name} on {result.device} ({result.soc}); {result.num_samples} samples; "
                 f"output vs float: CPU QDQ {_short(o['qdq_vs_float_db'])} dB, NPU {_short(o['npu_vs_float_db'])} dB")
    ax.set_title(fig_title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

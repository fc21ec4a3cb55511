"""The QDQ graph as inspect reads it: its activation quantizers (what each reads, its bits and
scale, the op and layer behind it), the float twin, and sessions that expose any tensor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ...core.errors import UserError

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


def load_graph(path: Path, weights: bool = True) -> onnx.ModelProto:
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


def tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return {o for n in g.node for o in n.output} | {i.name for i in g.input}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in dict.fromkeys(names):
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def cpu_session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    """Exact graph semantics: no fusion (Q/DQ stay separate ops), as :func:`run_qdq_cpu`."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])

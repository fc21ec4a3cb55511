"""QDQ graph post-processing: quantized weights stored as integers.

AIMET's QDQ export keeps every weight in float beside a QuantizeLinear -> DequantizeLinear pair,
so the file is as large as the float model plus the Q/DQ nodes (87 MB for a 22 M-parameter
ViT-S). Each such weight is quantized here exactly as QuantizeLinear would at run time
(``saturate(round_half_even(w / scale) + zero_point)``) and stored as the integer initializer a
DequantizeLinear reads: the same values reach every consumer, the file shrinks to about a
quarter, and this is the layout ONNX Runtime's own quantizer writes and the QNN execution
provider expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
               for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)}


def _quantize(w: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    dtype = np.dtype(np.uint8) if zero is None else zero.dtype
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        shape = [1] * w.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero = None if zero is None else zero.reshape(shape)
    q = np.rint(w.astype(np.float32) / scale.astype(np.float32))
    if zero is not None:
        q = q + zero.astype(np.float64)
    lo, hi = _INT_RANGES[dtype]
    return np.clip(q, lo, hi).astype(dtype)


def store_weights_as_integers(path: str | Path) -> int:
    """In place: every QuantizeLinear whose input is a float initializer becomes that
    initializer's integer values; float initializers nothing else reads are dropped. Returns
    how many weights were converted."""
    model = onnx.load(str(path))
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    keep, converted = [], 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "QuantizeLinear" or node.input[0] not in init or attrs.get("block_size")
                or any(i not in init for i in node.input[1:] if i)):
            keep.append(node)
            continue
        w = numpy_helper.to_array(init[node.input[0]])
        scale = numpy_helper.to_array(init[node.input[1]])
        zero = numpy_helper.to_array(init[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and zero.dtype not in _INT_RANGES:
            keep.append(node)
            continue
        axis = attrs.get("axis", 1)
        graph.initializer.append(numpy_helper.from_array(_quantize(w, scale, zero, axis % max(w.ndim, 1)),
                                                         node.output[0]))
        readers[node.input[0]] -= 1
        converted += 1
    del graph.node[:]
    graph.node.extend(keep)
    unused = {name for name, count in readers.items() if count == 0 and name in init}
    remaining = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    inputs = [i for i in graph.input if i.name not in unused]  # old IRs list initializers as inputs
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.save(model, str(path))
    return converted

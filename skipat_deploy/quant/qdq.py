"""QDQ graph post-processing: quantized weights stored as integers; Softmax steps the HTP keeps.

AIMET's QDQ export keeps every weight in float beside a QuantizeLinear -> DequantizeLinear pair,
so the file is as large as the float model plus the Q/DQ nodes (87 MB for a 22 M-parameter
ViT-S). Each such weight is quantized here exactly as QuantizeLinear would at run time
(``saturate(round_half_even(w / scale) + zero_point)``) and stored as the integer initializer a
DequantizeLinear reads: the same values reach every consumer, the file shrinks to about a
quarter, and this is the layout ONNX Runtime's own quantizer writes and the QNN execution
provider expects.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# The HTP's 8-bit Softmax follows the CPU only when its output step is a power of two. Measured
# on the QNN HTP simulator (Hexagon v69), one Softmax over 577 tokens against float: 2^-15.34,
# CPU QDQ 48.3 dB, NPU 4.8 dB; step 2^-15, CPU 46.3, NPU 40.2 dB; in ViT-T at 384 px the whole
# network's output fell from 20.9 (CPU QDQ) to 13.5 dB on the NPU. At 16 bits the step does not
# matter (NPU 38-50 dB either way). So an 8-bit Softmax step goes to a power of two: the one
# below when the range loses at most one step by it (what one rounding costs anyway: [0, 1]
# with step 1/255 becomes [0, 0.996]), else the one above, which clips nothing. Always rounding
# up doubled ONNX Runtime's 1/255 and cost ViT-T at 384 px 2.5 dB.
POWER_OF_TWO_STEP_OPS = ("Softmax",)


def power_of_two_step(step: float, levels: int = 255) -> float:
    """The power of two an 8-bit (``levels`` steps) Softmax output step becomes (see above)."""
    below = 2.0 ** math.floor(math.log2(step))
    keeps_range = below * (levels + 1) >= step * levels * (1 - 1e-6)  # float32 1/255 * 255 > 1
    return float(below if keeps_range else 2 * below)


def snap_softmax_steps_in_onnx(model: onnx.ModelProto) -> int:
    """In place: the scale of each 8-bit QuantizeLinear on a Softmax output (and of the
    DequantizeLinear reading it) put on a power of two (:func:`power_of_two_step`).
    Returns how many were changed."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    produced_by = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    changed = 0
    for q in graph.node:
        src = produced_by.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if src is None or src.op_type not in POWER_OF_TWO_STEP_OPS or len(q.input) < 3:
            continue
        if numpy_helper.to_array(inits[q.input[2]]).dtype != np.uint8:
            continue
        pair = [q, *(d for d in readers.get(q.output[0], []) if d.op_type == "DequantizeLinear")]
        scale = numpy_helper.to_array(inits[q.input[1]])
        snapped = np.array(power_of_two_step(float(scale)), dtype=scale.dtype)
        if snapped == scale:
            continue
        name = f"{q.output[0]}_power_of_two_scale"  # its own: the old one may be shared
        graph.initializer.append(numpy_helper.from_array(snapped, name))
        old = q.input[1]
        for node in pair:
            node.input[1] = name
        if not any(old in n.input for n in graph.node):
            graph.initializer.remove(inits[old])
        changed += 1
    return changed


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


def store_weights_as_integers(model: onnx.ModelProto) -> int:
    """In place: every QuantizeLinear whose input is a float initializer becomes that
    initializer's integer values; float initializers nothing else reads are dropped. Returns
    how many weights were converted."""
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
    return converted

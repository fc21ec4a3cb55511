"""One 8-bit Softmax on the QNN HTP simulator against the CPU, by output step (issue 23).

Q/DQ -> Softmax -> Q/DQ over N tokens, three heads, with the output step just off a power of two
and on one, and at 16 bits. Shows why ``quant/qdq.py`` puts 8-bit Softmax steps on powers of
two: off them the NPU computes another function at small steps.

    pip install -e ".[bench]" && python benchmarks/htp_softmax_steps.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skipat_deploy.devices import resolve_device  # noqa: E402
from skipat_deploy.export import run_qdq_cpu  # noqa: E402
from skipat_deploy.core.metrics import sqnr_db  # noqa: E402
from skipat_deploy.npu import qnn  # noqa: E402


def softmax_graph(tokens: int, in_step: float, out_step: float, bits: int) -> onnx.ModelProto:
    out_type = TensorProto.UINT8 if bits == 8 else TensorProto.UINT16
    inits = [numpy_helper.from_array(np.array(in_step, np.float32), "si"),
             helper.make_tensor("zi", TensorProto.UINT8, [], [128]),
             numpy_helper.from_array(np.array(out_step, np.float32), "so"),
             helper.make_tensor("zo", out_type, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "si", "zi"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "si", "zi"], ["xd"]),
             helper.make_node("Softmax", ["xd"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "so", "zo"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "so", "zo"], ["y"])]
    shape = [1, 3, tokens, tokens]
    g = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def main() -> None:
    device = resolve_device("Galaxy S22")
    rng = np.random.default_rng(2)
    print(f"one Softmax, SQNR against float (dB); {device.name} HTP simulator\n")
    print("| tokens | logit std | bits | step (log2) | CPU QDQ | NPU |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "softmax.onnx"
        for tokens in (197, 577):
            for std in (0.3, 1.5):
                x = (std * rng.standard_normal((1, 3, tokens, tokens))).astype(np.float32)
                in_step = 8 * std / 255
                xd = (np.clip(np.rint(x / in_step) + 128, 0, 255) - 128) * in_step
                p = np.exp(xd - xd.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                off = p.max() * 1.1 / 255  # the range a calibration would give: off the grid
                for bits, step in ((8, off), (8, 2.0 ** np.ceil(np.log2(off))),
                                   (16, p.max() * 1.1 / 65535)):
                    onnx.save(softmax_graph(tokens, in_step, step, bits), path)
                    cpu = run_qdq_cpu(path, x)
                    session = qnn.htp_session(path, device)
                    with qnn.native_output():
                        npu = session.run(None, {"x": x})[0]
                    print(f"| {tokens} | {std} | {bits} | {np.log2(step):.2f} | "
                          f"{sqnr_db(p, cpu):.1f} | {sqnr_db(p, npu):.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Establish what each Hexagon HTP version accepts, from the QNN execution provider's own
validation on the x86-64 simulator, and write it as data (``profiles/htp_capabilities.json``).

For every (HTP version, QNN soc_model) in ``devices.json`` it builds small QDQ graphs of the ops a ViT / SkipAt
needs (MatMul of two activations at 8x8, 16x8 and 16x16 bit; LayerNorm, Softmax, GELU, Add and
a depthwise Conv at 8 and 16 bit, and in float16) and asks ONNX Runtime QNN to place each one entirely on the HTP
(``session.disable_cpu_ep_fallback``) with that version's ``htp_arch`` / ``soc_model``; then
runs it once on the simulator. A graph counts as supported only when both succeed.

    python profiles/probe_htp.py          # about a minute; rewrites profiles/htp_capabilities.json
"""

from __future__ import annotations

import json
import warnings
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from skipat_deploy.devices import load_profiles  # noqa: E402
from skipat_deploy.npu import qnn  # noqa: E402
from skipat_deploy.quant.ort import quantize_ort  # noqa: E402

DTYPES = {8: TensorProto.UINT8, 16: TensorProto.UINT16}


def _qdq(name: str, bits: int, scale: float, nodes: list, inits: list, symmetric: bool = False) -> str:
    dtype = TensorProto.INT8 if symmetric and bits == 8 else DTYPES[bits]
    zp = 0 if symmetric else (128 if bits == 8 else 32768)
    inits += [helper.make_tensor(f"{name}_s", TensorProto.FLOAT, [], [scale]),
              helper.make_tensor(f"{name}_z", dtype, [], [zp])]
    nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def matmul_model(a_bits: int, b_bits: int, path: Path) -> None:
    """Two activations multiplied (attention's q @ k^T, attn @ v); B symmetric when 8-bit, as
    v68/v69 require of a MatMul's second input."""
    nodes, inits = [], []
    a = _qdq("a", a_bits, 0.01, nodes, inits)
    b = _qdq("b", b_bits, 0.01, nodes, inits, symmetric=b_bits == 8)
    nodes.append(helper.make_node("MatMul", [a, b], ["y"]))
    y = _qdq("y", a_bits, 0.05, nodes, inits)
    graph = helper.make_graph(
        nodes + [helper.make_node("Identity", [y], ["out"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 64, 32]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 32, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 64, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))


class _Op(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = torch.nn.LayerNorm(64, eps=1e-6)
        self.dw = torch.nn.Conv2d(64, 64, 5, padding=2, groups=64)

    def forward(self, x):  # x: (1, 64, 64) tokens
        if self.kind == "layernorm":
            return self.norm(x)
        if self.kind == "softmax":
            return x.softmax(-1)
        if self.kind == "gelu":
            return torch.nn.functional.gelu(x)
        if self.kind == "add":
            return x + x.flip(1)
        return self.dw(x.reshape(1, 64, 8, 8))  # depthwise_conv


def op_model(kind: str, bits: int | None, path: Path, tmp: Path) -> None:
    """``kind`` as a QDQ graph with ``bits``-bit activations, or float (``bits`` None)."""
    x = torch.randn(8, 64, 64)
    float_path = path if bits is None else tmp / f"{kind}.float.onnx"
    torch.onnx.export(_Op(kind).eval(), (x[:1],), str(float_path), input_names=["x"],
                      output_names=["y"], opset_version=20, dynamo=False)
    if bits is not None:
        quantize_ort(str(float_path), str(path), x.numpy(), "x", bits, 1)


def accepted(path: Path, device, fp16: bool = False) -> tuple[bool, str]:
    try:
        sess = qnn.htp_session(path, device, fp16=fp16)
        feed = {i.name: np.random.default_rng(0).standard_normal(
            [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in sess.get_inputs()}
        sess.run(None, feed)
        return True, ""
    except Exception as e:  # the EP's refusal, first line
        return False, str(e).strip().splitlines()[0][:200]


def main() -> None:
    warnings.simplefilter("ignore")
    targets = {}  # the simulator's validation depends on the SoC, not only the HTP version
    for p in load_profiles():
        targets.setdefault((p.htp_arch, p.qnn_soc_model), []).append(p)
    features = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for a_bits, b_bits in ((8, 8), (16, 8), (16, 16)):
            matmul_model(a_bits, b_bits, tmp / f"matmul_{a_bits}x{b_bits}.onnx")
            features[f"matmul_{a_bits}x{b_bits}"] = tmp / f"matmul_{a_bits}x{b_bits}.onnx"
        for kind in ("layernorm", "softmax", "gelu", "add", "depthwise_conv"):
            for bits in (8, 16, None):
                name = f"{kind}_a{bits}" if bits else f"{kind}_fp16"
                op_model(kind, bits, tmp / f"{name}.onnx", tmp)
                features[name] = tmp / f"{name}.onnx"
        table = []
        for (arch, soc_model), devices in sorted(targets.items()):
            row = {}
            for feature, path in features.items():
                ok, why = accepted(path, devices[0], fp16=feature.endswith("_fp16"))
                row[feature] = ok if ok else {"supported": False, "qnn_said": why}
                print(f"v{arch} soc_model {soc_model} {feature}: {'ok' if ok else why}")
            table.append({"hexagon": f"v{arch}", "soc_model": soc_model,
                          "targets": [d.name for d in devices], "features": row})
    versions = qnn.sdk_versions()
    doc = {
        "about": "What each Hexagon HTP version accepts, established by profiles/probe_htp.py: "
                 "small QDQ graphs placed entirely on the HTP by ONNX Runtime QNN and run once on "
                 "its x86-64 simulator. true = accepted and ran.",
        "probed_with": versions,
        "soc": table,
    }
    out = HERE / "htp_capabilities.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

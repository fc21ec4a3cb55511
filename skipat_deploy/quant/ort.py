"""ONNX Runtime backend: ``onnxruntime.quantization`` with the QNN QDQ configuration.

The light path (no AIMET), and the baseline the AIMET path is measured against. Works on the
float ONNX from the export step; weights per-channel 8-bit, activations 8- or 16-bit, min/max
calibration on the same images.
"""

from __future__ import annotations

import logging

import numpy as np



def quantize_ort(float_onnx: str, out_path: str, calib: np.ndarray, input_name: str,
                 activation_bw: int, batch_size: int) -> None:
    # onnxruntime.quantization warns through the root logger about every LayerNorm weight it
    # does not quantize per-channel; the report says what matters.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize(float_onnx, out_path, calib, input_name, activation_bw, batch_size)
    finally:
        root.setLevel(level)


def _signed_biased_weights(float_onnx: str) -> dict:
    """Weights of the ops with an int32 bias input (Gemm, Conv) as signed symmetric 8-bit, as
    AIMET writes them: only for those does ONNX Runtime raise a weight channel's scale where its
    int32 bias would saturate (a head's all-zero rows with bias -10 read ~0 with uint8 weights).
    Other weights keep the QNN default (the HTP takes no int8 LayerNorm gain)."""
    import onnx
    from onnxruntime.quantization import QuantType

    graph = onnx.load(float_onnx, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    def out_axis(node) -> int:  # per output channel: Gemm's B is (in, out) unless transB
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 1 if node.op_type == "Gemm" and not trans_b else 0

    return {n.input[1]: [{"quant_type": QuantType.QInt8, "symmetric": True, "axis": out_axis(n)}]
            for n in graph.node if n.op_type in ("Gemm", "Conv") and len(n.input) > 2
            and n.input[1] in weights}


def _quantize(float_onnx, out_path, calib, input_name, activation_bw, batch_size) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                calib[i : i + batch_size] for i in range(0, len(calib) - batch_size + 1, batch_size)
            )

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: x}

    config = get_qnn_qdq_config(
        float_onnx,
        Reader(),
        activation_type=QuantType.QUInt16 if activation_bw == 16 else QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        per_channel=True,
        init_overrides=_signed_biased_weights(float_onnx),
    )
    quantize(float_onnx, out_path, config)

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
        # signed symmetric weights, as AIMET writes them: only for those does ONNX Runtime raise a
        # weight channel's scale where its int32 bias would saturate (a head's all-zero rows
        # with bias -10 read ~0 with uint8 weights)
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    quantize(float_onnx, out_path, config)

"""The quantize stage: a checkpoint to an INT8 model for the Hexagon NPU, with a quality report.

:mod:`.quantize` is the stage (config, result, the checks, the files it writes); its backends
are :mod:`.aimet` (AIMET simulation with the device's HTP config) and :mod:`.ort` (ONNX
Runtime's QNN QDQ configuration). :mod:`.equalize` and :mod:`.gptq` are the float-equivalent
rewrites and the weight rounding applied before calibration; :mod:`.report` the per-layer rows.
"""

from .quantize import BACKENDS, PRECISIONS, QuantizeConfig, QuantizeResult, quantize
from .report import LayerSensitivity

__all__ = ["BACKENDS", "PRECISIONS", "LayerSensitivity", "QuantizeConfig", "QuantizeResult", "quantize"]

"""The NPU stage: a quantized model to what a phone's Hexagon NPU loads.

:mod:`.config` is the stage's config and result, :mod:`.compile` the local backend (ONNX Runtime's QNN
execution provider writes the context binary, checked on the HTP simulator); :mod:`.qnn` the
QNN sessions and the NPU-placement diagnosis; :mod:`.hub` the Qualcomm AI Hub backend (compile
and profiling jobs on real phones, with run records and retries). Device facts are data in
:mod:`skipat_deploy.devices`.
"""

from .compile import check_model, compile_local
from .config import BACKENDS, TARGET_RUNTIMES, CompileConfig, CompileError, CompileResult, NpuCheck

__all__ = ["BACKENDS", "TARGET_RUNTIMES", "CompileConfig", "CompileError", "CompileResult", "NpuCheck",
           "check_model", "compile_local"]

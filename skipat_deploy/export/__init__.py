"""The export stage: a checkpoint to static-grid ONNX, proven equal to PyTorch.

:mod:`.onnx_export` exports and writes the metadata every later stage reads; :mod:`.validate`
checks an ONNX model against reference outputs and runs models on ONNX Runtime's CPU;
:mod:`.samples` picks inputs for a model from its metadata.
"""

from .onnx_export import (
    DEFAULT_RESOLUTION,
    DEFAULT_RESOLUTIONS,
    INPUT_NAME,
    METADATA_KEY,
    ExportConfig,
    ExportResult,
    artifact_name,
    check_resolution,
    export_onnx,
    fresh_checkpoint,
    output_name,
    read_metadata,
)
from .samples import sample_inputs
from .validate import cpu_session, run_qdq_cpu, validate_onnx

__all__ = [
    "DEFAULT_RESOLUTION", "DEFAULT_RESOLUTIONS", "INPUT_NAME", "METADATA_KEY", "ExportConfig", "ExportResult",
    "artifact_name", "check_resolution", "cpu_session", "export_onnx", "fresh_checkpoint",
    "output_name", "read_metadata", "run_qdq_cpu", "sample_inputs", "validate_onnx",
]

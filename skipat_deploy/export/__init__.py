"""The export stage: a checkpoint to static-grid ONNX, proven equal to PyTorch.

:mod:`.onnx_export` exports and writes the metadata every later stage reads; :mod:`.artifact`
reads what a model file made here is (float, QDQ, CPU INT8), once; :mod:`.validate`
checks an ONNX model against reference outputs and runs models on ONNX Runtime's CPU;
:mod:`.samples` picks inputs for a model from its metadata.
"""

from .onnx_export import (
    DEFAULT_RESOLUTION,
    DEFAULT_RESOLUTIONS,
    INPUT_NAME,
    ExportConfig,
    ExportResult,
    artifact_name,
    check_resolution,
    export_onnx,
    output_name,
)
from .artifact import METADATA_KEY, ModelArtifact, read_metadata, read_model
from .samples import OneSample, one_sample, sample_inputs
from .validate import cpu_session, run_qdq_cpu, validate_onnx

__all__ = [
    "DEFAULT_RESOLUTION", "DEFAULT_RESOLUTIONS", "INPUT_NAME", "METADATA_KEY", "ExportConfig", "ExportResult",
    "artifact_name", "check_resolution", "cpu_session", "export_onnx",
    "output_name", "read_metadata", "read_model", "ModelArtifact", "run_qdq_cpu", "OneSample", "one_sample", "sample_inputs", "validate_onnx",
]

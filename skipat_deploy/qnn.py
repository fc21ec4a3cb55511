"""ONNX Runtime's QNN execution provider (package ``onnxruntime-qnn``, a plugin EP).

On x86-64 the HTP backend is a simulator: it runs QDQ graphs with the NPU's integer arithmetic,
so its *outputs* show what the phone computes. Its timing says nothing about phone latency.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .devices import DeviceProfile
from .errors import UserError

_registered = False


def _plugin():
    global _registered
    try:
        import onnxruntime_qnn
    except ImportError:
        raise UserError("onnxruntime-qnn is not installed (it has wheels for Linux x86-64 and "
                        "Windows): pip install onnxruntime-qnn") from None
    if not _registered:
        ort.register_execution_provider_library("QNNExecutionProvider",
                                                onnxruntime_qnn.get_library_path())
        _registered = True
    return onnxruntime_qnn


def htp_session(model: str | Path, device: DeviceProfile, cpu_fallback: bool = False,
                context_file: str | Path | None = None) -> ort.InferenceSession:
    """A session on the HTP backend for ``device``'s SoC. Without ``cpu_fallback`` creating it
    fails unless every node runs on the NPU. With ``context_file`` it also writes the EPContext
    model there and the QNN context binary beside it."""
    qnn = _plugin()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_provider_for_devices(devices, {
        "backend_path": qnn.get_qnn_htp_path(),
        "soc_model": str(device.qnn_soc_model),
        "htp_arch": str(device.htp_arch),
    })
    if not cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_file is not None:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "0")
        so.add_session_config_entry("ep.context_file_path", str(context_file))
    return ort.InferenceSession(str(model), so)

"""ONNX Runtime's QNN execution provider (package ``onnxruntime-qnn``, a plugin EP).

On x86-64 the HTP backend is a simulator: it runs QDQ graphs with the NPU's integer arithmetic,
so its *outputs* show what the phone computes. Its timing says nothing about phone latency.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ..devices import DeviceProfile
from ..core.errors import UserError

_registered = False


@contextlib.contextmanager
def native_output(log: list[str] | None = None) -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 (QNN's banner on stdout, ORT's
    log on stderr) to a temporary file instead of the terminal: stdout belongs to ``--json``.
    The text is appended to ``log`` when given."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if log is not None:
                sink.seek(0)
                log.append(sink.read().decode("utf-8", "replace"))


def _plugin():
    global _registered
    try:
        import onnxruntime_qnn
    except ImportError:
        raise UserError("onnxruntime-qnn is not installed (it has wheels for Linux x86-64 and "
                        "Windows): pip install onnxruntime-qnn") from None
    if not _registered:
        with native_output():
            ort.register_execution_provider_library("QNNExecutionProvider",
                                                    onnxruntime_qnn.get_library_path())
        _registered = True
    return onnxruntime_qnn


def sdk_versions() -> dict[str, str]:
    """The onnxruntime-qnn package and the QNN SDK it bundles."""
    qnn = _plugin()
    info = qnn.build_and_package_info
    return {"onnxruntime": ort.__version__, "onnxruntime_qnn": info.__version__,
            "qnn_sdk": info.qnn_version}


def _options(device: DeviceProfile, cpu_fallback: bool, context_file, severity: int,
             fp16: bool = False, extra: dict | None = None):
    qnn = _plugin()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = severity
    options = {
        "backend_path": qnn.get_qnn_htp_path(),
        "soc_model": str(device.qnn_soc_model),
        "htp_arch": str(device.htp_arch),
    }
    if fp16:  # float graphs run in float16 on the HTP
        options["enable_htp_fp16_precision"] = "1"
    so.add_provider_for_devices(devices, {**options, **(extra or {})})
    if not cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_file is not None:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "0")
        so.add_session_config_entry("ep.context_file_path", str(context_file))
    return so


def htp_session(model: str | Path, device: DeviceProfile, cpu_fallback: bool = False,
                context_file: str | Path | None = None, fp16: bool = False,
                share: str | None = None) -> ort.InferenceSession:
    """A session on the HTP backend for ``device``'s SoC. Without ``cpu_fallback`` creating it
    fails unless every node runs on the NPU. With ``context_file`` it also writes the EPContext
    model there and the QNN context binary beside it (``<stem>_qnn.bin``)."""
    so = _options(device, cpu_fallback, context_file, severity=3, fp16=fp16)
    if share is not None:  # EPContext weight sharing: "more" graphs to come, or the "last"
        so.add_session_config_entry("ep.share_ep_contexts", "1")
        if share == "last":
            so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
    with native_output():
        return ort.InferenceSession(str(model), so)


def qdq_runner(device: DeviceProfile):
    """What quantize's NPU figure runs on (``quant.quantize.NpuRunner``): a QDQ model on the HTP
    backend for ``device`` (the simulator on x86-64), every node on the NPU, one sample at a
    time; None when onnxruntime-qnn is not installed."""
    import numpy as np

    try:
        _plugin()
    except UserError:
        return None
    where = f"QNN HTP simulator (onnxruntime-qnn, x86-64), {device.soc} (Hexagon {device.hexagon})"

    def run(model: Path, x):
        try:
            sess = htp_session(model, device)
        except Exception as e:  # noqa: BLE001 - the EP refuses with several exception types
            return None, (f"{Path(model).name} does not run entirely on the {device.soc} NPU "
                          f"({str(e).splitlines()[0][:160]}); `skipat-deploy compile` names the nodes")
        name = sess.get_inputs()[0].name
        with native_output():
            y = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
        return y, where

    return run


def rename_context_binary(contexts: list[Path], old: Path, new: Path) -> None:
    """Move a context binary and point every EPContext model that names it at the new name."""
    import onnx

    old.rename(new)
    for ctx in contexts:
        model = onnx.load(str(ctx))
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "EPContext" and attr.name == "ep_cache_context" and attr.s == old.name.encode():
                    attr.s = new.name.encode()
        onnx.save(model, str(ctx))


# --------------------------------------------------------------------------------------------
# Which nodes cannot run on the NPU, and why (read off the QNN EP's own validation log).

@dataclass(frozen=True)
class Rejected:
    op_type: str
    node: str
    reason: str


_UNIT = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((\S+)\) :\n((?:\s+Operator type: .*\n)+)\s+REASON : (.*)")
_MEMBER = re.compile(r"Operator type: (\S+) Node name: (.*?) Node index: (\d+)")


def rejected_nodes(model: str | Path, device: DeviceProfile, fp16: bool = False) -> list[Rejected]:
    """The nodes QNN's HTP backend refuses for ``device``, each with the EP's reason. Runs a
    session with CPU fallback allowed and verbose logging, and parses the EP's validation log
    (one block per node unit: its member nodes, then the reason)."""
    so = _options(device, cpu_fallback=True, context_file=None, severity=0, fp16=fp16)
    log: list[str] = []
    with contextlib.suppress(Exception), native_output(log):
        ort.InferenceSession(str(model), so)
    found: dict[str, Rejected] = {}
    for unit_type, members, reason in _UNIT.findall("".join(log)):
        nodes = _MEMBER.findall(members)
        op, name, index = next((m for m in nodes if m[0] == unit_type), nodes[0])
        found.setdefault(index, Rejected(op, name or f"#{index}", reason.strip()))
    # The op that caused the failure first; Q/DQ at the graph's edges are usually a consequence.
    return sorted(found.values(), key=lambda r: r.op_type in ("QuantizeLinear", "DequantizeLinear"))


class NpuPlacementError(UserError):
    """Some nodes of the graph cannot run on the device's NPU."""

    def __init__(self, model: str | Path, device: DeviceProfile, rejected: list[Rejected]):
        self.rejected = rejected
        head = (f"{Path(model).name} does not run entirely on the {device.soc} NPU "
                f"(Hexagon {device.hexagon}); CPU fallback is off, so compilation stops.")
        if not rejected:
            body = "  the QNN execution provider named no node; rerun with --debug for its log"
        else:
            lines = [f"  {r.node} ({r.op_type}): {r.reason}" for r in rejected[:20]]
            if len(rejected) > 20:
                lines.append(f"  … and {len(rejected) - 20} more")
            body = "\n".join(lines)
        super().__init__(f"{head}\n{body}\nRe-export with skipat-deploy (opset 20+, 4-D attention) "
                         "and quantize it, or replace these ops.")

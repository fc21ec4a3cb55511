"""The targets ``evaluate`` scores, as data: each says where it runs, whether it is an INT8
model, and how its model is made from what the user gave (a checkpoint, or an exported model)
into a :class:`~skipat_deploy.measure.stream.Runner` that runs a batch. Adding a target (a
GPU, another phone runtime) is one entry in :data:`TARGETS`.

The INT8 targets share one QDQ model: quantized once from the checkpoint (or the ``--model``
given), then run on this CPU (``qdq``), compiled for the HTP simulator (``npu``) or for the
phone on AI Hub (``device``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import LoadedCheckpoint, load_weights
from ..devices import resolve_device
from ..export import ExportConfig, check_resolution, export_onnx, read_metadata
from ..files import sha256_file
from ..models.registry import build_model
from .dataset import stratified_indices
from .stream import Runner, in_batches

Step = Callable[[str], None]
NPU_GROUP = 8  # the simulator takes seconds per image: a cache file every few images


@dataclass
class EvaluateSource:
    """What ``evaluate`` was given and where it writes, shared by the targets it makes."""

    ckpt: LoadedCheckpoint | None  # a checkpoint, or
    model: Path | None  # an exported .onnx / .qdq.onnx
    resolution: int
    out_dir: Path
    cfg: object  # the EvaluateConfig
    labels: np.ndarray  # of the images to score, for the targets that draw a subset
    step: Step
    notices: list[str] = field(default_factory=list)
    _qdq: Path | None = None

    def qdq_model(self) -> Path:
        """The QDQ model the INT8 targets run: the ``--model`` given, or quantized once."""
        if self._qdq is None:
            if self.ckpt is None:
                self._qdq = self.model
            else:
                from ..quant import QuantizeConfig, quantize

                cfg = self.cfg
                q = quantize(self.ckpt, self.out_dir, QuantizeConfig(
                    resolution=self.resolution, precision=cfg.precision, backend=cfg.quant_backend,
                    device=cfg.device, calib_dir=cfg.calib_dir), self.step)
                self.notices.extend(n for n in q.notices if n not in self.notices)
                self._qdq = q.qdq_onnx
        return self._qdq


@dataclass(frozen=True)
class Target:
    name: str
    runs_on: str  # said in the report
    int8: bool  # compared with the float reference, gated by --max-top1-drop
    model_kind: str | None  # the exported model it evaluates without a checkpoint: float | qdq
    make: Callable[[EvaluateSource], Runner]


# --------------------------------------------------------------------------------------------
# Runners of models that exist (also used by ``compare --eval``).

def torch_runner(ck: LoadedCheckpoint, resolution: int, name: str = "torch", batch: int = 16) -> Runner:
    """The PyTorch model of ``ck``, float32 on the CPU."""
    import torch

    grid = check_resolution(resolution, ck.arch.patch_size)
    model = load_weights(build_model(ck.arch, grid), ck.state_dict, ck.spec.name).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[s : s + batch])).numpy()
                                   for s in range(0, len(x), batch)])

    return Runner(name, run, _weights_digest(ck, resolution))


def onnx_runner(path: Path, name: str, qdq_semantics: bool = False) -> Runner:
    """A float or INT8 ONNX model on ONNX Runtime's CPU with all its threads. The NPU's QDQ
    models run with graph optimisations off, Q/DQ as separate ops (``qdq_semantics``), so the
    result is the QDQ arithmetic the NPU implements rather than whatever integer kernels this
    CPU fuses them into; the CPU INT8 model (made for those kernels) runs as a user's CPU runs it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if qdq_semantics:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    run = in_batches(lambda x: sess.run(None, {inp.name: x})[0], batch)
    return Runner(name, run, sha256_file(path), model=Path(path))


def _weights_digest(ck: LoadedCheckpoint, resolution: int) -> str:
    h = hashlib.sha256(f"{ck.spec.name}\0{ck.arch}\0{resolution}".encode())
    for k in sorted(ck.state_dict):
        t = ck.state_dict[k].detach().contiguous()
        h.update(k.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def is_cpu_int8(path: Path) -> bool:
    return (read_metadata(path).get("quantization") or {}).get("target") == "cpu"


# --------------------------------------------------------------------------------------------
# The targets.

def _torch(src: EvaluateSource) -> Runner:
    src.step("building the PyTorch model")
    return torch_runner(src.ckpt, src.resolution)


def _onnx(src: EvaluateSource) -> Runner:
    path = src.model
    if src.ckpt is not None:
        (r,) = export_onnx(src.ckpt, src.out_dir, ExportConfig(resolutions=(src.resolution,)), src.step)
        path = r.path
    return onnx_runner(path, "onnx")


def _qdq(src: EvaluateSource) -> Runner:
    path = src.qdq_model()
    return onnx_runner(path, "qdq", qdq_semantics=not is_cpu_int8(path))


def _npu(src: EvaluateSource) -> Runner:
    from ..npu import qnn
    from ..npu.compile import CompileConfig, compile_local

    cfg = src.cfg
    c = compile_local(src.qdq_model(), src.out_dir, CompileConfig(device=cfg.device), src.step)
    ctx, binary = c.artifacts["context_onnx"], c.artifacts["context_binary"]
    sess = qnn.htp_session(ctx, resolve_device(cfg.device))
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    idx = stratified_indices(src.labels, cfg.npu_max_samples, cfg.seed)
    note = None
    if len(idx) < len(src.labels):
        note = (f"{len(idx)} of {len(src.labels)} images only, drawn per class (--npu-samples "
                f"{cfg.npu_max_samples}: the x86-64 HTP simulator takes seconds per image)")
    return Runner("npu", in_batches(lambda x: sess.run(None, {inp.name: x})[0], batch),
                  sha256_file(ctx) + sha256_file(binary), model=binary, indices=idx,
                  group=NPU_GROUP, note=note)


def _device(src: EvaluateSource) -> Runner:
    """One AI Hub inference job per group of ``--samples-per-job`` images, submitted as the
    images stream in (a re-run finds its jobs in the run record)."""
    from ..npu.compile import CompileConfig
    from ..npu.hub import compile_hub, infer_on_device, input_specs

    cfg = src.cfg
    qdq = src.qdq_model()
    device = resolve_device(cfg.device)
    c = compile_hub(qdq, src.out_dir, CompileConfig(device=cfg.device, backend="hub",
                                                    hub_timeout_s=cfg.hub_timeout_s), src.step)
    src.notices.extend(n for n in c.notices if n not in src.notices)
    (input_name,) = input_specs(qdq)
    job_id = c.jobs[0]["id"]

    def run(x: np.ndarray) -> np.ndarray:
        y, _, hub_notices = infer_on_device(job_id, qdq, src.out_dir, device, input_name, x,
                                            cfg.samples_per_job, src.step, cfg.hub_timeout_s)
        src.notices.extend(n for n in hub_notices if n not in src.notices)
        return y

    runner = Runner("device", run, f"{sha256_file(qdq)}:{job_id}:{device.hub_devices[0]}",
                    model=c.artifacts["target_model"], group=cfg.samples_per_job)
    runner.note = f"AI Hub inference jobs of {cfg.samples_per_job} images"
    return runner


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("torch", "PyTorch, float32 (CPU)", False, None, _torch),
    Target("onnx", "ONNX Runtime CPU, float32 export", False, "float", _onnx),
    Target("qdq", "ONNX Runtime CPU, INT8 QDQ model", True, "qdq", _qdq),
    Target("npu", "QNN HTP backend (x86-64 simulator), context binary", True, "qdq", _npu),
    Target("device", "the phone's NPU (AI Hub inference jobs)", True, "qdq", _device),
)}

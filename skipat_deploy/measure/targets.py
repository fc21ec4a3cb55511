"""The targets ``evaluate`` scores, as data: each says where it runs, whether it is an INT8
model, and how it runs its model as a :class:`~skipat_deploy.measure.stream.Runner` of
batches. Adding a target (a GPU, another phone runtime) is one entry in :data:`TARGETS`.

The models are made by the command, on demand (:class:`TargetModels`, implemented by
:mod:`skipat_deploy.commands.evaluate`): the INT8 targets share one QDQ model, quantized once
from the checkpoint (or the ``--model`` given), then run on this CPU (``qdq``), compiled for
the HTP simulator (``npu``) or for the phone on AI Hub (``device``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..models.checkpoint import LoadedCheckpoint, load_weights
from ..devices import resolve_device
from ..export import check_resolution
from ..export.artifact import CPU_INT8, read_model
from ..core.files import sha256_file
from ..models.registry import build_model
from ..images.dataset import stratified_indices
from .stream import Runner, in_batches

Step = Callable[[str], None]
NPU_GROUP = 8  # the simulator takes seconds per image: a cache file every few images


class TargetModels(Protocol):
    """The models the targets run, each made once when a target first asks for it."""

    notices: list[str]
    precision: str | None  # of the QDQ model made from a checkpoint

    def float_onnx(self) -> Path: ...  # the float export

    def qdq_onnx(self) -> Path: ...  # the NPU's QDQ model (or the CPU INT8 model given)

    def npu_context(self) -> tuple[Path, Path]: ...  # EPContext ONNX, QNN context binary

    def hub_compiled(self) -> tuple[str, Path]: ...  # AI Hub compile job id, its target model


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
    models: TargetModels
    notices: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------------------------
# The targets.

def _torch(src: EvaluateSource) -> Runner:
    src.step("building the PyTorch model")
    return torch_runner(src.ckpt, src.resolution)


def int8_runner(path: Path, name: str) -> Runner:
    """An INT8 model on this CPU: the NPU's QDQ model with QDQ semantics, the CPU INT8 model
    with the integer kernels it was made for (:func:`onnx_runner`)."""
    return onnx_runner(path, name, qdq_semantics=read_model(path).kind != CPU_INT8)


def _onnx(src: EvaluateSource) -> Runner:
    return onnx_runner(src.models.float_onnx(), "onnx")


def _qdq(src: EvaluateSource) -> Runner:
    return int8_runner(src.models.qdq_onnx(), "qdq")


def _npu(src: EvaluateSource) -> Runner:
    from ..npu import qnn

    cfg = src.cfg
    ctx, binary = src.models.npu_context()
    sess = qnn.htp_session(ctx, resolve_device(cfg.device))
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    idx = stratified_indices(src.labels, cfg.npu_samples, cfg.seed)
    note = None
    if len(idx) < len(src.labels):
        note = (f"{len(idx)} of {len(src.labels)} images only, drawn per class (--npu-samples "
                f"{cfg.npu_samples}: the x86-64 HTP simulator takes seconds per image)")
    return Runner("npu", in_batches(lambda x: sess.run(None, {inp.name: x})[0], batch),
                  sha256_file(ctx) + sha256_file(binary), model=binary, indices=idx,
                  group=NPU_GROUP, note=note)


def _device(src: EvaluateSource) -> Runner:
    """One AI Hub inference job per group of ``--samples-per-job`` images, submitted as the
    images stream in (a re-run finds its jobs in the run record)."""
    from ..npu.hub import infer_on_device, input_specs

    cfg = src.cfg
    qdq = src.models.qdq_onnx()
    device = resolve_device(cfg.device)
    job_id, target_model = src.models.hub_compiled()
    (input_name,) = input_specs(qdq)

    def run(x: np.ndarray) -> np.ndarray:
        y, _, hub_notices = infer_on_device(job_id, qdq, src.out_dir, device, input_name, x,
                                            cfg.samples_per_job, src.step, cfg.hub_timeout_s)
        src.notices.extend(n for n in hub_notices if n not in src.notices)
        return y

    runner = Runner("device", run, f"{sha256_file(qdq)}:{job_id}:{device.hub_devices[0]}",
                    model=target_model, group=cfg.samples_per_job)
    runner.note = f"AI Hub inference jobs of {cfg.samples_per_job} images"
    return runner


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("torch", "PyTorch, float32 (CPU)", False, None, _torch),
    Target("onnx", "ONNX Runtime CPU, float32 export", False, "float", _onnx),
    Target("qdq", "ONNX Runtime CPU, INT8 QDQ model", True, "qdq", _qdq),
    Target("npu", "QNN HTP backend (x86-64 simulator), context binary", True, "qdq", _npu),
    Target("device", "the phone's NPU (AI Hub inference jobs)", True, "qdq", _device),
)}

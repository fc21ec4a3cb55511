"""INT8 for ONNX Runtime on the CPU: the fallback for phones and laptops without an NPU.

Not the NPU's QDQ model. That one wraps every LayerNorm, softmax, GELU and add in Q/DQ, which
the NPU needs and the CPU runs slower than FP32. Here only the ops with fast integer kernels in
ONNX Runtime (MLAS) are quantized: Linear layers (MatMul / Gemm with a weight, u8 activations by
s8 per-channel weights, float outputs) and the convolutions (patch embedding, SkipAt's 1x1 and
depthwise convolutions, as QLinearConv). Chosen by measurement (SkipAt-T, 1 thread, paired
against FP32): attention's two activation-by-activation MatMuls in u8 made the model slower
than FP32 (1.05x at 384 px: QLinearSoftmax and requantization cost more than the MatMuls save),
so they stay float; SkipAt's depthwise convolution left float between integer 1x1 convolutions
ran slower than in the FP32 graph, so it is u8 too.

Before quantizing, the residual stream is rotated and each head's values too, with ``proj``
absorbing that rotation (:mod:`.rotate`, float-equivalent, folded into the weights), so the
8-bit inputs lose their outlier channels. GEMM outputs stay float (no requantization). Measured
on the real DINOv2 ViT-S/14 and held-out photos: 16.4 dB for the plain recipe (issue 15),
21.2 dB with requantized outputs, 26.8 dB as built here (benchmarks/quant_quality.py --cpu).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..checkpoint import LoadedCheckpoint
from ..errors import UserError
from ..export import DEFAULT_RESOLUTION, INPUT_NAME, METADATA_KEY, ExportConfig, artifact_name, export_onnx
from ..files import sha256_file
from ..lazy import torch
from ..metrics import Quality, quality
from ..staging import staged
from .quantize import DEFAULT_NUM_CALIB, QuantizeConfig, float_reference

CPU_INT8_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class CpuInt8Config:
    resolution: int = DEFAULT_RESOLUTION
    # The residual-stream rotation costs one d x d op per SkipAt Φ (after its channel gate) and
    # one for head-less models, both 8-bit here; it makes the result less dependent on the
    # calibration photos (DINOv2 ViT-S/14: 26.2 -> 26.8 dB, and 24.3 -> 25.9 dB with the
    # calibration and evaluation photo sets swapped).
    rotate: bool = True
    calib_dir: Path | None = None
    eval_dir: Path | None = None
    num_calib: int = DEFAULT_NUM_CALIB  # as the NPU's QDQ model (quantize --target cpu / npu)
    num_eval: int = 16
    seed: int = 0

    @classmethod
    def like(cls, q: QuantizeConfig) -> "CpuInt8Config":
        """The CPU INT8 model's options from ``quantize``'s (``--target cpu``): the same
        calibration and evaluation; rotated unless ``--no-rotate``."""
        return cls(resolution=q.resolution, rotate=q.rotate is not False, calib_dir=q.calib_dir,
                   eval_dir=q.eval_dir, num_calib=q.num_calib, num_eval=q.num_eval, seed=q.seed)

    def check(self) -> None:
        if self.num_calib < 1 or self.num_eval < 1:
            raise UserError("--num-calib and --num-eval must be at least 1")
        for what, folder in (("--calib", self.calib_dir), ("--eval", self.eval_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise UserError(f"{what} folder not found: {folder}")


@dataclass
class CpuInt8Result:
    path: Path  # <stem>_<res>.cpu_int8.onnx
    report: Path  # <stem>_<res>.cpu_int8.json
    resolution: int
    quality: Quality  # vs the float PyTorch model, ONNX Runtime CPU with its integer kernels
    quantized_ops: dict[str, int]  # op type -> nodes quantized
    float_ops: dict[str, int]  # ops left float on purpose (attention MatMul, depthwise Conv)
    rotated: bool
    calib_source: str
    eval_source: str
    size_bytes: int
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    # the files used: relative to --calib / --eval, or the bundled photos' names
    calib_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    sha256: str = ""  # of the INT8 model the report describes

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"], d["report"] = str(self.path), str(self.report)
        return d

    def files(self) -> dict[str, Path]:
        """What was written, by kind (the names ``--json`` lists them under)."""
        return {"cpu_int8_onnx": self.path, "quality_report": self.report}


def cpu_int8_plan(graph: onnx.GraphProto) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Which nodes stay float (names), and counts of quantized / float-on-purpose op types."""
    weights = {i.name for i in graph.initializer}
    keep, quantized, kept = [], {}, {}
    for n in graph.node:
        if n.op_type not in CPU_INT8_OPS:
            continue
        if n.op_type == "MatMul" and n.input[1] not in weights:
            keep.append(n.name)
            what = "MatMul (activation x activation)"
            kept[what] = kept.get(what, 0) + 1
        else:
            quantized[n.op_type] = quantized.get(n.op_type, 0) + 1
    return keep, quantized, kept


def _quantize_static(float_onnx: Path, out: Path, calib: np.ndarray, keep: list[str]) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.samples, None)
            return None if x is None else {INPUT_NAME: x}

    root = logging.getLogger()  # onnxruntime.quantization logs every skipped node at WARNING
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(float_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(CPU_INT8_OPS), nodes_to_exclude=keep,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        # the integer GEMM kernels return float: requantizing each output to
                        # 8 bit would only add noise (DINOv2 ViT-S/14: 23.3 dB with, 26.9 dB
                        # without). Convolutions keep a quantized output: ONNX Runtime's integer
                        # convolution (QLinearConv) needs one, else the Conv runs in float.
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    finally:
        root.setLevel(level)


def run_cpu(path: Path, x: np.ndarray) -> np.ndarray:
    """A model on ONNX Runtime's CPU with every graph optimisation: the integer kernels the CPU
    INT8 model is made for."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def quantize_cpu(ckpt: LoadedCheckpoint, out_dir: str | Path, cfg: CpuInt8Config = CpuInt8Config(),
                 step: Callable[[str], None] = lambda msg: None) -> CpuInt8Result:
    """``ckpt`` at ``cfg.resolution`` as a CPU INT8 ONNX in ``out_dir``, with its quality."""
    t0 = time.perf_counter()
    cfg.check()
    notices: list[str] = []
    calib_set, eval_set, xc, xe, model, ref = float_reference(ckpt, cfg, notices, step)
    res = cfg.resolution
    step("CPU INT8: rotating each head's values" + (" and the residual stream" if cfg.rotate else ""))
    from . import rotate  # as quantize's rewrite: the modules' torch decorators load torch
    from .rewrite import check_float_equivalent

    original, model = model, copy.deepcopy(model)
    with torch.no_grad():
        if cfg.rotate:
            rotate.rotate_residual_stream(model, seed=cfg.seed)
        rotate.rotate_values(model, seed=cfg.seed)
    check_float_equivalent(original, model, torch.from_numpy(xc), "the CPU INT8 model's rotation")
    out_dir = Path(out_dir)
    stem = artifact_name(ckpt, res, 1).removesuffix(".onnx")
    final = out_dir / f"{stem}.cpu_int8.onnx"
    report = out_dir / f"{stem}.cpu_int8.json"
    with staged(out_dir) as stage:  # the model and its report move in together
        tmp = stage.dir
        (float_res,) = export_onnx(ckpt, stage.scratch, ExportConfig(resolutions=(res,)), step,
                                   model=model)
        graph = onnx.load(str(float_res.path), load_external_data=False).graph
        keep, quantized_ops, float_ops = cpu_int8_plan(graph)
        step(f"CPU INT8: onnxruntime.quantization ({sum(quantized_ops.values())} ops in 8 bit)")
        staged_model = tmp / final.name
        _quantize_static(float_res.path, staged_model, xc, keep)
        meta = dict(float_res.metadata)
        meta["quantization"] = dict(precision="int8", target="cpu", backend="onnxruntime",
                                    quantized_ops=quantized_ops, float_ops=float_ops,
                                    rotated=cfg.rotate, calibration=calib_set.source)
        proto = onnx.load(str(staged_model))
        del proto.metadata_props[:]
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))
        onnx.save(proto, str(staged_model))
        step("CPU INT8: quality against the float model")
        q = quality(ref, run_cpu(staged_model, xe), ckpt.arch.num_classes > 0)
        result = CpuInt8Result(final, report, res, q, quantized_ops, float_ops, cfg.rotate,
                               calib_set.source, eval_set.source, staged_model.stat().st_size,
                               notices=notices, calib_files=calib_set.files(),
                               eval_files=eval_set.files(), sha256=sha256_file(staged_model))
        result.seconds = time.perf_counter() - t0
        (tmp / report.name).write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return result

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

The encoding holds on every CPU by default (``--cpu-isa any``): on x86 without VNNI, MLAS's
u8 x s8 kernels add neighbouring products in 16 bit with saturation, so each output channel's
weight scale is chosen so that any two weights the kernel pairs stay within 128 steps together
(:func:`pair_safe_ranges`; DINOv2 ViT-S/14 read 12.5 dB there with plain 8-bit weights, 25.0 dB
so; benchmarks/cpu_int8_encodings.py). ``--cpu-isa vnni`` keeps plain 8-bit weights for x86
with VNNI and ARM. The metadata records the encoding and the host classes it holds on.

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

from ..models.checkpoint import LoadedCheckpoint
from ..devices import CPU_ENCODINGS, CpuEncoding, cpu_host, cpu_int8_warning
from ..core.errors import UserError
from ..export import DEFAULT_RESOLUTION, INPUT_NAME, METADATA_KEY, ExportConfig, artifact_name, export_onnx
from ..core.files import sha256_file
from ..core.lazy import torch
from ..core.metrics import Figure, Quality, quality
from ..core.options import check_declared, option
from ..core.staging import staged
from .quantize import DEFAULT_NUM_CALIB, QuantizeConfig, quantization_samples

CPU_INT8_OPS = ("MatMul", "Gemm", "Conv")


# --cpu-isa: which encoding (devices.CPU_ENCODINGS) the CPU INT8 model is made in. "any" holds on
# every CPU ONNX Runtime runs on; "vnni" keeps 8-bit weights for hosts whose kernels sum u8 x s8
# in 32 bit (x86 with VNNI, ARM), where it is more accurate; on x86 without VNNI it saturates.
CPU_ISAS = {"any": "u8s8_pairs", "vnni": "u8s8"}


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
    # None: "any" (None tells an option given to a command that makes no CPU INT8 model)
    isa: str | None = option(None, "With --target cpu: the CPU INT8 model for any CPU (default) or vnni (x86 with VNNI, and ARM: 8-bit weights, which saturate on x86 without VNNI).", flag="--cpu-isa", choices=tuple(CPU_ISAS), show_default=False)

    @property
    def encoding(self) -> CpuEncoding:
        return CPU_ENCODINGS[CPU_ISAS[self.isa or "any"]]  # None: the default, "any"

    @classmethod
    def like(cls, q: QuantizeConfig, isa: str | None = None) -> "CpuInt8Config":
        """The CPU INT8 model's options from ``quantize``'s (``--target cpu``): the same
        calibration and evaluation; rotated unless ``--no-rotate``."""
        return cls(resolution=q.resolution, rotate=q.rotate is not False, calib_dir=q.calib_dir,
                   eval_dir=q.eval_dir, num_calib=q.num_calib, num_eval=q.num_eval, seed=q.seed,
                   isa=isa)

    def check(self) -> None:
        check_declared(self)
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
    cpu_isa: str = "any"
    encoding: dict = field(default_factory=dict)  # devices.CpuEncoding.to_json()
    host: dict = field(default_factory=dict)  # the CPU the quality was measured on (CpuHost)

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"], d["report"] = str(self.path), str(self.report)
        return d

    def figures(self) -> list[Figure]:
        """What was measured, each figure under its one name, with the CPU it was measured on."""
        where = "cpu (onnxruntime, CPU INT8 vs float PyTorch)"
        out = [Figure("sqnr_vs_float", self.quality.sqnr_db, "dB", where, str(self.path), self.host or None)]
        if self.quality.top1_agreement is not None:
            out.append(Figure("top1_agreement_vs_float", self.quality.top1_agreement, "", where,
                              str(self.path), self.host or None))
        return out

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


def weight_pairs(node: onnx.NodeProto, w: np.ndarray) -> tuple[int, np.ndarray]:
    """(output-channel axis, per channel the largest |w_a| + |w_b| of two weights that ONNX
    Runtime's u8 x s8 kernels multiply-add in one 16-bit step) of ``node``'s weight ``w``. MLAS
    packs a GEMM's weights in reduction order and ``vpmaddubsw`` adds neighbours (2k, 2k + 1);
    a convolution's reduction order is its own (im2col), so any two of its weights count."""
    mags = np.abs(w.astype(np.float64))
    if node.op_type == "Conv":
        flat = mags.reshape(mags.shape[0], -1)
        top = np.sort(flat, axis=1)[:, -2:] if flat.shape[1] > 1 else np.pad(flat, ((0, 0), (0, 1)))
        return 0, top.sum(1)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    per_row = mags if node.op_type == "Gemm" and trans_b else mags.T  # (channels, reduction)
    k = per_row.shape[1] // 2 * 2
    pairs = per_row[:, 0:k:2] + per_row[:, 1:k:2]
    if per_row.shape[1] % 2:  # an odd last weight is paired with zero padding
        pairs = np.concatenate([pairs, per_row[:, -1:]], axis=1)
    return (0 if node.op_type == "Gemm" and trans_b else 1), pairs.max(1)


def pair_safe_ranges(graph: onnx.GraphProto, keep: list[str]) -> dict[str, list[dict]]:
    """Per-channel weight ranges (ONNX Runtime's TensorQuantOverrides) at which no two paired
    weights (:func:`weight_pairs`) exceed 127 steps together, so that with one step of rounding
    each pair stays within 128: 255 x 128 = 32640 fits the 16-bit sums of x86 without VNNI. A
    channel keeps its own range (8-bit, symmetric) where that already holds."""
    from onnx import numpy_helper

    weights = {i.name: i for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type not in CPU_INT8_OPS or n.name in keep or len(n.input) < 2 or n.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[n.input[1]])
        axis, pair = weight_pairs(n, w)
        absmax = np.maximum(np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1), pair)
        absmax = np.maximum(absmax, np.finfo(np.float32).tiny)
        out[n.input[1]] = [{"axis": axis, "rmin": -float(a), "rmax": float(a)} for a in absmax]
    return out


def _quantize_static(float_onnx: Path, out: Path, calib: np.ndarray, keep: list[str],
                     encoding: CpuEncoding, weight_ranges: dict[str, list[dict]] | None) -> None:
    """``weight_ranges``: per-channel weight ranges ONNX Runtime takes instead of its own
    (:func:`pair_safe_ranges`)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    extra = {"TensorQuantOverrides": weight_ranges} if weight_ranges else {}

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
                        per_channel=True, activation_type=types[encoding.activation],
                        weight_type=types[encoding.weight], reduce_range=encoding.weight_bits == 7,
                        calibrate_method=CalibrationMethod.MinMax,
                        # the integer GEMM kernels return float: requantizing each output to
                        # 8 bit would only add noise (DINOv2 ViT-S/14: 23.3 dB with, 26.9 dB
                        # without). Convolutions keep a quantized output: ONNX Runtime's integer
                        # convolution (QLinearConv) needs one, else the Conv runs in float.
                        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"], **extra})
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
                 step: Callable[[str], None] = lambda msg: None,
                 encoding: CpuEncoding | None = None) -> CpuInt8Result:
    """``ckpt`` at ``cfg.resolution`` as a CPU INT8 ONNX in ``out_dir``, with its quality;
    ``encoding`` (benchmarks): one of :data:`CPU_ENCODINGS` instead of ``cfg.isa``'s."""
    t0 = time.perf_counter()
    cfg.check()
    encoding = encoding or cfg.encoding
    isa = cfg.isa or "any"
    host = cpu_host()
    notices: list[str] = []
    calib_set, eval_set, xc, xe, model, ref = quantization_samples(ckpt, cfg, notices, step)
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
        graph = onnx.load(str(float_res.path)).graph  # the plan, and the weights' pair-safe ranges
        keep, quantized_ops, float_ops = cpu_int8_plan(graph)
        step(f"CPU INT8: onnxruntime.quantization ({sum(quantized_ops.values())} ops in 8 bit)")
        staged_model = tmp / final.name
        _quantize_static(float_res.path, staged_model, xc, keep, encoding,
                         pair_safe_ranges(graph, keep) if encoding.pair_limit else None)
        meta = dict(float_res.metadata)
        meta["quantization"] = dict(precision="int8", target="cpu", backend="onnxruntime",
                                    quantized_ops=quantized_ops, float_ops=float_ops,
                                    rotated=cfg.rotate, calibration=calib_set.source,
                                    cpu_isa=isa, encoding=encoding.to_json())
        proto = onnx.load(str(staged_model))
        del proto.metadata_props[:]
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))
        onnx.save(proto, str(staged_model))
        step("CPU INT8: quality against the float model")
        q = quality(ref, run_cpu(staged_model, xe), ckpt.arch.num_classes > 0)
        warning = cpu_int8_warning(meta["quantization"], final.name, host)
        if warning:
            notices.append(warning)
        result = CpuInt8Result(final, report, res, q, quantized_ops, float_ops, cfg.rotate,
                               calib_set.source, eval_set.source, staged_model.stat().st_size,
                               notices=notices, calib_files=calib_set.files(),
                               eval_files=eval_set.files(), sha256=sha256_file(staged_model),
                               cpu_isa=isa, encoding=encoding.to_json(),
                               host=host.to_json())
        result.seconds = time.perf_counter() - t0
        (tmp / report.name).write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return result

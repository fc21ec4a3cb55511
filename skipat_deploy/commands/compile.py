"""``compile``: a QDQ model (or a ``.aimet`` folder for AI Hub) -> compile; from a checkpoint,
load -> quantize -> compile (or load -> export -> compile in float16); several models with
``--share-weights`` into one context binary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..core.errors import UserError
from ..core.staging import staged
from ..export import ExportConfig, export_onnx
from ..models.checkpoint import LoadConfig, LoadedCheckpoint, load
from ..npu.compile import check_model, compile_local, compile_local_many
from ..npu.config import CompileConfig, CompileResult
from ..quant import QuantizeConfig, quantize
from ..quant.quantize import DEFAULT_PRECISION
from ..quant.search import LatencyMeter
from .inputs import model_preprocess, noted, one_source
from .timing import latency_meter

Step = Callable[[str], None]
# `compile --precision fp16` before --fp16 was compile's own option (still accepted, said so)
FP16_RENAMED = "--precision fp16 is now --fp16 (compile's own option); the old spelling still works"


def run(models: list[Path], load_cfg: LoadConfig, out_dir: str | Path, cfg: CompileConfig,
        qcfg: QuantizeConfig, step: Step) -> list[CompileResult]:
    """One model (or the checkpoint's), or with ``cfg.share_weights`` several in one context
    binary: a CompileResult per model."""
    notices = []
    if qcfg.precision == "fp16":
        notices.append(FP16_RENAMED)
        cfg, qcfg = replace(cfg, fp16=True), replace(qcfg, precision=DEFAULT_PRECISION)
    one_source(models, load_cfg.ckpt)
    if cfg.share_weights or len(models) > 1:
        if not cfg.share_weights:
            raise UserError("several --model files are compiled together with "
                            "--share-weights; otherwise compile them one at a time")
        cfg.check()
        model_preprocess(load_cfg, models)
        results = compile_local_many([Path(m) for m in models], out_dir, cfg, step)
    else:
        results = [compile_one(models[0] if models else None, load_cfg, out_dir, cfg, qcfg, step)]
    results[0].notices[:0] = notices
    return results


def compile_one(model: Path | None, load_cfg: LoadConfig, out_dir: str | Path, cfg: CompileConfig,
                qcfg: QuantizeConfig, step: Step) -> CompileResult:
    one_source(model, load_cfg.ckpt)
    model_preprocess(load_cfg, model)
    device = cfg.check()
    qcfg = replace(qcfg, device=cfg.device)
    if cfg.compiler == "hub":
        from ..npu.hub import preflight

        preflight(device)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is not None:
        return compile_model(check_model(model, cfg.compiler, cfg.fp16), out_dir, cfg, step)
    if cfg.fp16:
        loaded = load(load_cfg)
        return noted(export_and_compile(loaded, out_dir, qcfg.resolution, cfg, step), loaded)
    qcfg.check()
    notices: list[str] = []
    meter = latency_meter(qcfg, out_dir, step, notices, cfg)
    loaded = load(load_cfg)
    result = quantize_and_compile(loaded, out_dir, qcfg, cfg, step, meter)
    result.notices[:0] = notices
    return noted(result, loaded)


def quantize_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, qcfg: QuantizeConfig,
                         ccfg: CompileConfig, step: Step, latency: LatencyMeter | None = None) -> CompileResult:
    """Export and quantize ``ckpt``, then compile the QDQ model (locally or on AI Hub). The
    result's ``quantized`` holds the quantization result. One transaction: a failed compile
    leaves none of the quantized files either."""
    with staged(out_dir):
        quantized = quantize(ckpt, out_dir, qcfg, step, latency=latency)
        result = compile_model(quantized.qdq_onnx, out_dir, ccfg, step)
    result.quantized = quantized
    return result


def export_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, resolution: int,
                       ccfg: CompileConfig, step: Step) -> CompileResult:
    """Export ``ckpt`` and compile the float model as it is (``ccfg.fp16``: float16 on the HTP)."""
    with staged(out_dir):
        (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)), step)
        result = compile_model(r.path, out_dir, ccfg, step)
    result.made["float_onnx"] = r.path
    return result


def compile_model(model: Path, out_dir: str | Path, ccfg: CompileConfig, step: Step) -> CompileResult:
    """Compile a QDQ model (or, on AI Hub, a ``.aimet`` folder) with ``ccfg.compiler``."""
    if ccfg.compiler == "hub":
        from ..npu.hub import compile_hub

        return compile_hub(model, out_dir, ccfg, step)
    return compile_local(model, out_dir, ccfg, step)

"""``quantize``: load -> quantize (the NPU's QDQ model, its first held-out samples also run on
the HTP simulator where onnxruntime-qnn is installed), or load -> the CPU INT8 model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core.errors import UserError
from ..models.checkpoint import LoadConfig, load
from ..quant import QuantizeConfig, QuantizeResult, quantize
from ..quant.cpu import CpuInt8Config, CpuInt8Result, quantize_cpu
from .inputs import noted
from .timing import latency_meter

Step = Callable[[str], None]


def run(load_cfg: LoadConfig, out_dir: str | Path, cfg: QuantizeConfig, isa: str | None,
        step: Step) -> QuantizeResult | CpuInt8Result:
    """``cfg.target`` npu: the QDQ model (and, with ``cfg.npu_samples``, the NPU's own figure
    from the HTP simulator); cpu: the CPU INT8 model for ``isa`` from the same options."""
    if cfg.target == "cpu":
        return cpu_int8(load_cfg, out_dir, CpuInt8Config.like(cfg, isa), step)
    if isa is not None:
        raise UserError("--cpu-isa chooses the CPU INT8 model: give it with --target cpu")
    device = cfg.check()
    notices: list[str] = []
    meter = latency_meter(cfg, out_dir, step, notices)
    loaded = load(load_cfg)
    runner = None
    if cfg.npu_samples:
        from ..npu.qnn import qdq_runner

        runner = qdq_runner(device)
    result = quantize(loaded, out_dir, cfg, step, npu=runner, latency=meter)
    result.notices[:0] = notices
    if cfg.npu_samples and runner is None:
        result.notices.append("no NPU figure in the report: onnxruntime-qnn is not installed "
                              "(the HTP simulator runs on Linux x86-64 and Windows)")
    return noted(result, loaded)


def cpu_int8(load_cfg: LoadConfig, out_dir: str | Path, cfg: CpuInt8Config, step: Step) -> CpuInt8Result:
    """The CPU fallback: the CPU INT8 model (:mod:`skipat_deploy.quant.cpu`)."""
    cfg.check()
    loaded = load(load_cfg)
    return noted(quantize_cpu(loaded, out_dir, cfg, step), loaded)

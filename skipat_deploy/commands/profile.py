"""``profile``: a model -> measure; from a checkpoint, load -> the float export and the CPU INT8
model -> CPU timing, or load -> quantize -> AI Hub (compile + profiling job on the phone), or
load -> quantize -> compile here (``compile --backend local``) -> time on the phone over adb."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..core.options import check_declared
from ..core.staging import staged
from ..export import ExportConfig, check_resolution, export_onnx
from ..models.checkpoint import LoadConfig, LoadedCheckpoint, load
from ..measure import adb
from ..measure.compare import resolve_backend
from ..measure.profile import ProfileConfig, ProfileOutcome, profile_cpu_models, profile_hub
from ..npu.compile import check_model, compile_local
from ..npu.config import CompileConfig
from ..quant import QuantizeConfig, quantize
from ..quant.cpu import CpuInt8Config, quantize_cpu
from ..quant.search import LatencyMeter
from .inputs import model_preprocess, noted, one_source
from .timing import latency_meter

Step = Callable[[str], None]

# The quantizer's defaults where latency is the question (profile and compare): the fastest
# flavour, w8a8, not quantize's w8a16 (a latency figure is quoted for it); and calibration
# small enough to keep the command about timing (latency does not depend on the ranges; give
# --num-calib for an INT8 model whose accuracy matters, e.g. compare --eval).
QUANTIZE = QuantizeConfig(precision="w8a8", num_calib=16, num_eval=4)


def run(model: Path | None, load_cfg: LoadConfig, out_dir: str | Path, cfg: ProfileConfig,
        qcfg: QuantizeConfig, step: Step) -> ProfileOutcome:
    """``hub``: compile + a profiling inference job on the phone (the QDQ ``model``, or the
    checkpoint quantized with ``qcfg`` first); ``cpu``: ONNX Runtime here (``model``, or the
    checkpoint's float export beside its CPU INT8 model); ``adb``: compiled here for the phone
    (the QDQ ``model``, or the checkpoint quantized first) and timed on it; ``auto``: adb when
    one phone is attached and an SDK is set, else hub when configured, else cpu."""
    one_source(model, load_cfg.ckpt, "--model")
    model_preprocess(load_cfg, model)
    check_declared(cfg)
    ccfg = cfg.compile_config()
    device = ccfg.check()
    qcfg = replace(qcfg, resolution=cfg.resolution, device=cfg.device)
    notices: list[str] = []
    backend = resolve_backend(cfg.measure_on, notices, cfg.serial, cfg.qairt_sdk)
    if backend == "adb":
        if model is not None:
            check_model(model, "local")
        else:
            qcfg.check()
        # the phone and the SDK, checked before anything is made or pushed
        target = adb.connect(cfg.serial, cfg.qairt_sdk, device)
        out, loaded = ProfileOutcome(backend, device.name, notices=notices), None
        with staged(out_dir):
            if model is None:
                loaded = load(load_cfg)
                check_resolution(cfg.resolution, loaded.arch.patch_size)
                q = quantize(loaded, out_dir, qcfg, step)
                out.made += q.files().items()
                out.notices.extend(q.notices)
                model = q.qdq_onnx
            profile_on_phone(Path(model), Path(out_dir), cfg, target, step, out)
        return out if loaded is None else noted(out, loaded)
    if backend == "hub":
        from ..npu.hub import preflight

        qcfg.check()
        preflight(device)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is None:
        meter = latency_meter(qcfg, out_dir, step, notices, ccfg) if backend == "hub" else None
        loaded = load(load_cfg)
        out = profile_checkpoint(loaded, Path(out_dir), backend, cfg, qcfg, step, meter)
        out.notices[:0] = notices
        return noted(out, loaded)
    out = ProfileOutcome(backend, device.name, notices=notices)
    if backend == "cpu":
        step(f"timing on the CPU ({cfg.runs} runs)")
        out.cpu, out.cpu_ratio = profile_cpu_models([Path(model)], cfg.runs, cfg.warmup, cfg.threads, cfg.budget_s)
        return out
    check_model(model, "hub")
    out.compiled, out.hub = profile_hub(model, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out


def profile_on_phone(qdq: Path, out_dir: Path, cfg: ProfileConfig, target: adb.AdbTarget,
                     step: Step, out: ProfileOutcome) -> None:
    """Compile ``qdq`` here for the phone (the NPU gate of ``compile --backend local``), then
    time it there; the binary, its record and the viewer's logs go into ``out_dir``."""
    with staged(out_dir) as stage:
        c = compile_local(qdq, out_dir, CompileConfig(device=cfg.device), step)
        out.compiled = c
        out.notices.extend(c.notices)
        raw = adb.write_input(qdq, stage.scratch / "input.raw")
        stem = c.artifacts["context_binary"].name.removesuffix(".bin")
        out.phone = adb.time_on_phone(target.phone, target.sdk, {"model": c.artifacts["context_binary"]},
                                      {"model": raw}, stage.path(f"{stem}.adb"), target.built_with,
                                      cfg.rounds, cfg.inferences, step)
        out.notices.extend(out.phone.notices)
        out.phone_logs = out_dir / f"{stem}.adb"


def fp32_and_int8(ckpt: LoadedCheckpoint, out_dir: Path, qcfg: QuantizeConfig, step: Step,
                  made: list | None = None) -> list[Path]:
    """The float export and the CPU INT8 model of it (:mod:`skipat_deploy.quant.cpu`, from the
    quantizer's calibration options ``qcfg``), for CPU timing at ``qcfg.resolution``. ``made``
    collects every file written, as (kind, path)."""
    res = qcfg.resolution
    with staged(out_dir):
        step(f"exporting at {res}px")
        (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(res,)))
        step(f"CPU INT8 at {res}px (integer kernels of ONNX Runtime)")
        q = quantize_cpu(ckpt, out_dir, CpuInt8Config.like(qcfg), step)
    if made is not None:
        made += [("float_onnx", r.path), *q.files().items()]
    return [r.path, q.path]


def profile_checkpoint(ckpt: LoadedCheckpoint, out_dir: Path, backend: str, cfg: ProfileConfig,
                       qcfg: QuantizeConfig, step: Step, latency: LatencyMeter | None = None) -> ProfileOutcome:
    """``cpu`` (``backend``, resolved): time the FP32 export and the CPU INT8 model of it;
    ``hub``: quantize (``qcfg``) and profile the NPU's QDQ model on the phone."""
    ccfg = cfg.compile_config()
    device = ccfg.check()
    check_resolution(cfg.resolution, ckpt.arch.patch_size)
    out = ProfileOutcome(backend, device.name)
    with staged(out_dir):  # the models made are kept only if the profile succeeds
        if backend == "cpu":
            models = fp32_and_int8(ckpt, Path(out_dir), qcfg, step, out.made)
            step(f"timing on the CPU ({cfg.runs} runs)")
            out.cpu, out.cpu_ratio = profile_cpu_models(models, cfg.runs, cfg.warmup, cfg.threads, cfg.budget_s)
            return out
        q = quantize(ckpt, out_dir, qcfg, step, latency=latency)
        out.made += q.files().items()
        out.notices.extend(q.notices)
        out.compiled, out.hub = profile_hub(q.qdq_onnx, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out

"""Chains of stages: what runs when a command starts from a checkpoint.

Each stage takes artifacts that exist and writes new ones (export, quantize, compile, measure,
bundle); this module is the one place that strings them together, so no stage reaches up into
another: compile from a checkpoint (export -> quantize -> compile), profile or compare from
checkpoints (export -> quantize -> measure), an app bundle (export -> quantize -> compile per
device -> manifest).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import calibration
from .bundle import write_manifest
from .checkpoint import LoadedCheckpoint
from .devices import resolve_device
from .errors import UserError
from .export import ExportConfig, artifact_name, check_resolution, export_onnx
from .files import atomic_path
from .measure import compare as cmp
from .measure.profile import ProfileOutcome, profile_cpu_models, profile_hub
from .npu.compile import CompileConfig, CompileResult, compile_local
from .quant import QuantizeConfig, QuantizeResult, quantize
from .quant.ort import quantize_ort

Step = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def quantize_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, qcfg: QuantizeConfig,
                         ccfg: CompileConfig, step: Step = _quiet) -> CompileResult:
    """Export and quantize ``ckpt``, then compile the QDQ model (locally or on AI Hub). The
    result's ``quantized`` holds the quantization result."""
    quantized = quantize(ckpt, out_dir, qcfg, step)
    result = compile_model(quantized.qdq_onnx, out_dir, ccfg, step)
    result.quantized = quantized
    return result


def compile_model(model: Path, out_dir: str | Path, ccfg: CompileConfig,
                  step: Step = _quiet) -> CompileResult:
    """Compile a QDQ model (or, on AI Hub, a ``.aimet`` folder) with ``ccfg.backend``."""
    if ccfg.backend == "hub":
        from .npu.hub import compile_hub

        return compile_hub(model, out_dir, ccfg, step)
    return compile_local(model, out_dir, ccfg, step)


def fp32_and_int8(ckpt: LoadedCheckpoint, resolution: int, precision: str, out_dir: Path,
                  step: Step = _quiet) -> list[Path]:
    """The float export and an INT8 QDQ model of it, for CPU timing (ONNX Runtime quantization
    on four real photos: CPU latency does not depend on the calibration)."""
    if precision not in ("w8a8", "w8a16"):
        raise UserError(f"--precision {precision!r}: CPU timing quantizes with ONNX Runtime, "
                        "use w8a8 or w8a16")
    step(f"exporting at {resolution}px")
    (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)))
    calib, _ = calibration.bundled_photos()
    step(f"quantizing ({precision}, onnxruntime) for the INT8 timing")
    x = calibration.image_batch(calib, resolution, ckpt.spec.preprocess, 4)
    int8 = r.path.with_name(r.path.name.replace(".onnx", f"_{precision}_ort.qdq.onnx"))
    with atomic_path(int8) as tmp:
        quantize_ort(str(r.path), str(tmp), x, r.input_name, 16 if precision == "w8a16" else 8, 1)
    return [r.path, int8]


def profile_checkpoint(ckpt: LoadedCheckpoint, out_dir: Path, backend: str, resolution: int,
                       precision: str, ccfg: CompileConfig, runs: int, warmup: int,
                       threads: int | None, step: Step = _quiet) -> ProfileOutcome:
    """``cpu``: time the FP32 export and an INT8 model of it; ``hub``: quantize (AIMET) and
    profile the QDQ model on the phone."""
    device = ccfg.check()
    check_resolution(resolution, ckpt.arch.patch_size)
    out = ProfileOutcome(backend, device.name)
    if backend == "cpu":
        models = fp32_and_int8(ckpt, resolution, precision, Path(out_dir), step)
        step(f"timing on the CPU ({runs} runs)")
        out.cpu = profile_cpu_models(models, runs, warmup, threads)
        return out
    q = quantize(ckpt, out_dir, QuantizeConfig(resolution=resolution, precision=precision,
                                               device=ccfg.device), step)
    out.notices.extend(q.notices)
    out.compiled, out.hub = profile_hub(q.qdq_onnx, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out


def compare(ckpts: dict[str, LoadedCheckpoint], out_dir: str | Path,
            cfg: cmp.CompareConfig = cmp.CompareConfig(), step: Step = _quiet) -> cmp.CompareResult:
    """ViT against SkipAt (``ckpts``: family -> checkpoint) at every resolution: make the
    models each backend needs, measure them (:mod:`skipat_deploy.measure.compare`), write the
    reports into ``out_dir``."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    notices: list[str] = []
    backend = cmp.resolve_backend(cfg.backend, notices)
    for ck in ckpts.values():
        for r in cfg.resolutions:
            check_resolution(r, ck.arch.patch_size)
    archs = {fam: ck.spec.name for fam, ck in ckpts.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".compare-") as tmp_s:
        tmp = Path(tmp_s)
        if backend == "cpu":
            models = {(fam, res): tuple(fp32_and_int8(ckpts[fam], res, cfg.precision, tmp / fam, step))
                      for res in cfg.resolutions for fam in cmp.FAMILIES}
            rows = cmp.cpu_rows(models, archs, cfg, device, step, notices)
        else:
            qdq = {}
            for res in cfg.resolutions:
                for fam in cmp.FAMILIES:
                    q = quantize(ckpts[fam], out_dir, QuantizeConfig(
                        resolution=res, precision=cfg.precision, backend=cfg.quant_backend,
                        device=cfg.device), step)
                    notices.extend(n for n in q.notices if n not in notices)
                    qdq[(fam, res)] = q.qdq_onnx
            rows = cmp.hub_rows(qdq, archs, out_dir, cfg, device, step, notices)
        result = cmp.CompareResult(backend, device.name, rows, {}, notices)
        result.seconds = time.perf_counter() - t0
        result.files = cmp.write_reports(result, tmp, out_dir)
    return result


@dataclass(frozen=True)
class BundleConfig:
    devices: tuple[str, ...] = ("Galaxy S22",)
    resolutions: tuple[int, ...] = (224,)
    precision: str = "w8a16"
    quant_backend: str = "aimet"
    num_calib: int = 64
    calib_dir: Path | None = None
    zip: bool = False


@dataclass
class BundleResult:
    folders: list[Path]
    manifests: list[Path]
    zips: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def bundle(ckpt: LoadedCheckpoint, out_dir: str | Path, cfg: BundleConfig = BundleConfig(),
           step: Step = _quiet) -> BundleResult:
    """One app bundle folder per resolution in ``out_dir``: quantize, compile for every device,
    describe it all in the manifest. Each folder is built in a temporary place and moved in only
    when complete."""
    t0 = time.perf_counter()
    devices = [resolve_device(d) for d in cfg.devices]
    for r in cfg.resolutions:
        check_resolution(r, ckpt.arch.patch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BundleResult([], [])
    for res in cfg.resolutions:
        name = artifact_name(ckpt, res, 1).removesuffix(".onnx")
        final = out_dir / name
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".bundle-") as tmp_s:
            folder = Path(tmp_s) / name
            q: QuantizeResult = quantize(ckpt, folder, QuantizeConfig(
                resolution=res, precision=cfg.precision, backend=cfg.quant_backend,
                device=devices[0].name, calib_dir=cfg.calib_dir, num_calib=cfg.num_calib), step)
            result.notices.extend(n for n in q.notices if n not in result.notices)
            compiled = []
            for dev in devices:
                step(f"compiling for {dev.name} ({dev.soc})")
                c = compile_local(q.qdq_onnx, folder, CompileConfig(device=dev.name), step)
                c.record.unlink()  # the manifest carries what the record says
                compiled.append(c)
            for extra in (q.report_json, q.layers_csv, q.noise_png):
                if extra is not None:
                    extra.unlink()
            write_manifest(folder, q, compiled)
            if final.exists():
                shutil.rmtree(final)
            shutil.move(str(folder), final)
        result.folders.append(final)
        result.manifests.append(final / "manifest.json")
        if cfg.zip:
            step(f"zipping {final.name}")
            archive = shutil.make_archive(str(final), "zip", root_dir=out_dir, base_dir=final.name)
            result.zips.append(Path(archive))
    result.seconds = time.perf_counter() - t0
    return result

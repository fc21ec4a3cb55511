"""Chains of stages: what runs when a command starts from a checkpoint.

Each stage takes artifacts that exist and writes new ones (export, quantize, compile, measure,
bundle); this module is the one place that strings them together, so no stage reaches up into
another: compile from a checkpoint (export -> quantize -> compile), profile or compare from
checkpoints (export -> quantize -> measure), an app bundle (export -> quantize -> compile per
device -> manifest). Evaluation targets make their own models, one entry each, in
:mod:`skipat_deploy.measure.targets`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import write_manifest
from .checkpoint import LoadedCheckpoint
from .devices import DEFAULT_DEVICE, cpu_host, resolve_device
from .errors import UserError
from .export import DEFAULT_RESOLUTION, ExportConfig, artifact_name, check_resolution, export_onnx
from .measure import compare as cmp
from .measure import evaluate as ev
from .measure.dataset import LabelledImages, stratified_subset
from .measure.stream import run_stream
from .measure.targets import is_cpu_int8, onnx_runner, torch_runner
from .measure.profile import ProfileConfig, ProfileOutcome, profile_cpu_models, profile_hub
from .npu.compile import CompileConfig, CompileResult, compile_local
from .options import option
from .quant import QuantizeConfig, QuantizeResult, quantize
from .quant.quantize import BACKENDS, DEFAULT_NUM_CALIB, DEFAULT_PRECISION, PRECISIONS
from .quant.cpu import CpuInt8Config, quantize_cpu
from .staging import staged

Step = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def quantize_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, qcfg: QuantizeConfig,
                         ccfg: CompileConfig, step: Step = _quiet) -> CompileResult:
    """Export and quantize ``ckpt``, then compile the QDQ model (locally or on AI Hub). The
    result's ``quantized`` holds the quantization result. One transaction: a failed compile
    leaves none of the quantized files either."""
    with staged(out_dir):
        quantized = quantize(ckpt, out_dir, qcfg, step)
        result = compile_model(quantized.qdq_onnx, out_dir, ccfg, step)
    result.quantized = quantized
    return result


def export_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, resolution: int,
                       ccfg: CompileConfig, step: Step = _quiet) -> CompileResult:
    """Export ``ckpt`` and compile the float model as it is (``ccfg.fp16``: float16 on the HTP)."""
    with staged(out_dir):
        (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)), step)
        result = compile_model(r.path, out_dir, ccfg, step)
    result.made["float_onnx"] = r.path
    return result


def compile_model(model: Path, out_dir: str | Path, ccfg: CompileConfig,
                  step: Step = _quiet) -> CompileResult:
    """Compile a QDQ model (or, on AI Hub, a ``.aimet`` folder) with ``ccfg.backend``."""
    if ccfg.backend == "hub":
        from .npu.hub import compile_hub

        return compile_hub(model, out_dir, ccfg, step)
    return compile_local(model, out_dir, ccfg, step)


def fp32_and_int8(ckpt: LoadedCheckpoint, resolution: int, out_dir: Path,
                  step: Step = _quiet, made: list | None = None) -> list[Path]:
    """The float export and the CPU INT8 model of it (:mod:`skipat_deploy.quant.cpu`), for CPU
    timing. ``made`` collects every file written, as (kind, path)."""
    with staged(out_dir):
        step(f"exporting at {resolution}px")
        (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)))
        step(f"CPU INT8 at {resolution}px (integer kernels of ONNX Runtime)")
        q = quantize_cpu(ckpt, out_dir, CpuInt8Config(resolution=resolution, num_calib=16, num_eval=4), step)
    if made is not None:
        made += [("float_onnx", r.path), *q.files().items()]
    return [r.path, q.path]


def profile_checkpoint(ckpt: LoadedCheckpoint, out_dir: Path, backend: str, cfg: ProfileConfig,
                       step: Step = _quiet) -> ProfileOutcome:
    """``cpu`` (``backend``, resolved): time the FP32 export and the CPU INT8 model of it;
    ``hub``: quantize (AIMET) and profile the NPU's QDQ model on the phone."""
    ccfg = cfg.compile_config()
    device = ccfg.check()
    check_resolution(cfg.resolution, ckpt.arch.patch_size)
    out = ProfileOutcome(backend, device.name)
    with staged(out_dir):  # the models made are kept only if the profile succeeds
        if backend == "cpu":
            models = fp32_and_int8(ckpt, cfg.resolution, Path(out_dir), step, out.made)
            step(f"timing on the CPU ({cfg.runs} runs)")
            out.cpu, out.cpu_ratio = profile_cpu_models(models, cfg.runs, cfg.warmup, cfg.threads, cfg.budget_s)
            return out
        q = quantize(ckpt, out_dir, QuantizeConfig(resolution=cfg.resolution, precision=cfg.precision,
                                                   device=cfg.device), step)
        out.made += q.files().items()
        out.notices.extend(q.notices)
        out.compiled, out.hub = profile_hub(q.qdq_onnx, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out


def compare(ckpts: dict[str, LoadedCheckpoint], out_dir: str | Path,
            cfg: cmp.CompareConfig = cmp.CompareConfig(), step: Step = _quiet,
            eval_data: LabelledImages | None = None) -> cmp.CompareResult:
    """ViT against SkipAt (``ckpts``: family -> checkpoint) at every resolution: make the
    models each backend needs, measure them (:mod:`skipat_deploy.measure.compare`), write the
    reports into ``out_dir``. With ``eval_data``, also the top-1 of the float model and of the
    INT8 model (on the CPU) of every row."""
    if eval_data is not None:
        for fam, ck in ckpts.items():
            if ck.info is None:
                raise UserError(f"compare --eval measures accuracy: give a trained --{fam} "
                                "checkpoint (freshly initialised weights have none)")
            if not ck.arch.num_classes:
                raise UserError(f"--{fam} {ck.info.path} has no classification head: top-1 "
                                "needs class logits")
            if eval_data.labels.max() >= ck.arch.num_classes:
                raise UserError(f"--eval labels reach class {eval_data.labels.max()}, outside "
                                f"--{fam}'s {ck.arch.num_classes} classes")
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    notices: list[str] = []
    backend = cmp.resolve_backend(cfg.backend, notices)
    for ck in ckpts.values():
        for r in cfg.resolutions:
            check_resolution(r, ck.arch.patch_size)
    archs = {fam: ck.spec.name for fam, ck in ckpts.items()}
    out_dir = Path(out_dir)
    made: list[tuple[str, Path]] = []  # hub: the models and AI Hub artifacts kept in out_dir
    with staged(out_dir) as stage:  # the reports (and hub models) move in together
        tmp = stage.scratch
        if backend == "cpu":
            models = {(fam, res): tuple(fp32_and_int8(ckpts[fam], res, tmp / fam, step))
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
                    made += q.files().items()
            rows = cmp.hub_rows(qdq, archs, out_dir, cfg, device, step, notices, made)
        if eval_data is not None:
            subset = stratified_subset(eval_data, cfg.eval_samples)
            scores = _float_and_int8_top1(ckpts, models if backend == "cpu" else
                                          {k: (None, v) for k, v in qdq.items()}, subset, tmp, step)
            cmp.add_accuracy(rows, scores)
            notices.append("top-1: the float model and " + cmp.INT8_MODEL[backend]
                           + f", on {eval_data.root} ({eval_data.layout})")
        result = cmp.CompareResult(backend, device.name, rows, {}, notices, made=made)
        if backend == "cpu":
            result.host = cpu_host(cmp.timing_threads(cfg)).to_json()
        result.seconds = time.perf_counter() - t0
        result.files = cmp.write_reports(result, stage.dir, out_dir)
    return result


def _float_and_int8_top1(ckpts: dict[str, LoadedCheckpoint], models: dict[tuple, tuple],
                         data: LabelledImages, tmp: Path, step: Step) -> dict[tuple, tuple]:
    """(float, INT8) top-1 scores per (family, resolution) of ``models`` (float ONNX or None for
    the PyTorch model, INT8 model); one stream of ``data`` per resolution and pre-processing."""
    streams: dict[tuple, list] = {}
    for (fam, res), (float_onnx, int8) in models.items():
        fl = (onnx_runner(float_onnx, f"{fam} {res} float") if float_onnx is not None
              else torch_runner(ckpts[fam], res, f"{fam} {res} float"))
        q = onnx_runner(int8, f"{fam} {res} int8", qdq_semantics=not is_cpu_int8(int8))
        q.reference = fl.name
        streams.setdefault((res, ckpts[fam].spec.preprocess), []).append((fam, float_onnx, fl, q))
    scores = {}
    for (res, pp), rows in streams.items():
        runners = [r for _, _, fl, q in rows for r in (fl, q)]
        streamed = run_stream(data.items, data.root, res, pp, runners, tmp / f"scores-{res}", step)
        for fam, float_onnx, fl, q in rows:
            scores[(fam, res)] = (
                ev.score("torch" if float_onnx is None else "onnx", streamed.tallies[fl.name],
                         data.items, data.root, None if float_onnx is None else str(float_onnx)),
                ev.score("qdq", streamed.tallies[q.name], data.items, data.root, str(q.model)))
    return scores


@dataclass(frozen=True)
class BundleConfig:
    devices: tuple[str, ...] = option((DEFAULT_DEVICE,), "Target phone (repeatable; `skipat-deploy devices`).", flag="--device", repeat=True)
    resolutions: tuple[int, ...] = option((DEFAULT_RESOLUTION,), "Input size in px (repeatable).", flag="--resolution", repeat=True)
    precision: str = option(DEFAULT_PRECISION, "w8a8, w8a16 or mixed.", choices=PRECISIONS)
    quant_backend: str = option("aimet", "aimet (default) or ort.", choices=BACKENDS)
    calib_dir: Path | None = option(None, "Calibration image folder (default: bundled photos).", flag="--calib")
    num_calib: int = option(DEFAULT_NUM_CALIB, "Calibration samples.")
    zip: bool = option(False, "Also write <folder>.zip.", flag="--zip")

    def check(self) -> None:
        """Each device's quantization options, before any work (each Hexagon version gets a
        QDQ model of its own)."""
        for d in self.devices:
            QuantizeConfig(precision=self.precision, backend=self.quant_backend, device=d,
                           calib_dir=self.calib_dir).check()


@dataclass
class BundleResult:
    folders: list[Path]
    manifests: list[Path]
    zips: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def bundle(ckpt: LoadedCheckpoint, out_dir: str | Path, cfg: BundleConfig = BundleConfig(),
           step: Step = _quiet) -> BundleResult:
    """One app bundle folder per resolution in ``out_dir``: quantize once per Hexagon version
    among the devices, compile each device from the model of its version, add the CPU INT8
    model as the fallback where there is no NPU, describe it all in the manifest. The folders
    (and with ``cfg.zip`` their zips) are built in a stage and moved in together when all are
    complete: an existing bundle of the same name is replaced only then."""
    t0 = time.perf_counter()
    devices = [resolve_device(d) for d in cfg.devices]
    for r in cfg.resolutions:
        check_resolution(r, ckpt.arch.patch_size)
    out_dir = Path(out_dir)
    result = BundleResult([], [])
    with staged(out_dir) as stage:
        for res in cfg.resolutions:
            name = artifact_name(ckpt, res, 1).removesuffix(".onnx")
            folder = stage.path(name)
            quantized: dict[str, QuantizeResult] = {}  # Hexagon version -> its QDQ model
            compiled = []
            for dev in devices:
                if dev.hexagon not in quantized:
                    step(f"quantizing for Hexagon {dev.hexagon}")
                    quantized[dev.hexagon] = quantize(ckpt, folder, QuantizeConfig(
                        resolution=res, precision=cfg.precision, backend=cfg.quant_backend,
                        device=dev.name, calib_dir=cfg.calib_dir, num_calib=cfg.num_calib), step)
                q = quantized[dev.hexagon]
                step(f"compiling for {dev.name} ({dev.soc})")
                c = compile_local(q.qdq_onnx, folder, CompileConfig(device=dev.name), step)
                c.record.unlink()  # the manifest carries what the record says
                compiled.append(c)
            for made in [*quantized.values(), *compiled]:
                result.notices.extend(n for n in made.notices if n not in result.notices)
            cpu = quantize_cpu(ckpt, folder, CpuInt8Config(resolution=res, calib_dir=cfg.calib_dir,
                                                           num_calib=min(cfg.num_calib, 32)), step)
            for extra in [*(f for q in quantized.values()
                             for f in (q.report_json, q.layers_csv, q.noise_png)), cpu.report]:
                if extra is not None:
                    extra.unlink()
            write_manifest(folder, list(quantized.values()), compiled, cpu)
            result.folders.append(stage.final(folder))
            result.manifests.append(stage.final(folder) / "manifest.json")
            if cfg.zip:
                step(f"zipping {name}")
                archive = shutil.make_archive(str(folder), "zip", root_dir=stage.dir, base_dir=name)
                result.zips.append(stage.final(archive))
    result.seconds = time.perf_counter() - t0
    return result

"""Chains of stages: what runs when a command starts from a checkpoint.

Each stage takes artifacts that exist and writes new ones (export, quantize, compile, measure,
bundle); this module is the one place that strings them together, so no stage reaches up into
another: compile from a checkpoint (export -> quantize -> compile), profile or compare from
checkpoints (export -> quantize -> measure), an app bundle (export -> quantize -> compile per
device -> manifest).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .bundle import write_manifest
from .checkpoint import LoadedCheckpoint, load_weights
from .devices import resolve_device
from .errors import UserError
from .files import model_stem
from .export import ExportConfig, artifact_name, check_resolution, export_onnx, read_metadata
from .measure import compare as cmp
from .measure import evaluate as ev
from .measure.dataset import LabelledImages, stratified_indices, stratified_subset
from .measure.profile import ProfileOutcome, profile_cpu_models, profile_hub
from .npu.compile import CompileConfig, CompileResult, compile_local
from .quant import QuantizeConfig, QuantizeResult, quantize
from .models.registry import build_model
from .preprocess import Preprocess
from .quant.cpu import CpuInt8Config, quantize_cpu

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


def export_and_compile(ckpt: LoadedCheckpoint, out_dir: str | Path, resolution: int,
                       ccfg: CompileConfig, step: Step = _quiet) -> CompileResult:
    """Export ``ckpt`` and compile the float model as it is (``ccfg.fp16``: float16 on the HTP)."""
    (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)), step)
    return compile_model(r.path, out_dir, ccfg, step)


def compile_model(model: Path, out_dir: str | Path, ccfg: CompileConfig,
                  step: Step = _quiet) -> CompileResult:
    """Compile a QDQ model (or, on AI Hub, a ``.aimet`` folder) with ``ccfg.backend``."""
    if ccfg.backend == "hub":
        from .npu.hub import compile_hub

        return compile_hub(model, out_dir, ccfg, step)
    return compile_local(model, out_dir, ccfg, step)


def fp32_and_int8(ckpt: LoadedCheckpoint, resolution: int, precision: str, out_dir: Path,
                  step: Step = _quiet) -> list[Path]:
    """The float export and the CPU INT8 model of it (:mod:`skipat_deploy.quant.cpu`), for CPU
    timing. ``precision`` is the NPU's and does not apply here."""
    step(f"exporting at {resolution}px")
    (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)))
    step(f"CPU INT8 at {resolution}px (integer kernels of ONNX Runtime)")
    q = quantize_cpu(ckpt, out_dir, CpuInt8Config(resolution=resolution, num_calib=16, num_eval=4), step)
    return [r.path, q.path]


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
        out.cpu, out.cpu_ratio = profile_cpu_models(models, runs, warmup, threads)
        return out
    q = quantize(ckpt, out_dir, QuantizeConfig(resolution=resolution, precision=precision,
                                               device=ccfg.device), step)
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
        if eval_data is not None:
            subset = stratified_subset(eval_data, cfg.eval_samples)
            decoded: dict[tuple, ev.EvalImages] = {}  # one decode per resolution and pre-processing
            scores = {}
            for (fam, res), row_models in (models if backend == "cpu" else qdq).items():
                float_model, int8 = row_models if backend == "cpu" else (None, row_models)
                pp = ckpts[fam].spec.preprocess
                if (res, pp) not in decoded:
                    decoded[(res, pp)] = ev.load_images(subset, res, pp, step)
                scores[(fam, res)] = _float_and_int8_top1(ckpts[fam], res, float_model, int8,
                                                          decoded[(res, pp)], step)
            cmp.add_accuracy(rows, scores)
            notices.append("top-1: the float model and the INT8 model sent to the "
                           + ("CPU" if backend == "cpu" else "NPU (run here as QDQ on the CPU)")
                           + f", on {eval_data.root} ({eval_data.layout})")
        result = cmp.CompareResult(backend, device.name, rows, {}, notices)
        result.seconds = time.perf_counter() - t0
        result.files = cmp.write_reports(result, tmp, out_dir)
    return result


def _torch_model(ck: LoadedCheckpoint, resolution: int):
    grid = check_resolution(resolution, ck.arch.patch_size)
    return load_weights(build_model(ck.arch, grid), ck.state_dict, ck.spec.name).eval()


def _float_and_int8_top1(ck: LoadedCheckpoint, resolution: int, float_onnx: Path | None, int8: Path,
                         images: ev.EvalImages, step: Step):
    if float_onnx is not None:
        name, y = "onnx", ev.onnx_logits(float_onnx, images, "onnx", step)
    else:
        name, y = "torch", ev.torch_logits(_torch_model(ck, resolution), images, step)
    fl = ev.score(name, y, images.labels, None if float_onnx is None else str(float_onnx), 0.0)
    q = ev.score("qdq", ev.onnx_logits(int8, images, "qdq", step), images.labels, str(int8), 0.0, y)
    return fl, q


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
    """One app bundle folder per resolution in ``out_dir``: quantize once per Hexagon version
    among the devices, compile each device from the model of its version, add the CPU INT8
    model as the fallback where there is no NPU, describe it all in the manifest. Each folder
    is built in a temporary place and moved in only when complete."""
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


def evaluate(source: LoadedCheckpoint | Path, data: LabelledImages, out_dir: str | Path,
             cfg: ev.EvaluateConfig = ev.EvaluateConfig(), step: Step = _quiet) -> ev.EvaluateResult:
    """Top-1 / top-5 of a classifier on ``data`` for every target of ``cfg``: from a checkpoint,
    the float model (``torch``), its export (``onnx``), the INT8 model (``qdq``), its context
    binary on the HTP simulator (``npu``) and on the phone (``device``), each made into
    ``out_dir`` first; from an exported ONNX (``source`` a path), that model (and, when it is
    quantized, its compiled forms). Reports go into ``out_dir``; ``gate_failures`` lists INT8
    targets over ``cfg.max_top1_drop``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    notices = list(data.notices)
    if isinstance(source, LoadedCheckpoint):
        if not source.arch.num_classes:
            raise UserError(f"{source.spec.name} has no classification head (it outputs features): "
                            "top-1 needs class logits; evaluate a classifier checkpoint")
        num_classes, pp, resolution = source.arch.num_classes, source.spec.preprocess, cfg.resolution
        check_resolution(resolution, source.arch.patch_size)
        name = source.info.path if source.info else f"{source.spec.name} (freshly initialised)"
        stem = artifact_name(source, resolution, 1).removesuffix(".onnx")
        quantized, meta = False, {}
        cfg = replace(cfg, targets=cfg.targets or ("torch", "onnx", "qdq"))
    else:
        meta = _onnx_metadata(source)
        num_classes, pp, resolution = meta["num_classes"], Preprocess.from_dict(meta["preprocess"]), meta["resolution"]
        if not num_classes:
            raise UserError(f"{source.name} has no classification head (it outputs features): "
                            "top-1 needs class logits; evaluate a classifier")
        name, stem = str(source), model_stem(source)
        quantized = _is_quantized(source)
        allowed = ("qdq", "npu", "device") if quantized else ("onnx",)
        cfg = replace(cfg, targets=cfg.targets or allowed[:1])
        wrong = [t for t in cfg.targets if t not in allowed]
        if wrong:
            kind = "an INT8 QDQ model" if quantized else "a float model"
            raise UserError(f"--model {source.name} is {kind}: it can be evaluated as "
                            f"{', '.join(allowed)}, not {', '.join(wrong)} (those need --ckpt)")
    cfg.check()
    labels = data.labels
    if labels.max() >= num_classes:
        bad = next(p for p, c in data.items if c >= num_classes)
        raise UserError(f"label {labels.max()} ({bad}) is outside the model's {num_classes} classes")
    if cfg.max_top1_drop is not None and not any(t in ev.FLOAT_TARGETS for t in cfg.targets):
        raise UserError("--max-top1-drop compares with the float model: add torch or onnx to "
                        "--targets (with --ckpt)")

    subset = stratified_subset(data, cfg.num_samples, cfg.seed)
    images = ev.load_images(subset, resolution, pp, step)
    if images.unreadable:
        notices.append(f"{len(images.unreadable)} unreadable image(s) skipped (first: "
                       f"{images.unreadable[0][1]})")
    ordered = [t for t in ev.TARGETS if t in cfg.targets]
    reference_name = next((t for t in ordered if t in ev.FLOAT_TARGETS), None)
    scores: dict[str, ev.TargetScore] = {}
    logits: dict[str, np.ndarray] = {}
    qdq = None if isinstance(source, LoadedCheckpoint) else source
    for target in ordered:
        t1 = time.perf_counter()
        note, model_path, idx = None, None, None
        if target == "torch":
            step("building the PyTorch model")
            y = ev.torch_logits(_torch_model(source, resolution), images, step)
        elif target == "onnx":
            if isinstance(source, LoadedCheckpoint):
                (r,) = export_onnx(source, out_dir, ExportConfig(resolutions=(resolution,)), step)
                model_path = r.path
            else:
                model_path = source
            y = ev.onnx_logits(model_path, images, "onnx", step)
        else:
            if qdq is None:
                q = quantize(source, out_dir, QuantizeConfig(
                    resolution=resolution, precision=cfg.precision, backend=cfg.quant_backend,
                    device=cfg.device, calib_dir=cfg.calib_dir), step)
                notices.extend(n for n in q.notices if n not in notices)
                qdq = q.qdq_onnx
            t1 = time.perf_counter()  # the INT8 model's own time, not the quantization's
            if target == "qdq":
                model_path, y = qdq, ev.onnx_logits(qdq, images, "qdq", step)
            elif target == "npu":
                c = compile_local(qdq, out_dir, CompileConfig(device=cfg.device), step)
                model_path = c.artifacts["context_binary"]
                t1 = time.perf_counter()
                idx = stratified_indices(images.labels, cfg.npu_max_samples, cfg.seed)
                y = ev.npu_logits(c.artifacts["context_onnx"], cfg.device, images.take(idx), len(idx), step)
                if len(y) < len(images):
                    note = (f"{len(y)} of {len(images)} images only, drawn per class (--npu-samples "
                            f"{cfg.npu_max_samples}: the x86-64 HTP simulator takes seconds per image)")
            else:
                from .npu.hub import infer_on_device, input_specs

                ccfg = CompileConfig(device=cfg.device, backend="hub", hub_timeout_s=cfg.hub_timeout_s)
                c = compile_model(qdq, out_dir, ccfg, step)
                notices.extend(c.notices)
                model_path = c.artifacts["target_model"]
                x = np.concatenate(list(images.batches(1)))
                (input_name,) = input_specs(qdq)
                y, _, hub_notices = infer_on_device(
                    c.jobs[0]["id"], qdq, out_dir, resolve_device(cfg.device), input_name, x,
                    cfg.samples_per_job, step, cfg.hub_timeout_s)
                notices.extend(hub_notices)
                note = f"{math.ceil(len(x) / cfg.samples_per_job)} AI Hub inference job(s)"
        logits[target] = y
        ref = logits.get(reference_name) if target != reference_name else None
        scored = images if idx is None else images.take(idx)
        ref = ref if ref is None or idx is None else ref[idx]
        scores[target] = ev.score(target, y, scored.labels, None if model_path is None else str(model_path),
                                  time.perf_counter() - t1, ref, note, scored.files())
    result = ev.EvaluateResult(
        model=name, dataset=str(data.root), layout=data.layout, resolution=resolution,
        precision=((meta.get("quantization") or {}).get("precision") if quantized
                   else cfg.precision if any(t in ev.INT8_TARGETS for t in ordered) else None),
        reference=reference_name, targets=[scores[t] for t in ordered], num_images=len(images),
        unreadable=images.unreadable, max_top1_drop=cfg.max_top1_drop, notices=notices)
    ev.apply_gate(result)
    result.seconds = time.perf_counter() - t0
    ev.write_reports(result, out_dir, stem)
    return result


def _onnx_metadata(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    meta = read_metadata(path)
    if not meta:
        raise UserError(f"{path} was not exported by skipat-deploy (no pre-processing metadata): "
                        "evaluate its checkpoint with --ckpt")
    return meta


def _is_quantized(path: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)

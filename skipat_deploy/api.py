"""Python API: what the CLI calls, one function per command.

Each function turns plain arguments into the stage's config, loads the checkpoint, and calls
the stage (given an artifact) or :mod:`skipat_deploy.pipeline` (given a checkpoint).

    >>> from skipat_deploy import api
    >>> results = api.export("skipat_tiny.t7", "export/", resolutions=(224, 384))
    >>> api.predict(results[0].path, ["cat.jpg"])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .export import ExportConfig, ExportResult, export_onnx, fresh_checkpoint
from .measure.predict import Prediction, predict
from .preprocess import GIVEN, PreprocessOverrides

DEFAULT_ARCH = "skipat_tiny_patch16"

__all__ = ["bundle", "compare", "compile", "compile_shared", "cpu_int8", "evaluate", "export", "load", "predict", "profile", "quantize", "verify", "ExportResult", "Prediction", "PreprocessOverrides", "DEFAULT_ARCH"]


def load(
    ckpt: str | Path | None,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
) -> LoadedCheckpoint:
    """A checkpoint's weights and model spec; freshly initialised ``arch`` (default
    SkipAt-T) when ``ckpt`` is None. The spec's pre-processing, which every later stage reads
    (calibration, evaluation, export metadata, bundle manifest), is ``preprocess`` where given,
    else what the checkpoint carries, else the spec's default (a guess, marked as one)."""
    if ckpt is None:
        from dataclasses import replace

        loaded = fresh_checkpoint(arch or DEFAULT_ARCH)
        spec = loaded.spec
        if skip_indices is not None:
            spec = replace(spec, arch=spec.arch.with_skip_indices(skip_indices))
        if preprocess:
            spec = replace(spec, preprocess=preprocess.check().apply_to(spec.preprocess, GIVEN))
        return replace(loaded, spec=spec)
    return load_checkpoint(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)


def _noted(result, *loaded: LoadedCheckpoint):
    """``result`` with the notice that a checkpoint's pre-processing is (partly) the registry's
    guess added. Freshly initialised weights get none: their outputs mean nothing anyway."""
    notes = [n for c in loaded if c.info is not None
             and (n := c.spec.preprocess.guess_notice(c.spec.name))]
    result.notices.extend(n for n in dict.fromkeys(notes) if n not in result.notices)
    return result


def _check_preprocess(preprocess: PreprocessOverrides | None, model=None) -> None:
    """Given pre-processing checked before any slow work; refused with an exported ``model``,
    whose metadata holds its own."""
    if preprocess is not None:
        if model is not None:
            preprocess.refuse_for(model)
        preprocess.check()


def export(
    ckpt: str | Path | None,
    out_dir: str | Path = "export",
    resolutions: tuple[int, ...] = (224, 384),
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    batch_size: int = 1,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
) -> list[ExportResult]:
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
    config = ExportConfig(resolutions=tuple(resolutions), batch_size=batch_size)
    return [_noted(r, loaded) for r in export_onnx(loaded, out_dir, config, step)]


def quantize(
    ckpt: str | Path | None,
    out_dir: str | Path = "export",
    resolution: int = 224,
    precision: str = "w8a16",
    backend: str = "aimet",
    device: str = "Galaxy S22",
    calib_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    num_calib: int = 64,
    num_eval: int = 16,
    adaround: bool = False,
    qat_steps: int = 0,
    rotate: bool | None = None,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """Quantize for the NPU; returns a :class:`skipat_deploy.quant.QuantizeResult`."""
    from .quant import QuantizeConfig, quantize as run_quantize

    cfg = QuantizeConfig(
        resolution=resolution, precision=precision, backend=backend, device=device,
        calib_dir=Path(calib_dir) if calib_dir else None,
        eval_dir=Path(eval_dir) if eval_dir else None, num_calib=num_calib, num_eval=num_eval,
        adaround=adaround, qat_steps=qat_steps, rotate=rotate,
    )
    cfg.check()
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
    return _noted(run_quantize(loaded, out_dir, cfg, step), loaded)


def cpu_int8(
    ckpt: str | Path | None,
    out_dir: str | Path = "export",
    resolution: int = 224,
    calib_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    num_calib: int = 32,
    num_eval: int = 16,
    rotate: bool = True,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """The CPU fallback: an INT8 ONNX for ONNX Runtime's integer kernels
    (:mod:`skipat_deploy.quant.cpu`); returns a CpuInt8Result."""
    from .quant.cpu import CpuInt8Config, quantize_cpu

    cfg = CpuInt8Config(resolution=resolution, rotate=rotate,
                        calib_dir=Path(calib_dir) if calib_dir else None,
                        eval_dir=Path(eval_dir) if eval_dir else None,
                        num_calib=num_calib, num_eval=num_eval)
    cfg.check()
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
    return _noted(quantize_cpu(loaded, out_dir, cfg, step), loaded)


def compile(
    model: str | Path | None = None,
    out_dir: str | Path = "export",
    device: str = "Galaxy S22",
    backend: str = "local",
    target_runtime: str = "qnn_context_binary",
    qairt_version: str | None = None,
    num_check: int = 2,
    hub_timeout_s: float = 3600.0,
    ckpt: str | Path | None = None,
    resolution: int = 224,
    precision: str = "w8a16",
    quant_backend: str = "aimet",
    calib_dir: str | Path | None = None,
    num_calib: int = 64,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """Compile ``model`` (a QDQ ONNX, or for AI Hub also a ``.aimet`` folder) for ``device``'s
    NPU; without ``model``, export and quantize ``ckpt`` (None: freshly initialised ``arch``)
    first. Returns a :class:`skipat_deploy.npu.CompileResult` (its ``quantized`` holds the
    quantization result when that ran)."""
    from .npu.compile import CompileConfig, check_model

    _check_preprocess(preprocess, model)
    fp16 = precision == "fp16"
    cfg = CompileConfig(device=device, backend=backend, target_runtime=target_runtime,
                        qairt_version=qairt_version, num_check=num_check,
                        hub_timeout_s=hub_timeout_s, fp16=fp16)
    device_profile = cfg.check()
    if backend == "hub":
        from .npu.hub import preflight

        preflight(device_profile)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is None and fp16:
        from .pipeline import export_and_compile

        loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
        return _noted(export_and_compile(loaded, out_dir, resolution, cfg, step), loaded)
    if model is None:
        from .pipeline import quantize_and_compile
        from .quant import QuantizeConfig

        qcfg = QuantizeConfig(resolution=resolution, precision=precision, backend=quant_backend,
                              device=device, calib_dir=Path(calib_dir) if calib_dir else None,
                              num_calib=num_calib)
        qcfg.check()
        loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
        return _noted(quantize_and_compile(loaded, out_dir, qcfg, cfg, step), loaded)
    from .pipeline import compile_model

    return compile_model(check_model(model, backend, fp16), out_dir, cfg, step)


def compile_shared(
    models: list[str | Path],
    out_dir: str | Path = "export",
    device: str = "Galaxy S22",
    num_check: int = 2,
    fp16: bool = False,
    step: Callable[[str], None] = lambda msg: None,
):
    """Compile several models (the 224 and 384 px QDQ models of one checkpoint) into ONE
    weight-shared context binary for ``device``; one CompileResult per model."""
    from .npu.compile import CompileConfig, compile_local_many

    return compile_local_many([Path(m) for m in models], out_dir,
                              CompileConfig(device=device, num_check=num_check, fp16=fp16), step)


def profile(
    model: str | Path | None = None,
    out_dir: str | Path = "profiles/results",
    device: str = "Galaxy S22",
    backend: str = "auto",
    ckpt: str | Path | None = None,
    resolution: int = 224,
    precision: str = "w8a8",
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    hub_timeout_s: float = 3600.0,
    arch: str | None = None,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """Latency of one model. ``hub``: compile + a profiling inference job on the phone (a QDQ
    ``model``, or ``ckpt`` quantized at ``precision`` first); ``cpu``: ONNX Runtime here (the
    given ``model``, or the FP32 and INT8 exports of ``ckpt``); ``auto``: hub when configured.
    Returns a :class:`skipat_deploy.measure.profile.ProfileOutcome`."""
    from .measure.compare import resolve_backend
    from .measure.profile import ProfileOutcome, profile_cpu_models, profile_hub
    from .npu.compile import CompileConfig, check_model

    _check_preprocess(preprocess, model)
    ccfg = CompileConfig(device=device, backend="hub", hub_timeout_s=hub_timeout_s)
    dev = ccfg.check()
    notices: list[str] = []
    backend = resolve_backend(backend, notices)
    if backend == "hub":
        from .npu.hub import preflight

        preflight(dev)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is None:
        from .pipeline import profile_checkpoint

        loaded = load(ckpt, arch, allow_code_execution=allow_code_execution, preprocess=preprocess)
        out = profile_checkpoint(loaded, Path(out_dir), backend, resolution, precision, ccfg,
                                 runs, warmup, threads, step)
        out.notices[:0] = notices
        return _noted(out, loaded)
    out = ProfileOutcome(backend, dev.name, notices=notices)
    if backend == "cpu":
        step(f"timing on the CPU ({runs} runs)")
        out.cpu, out.cpu_ratio = profile_cpu_models([Path(model)], runs, warmup, threads)
        return out
    check_model(model, "hub")
    out.compiled, out.hub = profile_hub(model, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out


def compare(
    vit: str | Path | None = None,
    skipat: str | Path | None = None,
    out_dir: str | Path = "profiles/results",
    resolutions: tuple[int, ...] = (224, 384),
    device: str = "Galaxy S22",
    backend: str = "auto",
    precision: str = "w8a8",
    quant_backend: str = "aimet",
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    hub_timeout_s: float = 3600.0,
    eval_dir: str | Path | None = None,
    eval_labels: str | Path | None = None,
    eval_samples: int | None = None,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """ViT-T vs SkipAt at every resolution; without checkpoints, freshly initialised official
    architectures (latency does not depend on weight values). With ``eval_dir`` (a labelled
    dataset, as for :func:`evaluate`), float and INT8 top-1 beside the latency. Returns a
    :class:`skipat_deploy.measure.compare.CompareResult`."""
    from .devices import resolve_device
    from .measure.compare import DEFAULT_ARCHS, CompareConfig, resolve_backend
    from .pipeline import compare as run_compare

    _check_preprocess(preprocess)
    if resolve_backend(backend, []) == "hub":
        from .npu.hub import preflight

        preflight(resolve_device(device))  # say what is wrong with AI Hub before any work
    ckpts = {}
    for fam, path in (("vit", vit), ("skipat", skipat)):
        ckpts[fam] = load(path, None if path else DEFAULT_ARCHS[fam],
                          allow_code_execution=allow_code_execution, preprocess=preprocess)
        if ckpts[fam].arch.family != fam:
            from .errors import ArchitectureError

            raise ArchitectureError(f"--{fam} {path} holds a {ckpts[fam].arch.family} model, not {fam}")
    cfg = CompareConfig(resolutions=tuple(resolutions), device=device, backend=backend,
                        precision=precision, quant_backend=quant_backend, runs=runs,
                        warmup=warmup, threads=threads, hub_timeout_s=hub_timeout_s,
                        eval_samples=eval_samples)
    eval_data = None
    if eval_dir is not None:
        from .measure.dataset import load_dataset

        eval_data = load_dataset(eval_dir, eval_labels)
    return _noted(run_compare(ckpts, out_dir, cfg, step, eval_data), *ckpts.values())


def evaluate(
    data: str | Path,
    ckpt: str | Path | None = None,
    model: str | Path | None = None,
    labels: str | Path | None = None,
    out_dir: str | Path = "export/evaluate",
    targets: tuple[str, ...] | None = None,
    resolution: int = 224,
    precision: str = "w8a16",
    quant_backend: str = "aimet",
    device: str = "Galaxy S22",
    num_samples: int | None = None,
    seed: int = 0,
    npu_samples: int = 64,
    samples_per_job: int = 250,
    max_top1_drop: float | None = None,
    calib_dir: str | Path | None = None,
    hub_timeout_s: float = 3600.0,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """Top-1 / top-5 on the labelled images in ``data`` (:mod:`skipat_deploy.measure.dataset`
    says which layouts), for a checkpoint (default targets torch, onnx, qdq) or an exported
    ``model`` (its own kind). Returns an :class:`skipat_deploy.measure.evaluate.EvaluateResult`;
    its ``gate_failures`` name the INT8 targets over ``max_top1_drop`` points."""
    from .errors import UserError
    from .measure.dataset import load_dataset
    from .measure.evaluate import EvaluateConfig
    from .pipeline import evaluate as run_evaluate

    if (ckpt is None) == (model is None):
        raise UserError("give --ckpt (a trained classifier checkpoint) or --model (an exported "
                        ".onnx / .qdq.onnx), not " + ("both" if ckpt else "neither"))
    _check_preprocess(preprocess, model)
    cfg = EvaluateConfig(
        targets=tuple(targets or ()), resolution=resolution, precision=precision,
        quant_backend=quant_backend, device=device, num_samples=num_samples, seed=seed,
        npu_max_samples=npu_samples, samples_per_job=samples_per_job, max_top1_drop=max_top1_drop,
        calib_dir=Path(calib_dir) if calib_dir else None, hub_timeout_s=hub_timeout_s)
    cfg.check()
    if "device" in cfg.targets:
        from .devices import resolve_device
        from .npu.hub import preflight

        preflight(resolve_device(device))  # say what is wrong with AI Hub before quantizing
    if ckpt is not None:
        from .quant import QuantizeConfig

        QuantizeConfig(resolution=resolution, precision=precision, backend=quant_backend,
                       device=device, calib_dir=cfg.calib_dir).check()
    dataset = load_dataset(data, labels)
    if model is not None:
        return run_evaluate(Path(model), dataset, out_dir, cfg, step)
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
    return _noted(run_evaluate(loaded, dataset, out_dir, cfg, step), loaded)


def bundle(
    ckpt: str | Path | None,
    out_dir: str | Path = "export/bundle",
    devices: tuple[str, ...] = ("Galaxy S22",),
    resolutions: tuple[int, ...] = (224,),
    precision: str = "w8a16",
    quant_backend: str = "aimet",
    calib_dir: str | Path | None = None,
    num_calib: int = 64,
    zip: bool = False,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
    step: Callable[[str], None] = lambda msg: None,
):
    """An app bundle per resolution (:func:`skipat_deploy.pipeline.bundle`); returns a
    BundleResult."""
    from .pipeline import BundleConfig, bundle as run_bundle
    from .quant import QuantizeConfig

    for d in devices:  # each Hexagon version gets a QDQ model of its own
        QuantizeConfig(precision=precision, backend=quant_backend, device=d,
                       calib_dir=Path(calib_dir) if calib_dir else None).check()
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution, preprocess)
    cfg = BundleConfig(devices=tuple(devices), resolutions=tuple(resolutions), precision=precision,
                       quant_backend=quant_backend, num_calib=num_calib,
                       calib_dir=Path(calib_dir) if calib_dir else None, zip=zip)
    return _noted(run_bundle(loaded, out_dir, cfg, step), loaded)


def hub_devices() -> tuple[list[dict], list[str]]:
    """AI Hub's live devices beside the local table (:func:`skipat_deploy.devices.merge_live`)."""
    from .devices import merge_live
    from .npu.hub import hub_catalog

    return merge_live(hub_catalog())


def verify(folder: str | Path):
    """Check an app bundle; returns a VerifyResult or raises BundleError naming the file."""
    from .bundle import verify as run_verify

    return run_verify(folder)

"""Python API: what the CLI calls, one function per command.

Each function takes its stage's config (and :class:`LoadConfig` where it loads a checkpoint),
loads the checkpoint and calls the stage (given an artifact) or :mod:`skipat_deploy.pipeline`
(given a checkpoint). Keyword options fill those configs (field or flag name:
``api.quantize(ckpt, out, precision="w8a8", num_calib=8)``); a name no config declares is
refused. The defaults live in the configs only.

    >>> from skipat_deploy import api
    >>> results = api.export("skipat_tiny.t7", "export/", resolutions=(224, 384))
    >>> api.predict(results[0].path, ["cat.jpg"])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import DEFAULT_HEAD_DIM, LoadConfig, LoadedCheckpoint, load_checkpoint
from .export import ExportConfig, ExportResult, export_onnx, fresh_checkpoint
from .measure.predict import PredictConfig, Prediction
from .options import fill, refuse_unknown
from .preprocess import GIVEN, PreprocessOverrides

DEFAULT_ARCH = "skipat_tiny_patch16"
Step = Callable[[str], None]

__all__ = ["bundle", "compare", "compile", "compile_all", "compile_shared", "cpu_int8", "evaluate", "export", "inspect", "load", "predict", "profile", "quantize", "verify", "ExportResult", "LoadConfig", "Prediction", "PreprocessOverrides", "DEFAULT_ARCH"]


def _quiet(msg: str) -> None:
    pass


def _configs(where: str, options: dict[str, Any], *configs):
    """``configs`` filled with the keyword ``options`` each declares; any left over refused."""
    filled = [fill(c, options) for c in configs]
    refuse_unknown(options, where)
    return filled if len(filled) > 1 else filled[0]


def _load_config(ckpt, load: LoadConfig | None, options: dict[str, Any]) -> LoadConfig:
    """The loading options: ``load``, the ``ckpt`` argument, ``preprocess=`` and the loading
    keywords among ``options`` (taken from them)."""
    load = (load or LoadConfig()).with_preprocess(options.pop("preprocess", None))
    load = fill(load, options)
    return replace(load, ckpt=ckpt) if ckpt is not None else load


def load(ckpt: str | Path | None, arch: str | None = None,
         preprocess: PreprocessOverrides | None = None, config: LoadConfig | None = None,
         **options) -> LoadedCheckpoint:
    """A checkpoint's weights and model spec; freshly initialised ``arch`` (default
    SkipAt-T) when there is no checkpoint. The spec's pre-processing, which every later stage
    reads (calibration, evaluation, export metadata, bundle manifest), is the given one where
    given, else what the checkpoint carries, else the spec's default (a guess, marked as one).
    ``options``: :class:`LoadConfig` fields."""
    options["preprocess"] = preprocess
    cfg = _load_config(ckpt, config, options)
    refuse_unknown(options, "load")
    return _load(replace(cfg, arch=arch) if arch is not None else cfg)


def _load(cfg: LoadConfig) -> LoadedCheckpoint:
    given = cfg.check().preprocess
    if cfg.ckpt is None:
        loaded = fresh_checkpoint(cfg.arch or DEFAULT_ARCH)
        spec = loaded.spec
        if cfg.head_dim not in (spec.arch.head_dim, DEFAULT_HEAD_DIM):  # the default: the arch's own
            from .errors import ArchitectureError

            if spec.arch.embed_dim % cfg.head_dim:
                raise ArchitectureError(f"{spec.name}'s embed dim {spec.arch.embed_dim} is not a "
                                        f"multiple of --head-dim {cfg.head_dim}")
            spec = replace(spec, arch=replace(spec.arch, num_heads=spec.arch.embed_dim // cfg.head_dim))
        if cfg.skip_indices is not None:
            spec = replace(spec, arch=spec.arch.with_skip_indices(cfg.skip_indices))
        if given:
            spec = replace(spec, preprocess=given.apply_to(spec.preprocess, GIVEN))
        return replace(loaded, spec=spec)
    return load_checkpoint(cfg.ckpt, cfg.arch, cfg.skip_indices, cfg.head_dim,
                           cfg.allow_code_execution, given)


def _noted(result, *loaded: LoadedCheckpoint):
    """``result`` with the notice that a checkpoint's pre-processing is (partly) the registry's
    guess added. Freshly initialised weights get none: their outputs mean nothing anyway."""
    notes = [n for c in loaded if c.info is not None
             and (n := c.spec.preprocess.guess_notice(c.spec.name))]
    result.notices.extend(n for n in dict.fromkeys(notes) if n not in result.notices)
    return result


def _for_model(load: LoadConfig, model) -> None:
    """An exported ``model`` carries its own pre-processing (its metadata): given values are
    refused rather than ignored, and checked before any slow work."""
    pp = load.check().preprocess
    if model is not None:
        pp.refuse_for(model if not isinstance(model, (list, tuple)) else model[0])


def export(ckpt: str | Path | None = None, out_dir: str | Path = "export",
           config: ExportConfig | None = None, load: LoadConfig | None = None,
           step: Step = _quiet, **options) -> list[ExportResult]:
    """Static-grid ONNX per resolution (:class:`ExportConfig`)."""
    lcfg = _load_config(ckpt, load, options)
    cfg = _configs("export", options, config or ExportConfig())
    loaded = _load(lcfg)
    return [_noted(r, loaded) for r in export_onnx(loaded, out_dir, cfg, step)]


def quantize(ckpt: str | Path | None = None, out_dir: str | Path = "export",
             config=None, load: LoadConfig | None = None, step: Step = _quiet, cpu=None,
             **options):
    """Quantize for the NPU (:class:`skipat_deploy.quant.QuantizeConfig`); returns a
    QuantizeResult. Where onnxruntime-qnn is installed, the first ``npu_samples`` held-out
    samples also run on the HTP simulator: the result's ``npu`` (0: off). ``target="cpu"``:
    the CPU INT8 model instead, from the same options and ``cpu``'s ``isa``
    (:class:`skipat_deploy.quant.cpu.CpuInt8Config`, :func:`cpu_int8`)."""
    from .quant import QuantizeConfig, quantize as run_quantize
    from .quant.cpu import CpuInt8Config

    lcfg = _load_config(ckpt, load, options)
    cfg, cpu = _configs("quantize", options, config or QuantizeConfig(), cpu or CpuInt8Config())
    if cfg.target == "cpu":
        return cpu_int8(None, out_dir, CpuInt8Config.like(cfg, cpu.isa), lcfg, step)
    if cpu.isa is not None:
        from .errors import UserError

        raise UserError("--cpu-isa chooses the CPU INT8 model: give it with --target cpu")
    device_profile = cfg.check()
    loaded = _load(lcfg)
    runner = None
    if cfg.npu_samples:
        from .npu.qnn import qdq_runner

        runner = qdq_runner(device_profile)
    result = run_quantize(loaded, out_dir, cfg, step, npu=runner)
    if cfg.npu_samples and runner is None:
        result.notices.append("no NPU figure in the report: onnxruntime-qnn is not installed "
                              "(the HTP simulator runs on Linux x86-64 and Windows)")
    return _noted(result, loaded)


def cpu_int8(ckpt: str | Path | None = None, out_dir: str | Path = "export", config=None,
             load: LoadConfig | None = None, step: Step = _quiet, **options):
    """The CPU fallback: the CPU INT8 model, an ONNX for ONNX Runtime's integer kernels
    (:mod:`skipat_deploy.quant.cpu`, :class:`CpuInt8Config`); returns a CpuInt8Result."""
    from .quant.cpu import CpuInt8Config, quantize_cpu

    lcfg = _load_config(ckpt, load, options)
    cfg = _configs("cpu_int8", options, config or CpuInt8Config())
    cfg.check()
    loaded = _load(lcfg)
    return _noted(quantize_cpu(loaded, out_dir, cfg, step), loaded)


def _compile_configs(where: str, config, quantize, options: dict[str, Any]):
    """compile's two configs from keywords: ``backend``, ``device`` ... the compiler's;
    ``quant_backend`` and ``precision`` (``fp16``: the float model on the HTP) the quantizer's;
    ``resolution``, ``calib_dir``, ``num_calib`` ... the quantizer's too."""
    from .npu.compile import CompileConfig
    from .quant import QuantizeConfig

    cfg = fill(config or CompileConfig(), options)
    q = fill(quantize or QuantizeConfig(device=cfg.device), options, rename={"quant_backend": "backend"})
    refuse_unknown(options, where)
    if q.precision == "fp16":
        cfg = replace(cfg, fp16=True)
    return cfg, replace(q, device=cfg.device)


def compile(model: str | Path | None = None, out_dir: str | Path = "export", config=None,
            quantize=None, load: LoadConfig | None = None, ckpt: str | Path | None = None,
            step: Step = _quiet, **options):
    """Compile ``model`` (a QDQ ONNX, or for AI Hub also a ``.aimet`` folder) for the
    device's NPU (:class:`skipat_deploy.npu.compile.CompileConfig`); without ``model``, export
    and quantize the checkpoint (``quantize``: a QuantizeConfig; None: freshly initialised
    ``arch``) first. Returns a :class:`skipat_deploy.npu.CompileResult` (its ``quantized``
    holds the quantization result when that ran)."""
    from .npu.compile import check_model

    lcfg = _load_config(ckpt, load, options)
    cfg, qcfg = _compile_configs("compile", config, quantize, options)
    if model is not None and lcfg.ckpt is not None:
        from .errors import UserError

        raise UserError("give --model (a quantized ONNX) or --ckpt, not both")
    _for_model(lcfg, model)
    device_profile = cfg.check()
    if cfg.backend == "hub":
        from .npu.hub import preflight

        preflight(device_profile)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is None and cfg.fp16:
        from .pipeline import export_and_compile

        loaded = _load(lcfg)
        return _noted(export_and_compile(loaded, out_dir, qcfg.resolution, cfg, step), loaded)
    if model is None:
        from .pipeline import quantize_and_compile

        qcfg.check()
        loaded = _load(lcfg)
        return _noted(quantize_and_compile(loaded, out_dir, qcfg, cfg, step), loaded)
    from .pipeline import compile_model

    return compile_model(check_model(model, cfg.backend, cfg.fp16), out_dir, cfg, step)


def compile_shared(models: list[str | Path], out_dir: str | Path = "export", config=None,
                   step: Step = _quiet, **options):
    """Compile several models (the 224 and 384 px QDQ models of one checkpoint) into ONE
    weight-shared context binary for the device; one CompileResult per model."""
    from .npu.compile import CompileConfig, compile_local_many

    cfg = _configs("compile_shared", options, config or CompileConfig())
    return compile_local_many([Path(m) for m in models], out_dir, cfg, step)


def compile_all(models: list[str | Path], out_dir: str | Path = "export", config=None,
                quantize=None, load: LoadConfig | None = None, step: Step = _quiet, **options):
    """``compile`` as the command runs it: one model (or the checkpoint's), or with
    ``share_weights`` several in one context binary; a list of CompileResults."""
    from .errors import UserError

    load = _load_config(None, load, options)
    cfg, qcfg = _compile_configs("compile_all", config, quantize, options)
    if models and load.ckpt is not None:
        raise UserError("give --model (a quantized ONNX) or --ckpt, not both")
    if cfg.share_weights or len(models) > 1:
        if not cfg.share_weights:
            raise UserError("several --model files are compiled together with "
                            "--share-weights; otherwise compile them one at a time")
        cfg.check()
        _for_model(load, models)
        return compile_shared(models, out_dir, cfg, step)
    return [compile(models[0] if models else None, out_dir, cfg, qcfg, load, step=step)]


def profile(model: str | Path | None = None, out_dir: str | Path = "profiles/results",
            config=None, load: LoadConfig | None = None, ckpt: str | Path | None = None,
            step: Step = _quiet, **options):
    """Latency of one model (:class:`skipat_deploy.measure.profile.ProfileConfig`). ``hub``:
    compile + a profiling inference job on the phone (the NPU's QDQ ``model``, or the
    checkpoint quantized at ``precision`` first); ``cpu``: ONNX Runtime here (the given
    ``model``, or the FP32 export and the CPU INT8 model of the checkpoint); ``auto``: hub when
    configured. Returns a :class:`skipat_deploy.measure.profile.ProfileOutcome`."""
    from .measure.compare import resolve_backend
    from .measure.profile import ProfileConfig, ProfileOutcome, profile_cpu_models, profile_hub
    from .npu.compile import check_model

    lcfg = _load_config(ckpt, load, options)
    cfg = _configs("profile", options, config or ProfileConfig())
    if model is not None and lcfg.ckpt is not None:
        from .errors import UserError

        raise UserError("give --model or --ckpt, not both")
    _for_model(lcfg, model)
    ccfg = cfg.compile_config()
    dev = ccfg.check()
    notices: list[str] = []
    backend = resolve_backend(cfg.backend, notices)
    if backend == "hub":
        from .npu.hub import preflight

        preflight(dev)  # unreachable, bad token, unknown device: now, not after quantizing
    if model is None:
        from .pipeline import profile_checkpoint

        loaded = _load(lcfg)
        out = profile_checkpoint(loaded, Path(out_dir), backend, cfg, step)
        out.notices[:0] = notices
        return _noted(out, loaded)
    out = ProfileOutcome(backend, dev.name, notices=notices)
    if backend == "cpu":
        step(f"timing on the CPU ({cfg.runs} runs)")
        out.cpu, out.cpu_ratio = profile_cpu_models([Path(model)], cfg.runs, cfg.warmup, cfg.threads, cfg.budget_s)
        return out
    check_model(model, "hub")
    out.compiled, out.hub = profile_hub(model, out_dir, ccfg, step)
    out.notices.extend(out.hub.notices)
    return out


def compare(vit: str | Path | None = None, skipat: str | Path | None = None,
            out_dir: str | Path = "profiles/results", config=None,
            load: LoadConfig | None = None, step: Step = _quiet, **options):
    """ViT-T vs SkipAt at every resolution (:class:`skipat_deploy.measure.compare.CompareConfig`);
    without checkpoints, freshly initialised official architectures (latency does not depend
    on weight values). With ``eval_dir`` (a labelled dataset, as for :func:`evaluate`), float
    and INT8 top-1 beside the latency. Returns a CompareResult."""
    from .devices import resolve_device
    from .measure.compare import DEFAULT_ARCHS, CompareConfig, resolve_backend
    from .pipeline import compare as run_compare

    lcfg = _load_config(None, load, options)
    cfg = _configs("compare", options, config or CompareConfig())
    lcfg.check()
    if resolve_backend(cfg.backend, []) == "hub":
        from .npu.hub import preflight

        preflight(resolve_device(cfg.device))  # say what is wrong with AI Hub before any work
    ckpts = {}
    for fam, path in (("vit", vit), ("skipat", skipat)):
        # --skip-indices describe the SkipAt model; a ViT has no skipped blocks
        ckpts[fam] = _load(replace(lcfg, ckpt=path, arch=None if path else DEFAULT_ARCHS[fam],
                                   skip_indices=lcfg.skip_indices if fam == "skipat" else None))
        if ckpts[fam].arch.family != fam:
            from .errors import ArchitectureError

            raise ArchitectureError(f"--{fam} {path} holds a {ckpts[fam].arch.family} model, not {fam}")
    eval_data = None
    if cfg.eval_dir is not None:
        from .measure.dataset import load_dataset

        eval_data = load_dataset(cfg.eval_dir, cfg.eval_labels)
    return _noted(run_compare(ckpts, out_dir, cfg, step, eval_data), *ckpts.values())


def evaluate(data: str | Path, model: str | Path | None = None, labels: str | Path | None = None,
             out_dir: str | Path = "export/evaluate", config=None,
             load: LoadConfig | None = None, step: Step = _quiet, **options):
    """Top-1 / top-5 on the labelled images in ``data`` (:mod:`skipat_deploy.measure.dataset`
    says which layouts), for a checkpoint (``ckpt=``; default targets torch, onnx, qdq) or an
    exported ``model`` (its own kind), :class:`skipat_deploy.measure.evaluate.EvaluateConfig`.
    Returns an EvaluateResult; its ``gate_failures`` name the INT8 targets over
    ``max_top1_drop`` points."""
    from .errors import UserError
    from .measure.dataset import load_dataset
    from .measure.evaluate import EvaluateConfig
    from .measure.evaluate import evaluate as run_evaluate

    lcfg = _load_config(None, load, options)
    cfg = _configs("evaluate", options, config or EvaluateConfig())
    cfg = replace(cfg, targets=tuple(cfg.targets or ()),
                  calib_dir=Path(cfg.calib_dir) if cfg.calib_dir else None)
    ckpt = lcfg.ckpt
    if (ckpt is None) == (model is None):
        raise UserError("give --ckpt (a trained classifier checkpoint) or --model (an exported "
                        ".onnx / .qdq.onnx), not " + ("both" if ckpt else "neither"))
    _for_model(lcfg, model)
    cfg.check()
    if "device" in cfg.targets:
        from .devices import resolve_device
        from .npu.hub import preflight

        preflight(resolve_device(cfg.device))  # say what is wrong with AI Hub before quantizing
    if ckpt is not None:
        from .quant import QuantizeConfig

        QuantizeConfig(resolution=cfg.resolution, precision=cfg.precision,
                       backend=cfg.quant_backend, device=cfg.device, calib_dir=cfg.calib_dir).check()
    dataset = load_dataset(data, labels)
    if model is not None:
        return run_evaluate(Path(model), dataset, out_dir, cfg, step)
    loaded = _load(lcfg)
    return _noted(run_evaluate(loaded, dataset, out_dir, cfg, step), loaded)


def bundle(ckpt: str | Path | None = None, out_dir: str | Path = "export/bundle", config=None,
           load: LoadConfig | None = None, step: Step = _quiet, **options):
    """An app bundle per resolution (:func:`skipat_deploy.pipeline.bundle`,
    :class:`skipat_deploy.pipeline.BundleConfig`); returns a BundleResult."""
    from .pipeline import BundleConfig, bundle as run_bundle

    lcfg = _load_config(ckpt, load, options)
    cfg = _configs("bundle", options, config or BundleConfig())
    cfg.check()
    loaded = _load(lcfg)
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


def predict(model: str | Path, images: list[str | Path], config: PredictConfig | None = None,
            **options) -> list[Prediction]:
    """Classify ``images`` with an exported model on the CPU (:class:`PredictConfig`)."""
    from .measure.predict import predict as run_predict

    cfg = _configs("predict", options, config or PredictConfig())
    return run_predict(model, images, top_k=cfg.top_k)


def inspect(
    model: str | Path,
    out_dir: str | Path = "inspect",
    config=None,
    step: Callable[[str], None] = lambda msg: None,
):
    """Float, CPU QDQ and NPU (HTP simulator) side by side, tensor by tensor, for a QDQ
    ``model``; ``config`` an :class:`skipat_deploy.measure.inspect.InspectConfig` (default:
    its defaults). Returns an InspectResult; its ``files`` are the CSV, JSON and PNG."""
    from .measure.inspect import InspectConfig, inspect as run_inspect

    return run_inspect(model, out_dir, config or InspectConfig(), step)

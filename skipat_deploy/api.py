"""Python API: what the CLI calls, one function per command.

Each function fills the configs of its command from keyword options (field or flag name:
``api.quantize(ckpt, out, precision="w8a8", num_calib=8)``; a name no config declares is
refused) and runs the command (:mod:`skipat_deploy.commands`, where stages are chained). The
defaults live in the configs only, and where a command differs, in its module.

    >>> from skipat_deploy import api
    >>> results = api.export("skipat_tiny.t7", "export/", resolutions=(224, 384))
    >>> api.predict(results[0].path, ["cat.jpg"])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core.options import fill, refuse_unknown
from .export import ExportConfig, ExportResult
from .images.preprocess import PreprocessOverrides
from .measure.predict import PredictConfig, Prediction
from .models.checkpoint import DEFAULT_ARCH, LoadConfig, LoadedCheckpoint

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
    from .models.checkpoint import load as load_stage

    options["preprocess"] = preprocess
    cfg = _load_config(ckpt, config, options)
    refuse_unknown(options, "load")
    return load_stage(replace(cfg, arch=arch) if arch is not None else cfg)


def export(ckpt: str | Path | None = None, out_dir: str | Path = "export",
           config: ExportConfig | None = None, load: LoadConfig | None = None,
           step: Step = _quiet, **options) -> list[ExportResult]:
    """Static-grid ONNX per resolution (:class:`ExportConfig`)."""
    from .commands import export as command

    lcfg = _load_config(ckpt, load, options)
    return command.run(lcfg, out_dir, _configs("export", options, config or ExportConfig()), step)


def quantize(ckpt: str | Path | None = None, out_dir: str | Path = "export",
             config=None, load: LoadConfig | None = None, step: Step = _quiet, cpu=None,
             **options):
    """Quantize for the NPU (:class:`skipat_deploy.quant.QuantizeConfig`); returns a
    QuantizeResult. Where onnxruntime-qnn is installed, the first ``npu_samples`` held-out
    samples also run on the HTP simulator: the result's ``npu`` (0: off). ``target="cpu"``:
    the CPU INT8 model instead, from the same options and ``cpu``'s ``isa``
    (:class:`skipat_deploy.quant.cpu.CpuInt8Config`, :func:`cpu_int8`)."""
    from .commands import quantize as command
    from .quant import QuantizeConfig
    from .quant.cpu import CpuInt8Config

    lcfg = _load_config(ckpt, load, options)
    cfg, cpu = _configs("quantize", options, config or QuantizeConfig(), cpu or CpuInt8Config())
    return command.run(lcfg, out_dir, cfg, cpu.isa, step)


def cpu_int8(ckpt: str | Path | None = None, out_dir: str | Path = "export", config=None,
             load: LoadConfig | None = None, step: Step = _quiet, **options):
    """The CPU fallback: the CPU INT8 model, an ONNX for ONNX Runtime's integer kernels
    (:mod:`skipat_deploy.quant.cpu`, :class:`CpuInt8Config`); returns a CpuInt8Result."""
    from .commands import quantize as command
    from .quant.cpu import CpuInt8Config

    lcfg = _load_config(ckpt, load, options)
    return command.cpu_int8(lcfg, out_dir, _configs("cpu_int8", options, config or CpuInt8Config()), step)


def _compile_configs(where: str, config, quantize, options: dict[str, Any]):
    """compile's two configs from keywords: ``backend``, ``device``, ``fp16`` ... the
    compiler's; ``precision``, ``quant_backend``, ``resolution``, ``calib_dir``, ``num_calib``
    ... the quantizer's (used with a checkpoint)."""
    from .npu.config import CompileConfig
    from .quant import QuantizeConfig

    cfg = fill(config or CompileConfig(), options)
    q = fill(quantize or QuantizeConfig(device=cfg.device), options)
    refuse_unknown(options, where)
    return cfg, q


def compile(model: str | Path | None = None, out_dir: str | Path = "export", config=None,
            quantize=None, load: LoadConfig | None = None, ckpt: str | Path | None = None,
            step: Step = _quiet, **options):
    """Compile ``model`` (a QDQ ONNX, or for AI Hub also a ``.aimet`` folder) for the
    device's NPU (:class:`skipat_deploy.npu.config.CompileConfig`); without ``model``, export
    and quantize the checkpoint (``quantize``: a QuantizeConfig; None: freshly initialised
    ``arch``) first. Returns a :class:`skipat_deploy.npu.CompileResult` (its ``quantized``
    holds the quantization result when that ran)."""
    from .commands import compile as command

    lcfg = _load_config(ckpt, load, options)
    cfg, qcfg = _compile_configs("compile", config, quantize, options)
    return command.run([model] if model is not None else [], lcfg, out_dir, cfg, qcfg, step)[0]


def compile_shared(models: list[str | Path], out_dir: str | Path = "export", config=None,
                   step: Step = _quiet, **options):
    """Compile several models (the 224 and 384 px QDQ models of one checkpoint) into ONE
    weight-shared context binary for the device; one CompileResult per model."""
    from .npu.compile import compile_local_many
    from .npu.config import CompileConfig

    cfg = _configs("compile_shared", options, config or CompileConfig())
    return compile_local_many([Path(m) for m in models], out_dir, cfg, step)


def compile_all(models: list[str | Path], out_dir: str | Path = "export", config=None,
                quantize=None, load: LoadConfig | None = None, step: Step = _quiet, **options):
    """``compile`` as the command runs it: one model (or the checkpoint's), or with
    ``share_weights`` several in one context binary; a list of CompileResults."""
    from .commands import compile as command

    lcfg = _load_config(None, load, options)
    cfg, qcfg = _compile_configs("compile_all", config, quantize, options)
    return command.run([Path(m) for m in models], lcfg, out_dir, cfg, qcfg, step)


def profile(model: str | Path | None = None, out_dir: str | Path = "profiles/results",
            config=None, load: LoadConfig | None = None, ckpt: str | Path | None = None,
            step: Step = _quiet, quantize=None, **options):
    """Latency of one model (:class:`skipat_deploy.measure.profile.ProfileConfig`). ``hub``:
    compile + a profiling inference job on the phone (the NPU's QDQ ``model``, or the
    checkpoint quantized first: ``quantize``, a QuantizeConfig, default
    :data:`skipat_deploy.commands.profile.QUANTIZE`); ``cpu``: ONNX Runtime here (the given
    ``model``, or the FP32 export and the CPU INT8 model of the checkpoint); ``auto``: hub when
    configured. Returns a :class:`skipat_deploy.measure.profile.ProfileOutcome`."""
    from .commands import profile as command
    from .measure.profile import ProfileConfig

    lcfg = _load_config(ckpt, load, options)
    cfg, qcfg = _configs("profile", options, config or ProfileConfig(), quantize or command.QUANTIZE)
    return command.run(Path(model) if model is not None else None, lcfg, out_dir, cfg, qcfg, step)


def compare(vit: str | Path | None = None, skipat: str | Path | None = None,
            out_dir: str | Path = "profiles/results", config=None,
            load: LoadConfig | None = None, step: Step = _quiet, quantize=None, **options):
    """ViT-T vs SkipAt at every resolution (:class:`skipat_deploy.measure.compare.CompareConfig`;
    ``quantize``: how the INT8 models are made, default
    :data:`skipat_deploy.commands.compare.QUANTIZE`); without checkpoints, freshly initialised
    official architectures (latency does not depend on weight values). With ``eval_dir`` (a
    labelled dataset, as for :func:`evaluate`), float and INT8 top-1 beside the latency.
    Returns a CompareResult."""
    from .commands import compare as command
    from .measure.compare import CompareConfig

    lcfg = _load_config(None, load, options)
    cfg, qcfg = _configs("compare", options, config or CompareConfig(), quantize or command.QUANTIZE)
    return command.run(_path(vit), _path(skipat), out_dir, cfg, qcfg, lcfg, step)


def evaluate(data: str | Path, model: str | Path | None = None,
             out_dir: str | Path = "export/evaluate", config=None,
             load: LoadConfig | None = None, step: Step = _quiet, quantize=None, **options):
    """Top-1 / top-5 on the labelled images in ``data`` (:mod:`skipat_deploy.images.dataset`
    says which layouts), for a checkpoint (``ckpt=``; default targets torch, onnx, qdq; the INT8
    targets quantized with ``quantize``, a QuantizeConfig) or an exported ``model`` (its own
    kind), :class:`skipat_deploy.measure.evaluate.EvaluateConfig`. Returns an EvaluateResult;
    its ``gate_failures`` name the INT8 targets over ``max_top1_drop`` points."""
    from .commands import evaluate as command
    from .measure.evaluate import EvaluateConfig
    from .quant import QuantizeConfig

    lcfg = _load_config(None, load, options)
    cfg, qcfg = _configs("evaluate", options, config or EvaluateConfig(), quantize or QuantizeConfig())
    return command.run(Path(data), _path(model), out_dir, cfg, qcfg, lcfg, step)


def bundle(ckpt: str | Path | None = None, out_dir: str | Path = "export/bundle", config=None,
           load: LoadConfig | None = None, step: Step = _quiet, quantize=None, **options):
    """An app bundle per resolution (:mod:`skipat_deploy.commands.bundle`, its
    :class:`~skipat_deploy.commands.bundle.BundleConfig`, and ``quantize``, a QuantizeConfig);
    returns a BundleResult."""
    from .commands import bundle as command
    from .quant import QuantizeConfig

    lcfg = _load_config(ckpt, load, options)
    cfg, qcfg = _configs("bundle", options, config or command.BundleConfig(), quantize or QuantizeConfig())
    return command.run(lcfg, out_dir, cfg, qcfg, step)


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


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

"""Command line: parses options, calls the Python API, shows the result. No logic of its own.

Each option is declared once, as a field of its stage's config (:mod:`skipat_deploy.core.options`);
the commands' parameters are generated from those fields (:mod:`skipat_deploy.params`) and
what a command prints is :mod:`skipat_deploy.render`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import api, process, render
from .commands import compare as compare_command, profile as profile_command
from .commands.bundle import BundleConfig
from .models.checkpoint import LoadConfig
from .export import ExportConfig
from .measure.compare import CompareConfig
from .measure.evaluate import EvaluateConfig
from .measure.inspect import InspectConfig
from .measure.predict import PredictConfig
from .measure.profile import ProfileConfig
from .models.checkpoint import LoadConfig
from .npu.config import CompileConfig
from .params import F, Input, command, out
from .quant import QuantizeConfig
from .quant.cpu import CpuInt8Config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Export, quantize, compile and profile ViT / SkipAt models for Snapdragon NPUs.",
)
run_command = process.run_command


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"skipat-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass  # the app's own help describes it; the callback only holds --version

CKPT = F(LoadConfig, "ckpt")
ARCH = F(LoadConfig, "arch skip_indices head_dim")
SAFETY = F(LoadConfig, "allow_code_execution")
PREPROCESS = F(LoadConfig, "mean std crop_pct interpolation")
LOAD_REST = (ARCH, SAFETY, PREPROCESS)
# What every command that quantizes takes of the quantizer's options (QuantizeConfig's fields:
# one declaration, the same flag, help and meaning in every command).
QUANTIZER = "precision min_sqnr cost quant_backend calib_dir num_calib"


@command(app, "export", [CKPT, F(ExportConfig, "resolutions"), out(api.export, "Artifact folder."),
                         ARCH, F(ExportConfig, "batch_size"), SAFETY, PREPROCESS], run_command)
def export(run, a):
    """Export a checkpoint to validated static-grid ONNX, one file per resolution."""
    cfg, load = a[ExportConfig], a[LoadConfig].check()
    render.notice_fresh(run, load, "exporting")
    with run.progress(total=5 * len(cfg.resolutions)) as step:
        results = api.export(None, a.out, cfg, load, step)
    render.show_export(run, results)


@command(app, "quantize", [CKPT, QuantizeConfig, F(CpuInt8Config, "isa"),
                           out(api.quantize, "Artifact folder."), *LOAD_REST], run_command)
def quantize(run, a):
    """Quantize for the Hexagon NPU (QDQ ONNX + .aimet folder) and report the quality."""
    cfg, load = a[QuantizeConfig], a[LoadConfig].check()
    render.notice_fresh(run, load, "quantizing")
    with run.progress(total=12 if cfg.target == "cpu" else 40) as step:
        r = api.quantize(None, a.out, cfg, load, step, cpu=a[CpuInt8Config])
    (render.show_cpu_int8 if cfg.target == "cpu" else render.show_quantized)(run, r)


WITH_CKPT = F(QuantizeConfig, "resolution " + QUANTIZER, prefix="With --ckpt: ", old_flags=False)


@command(app, "compile", [
    Input("model", Optional[list[Path]], "QDQ ONNX from `skipat-deploy quantize` (for --backend hub also a .aimet folder). Repeat with --share-weights.", "--model", None),
    F(CompileConfig, "share_weights"), CKPT,
    F(CompileConfig, "device compiler fp16 target_runtime qairt_version npu_samples hub_timeout_s"),
    WITH_CKPT, out(api.compile, "Artifact folder."), *LOAD_REST], run_command)
def compile_(run, a):
    """Compile for the phone's NPU: a QNN context binary (.bin) for its SoC, checked on the HTP
    simulator (local) or built by Qualcomm AI Hub (hub). With --ckpt, export and quantize first."""
    load = a[LoadConfig].check()
    if not a.model:
        render.notice_fresh(run, load, "compiling")
    with run.progress(total=50) as step:
        results = api.compile_all(a.model or [], a.out, a[CompileConfig], a[QuantizeConfig], load, step)
    for r in results:
        render.show_compiled(run, r)


@command(app, "profile", [
    Input("model", Optional[Path], "ONNX to profile (hub: a QDQ ONNX).", "--model", None), CKPT,
    ProfileConfig, F(QuantizeConfig, QUANTIZER, prefix="With --ckpt: ", base=profile_command.QUANTIZE, old_flags=False),
    out(api.profile, "Results folder (run records, raw profiles)."),
    *LOAD_REST], run_command)
def profile(run, a):
    """Latency of one model on the phone's NPU (AI Hub) or on this machine's CPU."""
    load = a[LoadConfig].check()
    if a.model is None:
        render.notice_fresh(run, load, "profiling")
    with run.progress(total=30) as step:
        r = api.profile(a.model, a.out, a[ProfileConfig], load, step=step, quantize=a[QuantizeConfig])
    render.show_profile(run, r)


@command(app, "compare", [
    Input("vit", Optional[Path], "ViT checkpoint (default: freshly initialised ViT-T/16).", "--vit", None),
    Input("skipat", Optional[Path], "SkipAt checkpoint (default: freshly initialised SkipAt-T/16).", "--skipat", None),
    CompareConfig, F(QuantizeConfig, QUANTIZER, base=compare_command.QUANTIZE, old_flags=False),
    out(api.compare, "Where compare.md / .json / .csv / .png go."),
    F(LoadConfig, "skip_indices head_dim", help={
        "skip_indices": "The SkipAt model's blocks replaced by Φ, 0-based (checkpoints do not store them; default 3,4,5,6,7,8).",
        "head_dim": "Attention head dim of both models (heads are not stored in weights)."}),
    SAFETY, PREPROCESS], run_command)
def compare(run, a):
    """ViT-T against SkipAt at 224 and 384: latency, ratio, speed-up (and the paper's S22 figures)."""
    cfg, load = a[CompareConfig], a[LoadConfig].check()
    for fam, path in (("ViT-T", a.vit), ("SkipAt-T", a.skipat)):
        if path is None:
            run.notice(f"no checkpoint for {fam}: using freshly initialised official "
                       "architecture (latency does not depend on the weight values)")
    with run.progress(total=8 * len(cfg.resolutions) + 4) as step:
        r = api.compare(a.vit, a.skipat, a.out, cfg, load, step, quantize=a[QuantizeConfig])
    render.show_compare(run, r)


@command(app, "evaluate", [
    Input("data", Path, "Labelled images: class folders (n01440764/ or 243/), an ImageNet val folder with its ground-truth file, or any folder with --labels.", "--data"),
    F(LoadConfig, "ckpt", help={"ckpt": "Trained classifier checkpoint (targets torch, onnx, qdq, npu, device)."}),
    Input("model", Optional[Path], "An exported .onnx (target onnx) or .qdq.onnx (qdq, npu, device) instead of --ckpt.", "--model", None),
    F(EvaluateConfig, "labels targets resolution device num_samples seed npu_samples samples_per_job max_top1_drop hub_timeout_s"),
    F(QuantizeConfig, QUANTIZER, prefix="INT8 targets from --ckpt: ", old_flags=False),
    out(api.evaluate, "Artifact and report folder."), *LOAD_REST], run_command)
def evaluate(run, a):
    """Top-1 / top-5 on a labelled dataset: float against INT8 on the CPU, the NPU and the phone,
    with 95 % confidence intervals. Exit 4 when --max-top1-drop is exceeded."""
    with run.progress(total=60) as step:
        r = api.evaluate(a.data, a.model, a.out, a[EvaluateConfig], a[LoadConfig], step,
                         quantize=a[QuantizeConfig])
    render.show_evaluate(run, r)


@command(app, "bundle", [CKPT, BundleConfig, F(QuantizeConfig, QUANTIZER, old_flags=False),
                         out(api.bundle, "Where the bundle folders go."), *LOAD_REST], run_command)
def bundle(run, a):
    """Build an app bundle: float + QDQ ONNX, .aimet, QNN context binaries per device, labels,
    manifest.json with the I/O contract, checksums, versions and measured figures."""
    cfg, load = a[BundleConfig], a[LoadConfig].check()
    render.notice_fresh(run, load, "bundling")
    with run.progress(total=40 * len(cfg.resolutions)) as step:
        r = api.bundle(None, a.out, cfg, load, step, quantize=a[QuantizeConfig])
    render.show_bundle(run, r)


@command(app, "verify", [Input("folder", Path, "A bundle folder (holding manifest.json), or the .zip `bundle --zip` wrote.")],
         run_command, staged=False)
def verify(run, a):
    """Check a bundle (folder or zip): manifest schema, every path inside the folder and listed,
    every file's size and sha256, CPU smoke inference."""
    render.show_verify(run, api.verify(a.folder))


@command(app, "inspect", [
    Input("model", Path, "QDQ ONNX (.qdq.onnx) to inspect.", "--model"),
    F(InspectConfig, "float_model device images num_samples npu"),
    out(api.inspect, "Where <stem>.inspect.csv / .json / .png go.")], run_command, staged=False)
def inspect(run, a):
    """Where the NPU differs: float, CPU QDQ and NPU (HTP simulator) side by side, tensor by
    tensor; names the largest QDQ drop and the first NPU divergence."""
    cfg = a[InspectConfig]
    with run.progress(total=cfg.num_samples + 4) as step:
        r = api.inspect(a.model, a.out, cfg, step=step)
    render.show_inspect(run, r)


@command(app, "predict", [Input("images", list[Path], "Image files."),
                          Input("model", Path, "ONNX exported by `skipat-deploy export`.", "--model"),
                          PredictConfig], run_command, staged=False)
def predict(run, a):
    """Classify images with an exported model on the CPU (ONNX Runtime)."""
    render.show_predictions(run, api.predict(a.model, list(a.images), a[PredictConfig]))


@command(app, "models", [], run_command, staged=False)
def models(run, a):
    """List the registered architectures."""
    from .models.registry import list_specs

    render.show_models(run, list_specs())


@command(app, "devices", [Input("hub", bool, "Also list AI Hub's live devices (needs AI Hub configured), flagging what the local table lacks.", "--hub", False)],
         run_command, staged=False)
def devices(run, a):
    """List the Snapdragon targets (profiles/devices.json): AI Hub name, SoC, Hexagon version,
    QNN soc_model, fp16 and weight-sharing support."""
    from .devices import load_profiles

    render.show_devices(run, load_profiles(), api.hub_devices() if a.hub else None)


def main() -> None:
    process.EXITS_AFTER_COMMAND["yes"] = True
    app()

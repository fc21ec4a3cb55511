"""Command line: parses options, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Export, quantize, compile and profile ViT / SkipAt models for Snapdragon NPUs.",
)
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Artifact folder.")]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", help="Checkpoint (.pth .pt .t7 .pth.tar .bin .safetensors); none = freshly initialised --arch.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Registered architecture to use instead of the inferred one (`skipat-deploy models`).")]
SkipOpt = Annotated[Optional[str], typer.Option("--skip-indices", help="SkipAt blocks replaced by Φ, 0-based, e.g. 3,4,5,6,7,8.")]
HeadDimOpt = Annotated[int, typer.Option("--head-dim", help="Attention head dim (heads are not stored in weights).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Target phone, by name or alias (`skipat-deploy devices`).")]
UnsafeOpt = Annotated[bool, typer.Option("--allow-code-execution", help="Unpickle with arbitrary code execution (only for checkpoints you trust).")]
BackendAutoOpt = Annotated[str, typer.Option("--backend", help="hub (the phone's NPU via AI Hub), cpu (ONNX Runtime here) or auto (hub when AI Hub is configured).")]
RunsOpt = Annotated[int, typer.Option("--runs", help="Timed CPU runs per model (after warm-up).")]
HubTimeoutOpt = Annotated[float, typer.Option("--hub-timeout", help="Seconds to wait for an AI Hub job before giving up (a re-run resumes it).")]
# Pre-processing of a model built from a checkpoint: given > the checkpoint's own > the default.
MeanOpt = Annotated[Optional[str], typer.Option("--mean", metavar="R,G,B", help="Normalisation mean per channel, pixels in [0, 1] (timm's augreg ViTs: 0.5,0.5,0.5). Default: the checkpoint's pretrained_cfg / args / config.json, else the architecture's (a guess, with a notice).", show_default=False)]
StdOpt = Annotated[Optional[str], typer.Option("--std", metavar="R,G,B", help="Normalisation std per channel (default as --mean).", show_default=False)]
CropPctOpt = Annotated[Optional[str], typer.Option("--crop-pct", metavar="F", help="Resize to size / F, then center-crop, in (0, 1] (default as --mean).", show_default=False)]
InterpolationOpt = Annotated[Optional[str], typer.Option("--interpolation", metavar="NAME", help="Resize filter: bicubic, bilinear, nearest, lanczos, box or hamming (default as --mean).", show_default=False)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime CPU threads (default: all this machine's cores; 1 pins them for steadier figures on a shared machine).")]


class Run:
    """One command's output: notices and progress go to stderr, results to stdout (a table,
    or with --json one document listing every artifact and every measured figure)."""

    def __init__(self, command: str, as_json: bool, debug: bool):
        self.command, self.as_json, self.debug = command, as_json, debug
        self.artifacts: list[dict] = []
        self.measurements: list[dict] = []
        self.notices: list[str] = []
        self.results: list[dict] = []
        self.extra: dict = {}  # command-specific top-level fields of the --json document

    def notice(self, text: str) -> None:
        self.notices.append(text)
        err.print(f"[yellow]note:[/] {text}", highlight=False)

    def measure(self, name: str, value: float, unit: str, source: str, subject: str) -> None:
        self.measurements.append(
            dict(name=name, value=value, unit=unit, source=source, subject=subject)
        )

    @contextmanager
    def progress(self, total: int):
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,  # logs and pipes get results, not spinner frames
        ) as bar:
            task = bar.add_task("starting", total=total)

            def step(desc: str) -> None:
                bar.update(task, description=desc, advance=1)

            yield step

    def emit(self) -> None:
        if self.as_json:
            doc = dict(
                command=self.command,
                ok=True,
                artifacts=self.artifacts,
                measurements=self.measurements,
                results=self.results,
                notices=self.notices,
            )
            doc.update(self.extra)
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")

    def fail(self, message: str, code: int) -> None:
        err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        if self.as_json:
            sys.stdout.write(json.dumps(dict(command=self.command, ok=False, error=message)) + "\n")
        raise typer.Exit(code)


def guarded(run: Run, body: Callable[[], None]) -> None:
    """User errors: one line, exit 2. Bugs: one line (traceback with --debug), exit 1."""
    try:
        body()
    except UserError as e:
        if run.debug:
            traceback.print_exc()
        run.fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        run.fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if run.debug:
            traceback.print_exc()
        hint = "" if run.debug else " (rerun with --debug for the traceback)"
        run.fail(f"{type(e).__name__}: {e}".splitlines()[0] + hint, 1)
    run.emit()


def _table(*columns: str, title: str | None = None) -> Table:
    """A results table that folds long cells instead of cutting them (logs are 80 wide)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def _notice_fresh(run: Run, ckpt, arch, doing: str) -> None:
    if ckpt is None:
        from .api import DEFAULT_ARCH

        run.notice(
            f"no --ckpt given: {doing} a freshly initialised {arch or DEFAULT_ARCH} (random "
            "weights, not trained; fine for latency, meaningless for predictions)"
        )


def _preprocess(mean: Optional[str], std: Optional[str], crop_pct: Optional[str],
                interpolation: Optional[str]):
    """The four pre-processing options as the one object the API takes, checked."""
    from .preprocess import PreprocessOverrides

    return PreprocessOverrides.parse(mean, std, crop_pct, interpolation)


def _ints(text: Optional[str], what: str) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


@app.command()
def export(
    ckpt: CkptOpt = None,
    resolution: Annotated[list[int], typer.Option(help="Input size in px (repeatable).")] = [224, 384],
    out: OutOpt = Path("export"),
    arch: ArchOpt = None,
    skip_indices: SkipOpt = None,
    head_dim: HeadDimOpt = 64,
    batch: Annotated[int, typer.Option(help="Static batch size of the exported graph.")] = 1,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Export a checkpoint to validated static-grid ONNX, one file per resolution."""
    from . import api

    run = Run("export", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        _notice_fresh(run, ckpt, arch, "exporting")
        with run.progress(total=5 * len(resolution)) as step:
            results = api.export(
                ckpt,
                out,
                resolutions=tuple(resolution),
                arch=arch,
                skip_indices=_ints(skip_indices, "--skip-indices"),
                head_dim=head_dim,
                batch_size=batch,
                allow_code_execution=allow_code_execution,
                preprocess=pp,
                step=step,
            )
        for n in dict.fromkeys(n for r in results for n in r.notices):  # one per command, not per file
            run.notice(n)
        table = _table("file", "model", "grid", "max |onnx-torch|", "export s", title="exported")
        for r in results:
            run.artifacts.append(
                dict(kind="onnx", path=str(r.path), sha256=r.sha256, size_bytes=r.size_bytes,
                     resolution=r.resolution, model=r.model_name)
            )
            run.measure("export_seconds", r.seconds, "s", "cpu", str(r.path))
            run.measure("max_abs_diff_vs_torch", r.max_abs_diff, "abs", "cpu", str(r.path))
            run.results.append(r.to_json())
            table.add_row(r.path.name, r.model_name, f"{r.grid}x{r.grid}",
                          f"{r.max_abs_diff:.2e}", f"{r.seconds:.1f}")
        if not as_json:
            Console().print(table)

    guarded(run, body)


@app.command()
def quantize(
    ckpt: CkptOpt = None,
    resolution: Annotated[int, typer.Option(help="Input size in px; calibration runs at this grid.")] = 224,
    calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images (.jpg/.png, searched recursively; a seeded sample spread over its subfolders is used); default: real photos bundled with scikit-image.")] = None,
    num_calib: Annotated[int, typer.Option(help="Calibration samples (photos, then further crops of them).")] = 64,
    eval_dir: Annotated[Optional[Path], typer.Option("--eval", help="Folder of held-out images for the quality report; default: a disjoint split of --calib.")] = None,
    num_eval: Annotated[int, typer.Option(help="Evaluation samples.")] = 16,
    target: Annotated[str, typer.Option(help="npu (default: the QDQ model the Hexagon NPU runs) or cpu (an INT8 model for ONNX Runtime's integer kernels: the CPU fallback, <stem>.cpu_int8.onnx).")] = "npu",
    precision: Annotated[str, typer.Option(help="w8a8, w8a16 or mixed (8-bit activations, the most sensitive layers 16-bit).")] = "w8a16",
    backend: Annotated[str, typer.Option(help="aimet (default) or ort (onnxruntime.quantization, QNN config).")] = "aimet",
    device: DeviceOpt = "Galaxy S22",
    adaround: Annotated[bool, typer.Option("--adaround", help="AdaRound the weights (AIMET).")] = False,
    qat_steps: Annotated[int, typer.Option(help="Distillation fine-tune steps of the simulation on the calibration images.")] = 0,
    rotate: Annotated[Optional[bool], typer.Option(help="Rotate the residual stream before quantizing (float-equivalent, folded into the weights). Default: on for w8a8 and mixed, off for w8a16.", show_default=False)] = None,
    out: OutOpt = Path("export"),
    arch: ArchOpt = None,
    skip_indices: SkipOpt = None,
    head_dim: HeadDimOpt = 64,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Quantize for the Hexagon NPU (QDQ ONNX + .aimet folder) and report the quality."""
    from . import api

    run = Run("quantize", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        _notice_fresh(run, ckpt, arch, "quantizing")
        if target not in ("npu", "cpu"):
            raise UserError(f"--target {target!r}: use npu or cpu")
        if target == "cpu":
            with run.progress(total=12) as step:
                c = api.cpu_int8(ckpt, out, resolution=resolution, calib_dir=calib,
                                 eval_dir=eval_dir, num_calib=num_calib, num_eval=num_eval,
                                 rotate=rotate is not False, arch=arch,
                                 skip_indices=_ints(skip_indices, "--skip-indices"),
                                 head_dim=head_dim, allow_code_execution=allow_code_execution,
                                 preprocess=pp, step=step)
            for n in c.notices:
                run.notice(n)
            run.artifacts += [dict(kind="cpu_int8_onnx", path=str(c.path)),
                              dict(kind="quality_report", path=str(c.report))]
            where = "cpu (onnxruntime integer kernels)"
            run.measure("sqnr_vs_float", c.quality.sqnr_db, "dB", where, str(c.path))
            if c.quality.top1_agreement is not None:
                run.measure("top1_agreement", c.quality.top1_agreement, "", where, str(c.path))
            run.results.append(c.to_json())
            if not as_json:
                t = _table("measure", "value", title=f"{c.path.name}: INT8 for the CPU (ONNX Runtime)")
                t.add_row("output SQNR vs float", f"{c.quality.sqnr_db:.2f} dB")
                if c.quality.top1_agreement is not None:
                    t.add_row("top-1 agreement", f"{c.quality.top1_agreement:.1%}")
                t.add_row("8-bit ops", ", ".join(f"{k} {v}" for k, v in c.quantized_ops.items()))
                t.add_row("float on purpose", ", ".join(f"{k} {v}" for k, v in c.float_ops.items()) or "-")
                t.add_row("evaluated on", f"{c.quality.num_images} samples from {c.eval_source}")
                t.add_row("time", f"{c.seconds:.0f} s")
                Console().print(t)
            return
        with run.progress(total=40) as step:
            r = api.quantize(
                ckpt, out, resolution=resolution, precision=precision, backend=backend,
                device=device, calib_dir=calib, eval_dir=eval_dir, num_calib=num_calib,
                num_eval=num_eval, adaround=adaround, qat_steps=qat_steps, rotate=rotate, arch=arch,
                skip_indices=_ints(skip_indices, "--skip-indices"), head_dim=head_dim,
                allow_code_execution=allow_code_execution, preprocess=pp, step=step,
            )
        for n in r.notices:
            run.notice(n)
        for kind, path in (("float_onnx", r.float_onnx), ("qdq_onnx", r.qdq_onnx),
                           ("aimet_folder", r.aimet_dir), ("quality_report", r.report_json),
                           ("layer_csv", r.layers_csv), ("noise_chart", r.noise_png)):
            if path is not None:
                run.artifacts.append(dict(kind=kind, path=str(path)))
        subject = str(r.qdq_onnx)
        q = r.quality
        run.measure("sqnr_vs_float", q.sqnr_db, "dB", "cpu (onnxruntime, QDQ)", subject)
        run.measure("cosine_vs_float_mean", q.cosine_mean, "", "cpu (onnxruntime, QDQ)", subject)
        if q.top1_agreement is not None:
            run.measure("top1_agreement", q.top1_agreement, "", "cpu (onnxruntime, QDQ)", subject)
        if r.sim_quality is not None:
            run.measure("sim_sqnr_vs_float", r.sim_quality.sqnr_db, "dB", "aimet simulation", subject)
            run.measure("qdq_vs_sim_sqnr", r.qdq_vs_sim_sqnr_db, "dB", "cpu vs aimet simulation", subject)
        run.measure("quantize_seconds", r.seconds, "s", "cpu", subject)
        run.results.append(r.to_json())
        if as_json:
            return
        t = _table("measure", "value", title=f"{r.qdq_onnx.name}: {r.precision} ({r.backend}) for {r.device} / {r.hexagon}")
        t.add_row("output SQNR vs float (QDQ ONNX, CPU)", f"{q.sqnr_db:.2f} dB")
        t.add_row("cosine vs float (mean / min)", f"{q.cosine_mean:.5f} / {q.cosine_min:.5f}")
        if q.top1_agreement is not None:
            t.add_row("top-1 agreement", f"{q.top1_agreement:.1%}")
        if r.sim_quality is not None:
            t.add_row("AIMET simulation SQNR vs float", f"{r.sim_quality.sqnr_db:.2f} dB")
            t.add_row("QDQ ONNX vs simulation SQNR", f"{r.qdq_vs_sim_sqnr_db:.2f} dB")
            t.add_row("simulation, weights quantized only", f"{r.weights_only_sqnr_db:.2f} dB")
        if r.bias_correction_db is not None:
            t.add_row("bias correction (calibration samples)",
                      f"{r.bias_correction_db:+.2f} dB, " + ("kept" if r.bias_correction_db > 0 else "left out"))
        t.add_row("residual stream rotated", "yes" if r.rotated else "no")
        t.add_row("evaluated on", f"{q.num_images} samples from {r.eval_source}")
        t.add_row("calibrated on", f"{r.num_calib} samples from {r.calib_source}")
        t.add_row("16-bit activation layers", f"{len(r.promoted)} of {r.num_activation_quantizers}"
                  + (": " + ", ".join(r.promoted) if r.promoted else ""))
        t.add_row("sizes", ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r.sizes_bytes.items()))
        t.add_row("most sensitive layers (share of activation noise)", ", ".join(f"{s.layer} {s.noise_share:.0%}" for s in r.sensitivity[:5]) or "-")
        t.add_row("time", f"{r.seconds:.0f} s")
        Console().print(t)

    guarded(run, body)


@app.command(name="compile")
def compile_(
    model: Annotated[Optional[list[Path]], typer.Option("--model", help="QDQ ONNX from `skipat-deploy quantize` (for --backend hub also a .aimet folder). Repeat with --share-weights.")] = None,
    share_weights: Annotated[bool, typer.Option("--share-weights", help="Local: put every --model (e.g. the 224 and 384 px models) in ONE context binary, weights stored once (targets with weight sharing: v73+).")] = False,
    ckpt: CkptOpt = None,
    device: DeviceOpt = "Galaxy S22",
    backend: Annotated[str, typer.Option(help="local (offline, onnxruntime-qnn) or hub (Qualcomm AI Hub).")] = "local",
    target_runtime: Annotated[str, typer.Option(help="AI Hub target: qnn_context_binary, precompiled_qnn_onnx, onnx or tflite.")] = "qnn_context_binary",
    qairt_version: Annotated[Optional[str], typer.Option(help="Pin AI Hub's QAIRT compiler version, e.g. 2.40.")] = None,
    num_check: Annotated[int, typer.Option(help="Held-out photos run on the HTP simulator and compared with the CPU QDQ model and the float model (local; the NPU gate).")] = 2,
    hub_timeout: HubTimeoutOpt = 3600.0,
    resolution: Annotated[int, typer.Option(help="With --ckpt: input size in px.")] = 224,
    precision: Annotated[str, typer.Option(help="With --ckpt: w8a8, w8a16 or mixed (quantized), or fp16 (the float model in float16 on the HTP, on targets that can). With --model: fp16 for a float .onnx.")] = "w8a16",
    quant_backend: Annotated[str, typer.Option(help="With --ckpt: aimet or ort.")] = "aimet",
    calib: Annotated[Optional[Path], typer.Option(help="With --ckpt: calibration image folder (default: bundled photos).")] = None,
    num_calib: Annotated[int, typer.Option(help="With --ckpt: calibration samples.")] = 64,
    out: OutOpt = Path("export"),
    arch: ArchOpt = None,
    skip_indices: SkipOpt = None,
    head_dim: HeadDimOpt = 64,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Compile for the phone's NPU: a QNN context binary (.bin) for its SoC, checked on the HTP
    simulator (local) or built by Qualcomm AI Hub (hub). With --ckpt, export and quantize first."""
    from . import api

    run = Run("compile", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        if model and ckpt is not None:
            raise UserError("give --model (a quantized ONNX) or --ckpt, not both")
        if model:
            pp.refuse_for(model[0])
        if not model:
            _notice_fresh(run, ckpt, arch, "compiling")
        models = model or []
        with run.progress(total=50) as step:
            if share_weights or len(models) > 1:
                if not share_weights:
                    raise UserError("several --model files are compiled together with "
                                    "--share-weights; otherwise compile them one at a time")
                results = api.compile_shared(models, out, device=device, num_check=num_check,
                                             fp16=precision == "fp16", step=step)
            else:
                results = [api.compile(
                    models[0] if models else None, out, device=device, backend=backend,
                    target_runtime=target_runtime, qairt_version=qairt_version,
                    num_check=num_check, hub_timeout_s=hub_timeout, ckpt=ckpt,
                    resolution=resolution, precision=precision, quant_backend=quant_backend,
                    calib_dir=calib, num_calib=num_calib, arch=arch,
                    skip_indices=_ints(skip_indices, "--skip-indices"), head_dim=head_dim,
                    allow_code_execution=allow_code_execution, preprocess=pp, step=step,
                )]
        for r in results:
            _show_compiled(run, r, as_json)

    guarded(run, body)


def _show_compiled(run: Run, r, as_json: bool) -> None:
    q = r.quantized
    for n in (q.notices if q else []) + r.notices:
        run.notice(n)
    if q is not None:
        run.artifacts.append(dict(kind="qdq_onnx", path=str(q.qdq_onnx)))
        run.artifacts.append(dict(kind="quality_report", path=str(q.report_json)))
        run.measure("sqnr_vs_float", q.quality.sqnr_db, "dB", "cpu (onnxruntime, QDQ)", str(q.qdq_onnx))
    for kind, path in r.artifacts.items():
        run.artifacts.append(_artifact(kind, path))
    run.artifacts.append(dict(kind="compile_record", path=str(r.record)))
    if r.check is not None:
        from .npu.compile import CPU_QDQ_VS_FLOAT

        c = r.check
        binary = str(r.artifacts.get("context_binary", r.model))
        run.measure("npu_vs_cpu_sqnr", c.sqnr_db, "dB", c.runs_on, binary)
        if c.top1_agreement is not None:
            run.measure("npu_vs_cpu_top1_agreement", c.top1_agreement, "", c.runs_on, str(r.model))
        if c.npu_vs_float_sqnr_db is not None:  # the NPU gate's figures
            run.measure("npu_vs_float_sqnr", c.npu_vs_float_sqnr_db, "dB", c.runs_on, binary)
            run.measure("cpu_qdq_vs_float_sqnr", c.qdq_vs_float_sqnr_db, "dB", CPU_QDQ_VS_FLOAT, str(r.model))
    run.measure("compile_seconds", r.seconds, "s", r.backend, str(r.model))
    run.results.append(r.to_json())
    if as_json:
        return
    t = _table("measure", "value", title=f"{r.model.name} -> {r.device} ({r.soc}, Hexagon {r.hexagon}), {r.backend}")
    for kind, path in r.artifacts.items():
        t.add_row(kind, str(path))
    for job in r.jobs:
        t.add_row(f"AI Hub {job['kind']} job", f"{job['id']} {job['status']} {job['url']}")
    if r.check is not None:
        c = r.check
        t.add_row("NPU vs the same model on the CPU, SQNR", f"{c.sqnr_db:.2f} dB ({c.runs_on}; {c.inputs})")
        if c.top1_agreement is not None:
            t.add_row("NPU vs CPU top-1 agreement", f"{c.top1_agreement:.0%}")
        if c.npu_vs_float_sqnr_db is not None:
            t.add_row(f"SQNR vs float ({c.float_model})", f"NPU {c.npu_vs_float_sqnr_db:.2f} dB, "
                      f"CPU QDQ {c.qdq_vs_float_sqnr_db:.2f} dB")
        t.add_row("NPU gate", c.gate)
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items()))
    t.add_row("time", f"{r.seconds:.1f} s")
    Console().print(t)


def _artifact(kind: str, path: Path) -> dict:
    from .files import sha256_file

    path = Path(path)
    if path.is_file():
        return dict(kind=kind, path=str(path), sha256=sha256_file(path), size_bytes=path.stat().st_size)
    return dict(kind=kind, path=str(path))




@app.command()
def profile(
    model: Annotated[Optional[Path], typer.Option("--model", help="ONNX to profile (hub: a QDQ ONNX).")] = None,
    ckpt: CkptOpt = None,
    resolution: Annotated[int, typer.Option(help="With --ckpt: input size in px.")] = 224,
    device: DeviceOpt = "Galaxy S22",
    backend: BackendAutoOpt = "auto",
    precision: Annotated[str, typer.Option(help="INT8 flavour: w8a8 (default), w8a16, mixed (hub).")] = "w8a8",
    runs: RunsOpt = 50,
    threads: ThreadsOpt = None,
    hub_timeout: HubTimeoutOpt = 3600.0,
    out: Annotated[Path, typer.Option("--out", help="Results folder (run records, raw profiles).")] = Path("profiles/results"),
    arch: ArchOpt = None,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Latency of one model on the phone's NPU (AI Hub) or on this machine's CPU."""

    from . import api

    run = Run("profile", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        if model is not None and ckpt is not None:
            raise UserError("give --model or --ckpt, not both")
        if model is None:
            _notice_fresh(run, ckpt, arch, "profiling")
        with run.progress(total=30) as step:
            r = api.profile(model, out, device=device, backend=backend, ckpt=ckpt,
                            resolution=resolution, precision=precision, runs=runs,
                            threads=threads, hub_timeout_s=hub_timeout, arch=arch,
                            allow_code_execution=allow_code_execution, preprocess=pp, step=step)
        for n in r.notices:
            run.notice(n)
        run.results.append(r.to_json())
        t = _table("model", "where", "median ms", "p90 ms", "details",
                   title=f"latency: {r.device}, {r.backend}")
        for c in r.cpu:
            where = f"CPU, ONNX Runtime {c.onnxruntime}, {c.threads} threads"
            run.measure("cpu_latency_median", c.median_ms, "ms", where, c.model)
            run.measure("cpu_latency_p90", c.p90_ms, "ms", where, c.model)
            t.add_row(Path(c.model).name, where, f"{c.median_ms:.2f}", f"{c.p90_ms:.2f}", f"{c.runs} runs")
        if r.cpu_ratio is not None:
            q = r.cpu_ratio
            names = " / ".join(Path(c.model).name for c in reversed(r.cpu))
            run.measure("cpu_latency_ratio", q.value, "", f"CPU, {q.pairs} paired runs", names)
            t.add_row(names, "paired runs, median ratio", f"{q.value:.3f}", "-",
                      f"95 % interval {q.low:.3f}-{q.high:.3f} ({q.pairs} pairs)")
        if r.hub is not None:
            h = r.hub
            where = f"{h.hub_device} NPU (AI Hub profile)"
            run.measure("estimated_inference_time", h.estimated_inference_ms, "ms", where, str(h.model))
            if h.first_load_ms is not None:
                run.measure("first_load_time", h.first_load_ms, "ms", where, str(h.model))
            if h.device_check is not None:
                run.measure("device_vs_cpu_sqnr", h.device_check.sqnr_db, "dB", where, str(h.model))
            run.artifacts.append(dict(kind="raw_profile", path=str(h.raw_profile)))
            for kind, path in r.compiled.artifacts.items():
                run.artifacts.append(_artifact(kind, path))
            units = ", ".join(f"{u} {n}" for u, n in sorted(h.compute_units.items()))
            mem = "-" if h.peak_memory_mb is None else f"{h.peak_memory_mb[0]:.1f}-{h.peak_memory_mb[1]:.1f} MB"
            check = "-" if h.device_check is None else f"{h.device_check.sqnr_db:.1f} dB vs CPU"
            t.add_row(h.model.name, where, f"{h.estimated_inference_ms:.2f}", "-",
                      f"layers {units}; peak memory {mem}; first load {h.first_load_ms} ms; outputs {check}")
        if not as_json:
            Console().print(t)

    guarded(run, body)


@app.command()
def compare(
    vit: Annotated[Optional[Path], typer.Option("--vit", help="ViT checkpoint (default: freshly initialised ViT-T/16).")] = None,
    skipat: Annotated[Optional[Path], typer.Option("--skipat", help="SkipAt checkpoint (default: freshly initialised SkipAt-T/16).")] = None,
    resolution: Annotated[list[int], typer.Option(help="Input size in px (repeatable).")] = [224, 384],
    device: DeviceOpt = "Galaxy S22",
    backend: BackendAutoOpt = "auto",
    precision: Annotated[str, typer.Option(help="INT8 flavour: w8a8 (default) or w8a16.")] = "w8a8",
    quant_backend: Annotated[str, typer.Option(help="hub: quantize the models sent to the phone with aimet (default) or ort.")] = "aimet",
    runs: RunsOpt = 30,
    threads: ThreadsOpt = None,
    hub_timeout: HubTimeoutOpt = 3600.0,
    eval_dir: Annotated[Optional[Path], typer.Option("--eval", help="Labelled images (as for `evaluate --data`): float and INT8 top-1 beside the latency (needs trained --vit and --skipat).")] = None,
    eval_labels: Annotated[Optional[Path], typer.Option("--eval-labels", help="Labels file for --eval (as `evaluate --labels`).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option("--eval-samples", help="Stratified subset of --eval (default: all).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where compare.md / .json / .csv / .png go.")] = Path("profiles/results"),
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """ViT-T against SkipAt at 224 and 384: latency, ratio, speed-up (and the paper's S22 figures)."""

    from . import api

    run = Run("compare", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        for fam, path in (("ViT-T", vit), ("SkipAt-T", skipat)):
            if path is None:
                run.notice(f"no checkpoint for {fam}: using freshly initialised official "
                           "architecture (latency does not depend on the weight values)")
        with run.progress(total=8 * len(resolution) + 4) as step:
            r = api.compare(vit, skipat, out, resolutions=tuple(resolution), device=device,
                            backend=backend, precision=precision, quant_backend=quant_backend,
                            runs=runs, threads=threads, hub_timeout_s=hub_timeout,
                            eval_dir=eval_dir, eval_labels=eval_labels, eval_samples=eval_samples,
                            allow_code_execution=allow_code_execution, preprocess=pp, step=step)
        for n in r.notices:
            run.notice(n)
        for kind, path in r.files.items():
            run.artifacts.append(dict(kind=f"compare_{kind}", path=str(path)))
        for row in r.rows:
            subject = f"{row.arch}@{row.resolution}"
            run.measure("latency_median" if r.backend == "cpu" else "estimated_inference_time",
                        row.latency_ms, "ms", row.measured_on, subject)
            if row.model == "skipat":
                run.measure("skipat_vit_ratio", row.ratio_vs_vit, "", row.measured_on, subject)
            if row.top1_float is not None:
                run.measure("top1_float", row.top1_float, "", "cpu", subject)
                run.measure("top1_int8", row.top1_int8, "", "cpu (onnxruntime, QDQ)", subject)
        run.results.append(r.to_json())
        if not as_json:
            from .measure.compare import markdown

            table = [ln for ln in markdown(r).splitlines() if not ln.startswith("Note: ")]
            Console().print("\n".join(table), highlight=False, soft_wrap=True)

    guarded(run, body)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="Labelled images: class folders (n01440764/ or 243/), an ImageNet val folder with its ground-truth file, or any folder with --labels.")],
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", help="Trained classifier checkpoint (targets torch, onnx, qdq, npu, device).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="An exported .onnx (target onnx) or .qdq.onnx (qdq, npu, device) instead of --ckpt.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="CSV of path,label (label: class index or WordNet ID), or a text file of 'filename label' lines.")] = None,
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated: torch, onnx, qdq, npu (HTP simulator), device (the phone via AI Hub). Default: torch,onnx,qdq for --ckpt, the model's kind for --model.")] = None,
    resolution: Annotated[int, typer.Option(help="Input size in px (--ckpt).")] = 224,
    precision: Annotated[str, typer.Option(help="INT8 targets from --ckpt: w8a16, w8a8 or mixed.")] = "w8a16",
    quant_backend: Annotated[str, typer.Option(help="INT8 targets from --ckpt: aimet or ort.")] = "aimet",
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images for the INT8 targets (default: photos bundled with scikit-image). Not the evaluation images.")] = None,
    device: DeviceOpt = "Galaxy S22",
    num_samples: Annotated[Optional[int], typer.Option(help="Evaluate a seeded subset of this many images drawn per class (round-robin over the classes; default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --num-samples and --npu-samples draws.")] = 0,
    npu_samples: Annotated[int, typer.Option(help="npu target: at most this many images, drawn per class (the x86-64 simulator takes seconds each).")] = 64,
    samples_per_job: Annotated[int, typer.Option(help="device target: images per AI Hub inference job.")] = 250,
    max_top1_drop: Annotated[Optional[float], typer.Option(help="Gate: exit 4 when an INT8 target's top-1 is more than this many points below float.")] = None,
    hub_timeout: HubTimeoutOpt = 3600.0,
    out: Annotated[Path, typer.Option("--out", help="Artifact and report folder.")] = Path("export/evaluate"),
    arch: ArchOpt = None,
    skip_indices: SkipOpt = None,
    head_dim: HeadDimOpt = 64,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Top-1 / top-5 on a labelled dataset: float against INT8 on the CPU, the NPU and the phone,
    with 95 % confidence intervals. Exit 4 when --max-top1-drop is exceeded."""
    from . import api

    run = Run("evaluate", as_json, debug)
    gate: list[str] = []

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        wanted = tuple(t.strip() for t in targets.split(",") if t.strip()) if targets else None
        with run.progress(total=60) as step:
            r = api.evaluate(
                data, ckpt=ckpt, model=model, labels=labels, out_dir=out, targets=wanted,
                resolution=resolution, precision=precision, quant_backend=quant_backend,
                device=device, num_samples=num_samples, seed=seed, npu_samples=npu_samples,
                samples_per_job=samples_per_job, max_top1_drop=max_top1_drop, calib_dir=calib,
                hub_timeout_s=hub_timeout, arch=arch,
                skip_indices=_ints(skip_indices, "--skip-indices"), head_dim=head_dim,
                allow_code_execution=allow_code_execution, preprocess=pp, step=step)
        for n in r.notices:
            run.notice(n)
        for kind, path in r.files.items():
            run.artifacts.append(dict(kind=f"evaluate_{kind}", path=str(path)))
        for t in r.targets:
            subject = f"{t.name}: {t.model or r.model}"
            run.measure("top1", t.top1, "", t.runs_on, subject)
            run.measure("top5", t.top5, "", t.runs_on, subject)
        doc = r.to_json()
        run.results.append(doc)
        run.extra.update(targets=doc["targets"], gate_failures=r.gate_failures)
        if r.gate_failures:
            run.extra["ok"] = False
        gate.extend(r.gate_failures)
        if as_json:
            return
        from .measure.evaluate import markdown

        Console().print(markdown(r), highlight=False, soft_wrap=True)

    guarded(run, body)
    if gate:
        from .measure.evaluate import GATE_EXIT_CODE

        err.print(f"[red]accuracy gate failed:[/] {'; '.join(gate)}", highlight=False, soft_wrap=True)
        raise typer.Exit(GATE_EXIT_CODE)


@app.command()
def bundle(
    ckpt: CkptOpt = None,
    device: Annotated[list[str], typer.Option("--device", help="Target phone (repeatable; `skipat-deploy devices`).")] = ["Galaxy S22"],
    resolution: Annotated[list[int], typer.Option(help="Input size in px (repeatable).")] = [224],
    precision: Annotated[str, typer.Option(help="w8a8, w8a16 or mixed.")] = "w8a16",
    quant_backend: Annotated[str, typer.Option(help="aimet (default) or ort.")] = "aimet",
    calib: Annotated[Optional[Path], typer.Option(help="Calibration image folder (default: bundled photos).")] = None,
    num_calib: Annotated[int, typer.Option(help="Calibration samples.")] = 64,
    zip_: Annotated[bool, typer.Option("--zip", help="Also write <folder>.zip.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Where the bundle folders go.")] = Path("export/bundle"),
    arch: ArchOpt = None,
    skip_indices: SkipOpt = None,
    head_dim: HeadDimOpt = 64,
    allow_code_execution: UnsafeOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    crop_pct: CropPctOpt = None,
    interpolation: InterpolationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Build an app bundle: float + QDQ ONNX, .aimet, QNN context binaries per device, labels,
    manifest.json with the I/O contract, checksums, versions and measured figures."""
    from . import api

    run = Run("bundle", as_json, debug)

    def body():
        pp = _preprocess(mean, std, crop_pct, interpolation)
        _notice_fresh(run, ckpt, arch, "bundling")
        with run.progress(total=40 * len(resolution)) as step:
            r = api.bundle(ckpt, out, devices=tuple(device), resolutions=tuple(resolution),
                           precision=precision, quant_backend=quant_backend, calib_dir=calib,
                           num_calib=num_calib, zip=zip_, arch=arch,
                           skip_indices=_ints(skip_indices, "--skip-indices"), head_dim=head_dim,
                           allow_code_execution=allow_code_execution, preprocess=pp, step=step)
        for n in r.notices:
            run.notice(n)
        for folder, manifest in zip(r.folders, r.manifests):
            run.artifacts.append(dict(kind="bundle", path=str(folder)))
            run.artifacts.append(_artifact("manifest", manifest))
        for z in r.zips:
            run.artifacts.append(_artifact("bundle_zip", z))
        run.results.append(dict(folders=[str(f) for f in r.folders], seconds=r.seconds))
        if not as_json:
            for folder in r.folders:
                Console().print(f"bundle: {folder}", highlight=False)

    guarded(run, body)


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="A bundle folder (holding manifest.json).")],
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Check a bundle: manifest schema, every file's size and sha256, CPU smoke inference."""
    from . import api

    run = Run("verify", as_json, debug)

    def body():
        r = api.verify(folder)
        run.results.append(dict(folder=str(r.folder), files_checked=r.files_checked, smoke=r.smoke,
                                runtimes=r.runtimes))
        if not as_json:
            Console().print(f"{r.folder}: OK ({r.files_checked} files match the manifest; "
                            f"{len(r.smoke)} CPU models ran)", highlight=False)
            for binary, needs in r.runtimes.items():
                Console().print(f"  {binary}: needs {needs}", highlight=False)

    guarded(run, body)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[Path, typer.Option(help="ONNX exported by `skipat-deploy export`.")],
    top_k: Annotated[int, typer.Option(help="How many classes to print.")] = 5,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Classify images with an exported model on the CPU (ONNX Runtime)."""
    from . import api

    run = Run("predict", as_json, debug)

    def body():
        preds = api.predict(model, list(images), top_k=top_k)
        out = Console()
        for p in preds:
            run.results.append(p.to_json())
            if as_json:
                continue
            if p.top:
                tops = ", ".join(f"{c.label} ({c.probability:.1%})" for c in p.top)
                out.print(f"{p.image}: {tops}", highlight=False)
            else:
                out.print(f"{p.image}: {p.feature_dim}-d features, L2 norm {p.feature_norm:.3f}")

    guarded(run, body)


@app.command()
def models(as_json: JsonOpt = False, debug: DebugOpt = False):
    """List the registered architectures."""
    from .models.registry import list_specs

    run = Run("models", as_json, debug)

    def body():
        table = _table("name", "family", "dim", "depth", "heads", "patch", "classes", "Φ skips")
        for s in list_specs():
            a = s.arch
            run.results.append(dict(name=s.name, family=a.family, embed_dim=a.embed_dim,
                                    depth=a.depth, num_heads=a.num_heads, patch_size=a.patch_size,
                                    num_classes=a.num_classes, skip_indices=list(a.skip_indices)))
            table.add_row(s.name, a.family, str(a.embed_dim), str(a.depth), str(a.num_heads),
                          str(a.patch_size), str(a.num_classes),
                          ",".join(map(str, a.skip_indices)) or "-")
        if not as_json:
            Console().print(table)

    guarded(run, body)


@app.command()
def devices(
    hub: Annotated[bool, typer.Option("--hub", help="Also list AI Hub's live devices (needs AI Hub configured), flagging what the local table lacks.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
):
    """List the Snapdragon targets (profiles/devices.json): AI Hub name, SoC, Hexagon version,
    QNN soc_model, fp16 and weight-sharing support."""
    from dataclasses import asdict

    from .devices import load_profiles

    run = Run("devices", as_json, debug)

    def body():
        table = _table("device", "chipset", "SoC", "Hexagon", "soc_model", "fp16", "weight sharing",
                       "OS", "AI Hub name", "also typed as")
        for p in load_profiles():
            run.results.append(asdict(p))
            table.add_row(p.name, p.chipset, p.soc, p.hexagon, str(p.qnn_soc_model),
                          "yes" if p.fp16 else "no", "yes" if p.weight_sharing else "no", p.os,
                          p.hub_devices[0] if p.hub_devices else "(not on AI Hub)",
                          ", ".join(p.aliases[:3]))
        live = None
        if hub:
            from . import api

            live, missing = api.hub_devices()
            run.extra.update(hub_devices=live, not_on_hub=missing)
            lacking = [d for d in live if d["profile"] is None]
            for d in lacking:
                run.notice(f"AI Hub offers {d['name']} ({d['chipset']}, {d['hexagon']}, soc-model "
                           f"{d['soc_model']}), which the local table lacks")
        if as_json:
            return
        Console().print(table)
        if live is not None:
            t = _table("AI Hub device", "chipset", "Hexagon", "soc-model", "OS", "local target",
                       title="live on AI Hub")
            for d in live:
                t.add_row(d["name"], str(d["chipset"]), str(d["hexagon"]), str(d["soc_model"]),
                          str(d["os"]), d["profile"] or "[yellow]not in the local table[/]")
            Console().print(t)

    guarded(run, body)


def main() -> None:
    app()

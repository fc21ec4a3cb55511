"""Compile a quantized model for a phone's NPU.

Two backends, one result type:

* ``local`` (offline, default): ONNX Runtime's QNN execution provider writes an EPContext ONNX
  and the QNN context binary (``.bin``) for the device's SoC and Hexagon version, with CPU
  fallback disabled, so success means every node runs on the NPU. The context binary is then
  loaded on the HTP backend (a simulator on x86-64) and its outputs on held-out photos are
  compared with the QDQ model on the CPU and with the float model (the NPU gate, below).
* ``hub``: Qualcomm AI Hub compiles the model (:mod:`skipat_deploy.npu.hub`).

In ``out_dir``, for ``<stem>.qdq.onnx`` and a device with SoC ``sm8450``:
``<stem>.sm8450.ctx.onnx`` + ``<stem>.sm8450.ctx_qnn.bin`` (local) or the downloaded AI Hub
artifact (hub), and ``<stem>.sm8450.compile.json``, the record (with the sha256 of each
artifact), all moved in as one staged set (:mod:`skipat_deploy.staging`).

A QDQ model is compiled only for the Hexagon version it was quantized for (its metadata,
``quantization.hexagon``); one that does not say is compiled with a notice.

The NPU gate (local): the float model is the one the QDQ model's metadata names
(``quantization.float_onnx``, written by ``quantize``), found beside it with the recorded
sha256; any other file is not trusted as the reference. The binary is refused, nothing written,
when its noise against float on the check samples is more than double the CPU QDQ model's
(:func:`skipat_deploy.quant.quantize.noise_more_than_doubled`, the rule the QDQ export is held
to). Without a known float model the gate does not run; a notice and the record say so.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..devices import DeviceProfile, check_precision, device_option, resolve_device
from ..errors import QualityGateError, UserError
from ..export import cpu_session, read_metadata, run_qdq_cpu, sample_inputs
from ..files import compiled_stem, model_stem, sha256_file, sha256_path
from ..metrics import quality, sqnr_db
from ..options import option
from ..quant.quantize import noise_more_than_doubled
from ..staging import staged

BACKENDS = ("local", "hub")
TARGET_RUNTIMES = ("qnn_context_binary", "precompiled_qnn_onnx", "onnx", "tflite")
HTP_SIMULATOR = "QNN HTP simulator (onnxruntime-qnn, x86-64)"  # numerics only, never phone data
CPU_QDQ_VS_FLOAT = "cpu (onnxruntime, the QDQ model vs the float ONNX, on the NPU check samples)"


def hub_timeout_option():
    """--hub-timeout, declared once for every config that waits on AI Hub jobs."""
    return option(3600.0, "Seconds to wait for an AI Hub job before giving up (a re-run resumes it).", flag="--hub-timeout")


class CompileError(UserError):
    """The compiler rejected the model."""


@dataclass(frozen=True)
class CompileConfig:
    device: str = device_option()
    backend: str = option("local", "local (offline, onnxruntime-qnn) or hub (Qualcomm AI Hub).", choices=BACKENDS)
    # hub only; local always writes a context binary
    target_runtime: str = option("qnn_context_binary", "AI Hub target: qnn_context_binary, precompiled_qnn_onnx, onnx or tflite.", choices=TARGET_RUNTIMES)
    # hub only: pin the AI Hub compiler (QAIRT) version
    qairt_version: str | None = option(None, "Pin AI Hub's QAIRT compiler version, e.g. 2.40.")
    # validation samples run on the HTP simulator (about 1 s each for ViT-T)
    num_check: int = option(2, "Held-out photos run on the HTP simulator and compared with the CPU QDQ model and the float model (local; the NPU gate).")
    hub_timeout_s: float = hub_timeout_option()  # hub: give up waiting for a job after this long
    fp16: bool = False  # local: compile a float model to run in float16 on the HTP
    # local: several models in ONE context binary, weights stored once (api.compile_all)
    share_weights: bool = option(False, "Local: put every --model (e.g. the 224 and 384 px models) in ONE context binary, weights stored once (targets with weight sharing: v73+).", flag="--share-weights")

    def check(self) -> DeviceProfile:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown --backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.target_runtime not in TARGET_RUNTIMES:
            raise UserError(f"unknown --target-runtime {self.target_runtime!r}: use one of "
                            f"{', '.join(TARGET_RUNTIMES)}")
        if self.backend == "local" and self.target_runtime != "qnn_context_binary":
            raise UserError("the local backend writes QNN context binaries only; "
                            "--target-runtime needs --backend hub")
        if self.share_weights and self.backend == "hub":
            raise UserError("--share-weights compiles locally (one context binary for several "
                            "models); AI Hub compiles one model per job: drop --backend hub")
        if self.num_check < 1:
            raise UserError("--num-check must be at least 1")
        if self.hub_timeout_s <= 0:
            raise UserError("--hub-timeout must be positive (seconds)")
        device = resolve_device(self.device)
        if self.fp16:
            check_precision(device, "fp16")
        return device


@dataclass
class NpuCheck:
    """The compiled model's outputs against the QDQ model's on ONNX Runtime CPU and, when the
    float model is known, both against float on the same samples (the NPU gate)."""

    sqnr_db: float  # NPU vs the CPU QDQ model
    cosine_min: float
    top1_agreement: float | None
    num_samples: int
    inputs: str  # what the samples were
    runs_on: str  # what produced the NPU-side outputs
    float_model: str | None = None  # the gate's reference (file name); None: not known
    npu_vs_float_sqnr_db: float | None = None
    qdq_vs_float_sqnr_db: float | None = None  # the CPU QDQ model, same samples
    gate: str = "not run"  # "passed", or why it did not run


class NpuGateError(QualityGateError):
    """The compiled binary's output is much noisier against float than the CPU QDQ model's."""


@dataclass
class CompileResult:
    model: Path
    model_sha256: str
    backend: str
    device: str
    soc: str
    hexagon: str
    artifacts: dict[str, Path]
    record: Path
    check: NpuCheck | None
    versions: dict[str, str]
    seconds: float
    jobs: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    quantized: object | None = None  # the QuantizeResult when compile ran quantize first
    sha256: dict[str, str] = field(default_factory=dict)  # artifact kind -> its sha256
    made: dict[str, Path] = field(default_factory=dict)  # written before compiling (fp16: the export)

    def files(self) -> dict[str, Path]:
        """What compiling wrote, by kind (the names ``--json`` lists them under); the quantized
        model's files are ``quantized.files()``."""
        return {**self.made, **self.artifacts, "compile_record": self.record}

    def to_json(self) -> dict:
        quantized, self.quantized = self.quantized, None
        try:
            d = asdict(self)
        finally:
            self.quantized = quantized
        d["quantized"] = None if quantized is None else str(quantized.report_json)
        d["model"] = str(self.model)
        d["record"] = str(self.record)
        d["artifacts"] = {k: str(v) for k, v in self.artifacts.items()}
        d["made"] = {k: str(v) for k, v in self.made.items()}
        return d


def check_model(model: str | Path, backend: str, fp16: bool = False) -> Path:
    """The model to compile, or a one-line error: it must exist and, for the local backend, be
    a quantized (QDQ) ONNX, or a float one with ``fp16``; AI Hub also takes a ``.aimet``
    folder."""
    model = Path(model)
    if not model.exists():
        raise UserError(f"model not found: {model}")
    if model.is_dir():
        if backend != "hub" or model.suffix != ".aimet":
            raise UserError(f"{model} is a folder: the local backend compiles a QDQ ONNX "
                            "(the .qdq.onnx beside it); only --backend hub takes a .aimet folder")
        onnx_files = list(model.glob("*.onnx"))
        if len(onnx_files) != 1 or len(list(model.glob("*.encodings"))) > 1:
            raise UserError(f"{model} must hold exactly one .onnx and at most one .encodings")
        return model
    quantized = _quantized(model)
    if backend == "local" and not quantized and not fp16:
        raise UserError(f"{model.name} is a float model: give the .qdq.onnx from `skipat-deploy "
                        "quantize` (or --ckpt to quantize first), or --precision fp16 to run it "
                        "in float16 on targets that can")
    if fp16 and quantized:
        raise UserError(f"{model.name} is quantized: --precision fp16 compiles the float .onnx")
    return model


def _quantized(model: Path) -> bool:
    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{model} is not a readable ONNX model ({type(e).__name__})") from None
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def check_target(model: Path, device: DeviceProfile) -> str | None:
    """Refuse a QDQ model quantized for another Hexagon version than ``device``'s: the HTP
    configs differ by version (v66-v69 make the second input of every MatMul 8-bit), so its
    report would not describe what this NPU computes. A ``.aimet`` folder is judged by the QDQ
    model exported beside it; a float model passes. Returns a notice when the model does not
    say."""
    if model.is_file() and not _quantized(model):
        return None
    source = model.with_name(f"{model_stem(model)}.qdq.onnx") if model.is_dir() else model
    made_for = (read_metadata(source).get("quantization") or {}).get("hexagon") if source.is_file() else None
    if made_for is None:
        return (f"{model.name} does not say which Hexagon version it was quantized for (no "
                f"skipat-deploy quantization metadata): compiled as given for {device.name} "
                f"(Hexagon {device.hexagon})")
    if made_for != device.hexagon:
        raise UserError(f"{model.name} was quantized for Hexagon {made_for} but {device.name} has "
                        f"{device.hexagon}: quantize for it (--device) or compile with --ckpt")
    return None


def recorded_float_model(model: Path) -> tuple[Path | None, str]:
    """The float ONNX the QDQ ``model`` was quantized from (see the module docstring), or
    None and why it is not known."""
    recorded = (read_metadata(model).get("quantization") or {}).get("float_onnx")
    if not recorded:
        return None, (f"{model.name} does not name the float model it was quantized from "
                      "(made by another tool or an older skipat-deploy)")
    path = model.parent / recorded["file"]
    if not path.is_file():
        return None, f"{recorded['file']}, the float model it was quantized from, is not beside it"
    if sha256_file(path) != recorded["sha256"]:
        return None, (f"{path.name} beside it is not the float model it was quantized from "
                      "(its sha256 differs)")
    return path, ""


def npu_check(reference: list[np.ndarray], test: list[np.ndarray], inputs: str, runs_on: str,
              classifier: bool) -> NpuCheck:
    q = quality(np.stack(reference), np.stack(test), classifier)
    return NpuCheck(q.sqnr_db, q.cosine_min, q.top1_agreement, q.num_images, inputs, runs_on)


def _build(models: list[Path], contexts: list[Path], device: DeviceProfile, cfg: CompileConfig,
           share: bool) -> None:
    """QNN compiles each model into its EPContext model (``contexts``); with ``share``, into one
    context binary holding every graph, weights shared where identical."""
    from . import qnn

    for i, (model, ctx) in enumerate(zip(models, contexts)):
        try:
            qnn.htp_session(model, device, context_file=ctx, fp16=cfg.fp16,
                            share=("last" if i == len(models) - 1 else "more") if share else None)
        except Exception as e:
            rejected = qnn.rejected_nodes(model, device, cfg.fp16)
            if rejected or "fallback to CPU EP has been explicitly disabled" in str(e):
                raise qnn.NpuPlacementError(model, device, rejected) from None
            raise CompileError(f"QNN could not compile {model.name} for {device.soc}: "
                               + str(e).splitlines()[0]) from None


def run_htp(sess, x: np.ndarray) -> np.ndarray:
    """The NPU's outputs: the first output of the HTP session for each sample of ``x``
    (N, 1, C, H, W), concatenated."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi})[0] for xi in x])


def _check(model: Path, ctx: Path, device: DeviceProfile, cfg: CompileConfig,
           notices: list[str]) -> NpuCheck:
    """The context model on the HTP backend (the simulator here) against ``model`` on the CPU
    and, when known, both against the float model; a notice when the gate cannot run."""
    from . import qnn

    sess = qnn.htp_session(ctx, device, fp16=cfg.fp16)
    x, described, classifier = sample_inputs(model, cfg.num_check, tuple(sess.get_inputs()[0].shape))
    npu = run_htp(sess, x)
    cpu = run_qdq_cpu(model, np.concatenate(x))  # one CPU session for all samples
    check = npu_check(list(cpu), list(npu), described, HTP_SIMULATOR, classifier)
    if cfg.fp16:  # the CPU model is the float model: sqnr_db is already the NPU against float
        return replace(check, gate="not applicable: fp16 has no QDQ noise to compare with")
    reference, why = recorded_float_model(model)
    if reference is None:
        notices.append(f"the NPU gate did not run: {why}; the binary was compared with the CPU "
                       "QDQ model only")
        return replace(check, gate=f"not run: {why}")
    sess = cpu_session(str(reference))
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: xi})[0] for xi in x])
    return replace(check, float_model=reference.name, npu_vs_float_sqnr_db=sqnr_db(ref, npu),
                   qdq_vs_float_sqnr_db=sqnr_db(ref, cpu))


def npu_gate(check: NpuCheck, binary: str) -> NpuCheck:
    """``check`` marked passed, or :class:`NpuGateError` when the NPU's noise against float
    is more than double the CPU QDQ model's; unchanged when the float model was not known."""
    if check.npu_vs_float_sqnr_db is None:
        return check
    if not noise_more_than_doubled(check.npu_vs_float_sqnr_db, check.qdq_vs_float_sqnr_db):
        return replace(check, gate="passed")
    raise NpuGateError(
        f"{binary} refused by the NPU gate: on the {check.runs_on} its output is "
        f"{check.npu_vs_float_sqnr_db:.1f} dB SQNR vs the float model {check.float_model}, the CPU "
        f"QDQ model {check.qdq_vs_float_sqnr_db:.1f} dB: more than double the QDQ model's noise "
        f"(NPU vs CPU QDQ {check.sqnr_db:.1f} dB; {check.inputs}); nothing written")


def compile_local(model: str | Path, out_dir: str | Path, cfg: CompileConfig = CompileConfig(),
                  step: Callable[[str], None] = lambda msg: None) -> CompileResult:
    return compile_local_many([Path(model)], out_dir, cfg, step, share_weights=False)[0]


def compile_local_many(models: list[Path], out_dir: str | Path, cfg: CompileConfig = CompileConfig(),
                       step: Callable[[str], None] = lambda msg: None,
                       share_weights: bool = True) -> list[CompileResult]:
    """Compile each model for ``cfg.device`` and check it on the HTP simulator. With
    ``share_weights`` (targets that support it), every graph goes into ONE context binary
    (``<first>.shared_qnn.bin``), weights stored once where the graphs have identical ones: the
    224 and 384 px models of one checkpoint, for an app that switches resolution."""
    from . import qnn

    t0 = time.perf_counter()
    device = cfg.check()
    models = [check_model(m, "local", cfg.fp16) for m in models]
    if share_weights:
        if len(models) < 2 or len({m.resolve() for m in models}) < len(models):
            raise UserError("weight sharing puts several different models in one binary: give at "
                            "least two --model files")
        if not device.weight_sharing:
            raise UserError(f"{device.name} ({device.soc}, Hexagon {device.hexagon}) does not "
                            "support weight-shared context binaries (AI Hub's device table); "
                            "compile without --share-weights for one binary per model")
    notices: list[list[str]] = []  # per model
    for m in models:
        notice = check_target(m, device)
        notices.append([notice] if notice else [])
    out_dir = Path(out_dir)
    stems = [compiled_stem(m, device.soc) + (".fp16" if cfg.fp16 else "") for m in models]
    if len(set(stems)) < len(stems):
        raise UserError("two models would compile to the same file name: " + ", ".join(stems))
    shared = out_dir / f"{stems[0]}.shared_qnn.bin"
    finals = [{"context_onnx": out_dir / f"{st}.ctx.onnx",
               "context_binary": shared if share_weights else out_dir / f"{st}.ctx_qnn.bin"}
              for st in stems]
    results = []
    with staged(out_dir) as stage:  # binaries, context models and records move in together
        tmp = stage.dir
        contexts = [tmp / f["context_onnx"].name for f in finals]
        what = f"{len(models)} models into one weight-shared binary" if share_weights else models[0].name
        step(f"compiling {what} for {device.soc} (Hexagon {device.hexagon}) with the QNN HTP backend")
        _build(models, contexts, device, cfg, share_weights)
        checked = contexts
        if share_weights:  # ORT names the binary after the first context model; ours says shared
            qnn.rename_context_binary(contexts, tmp / f"{stems[0]}.ctx_qnn.bin", tmp / shared.name)
            # The x86-64 HTP simulator cannot load a weight-shared binary (contextCreateFromBinary:
            # QNN_COMMON_ERROR_NOT_SUPPORTED, QNN SDK 2.51): each graph is checked from a binary
            # of its own compiled from the same model, then that binary is dropped.
            checked = [stage.scratch / c.name for c in contexts]
            for model, ctx in zip(models, checked):
                _build([model], [ctx], device, cfg, share=False)
        for model, ctx, final, check_ctx, notes in zip(models, contexts, finals, checked, notices):
            binary = tmp / final["context_binary"].name
            if not ctx.exists() or not binary.exists():
                raise CompileError(f"QNN wrote no context binary for {model.name}")
            step(f"running {ctx.name} on the HTP backend (x86-64 simulator)")
            check = npu_gate(_check(model, check_ctx, device, cfg, notes), binary.name)
            if share_weights:
                check = replace(check, runs_on=check.runs_on + "; the same graph compiled on its "
                                "own (the simulator cannot load weight-shared binaries)")
            results.append(CompileResult(
                model=model, model_sha256=sha256_path(model), backend="local", device=device.name,
                soc=device.soc, hexagon=device.hexagon, artifacts=final,
                record=out_dir / f"{ctx.name.removesuffix('.ctx.onnx')}.compile.json",
                check=check, versions=qnn.sdk_versions(), seconds=0.0, notices=notes))
        wanted = {path.name for f in finals for path in f.values()}
        for extra in [p for p in tmp.iterdir() if p.name not in wanted]:
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()  # not an artifact
        for r in results:
            r.sha256 = {k: sha256_file(tmp / p.name) for k, p in r.artifacts.items()}
            r.seconds = time.perf_counter() - t0
            write_record(r, tmp)
    return results


def write_record(result: CompileResult, stage_dir: Path) -> None:
    """The record, into the stage folder its artifacts are in (they move in together)."""
    staged_record = stage_dir / result.record.name
    staged_record.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")

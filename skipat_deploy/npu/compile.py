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
artifact), all moved in as one staged set (:mod:`skipat_deploy.core.staging`).

A QDQ model is compiled only for the Hexagon version it was quantized for (its metadata,
``quantization.hexagon``); one that does not say is compiled with a notice.

The NPU gate (local): the float model is the one the QDQ model's metadata names
(``quantization.float_onnx``, written by ``quantize``), found beside it with the recorded
sha256; any other file is not trusted as the reference. The binary is refused, nothing written,
when its noise against float on the check samples is more than double the CPU QDQ model's
(:func:`skipat_deploy.core.metrics.noise_more_than_doubled`, the rule the QDQ export is held
to). Without a known float model the gate does not run; a notice and the record say so.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import compiled_stem, sha256_file, sha256_path
from ..core.metrics import noise_more_than_doubled, quality, sqnr_db
from ..core.staging import staged
from ..devices import DeviceProfile
from ..export import cpu_session, run_qdq_cpu, sample_inputs
from ..export.artifact import qdq_beside, read_model
from .config import CompileConfig, CompileError, CompileResult, NpuCheck, NpuGateError

HTP_SIMULATOR = "QNN HTP simulator (onnxruntime-qnn, x86-64)"  # numerics only, never phone data


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
    quantized = read_model(model).int8
    if backend == "local" and not quantized and not fp16:
        raise UserError(f"{model.name} is a float model: give the .qdq.onnx from `skipat-deploy "
                        "quantize` (or --ckpt to quantize first), or --fp16 to run it "
                        "in float16 on targets that can")
    if fp16 and quantized:
        raise UserError(f"{model.name} is quantized: --fp16 compiles the float .onnx")
    return model


def check_target(model: Path, device: DeviceProfile) -> str | None:
    """Refuse a QDQ model quantized for another Hexagon version than ``device``'s: the HTP
    configs differ by version (v66-v69 make the second input of every MatMul 8-bit), so its
    report would not describe what this NPU computes. A ``.aimet`` folder is judged by the QDQ
    model exported beside it; a float model passes. Returns a notice when the model does not
    say."""
    source = qdq_beside(model) if model.is_dir() else model
    artifact = read_model(source) if source.is_file() else None
    if artifact is not None and not artifact.int8:
        return None
    made_for = artifact.quantization.hexagon if artifact and artifact.quantization else None
    if made_for is None:
        return (f"{model.name} does not say which Hexagon version it was quantized for (no "
                f"skipat-deploy quantization metadata): compiled as given for {device.name} "
                f"(Hexagon {device.hexagon})")
    if made_for != device.hexagon:
        raise UserError(f"{model.name} was quantized for Hexagon {made_for} but {device.name} has "
                        f"{device.hexagon}: quantize for it (--device) or compile with --ckpt")
    return None


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
    x, described, classifier = sample_inputs(model, cfg.npu_samples, tuple(sess.get_inputs()[0].shape))
    npu = run_htp(sess, x)
    cpu = run_qdq_cpu(model, np.concatenate(x))  # one CPU session for all samples
    check = npu_check(list(cpu), list(npu), described, HTP_SIMULATOR, classifier)
    if cfg.fp16:  # the CPU model is the float model: sqnr_db is already the NPU against float
        return replace(check, gate="not applicable: fp16 has no QDQ noise to compare with")
    reference, why = read_model(model).float_model()
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

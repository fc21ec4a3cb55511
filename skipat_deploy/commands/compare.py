"""``compare``: ViT against SkipAt. Load both -> at every resolution the float export and the
CPU INT8 model (cpu), the NPU's QDQ model (hub), or the QDQ model compiled here for the phone
(adb) of each -> measure side by side -> the reports; with ``--eval`` also the float and INT8
top-1 of every row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..core.errors import ArchitectureError, UserError
from ..core.options import check_declared
from ..core.staging import staged
from ..devices import cpu_host, resolve_device
from ..export import check_resolution
from ..measure import compare as cmp
from ..measure import adb
from ..measure import evaluate as ev
from ..images.dataset import LabelledImages, load_dataset, stratified_subset
from ..measure.stream import run_stream
from ..measure.targets import int8_runner, onnx_runner, torch_runner
from ..models.checkpoint import LoadConfig, LoadedCheckpoint, load
from ..npu.compile import compile_local
from ..npu.config import CompileConfig
from ..quant import QuantizeConfig, quantize
from ..quant.search import LatencyMeter
from . import profile
from .inputs import noted
from .timing import latency_meter

Step = Callable[[str], None]
QUANTIZE = profile.QUANTIZE  # latency is the question here too (see there)


def run(vit: Path | None, skipat: Path | None, out_dir: str | Path, cfg: cmp.CompareConfig,
        qcfg: QuantizeConfig, load_cfg: LoadConfig, step: Step) -> cmp.CompareResult:
    """ViT-T vs SkipAt at every resolution; without checkpoints, freshly initialised official
    architectures (latency does not depend on weight values)."""
    load_cfg.check()
    check_declared(cfg)
    qcfg = replace(qcfg, device=cfg.device)
    meter, notices, target = None, [], None
    backend = cmp.resolve_backend(cfg.measure_on, notices, cfg.serial, cfg.qairt_sdk)
    if backend == "adb":  # the phone and the SDK, checked before anything is made or pushed
        qcfg.check()
        target = adb.connect(cfg.serial, cfg.qairt_sdk, resolve_device(cfg.device))
    if backend == "hub":
        from ..npu.hub import preflight

        qcfg.check()
        preflight(resolve_device(cfg.device))  # say what is wrong with AI Hub before any work
        meter = latency_meter(qcfg, out_dir, step, notices, CompileConfig(hub_timeout_s=cfg.hub_timeout_s))
    ckpts = {}
    for fam, path in (("vit", vit), ("skipat", skipat)):
        # --skip-indices describe the SkipAt model; a ViT has no skipped blocks
        ckpts[fam] = load(replace(load_cfg, ckpt=path, arch=None if path else cmp.DEFAULT_ARCHS[fam],
                                  skip_indices=load_cfg.skip_indices if fam == "skipat" else None))
        if ckpts[fam].arch.family != fam:
            raise ArchitectureError(f"--{fam} {path} holds a {ckpts[fam].arch.family} model, not {fam}")
    eval_data = load_dataset(cfg.eval_dir, cfg.eval_labels) if cfg.eval_dir is not None else None
    result = compare(ckpts, out_dir, cfg, qcfg, step, eval_data, meter, backend, target)
    result.notices[:0] = notices
    return noted(result, *ckpts.values())


def compare(ckpts: dict[str, LoadedCheckpoint], out_dir: str | Path, cfg: cmp.CompareConfig,
            qcfg: QuantizeConfig, step: Step, eval_data: LabelledImages | None = None,
            latency: LatencyMeter | None = None, backend: str | None = None,
            target: adb.AdbTarget | None = None) -> cmp.CompareResult:
    """ViT against SkipAt (``ckpts``: family -> checkpoint) at every resolution: make the
    models each backend needs (``qcfg``: how they are quantized), measure them
    (:mod:`skipat_deploy.measure.compare`), write the reports into ``out_dir``. With
    ``eval_data``, also the top-1 of the float model and of the INT8 model (on the CPU) of every
    row."""
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
    backend = backend or cmp.resolve_backend(cfg.measure_on, notices, cfg.serial, cfg.qairt_sdk)
    if backend == "adb" and target is None:
        target = adb.connect(cfg.serial, cfg.qairt_sdk, device)
    for ck in ckpts.values():
        for r in cfg.resolutions:
            check_resolution(r, ck.arch.patch_size)
    archs = {fam: ck.spec.name for fam, ck in ckpts.items()}
    out_dir = Path(out_dir)
    made: list[tuple[str, Path]] = []  # hub, adb: the models (and AI Hub artifacts) kept in out_dir
    phone = None
    with staged(out_dir) as stage:  # the reports (and hub models) move in together
        tmp = stage.scratch
        if backend == "cpu":
            models = {(fam, res): tuple(profile.fp32_and_int8(ckpts[fam], tmp / fam,
                                                              replace(qcfg, resolution=res), step))
                      for res in cfg.resolutions for fam in cmp.FAMILIES}
            rows = cmp.cpu_rows(models, archs, cfg, device, step, notices)
        else:  # the NPU's QDQ models, timed on the phone through AI Hub or over adb
            qdq = {}
            for res in cfg.resolutions:
                for fam in cmp.FAMILIES:
                    q = quantize(ckpts[fam], out_dir, replace(qcfg, resolution=res), step, latency=latency)
                    notices.extend(n for n in q.notices if n not in notices)
                    qdq[(fam, res)] = q.qdq_onnx
                    made += q.files().items()
            if backend == "hub":
                rows = cmp.hub_rows(qdq, archs, out_dir, cfg, qcfg.precision, device, step, notices, made)
            else:  # compiled here, as `compile --backend local` does (its NPU gate included)
                binaries, inputs = {}, {}
                for (fam, res), model in qdq.items():
                    c = compile_local(model, out_dir, CompileConfig(device=cfg.device), step)
                    notices.extend(n for n in c.notices if n not in notices)
                    made += c.files().items()
                    binaries[(fam, res)] = c.artifacts["context_binary"]
                    inputs[(fam, res)] = adb.write_input(model, tmp / f"{fam}_{res}.raw")
                rows, timing = cmp.adb_rows(binaries, inputs, archs, stage.path("compare.adb"), cfg,
                                            qcfg.precision, target, device, step, notices)
                phone = timing.to_json()
        if eval_data is not None:
            subset = stratified_subset(eval_data, cfg.eval_samples)
            scores = _float_and_int8_top1(ckpts, models if backend == "cpu" else
                                          {k: (None, v) for k, v in qdq.items()}, subset, tmp, step)
            cmp.add_accuracy(rows, scores)
            notices.append("top-1: the float model and " + cmp.INT8_MODEL[backend]
                           + f", on {eval_data.root} ({eval_data.layout})")
        result = cmp.CompareResult(backend, device.name, rows, {}, notices, made=made, phone=phone)
        if backend == "cpu":
            result.host = cpu_host(cmp.timing_threads(cfg)).to_json()
        result.seconds = time.perf_counter() - t0
        result.files = cmp.write_reports(result, stage.dir, out_dir)
        if phone is not None:  # the viewer's text of every timed run
            result.files["phone_logs"] = out_dir / "compare.adb"
    return result


def _float_and_int8_top1(ckpts: dict[str, LoadedCheckpoint], models: dict[tuple, tuple],
                         data: LabelledImages, tmp: Path, step: Step) -> dict[tuple, tuple]:
    """(float, INT8) top-1 scores per (family, resolution) of ``models`` (float ONNX or None for
    the PyTorch model, INT8 model); one stream of ``data`` per resolution and pre-processing."""
    streams: dict[tuple, list] = {}
    for (fam, res), (float_onnx, int8) in models.items():
        fl = (onnx_runner(float_onnx, f"{fam} {res} float") if float_onnx is not None
              else torch_runner(ckpts[fam], res, f"{fam} {res} float"))
        q = int8_runner(int8, f"{fam} {res} int8")
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

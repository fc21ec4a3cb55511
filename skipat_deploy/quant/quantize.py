"""INT8 quantization for the Hexagon NPU, with a quality report.

:func:`quantize` takes a checkpoint to, in ``out_dir``:

* ``<stem>_<res>.onnx``: the float model (the export step);
* ``<stem>_<res>_<precision>_<hexagon>[_ort].qdq.onnx`` (e.g. ``vit_t_224_w8a16_v69.qdq.onnx``):
  a QDQ model for ONNX Runtime's CPU and QNN providers, checked against the AIMET simulation on
  the evaluation images. The name and the metadata say the Hexagon version it was made for, so
  models for several targets live side by side, and ``compile`` refuses it for another version;
* ``<tag>.aimet/``: float ONNX + encodings 2.0.0, what AI Hub takes (AIMET);
* ``<tag>.quant.json``, ``<tag>.layers.csv``, ``<tag>.noise.png``: the quality report and
  per-layer sensitivity.

Precisions: ``w8a8`` and ``w8a16`` (8-bit per-channel weights, 8- or 16-bit activations) and
``mixed``: 8-bit activations except the most sensitive layers (at most a quarter of the
activation quantizers), promoted to 16-bit. Everything is built in a stage
(:mod:`skipat_deploy.core.staging`) and moved into place as one set only after every check has
passed; the report records the sha256 of each model beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..images import calibration
from ..models.checkpoint import LoadedCheckpoint, load_weights
from ..devices import check_precision, device_option, resolve_device
from ..core.errors import ExportValidationError, UserError
from ..export import (DEFAULT_RESOLUTION, INPUT_NAME, METADATA_KEY, ExportConfig, artifact_name, check_resolution,
                      export_onnx, output_name, run_qdq_cpu)
from ..core.files import sha256_file, sha256_path
from ..core.lazy import torch
from ..core.metrics import Figure, Quality, noise_more_than_doubled, quality, sqnr_db
from ..models.registry import build_model
from ..core.options import check_declared, option
from ..core.staging import staged
from .report import LayerSensitivity, write_layers_csv, write_noise_chart
from .search import LatencyMeter

PRECISIONS = ("w8a8", "w8a16", "mixed", "auto")
BACKENDS = ("aimet", "ort")
TARGETS = ("npu", "cpu")
COSTS = ("auto", "estimate", "hub")  # --precision auto's cost: how candidates are compared  # the NPU's QDQ model, the CPU INT8 model (quant.cpu)
# Every command that quantizes defaults to these (profile and compare say why they use w8a8).
DEFAULT_PRECISION = "w8a16"
DEFAULT_NUM_CALIB = 64
@dataclass(frozen=True)
class QuantizeConfig:
    resolution: int = option(DEFAULT_RESOLUTION, "Input size in px; calibration runs at this grid.")
    calib_dir: Path | None = option(None, "Folder of calibration images (.jpg/.png, searched recursively; a seeded sample spread over its subfolders is used); default: real photos bundled with scikit-image.", flag="--calib")
    num_calib: int = option(DEFAULT_NUM_CALIB, "Calibration samples (photos, then further crops of them).", minimum=1)
    eval_dir: Path | None = option(None, "Folder of held-out images for the quality report; default: a disjoint split of --calib.", flag="--eval")
    num_eval: int = option(16, "Evaluation samples.", minimum=1)
    # Held-out samples also run on the NPU (the HTP simulator, seconds each) for the report's
    # npu_sqnr_db, when quantize is given a way to run them (api.quantize, where onnxruntime-qnn
    # is installed); 0: off.
    npu_samples: int = option(2, "Of those, run on the HTP simulator for the NPU's own SQNR vs float (needs onnxruntime-qnn; seconds each; 0: off).", minimum=0)
    # Which model: the NPU's QDQ model (this module) or the CPU INT8 model (quant.cpu, from the
    # same calibration options: CpuInt8Config.like).
    target: str = option("npu", "npu (default: the QDQ model the Hexagon NPU runs) or cpu (an INT8 model for ONNX Runtime's integer kernels: the CPU fallback, <stem>.cpu_int8.onnx).", choices=TARGETS)
    precision: str = option(DEFAULT_PRECISION, "w8a8, w8a16, mixed (8-bit activations, the most sensitive layers 16-bit) or auto (the cheapest of those on the NPU that keeps --min-sqnr).", choices=PRECISIONS)
    # auto: the goal, on the held-out samples (quant.search)
    min_sqnr: float | None = option(None, "With --precision auto: the output SQNR vs float (dB) to keep on the held-out images, judged on the lower end of its 95 % interval.", flag="--min-sqnr", show_default=False)
    max_top1_drop: float | None = option(None, "With --precision auto: the top-1 points the model may lose against float on a labelled --eval folder (class folders, or an ImageNet val folder with its ground-truth file), judged on the upper end of the paired 95 % interval.", flag="--max-top1-drop", show_default=False, minimum=0)
    # What ranks the candidates auto finds keeping the goal: the graph estimate (quant.cost), or
    # their inference times on the phone on AI Hub (the command builds the meter).
    cost: str = option("auto", "With --precision auto: how the candidates that keep the goal are compared: hub (each compiled and timed on the phone on AI Hub, the fastest chosen), estimate (the NPU cost estimated from the graph; nothing leaves this machine), auto (hub where AI Hub is configured, else estimate).", choices=COSTS)
    quant_backend: str = option("aimet", "The quantizer: aimet (default) or ort (onnxruntime.quantization, QNN config).", choices=BACKENDS, old_flag="--backend")
    device: str = device_option()
    adaround: bool = option(False, "AdaRound the weights (AIMET).", flag="--adaround")
    qat_steps: int = option(0, "Distillation fine-tune steps of the simulation on the calibration images.", minimum=0)
    # Rotate the residual stream (float-equivalent; quant.rotate). None: where it pays,
    # with 8-bit activations. At w8a16 the activations are fine and the weights dominate the
    # noise, which rotation makes harder to round (DINOv2 w8a16 before GPTQ clipping: 33.99 dB plain, 33.07 rotated;
    # benchmarks/quant_quality.py).
    rotate: bool | None = option(None, "Rotate the residual stream before quantizing (float-equivalent, folded into the weights). Default: on for w8a8 and mixed, off for w8a16.", flag="--rotate/--no-rotate", show_default=False)

    @property
    def goal(self):
        """--precision auto's goal (:class:`.search.Goal`), or None."""
        from .search import Goal

        if self.min_sqnr is not None:
            return Goal("min_sqnr", self.min_sqnr)
        return None if self.max_top1_drop is None else Goal("max_top1_drop", self.max_top1_drop)

    @property
    def rotates(self) -> bool:
        return self.precision != "w8a16" if self.rotate is None else self.rotate
    seed: int = 0

    def check(self):
        """Reject bad options before any work; returns the device profile."""
        check_declared(self)
        if self.quant_backend == "ort" and (self.precision in ("mixed", "auto") or self.adaround or self.qat_steps):
            raise UserError("mixed and auto precision, --adaround and --qat-steps need --quant-backend aimet")
        goals = [g for g in (self.min_sqnr, self.max_top1_drop) if g is not None]
        if self.precision == "auto" and len(goals) != 1:
            raise UserError("--precision auto needs one goal: --min-sqnr DB or --max-top1-drop POINTS")
        if self.precision != "auto" and goals:
            raise UserError("--min-sqnr and --max-top1-drop are goals of --precision auto: add it")
        if self.precision != "auto" and self.cost != "auto":
            raise UserError(f"--cost {self.cost} compares the candidates of --precision auto: add it")
        if self.max_top1_drop is not None and self.eval_dir is None:
            raise UserError("--max-top1-drop judges top-1 on labelled images: give --eval DIR "
                            "(class folders, or an ImageNet val folder with its ground-truth file)")
        for what, folder in (("--calib", self.calib_dir), ("--eval", self.eval_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise UserError(f"{what} folder not found: {folder}")
        device = resolve_device(self.device)
        if self.precision != "auto":  # auto's candidates are built for the device's version
            check_precision(device, self.precision)
        return device


@dataclass(frozen=True)
class NpuFigure:
    """The QDQ model on the NPU (the HTP simulator) on the first held-out samples, against the
    float model, beside the CPU QDQ model on the same samples."""

    npu_sqnr_db: float
    qdq_sqnr_db: float  # the CPU QDQ model, the same samples
    npu_vs_qdq_sqnr_db: float
    num_samples: int
    runs_on: str


# Runs a QDQ model on the NPU: (model, samples (N, C, H, W)) -> (outputs, what ran them), or
# (None, why not) when it cannot run there. quant does not import npu: api.quantize passes one.
NpuRunner = Callable[[Path, np.ndarray], tuple["np.ndarray | None", str]]


@dataclass
class QuantizeResult:
    qdq_onnx: Path
    float_onnx: Path
    report_json: Path
    layers_csv: Path
    noise_png: Path | None  # per-layer noise share chart (AIMET)
    aimet_dir: Path | None
    precision: str
    backend: str
    device: str
    hexagon: str
    resolution: int
    quality: Quality  # the QDQ ONNX on ONNX Runtime CPU vs float PyTorch
    sim_quality: Quality | None  # the AIMET simulation vs float
    qdq_vs_sim_sqnr_db: float | None
    weights_only_sqnr_db: float | None  # simulation with only the weights quantized
    promoted: list[str]
    num_activation_quantizers: int
    sensitivity: list[LayerSensitivity]
    calib_source: str
    eval_source: str
    num_calib: int
    sizes_bytes: dict[str, int]
    seconds: float
    notices: list[str] = field(default_factory=list)
    # the files used: relative to --calib / --eval, or the bundled photos' names
    calib_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    rotated: bool = False  # the residual stream was rotated before quantizing
    # AIMET, 8-bit activations: output SQNR change bias correction made on calibration samples;
    # kept when positive
    bias_correction_db: float | None = None
    # sha256 of the models the report describes: float_onnx, qdq_onnx, aimet_dir (its files)
    sha256: dict[str, str] = field(default_factory=dict)
    npu: NpuFigure | None = None  # the NPU's own figure (cfg.npu_samples held-out samples)
    search: dict | None = None  # --precision auto: the goal, every candidate, the chosen one
    # the NPU cost estimated from the graph (quant.cost; AIMET runs), relative to w8a8: not timed
    cost_estimate: float | None = None
    search_files: dict[str, Path] = field(default_factory=dict)  # .precision.csv / .json / .png

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("qdq_onnx", "float_onnx", "report_json", "layers_csv", "noise_png", "aimet_dir"):
            d[k] = None if d[k] is None else str(d[k])
        d["search_files"] = {k: str(v) for k, v in self.search_files.items()}
        return d

    def figures(self) -> list[Figure]:
        """What was measured, each figure under its one name (:class:`Figure`)."""
        subject, q, cpu = str(self.qdq_onnx), self.quality, "cpu (onnxruntime, QDQ vs float PyTorch)"
        out = [Figure("sqnr_vs_float", q.sqnr_db, "dB", cpu, subject),
               Figure("cosine_vs_float_mean", q.cosine_mean, "", cpu, subject)]
        if q.top1_agreement is not None:
            out.append(Figure("top1_agreement_vs_float", q.top1_agreement, "", cpu, subject))
        if self.sim_quality is not None:
            out += [Figure("sim_sqnr_vs_float", self.sim_quality.sqnr_db, "dB", "aimet simulation", subject),
                    Figure("qdq_vs_sim_sqnr", self.qdq_vs_sim_sqnr_db, "dB", "cpu vs aimet simulation", subject)]
        if self.npu is not None:
            out += [Figure("npu_sqnr_vs_float", self.npu.npu_sqnr_db, "dB", self.npu.runs_on, subject),
                    Figure("npu_samples_cpu_sqnr_vs_float", self.npu.qdq_sqnr_db, "dB",
                           "cpu (onnxruntime, QDQ), the same samples", subject)]
        for c in (self.search or {}).get("candidates", []):  # --precision auto, timed on a phone
            if c.get("latency_ms") is not None:
                out.append(Figure("candidate_latency_median", c["latency_ms"], "ms",
                                  f"{self.search['measured_on']}, {c['measured']['runs']} runs",
                                  f"{subject}: {c['name']}"))
        return out + [Figure("quantize_seconds", self.seconds, "s", "cpu", subject)]

    def files(self) -> dict[str, Path]:
        """What was written, by kind (the names ``--json`` lists them under)."""
        kinds = (("float_onnx", self.float_onnx), ("qdq_onnx", self.qdq_onnx),
                 ("aimet_folder", self.aimet_dir), ("quality_report", self.report_json),
                 ("layer_csv", self.layers_csv), ("noise_chart", self.noise_png))
        return {**{k: p for k, p in kinds if p is not None}, **self.search_files}


def check_reproduces_simulation(qdq: Path, q: Quality, sim: Quality, qdq_vs_sim_db: float,
                                max_abs_diff: float) -> None:
    """Raise :class:`ExportValidationError` when the QDQ model is clearly worse than the
    simulation it was exported from (see :data:`skipat_deploy.core.metrics.QDQ_EXCESS_NOISE_DB`)."""
    if not noise_more_than_doubled(q.sqnr_db, sim.sqnr_db):
        return
    raise ExportValidationError(
        str(qdq), [f"the QDQ ONNX is clearly worse than the AIMET simulation it was exported "
                   f"from (SQNR vs float {q.sqnr_db:.1f} dB, simulation {sim.sqnr_db:.1f} dB: more "
                   f"than double the noise; QDQ vs simulation {qdq_vs_sim_db:.1f} dB), a sign of a "
                   "missing or mis-scaled quantizer in the export"],
        max_abs_diff)


def calibration_images(cfg, notices: list[str]):
    """The calibration and evaluation image sets of ``cfg`` (its ``calib_dir``, ``eval_dir``):
    seeded samples of ``num_calib`` / ``num_eval`` files spread over the folders' subfolders
    (:func:`calibration.draw`, nothing decoded yet), or the bundled photos."""
    if cfg.calib_dir is None:
        calib, evaluation = calibration.bundled_photos()
        notices.append(
            f"no --calib: calibrating on {len(calib.paths)} real photos bundled with scikit-image; "
            "give --calib DIR with images like the ones the model will see"
        )
    else:
        listing = calibration.list_images(cfg.calib_dir)
        held = cfg.num_eval if cfg.eval_dir is None else 0
        calib, evaluation = calibration.draw(listing, cfg.num_calib, cfg.seed, held_out=held)
        notices.extend(calib.skipped_notice("--calib"))
    if cfg.eval_dir is not None:
        evaluation, _ = calibration.draw(calibration.list_images(cfg.eval_dir, "--eval"),
                                         cfg.num_eval, cfg.seed + 1)
        notices.extend(evaluation.skipped_notice("--eval"))
    elif cfg.calib_dir is not None:
        notices.append(f"no --eval: evaluating on {len(evaluation.paths)} held-out files of --calib")
    return calib, evaluation


def labelled_held_out(cfg, res: int, pp, notices: list[str]):
    """``--eval`` as a labelled dataset (:mod:`skipat_deploy.images.dataset`): ``num_eval``
    images drawn per class, each once (no further views: a view would count one image twice),
    with their labels; unreadable ones are left out and said."""
    from ..images.dataset import load_dataset, stratified_subset
    from ..images.preprocess import load_image

    data = stratified_subset(load_dataset(cfg.eval_dir), cfg.num_eval, cfg.seed + 1)
    notices.extend(data.notices)
    xs, labels, used, bad = [], [], [], []
    for path, label in data.items:
        try:
            xs.append(load_image(path, res, pp))
        except UserError as e:
            bad.append(f"{path.name}: {e}")
            continue
        labels.append(label)
        used.append(path)
    if not xs:
        raise UserError(f"--eval {cfg.eval_dir}: no readable labelled image")
    if bad:
        notices.append(f"--eval: {len(bad)} unreadable image(s) left out (first: {bad[0]})")
    images = calibration.ImageSet(tuple(used), f"{len(used)} labelled images of {cfg.eval_dir} ({data.layout})",
                                  root=Path(cfg.eval_dir))
    return images, np.concatenate(xs), np.asarray(labels, np.int64)


def quantization_samples(ckpt: LoadedCheckpoint, cfg, notices: list[str], step: Callable[[str], None],
                         with_labels: bool = False):
    """What every quantizer starts from: the image sets of ``cfg`` (the files actually used),
    the calibration and evaluation samples at ``cfg.resolution``, the float PyTorch model and
    its outputs on the evaluation samples (the reference quality is measured against); with
    ``with_labels``, also the held-out images' labels (None unless the goal is top-1)."""
    grid = check_resolution(cfg.resolution, ckpt.arch.patch_size)
    calib_set, eval_set = calibration_images(cfg, notices)
    labels = None  # of the held-out images, when the goal is top-1
    pp, res = ckpt.spec.preprocess, cfg.resolution
    step(f"pre-processing {cfg.num_calib} calibration + {cfg.num_eval} evaluation samples at {res}px")
    if cfg.calib_dir is not None and cfg.eval_dir is None:  # a split of one folder
        calib_set, xc, eval_set, xe, said = calibration.load_split(
            calib_set, eval_set, res, pp, cfg.num_calib, cfg.num_eval, cfg.seed)
        notices.extend(said)
    else:
        calib_set, xc = calibration.load_samples(calib_set, res, pp, cfg.num_calib, seed=cfg.seed)
        notices.extend(calib_set.unusable_notice("--calib"))
        if getattr(cfg, "max_top1_drop", None) is not None:  # top-1 needs every image's own label
            eval_set, xe, labels = labelled_held_out(cfg, res, pp, notices)
        else:
            eval_set, xe = calibration.load_samples(eval_set, res, pp, cfg.num_eval, seed=cfg.seed + 1)
            notices.extend(eval_set.unusable_notice("--eval"))
    model = load_weights(build_model(ckpt.arch, grid), ckpt.state_dict, ckpt.spec.name).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(xe)).numpy()
    if with_labels:
        return calib_set, eval_set, xc, xe, model, ref, labels
    return calib_set, eval_set, xc, xe, model, ref


def _metadata(float_res, precision: str, backend: str, device, promoted: list[str],
              calib_source: str, goal: str | None = None) -> str:
    """The float export's metadata plus what the quantization did and which float model it
    started from (written beside it, by name and sha256: the NPU gate's reference)."""
    meta = dict(float_res.metadata)
    meta["quantization"] = dict(precision=precision, backend=backend, device=device.name,
                                soc=device.soc, hexagon=device.hexagon,
                                activations_16bit=promoted, calibration=calib_source,
                                float_onnx=dict(file=float_res.path.name, sha256=float_res.sha256),
                                **({"chosen_for": goal} if goal else {}))
    return json.dumps(meta, sort_keys=True)


def _search_outcome(search, ref: np.ndarray, q_out: np.ndarray, labels, cfg: QuantizeConfig,
                    folder: Path, stem: str) -> dict[str, Path]:
    """The written QDQ model's own figure against the goal (its simulation met it); the
    search's reports into ``folder``. :class:`~.search.GoalNotMet` when the export misses."""
    from .search import Candidate, GoalNotMet, sqnr_interval, top1_drop_interval, write_reports

    chosen, goal = search.candidates[search.chosen], cfg.goal
    written = Candidate("the QDQ export", chosen.precision, chosen.promoted, chosen.groups, chosen.cost)
    written.sqnr_db, written.sqnr_low_db = sqnr_interval(ref, q_out, cfg.seed)
    if labels is not None:
        written.top1_drop, written.top1_drop_high = top1_drop_interval(ref, q_out, labels)
    if not goal.met(written):
        raise GoalNotMet(f"{chosen.name} kept {goal.flag} in its simulation but its "
                         f"QDQ export reached {goal.reached(written)}; nothing written")
    return write_reports(search, folder, stem)


def _write_qdq(exported: Path, qdq: Path, backend: str, metadata: str) -> None:
    """The QDQ model, written once: the backend's export with the edits it needs and the
    metadata. AIMET exports float weights beside their quantizers (stored as the integers they
    round to); onnxruntime.quantization's Softmax steps go on a power of two, as the AIMET
    simulation puts them (:mod:`.qdq`)."""
    from .qdq import snap_softmax_steps_in_onnx, store_weights_as_integers

    model = onnx.load(str(exported))
    if backend == "aimet":
        store_weights_as_integers(model)
    else:
        snap_softmax_steps_in_onnx(model)
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=metadata)
    onnx.save(model, str(qdq))


def _npu_figure(npu: NpuRunner | None, qdq: Path, xe: np.ndarray, ref: np.ndarray,
                q_out: np.ndarray, count: int, notices: list[str],
                step: Callable[[str], None]) -> NpuFigure | None:
    """The first ``count`` held-out samples through ``npu``, against the float outputs ``ref``."""
    if npu is None or count == 0:
        return None
    k = min(count, len(xe))
    step(f"running {k} held-out samples on the NPU")
    out, runs_on = npu(qdq, xe[:k])
    if out is None:
        notices.append(f"no NPU figure in the report: {runs_on}")
        return None
    return NpuFigure(npu_sqnr_db=sqnr_db(ref[:k], out), qdq_sqnr_db=sqnr_db(ref[:k], q_out[:k]),
                     npu_vs_qdq_sqnr_db=sqnr_db(q_out[:k], out), num_samples=k, runs_on=runs_on)


def quantize(
    ckpt: LoadedCheckpoint,
    out_dir: str | Path,
    cfg: QuantizeConfig = QuantizeConfig(),
    step: Callable[[str], None] = lambda msg: None,
    npu: NpuRunner | None = None,
    latency: LatencyMeter | None = None,
) -> QuantizeResult:
    """``latency`` (``--precision auto``): time the candidates that keep the goal on a phone
    and choose the fastest; their QDQ models are written as the chosen one is."""
    t0 = time.perf_counter()
    device = cfg.check()
    notices: list[str] = []
    calib_set, eval_set, xc, xe, model, ref, labels = quantization_samples(ckpt, cfg, notices, step, True)
    if labels is not None and (not ckpt.arch.num_classes or labels.max() >= ckpt.arch.num_classes):
        raise UserError("--max-top1-drop needs a classifier whose classes cover --eval's labels "
                        f"({ckpt.spec.name} has {ckpt.arch.num_classes or 'no'} classes)")
    res = cfg.resolution
    classifier = ckpt.arch.num_classes > 0

    out_dir = Path(out_dir)
    base = artifact_name(ckpt, res, 1).removesuffix(".onnx")

    def tag_of(precision: str) -> str:
        return f"{base}_{precision}_{device.hexagon}" + ("_ort" if cfg.quant_backend == "ort" else "")

    precision, search, cost_estimate = cfg.precision, None, None  # auto: the chosen candidate's
    with staged(out_dir) as stage:
        tmp = stage.dir  # everything here moves into out_dir together
        step("exporting the float model")
        (float_res,) = export_onnx(ckpt, tmp, ExportConfig(resolutions=(res,)))
        exported = stage.scratch / "exported.qdq.onnx"  # the backend's; the QDQ model is written once, below
        aimet_dir = None
        sim_q = None
        bias_db = None
        qdq_vs_sim = None
        weights_only = None
        promoted: list[str] = []
        sens: list[LayerSensitivity] = []
        n_act = 0
        if cfg.quant_backend == "aimet":
            from . import aimet

            timer = None
            if latency is not None and cfg.precision == "auto":
                def timer(candidates):
                    from .aimet.sim import export_qdq

                    models = {}
                    for i, (c, sim) in enumerate(candidates):
                        raw = stage.scratch / f"candidate{i}.exported.onnx"
                        export_qdq(sim, torch.from_numpy(xc[:1]), str(raw), INPUT_NAME, output_name(ckpt))
                        models[c.name] = stage.scratch / f"{tag_of(c.precision)}.candidate{i}.qdq.onnx"
                        _write_qdq(raw, models[c.name], "aimet",
                                   _metadata(float_res, c.precision, "aimet", device, list(c.promoted),
                                             calib_set.source, cfg.goal.describe()))
                    return latency.measure(models, f"{base}_{device.hexagon}.precision")

            flow = aimet.run(model, xc, xe, ref, cfg, device, step, labels, timer)
            if flow.search is not None and timer is not None:
                flow.search.measured_on = latency.where
            precision, search, cost_estimate = flow.precision, flow.search, flow.cost_estimate
            step("exporting QDQ ONNX and the .aimet folder")
            aimet_dir = tmp / f"{tag_of(precision)}.aimet"
            flow.export(exported, aimet_dir, INPUT_NAME, output_name(ckpt))
            promoted, sens, n_act = flow.promoted, flow.sensitivity, flow.num_activation_quantizers
            sim_out = flow.sim_outputs
            weights_only = flow.weights_only_sqnr_db
            bias_db = flow.bias_correction_db
            if bias_db is not None and bias_db <= 0:
                notices.append(f"bias correction left out: it made the calibration samples' output "
                               f"worse ({bias_db:+.1f} dB)")
            sim_q = quality(ref, sim_out, classifier)
        else:
            from .ort import quantize_ort

            source = float_res.path
            if cfg.rotates:
                from .rewrite import prepare

                rewritten = prepare(model, torch.from_numpy(xc), True, cfg.seed, step)
                (rewritten_res,) = export_onnx(ckpt, stage.scratch / "rotated", ExportConfig(resolutions=(res,)),
                                               model=rewritten)
                source = rewritten_res.path
            step("onnxruntime.quantization (QNN QDQ config)")
            quantize_ort(str(source), str(exported), xc, INPUT_NAME,
                         16 if cfg.precision == "w8a16" else 8, 1)
        tag = tag_of(precision)
        qdq = tmp / f"{tag}.qdq.onnx"
        _write_qdq(exported, qdq, cfg.quant_backend,
                   _metadata(float_res, precision, cfg.quant_backend, device, promoted, calib_set.source,
                             None if search is None else search.goal))
        step("evaluating the QDQ ONNX on the CPU")
        q_out = run_qdq_cpu(qdq, xe)
        q = quality(ref, q_out, classifier)
        if sim_q is not None:
            qdq_vs_sim = sqnr_db(sim_out, q_out)
            check_reproduces_simulation(qdq, q, sim_q, qdq_vs_sim, float(np.abs(sim_out - q_out).max()))
        search_files: dict[str, Path] = {}
        if search is not None:  # the written model is held to the goal too, not only its simulation
            search_files = _search_outcome(search, ref, q_out, labels, cfg, tmp, tag)
        npu_figure = _npu_figure(npu, qdq, xe, ref, q_out, cfg.npu_samples, notices, step)

        final = {
            "float_onnx": out_dir / float_res.path.name,
            "qdq_onnx": out_dir / qdq.name,
            "aimet_dir": out_dir / f"{tag}.aimet" if aimet_dir else None,
            "report_json": out_dir / f"{tag}.quant.json",
            "layers_csv": out_dir / f"{tag}.layers.csv",
            "noise_png": out_dir / f"{tag}.noise.png" if sens else None,
            **{k: out_dir / p.name for k, p in search_files.items()},
        }
        sizes = {"float_onnx": float_res.path.stat().st_size, "qdq_onnx": qdq.stat().st_size}
        if aimet_dir:
            sizes["aimet_dir"] = sum(p.stat().st_size for p in aimet_dir.iterdir())
        result = QuantizeResult(
            qdq_onnx=final["qdq_onnx"], float_onnx=final["float_onnx"],
            report_json=final["report_json"], layers_csv=final["layers_csv"],
            noise_png=final["noise_png"], aimet_dir=final["aimet_dir"], precision=precision, backend=cfg.quant_backend,
            device=device.name, hexagon=device.hexagon, resolution=res, quality=q,
            sim_quality=sim_q, qdq_vs_sim_sqnr_db=qdq_vs_sim, weights_only_sqnr_db=weights_only,
            promoted=promoted,
            num_activation_quantizers=n_act, sensitivity=sens, calib_source=calib_set.source,
            eval_source=eval_set.source, num_calib=cfg.num_calib, sizes_bytes=sizes,
            calib_files=calib_set.files(), eval_files=eval_set.files(),
            seconds=0.0, notices=notices, rotated=cfg.rotates, bias_correction_db=bias_db,
            sha256={"float_onnx": float_res.sha256, "qdq_onnx": sha256_file(qdq),
                    **({"aimet_dir": sha256_path(aimet_dir)} if aimet_dir else {})},
            npu=npu_figure, search=None if search is None else search.to_json(), cost_estimate=cost_estimate,
            search_files={k: final[k] for k in search_files},
        )
        write_layers_csv(tmp / final["layers_csv"].name, sens, promoted)
        if sens:
            write_noise_chart(tmp / final["noise_png"].name, sens,
                              f"{tag}: where the output noise comes from ({len(promoted)} of {n_act} "
                              f"activation quantizers 16-bit; QDQ vs float {q.sqnr_db:.1f} dB)")
        result.seconds = time.perf_counter() - t0
        (tmp / final["report_json"].name).write_text(
            json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return result


"""Task accuracy: top-1 / top-5 of a classifier on a labelled dataset, the float model against
its INT8 versions on this CPU, on the HTP simulator and on a phone.

Every target runs the same pre-processed images, so its agreement with the float reference, its
logit SQNR and its top-1 drop are paired measurements on the same samples. A few hundred images
leave a wide margin, which the report states: top-1 with a Wilson score interval (Wilson 1927),
the drop with the Agresti-Min interval for paired proportions (Agresti & Min 2005), both 95 %.
The targets and how each makes its model are :mod:`.targets`; the images stream through them
in bounded memory, resumably (:mod:`.stream`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..models.checkpoint import LoadedCheckpoint
from ..devices import CpuHost, cpu_host, cpu_int8_warning, device_option, resolve_device
from ..core.errors import QualityGateError, UserError
from ..core.metrics import paired_drop_interval, wilson_interval
from ..export import DEFAULT_RESOLUTION, artifact_name, check_resolution
from ..export.artifact import ModelArtifact, read_model
from ..core.files import model_stem
from ..npu.config import hub_timeout_option
from ..core.options import check_declared, option
from ..images.preprocess import Preprocess
from ..core.staging import staged
from . import stream
from ..images.dataset import LabelledImages, stratified_subset
from .targets import TARGETS as REGISTRY
from .targets import EvaluateSource, TargetModels

TARGETS = tuple(REGISTRY)
FLOAT_TARGETS = tuple(t for t in TARGETS if not REGISTRY[t].int8)
INT8_TARGETS = tuple(t for t in TARGETS if REGISTRY[t].int8)
RUNS_ON = {name: t.runs_on for name, t in REGISTRY.items()}
CACHE = ".evaluate-cache"  # in --out: scores of an interrupted run, until it completes
GATE_EXIT_CODE = QualityGateError.exit_code  # --max-top1-drop exceeded

Step = Callable[[str], None]


@dataclass(frozen=True)
class EvaluateConfig:
    labels: Path | None = option(None, "CSV of path,label (label: class index or WordNet ID), or a text file of 'filename label' lines.", flag="--labels")
    # () : a checkpoint's torch, onnx, qdq; a model's own kind
    targets: tuple[str, ...] = option((), "Comma-separated: torch, onnx, qdq, npu (HTP simulator), device (the phone via AI Hub). Default: torch,onnx,qdq for --ckpt, the model's kind for --model.", parse="names", choices=TARGETS)
    resolution: int = option(DEFAULT_RESOLUTION, "Input size in px (--ckpt).")
    device: str = device_option()
    # None: every image
    num_samples: int | None = option(None, "Evaluate a seeded subset of this many images drawn per class (round-robin over the classes; default: all).", minimum=1)
    seed: int = option(0, "Seed of the --num-samples and --npu-samples draws.")
    # the simulator takes seconds per image
    npu_samples: int = option(64, "npu target: at most this many images, drawn per class (the x86-64 simulator takes seconds each).", minimum=1)
    samples_per_job: int = option(250, "device target: images per AI Hub inference job.", minimum=1)  # AI Hub inference: images per job
    # points; None: no gate
    max_top1_drop: float | None = option(None, "Gate: exit 4 when an INT8 target's top-1 is more than this many points below float.")
    hub_timeout_s: float = hub_timeout_option()

    def check(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise UserError(f"--targets {','.join(self.targets)}: use a comma-separated subset "
                            f"of {','.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise UserError(f"--targets {','.join(self.targets)} names a target twice")
        check_declared(self)
        if self.max_top1_drop is not None:
            if not (self.max_top1_drop >= 0):
                raise UserError(f"--max-top1-drop must be 0 or more points, got {self.max_top1_drop}")
            if self.targets and not any(t in INT8_TARGETS for t in self.targets):
                raise UserError("--max-top1-drop gates INT8 targets: add qdq, npu or device to --targets")
        resolve_device(self.device)


# --------------------------------------------------------------------------------------------
# Scores.

@dataclass
class TargetScore:
    name: str  # torch | onnx | qdq | npu | device
    runs_on: str
    model: str | None  # the artifact that ran (None: the PyTorch model)
    n: int  # images scored
    top1: float  # fractions 0-1
    top5: float
    top1_ci: tuple[float, float]
    agreement: float | None  # top-1 agreement with the float reference on the same images
    logit_sqnr_db: float | None  # vs the float reference
    top1_drop: float | None  # reference top-1 minus this target's, same images (fraction)
    top1_drop_ci: tuple[float, float] | None
    seconds: float  # running the model (the images are decoded meanwhile, on other threads)
    note: str | None = None
    image_files: list[str] = field(default_factory=list)  # the images scored, relative to the dataset
    num_classes: int = 0  # classes those images cover

    @property
    def images_per_s(self) -> float | None:
        return self.n / self.seconds if self.seconds > 0 else None

    @property
    def drop_is_noise(self) -> bool | None:
        """True when the drop's interval contains 0: these images cannot tell it from none."""
        if self.top1_drop_ci is None:
            return None
        return self.top1_drop_ci[0] <= 0 <= self.top1_drop_ci[1]


def score(name: str, tally: stream.Tally, items, root: Path | None, model: str | None,
          note: str | None = None) -> TargetScore:
    """A target's scores from its tally (:func:`stream.run_stream`); ``items`` the images."""
    n = len(tally.indices)
    if n == 0:
        raise UserError(f"{name}: none of its images could be read")
    labels = np.fromiter((items[i][1] for i in tally.indices), np.int64, n)
    correct = int(tally.top1_hit.sum())
    drop = drop_ci = None
    if tally.ref_top1_hit is not None:
        d, lo, hi = paired_drop_interval(tally.ref_top1_hit, tally.top1_hit)
        drop, drop_ci = d, (lo, hi)
    return TargetScore(name, RUNS_ON.get(name, name), model, n, correct / n,
                       float(tally.top5_hit.mean()), wilson_interval(correct, n), tally.agreement,
                       tally.sqnr_db, drop, drop_ci, tally.seconds, note,
                       [stream.relative(items[i][0], root) for i in tally.indices],
                       len(np.unique(labels)))


@dataclass
class EvaluateResult:
    model: str  # the checkpoint or ONNX model evaluated
    dataset: str
    layout: str
    resolution: int
    precision: str | None  # of the INT8 targets
    reference: str | None  # the float target the others are compared with
    targets: list[TargetScore]
    num_images: int  # usable images (each target's n may be smaller: the NPU cap)
    unreadable: list[tuple[str, str]]
    max_top1_drop: float | None  # points
    gate_failures: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0
    scoring_seconds: float = 0.0  # the images streaming through every target (models made)
    host: dict | None = None  # the CPU the CPU targets ran on (devices.CpuHost)

    @property
    def images_per_s(self) -> float | None:
        """Images through every target per second, decoding included."""
        return self.num_images / self.scoring_seconds if self.scoring_seconds > 0 else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        d["unreadable"] = [dict(path=p, why=w) for p, w in self.unreadable]
        d["images_per_s"] = self.images_per_s
        for t, s in zip(d["targets"], self.targets):
            t["drop_is_noise"] = s.drop_is_noise
            t["images_per_s"] = s.images_per_s
        return d


def apply_gate(result: EvaluateResult) -> None:
    """Fill ``gate_failures``: INT8 targets whose top-1 is below float by more than the limit."""
    if result.max_top1_drop is None:
        return
    for t in result.targets:
        if t.name in INT8_TARGETS and t.top1_drop is not None and t.top1_drop * 100 > result.max_top1_drop + 1e-9:
            result.gate_failures.append(
                f"{t.name}: top-1 {t.top1:.1%} is {t.top1_drop * 100:.2f} points below float "
                f"(limit {result.max_top1_drop:g}) on {t.n} images")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(result: EvaluateResult) -> str:
    lines = [
        f"# Accuracy of {Path(result.model).name} at {result.resolution} px",
        "",
        f"Dataset: {result.dataset} ({result.layout}), {result.num_images} images"
        + (f", {len(result.unreadable)} unreadable skipped" if result.unreadable else "") + ".",
        f"Reference for agreement and drop: {result.reference or 'none (no float target)'}.",
        *([f"CPU targets ran on: {CpuHost.from_json(result.host).describe()}."] if result.host else []),
        f"Scored in {result.scoring_seconds:.1f} s"
        + (f" ({result.images_per_s:.1f} images/s through every target, decoding included)."
           if result.images_per_s else "."),
        "",
        "| target | runs on | n | classes | top-1 % | 95 % CI | top-5 % | agreement % | logit SQNR dB | "
        "top-1 drop (points) | drop 95 % CI | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result.targets:
        ci = f"{_pct(t.top1_ci[0])} – {_pct(t.top1_ci[1])}"
        dci = "-" if t.top1_drop_ci is None else f"{_pct(t.top1_drop_ci[0])} – {_pct(t.top1_drop_ci[1])}"
        sq = "-" if t.logit_sqnr_db is None else ("inf" if math.isinf(t.logit_sqnr_db) else f"{t.logit_sqnr_db:.1f}")
        lines.append(f"| {t.name} | {t.runs_on} | {t.n} | {t.num_classes} | {_pct(t.top1)} | {ci} | {_pct(t.top5)} | "
                     f"{_pct(t.agreement)} | {sq} | {_pct(t.top1_drop)} | {dci} | "
                     f"{'-' if t.images_per_s is None else f'{t.images_per_s:.1f}'} |")
    lines.append("")
    for t in result.targets:
        if t.n < result.num_images and t.image_files:
            lines.append(f"- {t.name} scored {t.n} images of {t.num_classes} classes: "
                         + ", ".join(t.image_files))
        if t.note:
            lines.append(f"- {t.name}: {t.note}")
        if t.name in INT8_TARGETS and t.drop_is_noise:
            lines.append(f"- {t.name}: the drop's 95 % interval contains 0: on {t.n} images it "
                         "cannot be told apart from no drop.")
    if result.max_top1_drop is not None:
        verdict = "; ".join(result.gate_failures) if result.gate_failures else "passed"
        lines.append(f"- gate --max-top1-drop {result.max_top1_drop:g}: {verdict}")
    return "\n".join(lines) + "\n"


def write_reports(result: EvaluateResult, out_dir: Path, stem: str) -> dict[str, Path]:
    """``<stem>.evaluate.json`` and ``.md`` into ``out_dir``, together (:mod:`..staging`)."""
    names = {"json": f"{stem}.evaluate.json", "markdown": f"{stem}.evaluate.md"}
    result.files = {k: out_dir / v for k, v in names.items()}
    with staged(out_dir) as stage:
        stage.path(names["json"]).write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        stage.path(names["markdown"]).write_text(markdown(result))
    return result.files


# --------------------------------------------------------------------------------------------
# The command.

def evaluate(source: LoadedCheckpoint | Path, data: LabelledImages, out_dir: str | Path,
             cfg: EvaluateConfig, models: TargetModels, step: Step = lambda m: None) -> EvaluateResult:
    """Top-1 / top-5 of a classifier on ``data`` for every target of ``cfg``: from a checkpoint,
    the float model (``torch``), its export (``onnx``), the INT8 model (``qdq``), its context
    binary on the HTP simulator (``npu``) and on the phone (``device``), each made into
    ``out_dir`` first by ``models`` (the command's, :mod:`skipat_deploy.commands.evaluate`);
    from an exported ONNX (``source`` a path),
    that model (and, when it is quantized, its compiled forms). The images stream through every
    target at once; an interrupted run leaves its scores in ``out_dir/.evaluate-cache`` and the
    same command continues from them. Reports go into ``out_dir``; ``gate_failures`` lists INT8
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
        quantized, meta, artifact = False, {}, None
        cfg = replace(cfg, targets=cfg.targets or ("torch", "onnx", "qdq"))
    else:
        artifact = _exported(source)
        meta = artifact.metadata
        num_classes, pp, resolution = meta["num_classes"], Preprocess.from_dict(meta["preprocess"]), meta["resolution"]
        if not num_classes:
            raise UserError(f"{source.name} has no classification head (it outputs features): "
                            "top-1 needs class logits; evaluate a classifier")
        name, stem = str(source), model_stem(source)
        quantized = artifact.int8
        kind = "qdq" if quantized else "float"
        allowed = tuple(t for t in TARGETS if REGISTRY[t].model_kind == kind)
        cfg = replace(cfg, targets=cfg.targets or allowed[:1])
        wrong = [t for t in cfg.targets if t not in allowed]
        if wrong:
            what = "an INT8 QDQ model" if quantized else "a float model"
            raise UserError(f"--model {source.name} is {what}: it can be evaluated as "
                            f"{', '.join(allowed)}, not {', '.join(wrong)} (those need --ckpt)")
    cfg.check()
    if data.labels.max() >= num_classes:
        bad = next(p for p, c in data.items if c >= num_classes)
        raise UserError(f"label {data.labels.max()} ({bad}) is outside the model's {num_classes} classes")
    if cfg.max_top1_drop is not None and not any(t in FLOAT_TARGETS for t in cfg.targets):
        raise UserError("--max-top1-drop compares with the float model: add torch or onnx to "
                        "--targets (with --ckpt)")

    items = stratified_subset(data, cfg.num_samples, cfg.seed).items
    ordered = [t for t in TARGETS if t in cfg.targets]
    host = cpu_host()
    if quantized:  # a CPU INT8 model's figures hold only where its integer kernels do not saturate
        warning = cpu_int8_warning(artifact.quantization.record if artifact.quantization else {},
                                   Path(source).name, host)
        if warning:
            notices.append(warning)
    reference = next((t for t in ordered if t in FLOAT_TARGETS), None)
    src = EvaluateSource(source if isinstance(source, LoadedCheckpoint) else None,
                 None if isinstance(source, LoadedCheckpoint) else source, resolution, out_dir, cfg,
                 np.fromiter((c for _, c in items), np.int64, len(items)), step, models, notices)
    runners = []
    for t in ordered:
        r = REGISTRY[t].make(src)
        r.reference = reference if t != reference else None
        runners.append(r)
    notices.extend(n for n in models.notices if n not in notices)
    cache = out_dir / CACHE
    try:
        streamed = stream.run_stream(items, data.root, resolution, pp, runners, cache, step)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as its subclass: say what is kept
        kept = sum(1 for _ in cache.rglob("*.npz")) if cache.is_dir() else 0
        if not kept:
            raise
        raise type(e)(f"interrupted; the scores of {kept} group(s) of images are kept in "
                      f"{cache}: the same command continues from them") from None
    for t, k in streamed.resumed.items():
        notices.append(f"resumed: {t} had {k} images scored by an earlier run that stopped "
                       f"(kept in {cache})")
    if streamed.unreadable:
        notices.append(f"{len(streamed.unreadable)} unreadable image(s) skipped (first: "
                       f"{streamed.unreadable[0][1]})")
    scores = [score(r.name, streamed.tallies[r.name], items, data.root,
                    None if r.model is None else str(r.model), r.note) for r in runners]
    result = EvaluateResult(
        model=name, dataset=str(data.root), layout=data.layout, resolution=resolution,
        precision=((artifact.quantization.precision if artifact.quantization else None) if quantized
                   else models.precision if any(t in INT8_TARGETS for t in ordered) else None),
        reference=reference, targets=scores, num_images=len(items) - len(streamed.unreadable),
        unreadable=streamed.unreadable, max_top1_drop=cfg.max_top1_drop, notices=notices,
        scoring_seconds=streamed.seconds, host=host.to_json())
    apply_gate(result)
    result.seconds = time.perf_counter() - t0
    write_reports(result, out_dir, stem)
    stream.clear(cache, runners, items, data.root, resolution, pp)
    return result


def _exported(path: Path) -> ModelArtifact:
    artifact = read_model(path)
    if not artifact.metadata:
        raise UserError(f"{path} was not exported by skipat-deploy (no pre-processing metadata): "
                        "evaluate its checkpoint with --ckpt")
    return artifact

"""Task accuracy: top-1 / top-5 of a classifier on a labelled dataset, the float model against
its INT8 versions on this CPU, on the HTP simulator and on a phone.

Every target runs the same pre-processed images, so its agreement with the float reference, its
logit SQNR and its top-1 drop are paired measurements on the same samples. A few hundred images
leave a wide margin, which the report states: top-1 with a Wilson score interval (Wilson 1927),
the drop with the Agresti-Min interval for paired proportions (Agresti & Min 2005), both 95 %.
Making the models from a checkpoint is :mod:`skipat_deploy.pipeline`'s; this module runs models
that exist and scores them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..devices import DEFAULT_DEVICE, resolve_device
from ..errors import QualityGateError, UserError
from ..files import atomic_path
from ..preprocess import Preprocess, open_rgb, resize_and_crop
from .dataset import LabelledImages

TARGETS = ("torch", "onnx", "qdq", "npu", "device")
FLOAT_TARGETS = ("torch", "onnx")
INT8_TARGETS = ("qdq", "npu", "device")
RUNS_ON = {
    "torch": "PyTorch, float32 (CPU)",
    "onnx": "ONNX Runtime CPU, float32 export",
    "qdq": "ONNX Runtime CPU, INT8 QDQ model",
    "npu": "QNN HTP backend (x86-64 simulator), context binary",
    "device": "the phone's NPU (AI Hub inference jobs)",
}
GATE_EXIT_CODE = QualityGateError.exit_code  # --max-top1-drop exceeded
Z95 = 1.959964

Step = Callable[[str], None]


class AccuracyGateError(QualityGateError):
    """An INT8 target lost more top-1 than ``--max-top1-drop`` allows."""


@dataclass(frozen=True)
class EvaluateConfig:
    targets: tuple[str, ...] = ()  # () : a checkpoint's torch, onnx, qdq; a model's own kind
    resolution: int = 224
    precision: str = "w8a16"
    quant_backend: str = "aimet"
    device: str = DEFAULT_DEVICE
    num_samples: int | None = None  # None: every image
    seed: int = 0
    npu_max_samples: int = 64  # the simulator takes seconds per image
    samples_per_job: int = 250  # AI Hub inference: images per job
    max_top1_drop: float | None = None  # points; None: no gate
    calib_dir: Path | None = None  # INT8 targets from a checkpoint: calibration photos
    hub_timeout_s: float = 3600.0

    def check(self) -> None:
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise UserError(f"--targets {','.join(self.targets)}: use a comma-separated subset "
                            f"of {','.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise UserError(f"--targets {','.join(self.targets)} names a target twice")
        for name, value in (("--num-samples", self.num_samples), ("--npu-samples", self.npu_max_samples),
                            ("--samples-per-job", self.samples_per_job)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.max_top1_drop is not None:
            if not (self.max_top1_drop >= 0):
                raise UserError(f"--max-top1-drop must be 0 or more points, got {self.max_top1_drop}")
            if self.targets and not any(t in INT8_TARGETS for t in self.targets):
                raise UserError("--max-top1-drop gates INT8 targets: add qdq, npu or device to --targets")
        resolve_device(self.device)


# --------------------------------------------------------------------------------------------
# Images: decoded once, kept as 8-bit crops (a 224 crop is 150 kB), normalised batch by batch.

@dataclass
class EvalImages:
    crops: np.ndarray  # (N, H, W, 3) uint8, resized and center-cropped
    labels: np.ndarray  # (N,) class indices
    paths: list[str]
    preprocess: Preprocess
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    root: Path | None = None  # the dataset folder, which reported paths are relative to

    def __len__(self) -> int:
        return len(self.labels)

    def files(self) -> list[str]:
        """The images, as reported: relative to the dataset folder."""
        if self.root is None:
            return list(self.paths)
        return [Path(p).relative_to(self.root).as_posix() for p in self.paths]

    def take(self, idx: np.ndarray) -> EvalImages:
        """The images at ``idx``, in that order."""
        return EvalImages(self.crops[idx], self.labels[idx], [self.paths[i] for i in idx],
                          self.preprocess, [], self.root)

    def batches(self, size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """Normalised NCHW float32 batches of exactly ``size`` (the last padded by repeating
        its final image: exported models have a static batch)."""
        pp = self.preprocess
        mean, std = np.asarray(pp.mean, np.float32), np.asarray(pp.std, np.float32)
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, size):
            chunk = self.crops[start : min(start + size, n)].astype(np.float32) / 255.0
            chunk = ((chunk - mean) / std).transpose(0, 3, 1, 2)
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])
            yield np.ascontiguousarray(chunk)


def load_images(ds: LabelledImages, size: int, pp: Preprocess, step: Step = lambda m: None) -> EvalImages:
    """Decode and crop every image; unreadable ones are skipped and listed."""
    crops, labels, paths, unreadable = [], [], [], []
    for i, (path, label) in enumerate(ds.items):
        if i % 50 == 0:
            step(f"reading images ({i}/{len(ds.items)})")
        try:
            crops.append(np.asarray(resize_and_crop(open_rgb(path), size, pp), dtype=np.uint8))
        except UserError as e:
            unreadable.append((str(path), str(e)))
            continue
        labels.append(label)
        paths.append(str(path))
    if not crops:
        raise UserError(f"none of the {len(ds.items)} images under {ds.root} could be read "
                        f"(first: {unreadable[0][1]})")
    return EvalImages(np.stack(crops), np.asarray(labels, np.int64), paths, pp, unreadable, ds.root)


# --------------------------------------------------------------------------------------------
# Runners: logits (N, classes) of one model on the images.

def torch_logits(model, images: EvalImages, step: Step = lambda m: None, batch: int = 16) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i, x in enumerate(images.batches(batch)):
            step(f"torch: batch {i + 1} of {math.ceil(len(images) / batch)}")
            out.append(model(torch.from_numpy(x)).numpy())
    return np.concatenate(out)[: len(images)]


def onnx_logits(path: Path, images: EvalImages, name: str, step: Step = lambda m: None) -> np.ndarray:
    """A float or QDQ ONNX model on ONNX Runtime's CPU. The NPU's QDQ models run with graph
    optimisations off, Q/DQ as separate ops, so the result is the QDQ semantics the NPU
    implements rather than whatever integer kernels this CPU fuses them into; the CPU INT8
    model (made for those kernels) runs as a user's CPU runs it."""
    import onnxruntime as ort

    from ..export import read_metadata

    so = ort.SessionOptions()
    so.log_severity_level = 3
    for_cpu = (read_metadata(path).get("quantization") or {}).get("target") == "cpu"
    if name == "qdq" and not for_cpu:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    out = []
    for i, x in enumerate(images.batches(batch)):
        if i % 10 == 0:
            step(f"{name}: {i * batch}/{len(images)} images")
        out.append(sess.run(None, {inp.name: x})[0])
    return np.concatenate(out)[: len(images)]


def npu_logits(context_onnx: Path, device: str, images: EvalImages, limit: int,
               step: Step = lambda m: None) -> np.ndarray:
    """The compiled context binary on the QNN HTP backend (on x86-64: the simulator, seconds
    per image), for the first ``limit`` images."""
    from ..npu import qnn

    sess = qnn.htp_session(context_onnx, resolve_device(device))
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 1
    n = min(limit, len(images))
    out = []
    t0 = time.perf_counter()
    for i, x in enumerate(images.batches(batch, limit=n)):
        done = i * batch
        eta = "" if not done else f", about {(time.perf_counter() - t0) / done * (n - done):.0f} s left"
        step(f"npu (HTP simulator): {done}/{n} images{eta}")
        out.append(sess.run(None, {inp.name: x})[0])
    return np.concatenate(out)[:n]


# --------------------------------------------------------------------------------------------
# Scores.

def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (fractions)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_drop_interval(ref_correct: np.ndarray, test_correct: np.ndarray,
                         z: float = Z95) -> tuple[float, float, float]:
    """Top-1 of ``ref`` minus top-1 of ``test`` on the same samples, with the Agresti-Min 95 %
    interval (half a count added to each cell of the 2x2 table): (drop, low, high), fractions."""
    n = len(ref_correct)
    only_ref = int(np.sum(ref_correct & ~test_correct))
    only_test = int(np.sum(~ref_correct & test_correct))
    drop = (only_ref - only_test) / n
    n2 = n + 2
    p12, p21 = (only_ref + 0.5) / n2, (only_test + 0.5) / n2
    centre = p12 - p21
    half = z * math.sqrt(max(p12 + p21 - centre**2, 0.0) / n2)
    return drop, max(-1.0, centre - half), min(1.0, centre + half)


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
    seconds: float
    note: str | None = None
    image_files: list[str] = field(default_factory=list)  # the images scored, relative to the dataset
    num_classes: int = 0  # classes those images cover

    @property
    def drop_is_noise(self) -> bool | None:
        """True when the drop's interval contains 0: these images cannot tell it from none."""
        if self.top1_drop_ci is None:
            return None
        return self.top1_drop_ci[0] <= 0 <= self.top1_drop_ci[1]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


def score(name: str, logits: np.ndarray, labels: np.ndarray, model: str | None, seconds: float,
          reference: np.ndarray | None = None, note: str | None = None,
          files: list[str] | None = None) -> TargetScore:
    """Score ``logits`` against ``labels``; against ``reference`` (the float model's logits on
    the same images, at least as many) when given. ``files``: the images, for the report."""
    from ..metrics import sqnr_db

    n = len(logits)
    labels = labels[:n]
    correct = topk_correct(logits, labels, 1)
    agreement = sqnr = drop = drop_ci = None
    if reference is not None:
        ref = reference[:n]
        agreement = float(np.mean(ref.argmax(1) == logits.argmax(1)))
        sqnr = sqnr_db(ref, logits)
        d, lo, hi = paired_drop_interval(topk_correct(ref, labels, 1), correct)
        drop, drop_ci = d, (lo, hi)
    return TargetScore(name, RUNS_ON[name], model, n, float(correct.mean()),
                       float(topk_correct(logits, labels, 5).mean()),
                       wilson_interval(int(correct.sum()), n), agreement, sqnr, drop, drop_ci,
                       seconds, note, list(files or [])[:n], len(np.unique(labels)))


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

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        d["unreadable"] = [dict(path=p, why=w) for p, w in self.unreadable]
        for t, s in zip(d["targets"], self.targets):
            t["drop_is_noise"] = s.drop_is_noise
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
        "",
        "| target | runs on | n | classes | top-1 % | 95 % CI | top-5 % | agreement % | logit SQNR dB | "
        "top-1 drop (points) | drop 95 % CI | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result.targets:
        ci = f"{_pct(t.top1_ci[0])} – {_pct(t.top1_ci[1])}"
        dci = "-" if t.top1_drop_ci is None else f"{_pct(t.top1_drop_ci[0])} – {_pct(t.top1_drop_ci[1])}"
        sq = "-" if t.logit_sqnr_db is None else ("inf" if math.isinf(t.logit_sqnr_db) else f"{t.logit_sqnr_db:.1f}")
        lines.append(f"| {t.name} | {t.runs_on} | {t.n} | {t.num_classes} | {_pct(t.top1)} | {ci} | {_pct(t.top5)} | "
                     f"{_pct(t.agreement)} | {sq} | {_pct(t.top1_drop)} | {dci} | {t.seconds:.1f} |")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / f"{stem}.evaluate.json", "markdown": out_dir / f"{stem}.evaluate.md"}
    result.files = files
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text(markdown(result))
    return files

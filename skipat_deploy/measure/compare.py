"""ViT-T against SkipAt at 224 / 384: the question the toolchain exists to answer.

Given the models of both families at every resolution, measures and reports, per model and
resolution, the latency, the SkipAt/ViT ratio and the speed-up, with the paper's Galaxy S22
numbers beside when the device is the S22 (Table 3: NPU, INT8). Written into ``out_dir``:
``compare.md``, ``compare.json``, ``compare.csv`` and ``compare.png``.

Backends: ``cpu`` (ONNX Runtime on this machine, FP32 and INT8, timed side by side,
:func:`cpu_rows`) and ``hub`` (the phone's NPU through AI Hub, :func:`hub_rows`); ``auto`` is
hub when AI Hub is configured, else cpu. Making the models is :mod:`skipat_deploy.pipeline`'s.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..devices import DEFAULT_DEVICE, DeviceProfile
from ..errors import UserError
from ..npu import hub as hub_mod
from ..npu.compile import CompileConfig
from .latency import interleaved, pair_ratio
from .profile import submit_device_profile

FAMILIES = ("vit", "skipat")
DEFAULT_ARCHS = {"vit": "vit_tiny_patch16", "skipat": "skipat_tiny_patch16"}
# The paper's Table 3: Galaxy S22 NPU, INT8, ms.
PAPER_S22_MS = {("vit", 224): 5.65, ("vit", 384): 20.49, ("skipat", 224): 4.76, ("skipat", 384): 15.22}
# The paper's Table 1: ImageNet-1k top-1 %, float, 224 px, for the T-size models.
PAPER_TOP1 = {("vit_tiny_patch16", 224): 72.8, ("skipat_tiny_patch16", 224): 72.9}


@dataclass(frozen=True)
class CompareConfig:
    resolutions: tuple[int, ...] = (224, 384)
    device: str = DEFAULT_DEVICE
    backend: str = "auto"  # auto | hub | cpu
    precision: str = "w8a8"
    quant_backend: str = "aimet"  # hub: how the models sent to the phone are quantized
    runs: int = 30
    warmup: int = 5
    threads: int | None = None
    hub_timeout_s: float = 3600.0
    eval_samples: int | None = None  # --eval: a stratified subset of this many images


@dataclass
class CompareRow:
    model: str  # "vit" or "skipat"
    arch: str
    resolution: int
    latency_ms: float  # the headline: NPU estimate (hub) or FP32 CPU median (cpu)
    p90_ms: float | None
    int8_latency_ms: float | None  # cpu: the INT8 QDQ model on ONNX Runtime CPU
    ratio_vs_vit: float  # SkipAt / ViT at this resolution (median of paired ratios on the CPU)
    speedup_vs_vit: float
    paper_ms: float | None
    measured_on: str
    device_vs_cpu_sqnr_db: float | None = None  # hub: the phone's output vs the local QDQ model
    # --eval: top-1 (fractions) of the float model and of the INT8 QDQ model on the CPU
    top1_float: float | None = None
    top1_int8: float | None = None
    top1_int8_drop_ci: tuple[float, float] | None = None
    eval_images: int | None = None
    paper_top1: float | None = None  # %


@dataclass
class CompareResult:
    backend: str
    device: str
    rows: list[CompareRow]
    files: dict[str, Path]
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


def resolve_backend(backend: str, notices: list[str]) -> str:
    if backend not in ("auto", "hub", "cpu"):
        raise UserError(f"unknown --backend {backend!r}: use auto, hub or cpu")
    if backend != "auto":
        return backend
    try:
        hub_mod.client_config()
        return "hub"
    except hub_mod.HubNotConfigured:
        notices.append("AI Hub is not configured: measuring on this machine's CPU (ONNX Runtime) "
                       "instead of the phone's NPU; `qai-hub configure --api_token <TOKEN>` to use a phone")
        return "cpu"


def cpu_rows(models: dict[tuple[str, int], tuple[Path, Path]], archs: dict[str, str],
             cfg: CompareConfig, device: DeviceProfile, step: Callable[[str], None],
             notices: list[str]) -> list[CompareRow]:
    """``models``: (family, resolution) -> (FP32 ONNX, INT8 QDQ ONNX); ``archs``: family ->
    architecture name."""
    rows = []
    for res in cfg.resolutions:
        fp32 = {fam: models[(fam, res)][0] for fam in FAMILIES}
        int8 = {fam: models[(fam, res)][1] for fam in FAMILIES}
        step(f"timing ViT and SkipAt at {res}px side by side ({cfg.runs} runs each)")
        # FP32 and INT8 pairs are timed in passes of their own: a model that runs right after
        # a different kind of model (cold caches) reads slower, which would bias the ratio.
        stats, times = interleaved([fp32["vit"], fp32["skipat"]], runs=cfg.runs,
                                   warmup=cfg.warmup, threads=cfg.threads)
        int8_stats, _ = interleaved([int8["vit"], int8["skipat"]], runs=cfg.runs,
                                    warmup=cfg.warmup, threads=cfg.threads)
        n = stats[0].threads
        where = (f"this machine's CPU: ONNX Runtime {stats[0].onnxruntime}, {n} thread"
                 + ("s" if n != 1 else ""))
        for j, fam in enumerate(FAMILIES):
            ratio = pair_ratio(times, j, 0)
            rows.append(CompareRow(
                model=fam, arch=archs[fam], resolution=res,
                latency_ms=stats[j].median_ms, p90_ms=stats[j].p90_ms,
                int8_latency_ms=int8_stats[j].median_ms, ratio_vs_vit=ratio,
                speedup_vs_vit=1 / ratio,
                paper_ms=PAPER_S22_MS.get((fam, res)) if device.name == "Galaxy S22" else None,
                measured_on=where))
    notices.append("CPU latency is FP32 (INT8 QDQ beside it); the paper's figures are the S22 NPU "
                   "in INT8 and are shown for reference, not as comparable numbers")
    return rows


def hub_rows(models: dict[tuple[str, int], Path], archs: dict[str, str], out_dir: Path,
             cfg: CompareConfig, device: DeviceProfile, step: Callable[[str], None],
             notices: list[str]) -> list[CompareRow]:
    """``models``: (family, resolution) -> QDQ ONNX. Submit every compile job at once, then
    every profiling job as its compile finishes; await them together. Jobs are recorded in
    ``out_dir`` (re-runs resume)."""
    client = hub_mod.client()
    ccfg = CompileConfig(device=cfg.device, backend="hub", hub_timeout_s=cfg.hub_timeout_s)
    subs = {k: hub_mod.submit_compile(client, m, out_dir, ccfg, device, step) for k, m in models.items()}
    profiles = {}
    for k, sub in subs.items():
        hub_mod.finish_compile(sub, models[k], out_dir, ccfg, device, step)
        profiles[k] = submit_device_profile(client, sub, models[k], out_dir, device, step)
    figures = {}
    for k, (psub, reference, classifier) in profiles.items():
        figures[k] = hub_mod.finish_profile(psub, models[k], out_dir, device, reference, step,
                                            classifier, cfg.hub_timeout_s)
        notices.extend(figures[k].notices)
    rows = []
    for (fam, res), p in figures.items():
        ratio = p.estimated_inference_ms / figures[("vit", res)].estimated_inference_ms
        units = ", ".join(f"{n} {u}" for u, n in sorted(p.compute_units.items()))
        rows.append(CompareRow(
            model=fam, arch=archs[fam], resolution=res,
            latency_ms=p.estimated_inference_ms, p90_ms=None, int8_latency_ms=None,
            ratio_vs_vit=ratio, speedup_vs_vit=1 / ratio,
            paper_ms=PAPER_S22_MS.get((fam, res)) if device.name == "Galaxy S22" else None,
            measured_on=f"{p.hub_device} via AI Hub ({cfg.precision}; layers: {units})",
            device_vs_cpu_sqnr_db=None if p.device_check is None else p.device_check.sqnr_db))
    return rows


def add_accuracy(rows: list[CompareRow], scores: dict[tuple[str, int], tuple]) -> None:
    """``scores``: (family, resolution) -> (float TargetScore, INT8 TargetScore, the second
    scored against the first on the same images)."""
    for r in rows:
        fl, q = scores[(r.model, r.resolution)]
        r.top1_float, r.top1_int8, r.eval_images = fl.top1, q.top1, q.n
        r.top1_int8_drop_ci = q.top1_drop_ci
        r.paper_top1 = PAPER_TOP1.get((r.arch, r.resolution))


# --------------------------------------------------------------------------------------------
# Reports

def write_reports(result: CompareResult, tmp: Path, out_dir: Path) -> dict[str, Path]:
    staged = {
        "markdown": tmp / "compare.md",
        "json": tmp / "compare.json",
        "csv": tmp / "compare.csv",
        "png": tmp / "compare.png",
    }
    staged["markdown"].write_text(markdown(result))
    with open(staged["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(result.rows[0])))
        w.writeheader()
        for r in result.rows:
            w.writerow(asdict(r))
    chart(result, staged["png"])
    final = {k: out_dir / p.name for k, p in staged.items()}
    result.files = final
    staged["json"].write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    for k, p in staged.items():
        shutil.move(str(p), final[k])
    return final


def markdown(result: CompareResult) -> str:
    cpu = result.backend == "cpu"
    head = ["model", "resolution", "latency ms (median)" if cpu else "NPU latency ms (estimate)"]
    if cpu:
        head += ["p90 ms", "INT8 QDQ ms"]
    head += ["SkipAt/ViT", "speed-up"]
    with_paper = any(r.paper_ms is not None for r in result.rows)
    if with_paper:
        head.append("paper, S22 NPU INT8 ms")
    if not cpu:
        head.append("phone vs local QDQ SQNR")
    with_eval = any(r.top1_float is not None for r in result.rows)
    if with_eval:
        head += ["top-1 % float / INT8 (n)", "INT8 drop 95 % CI (points)"]
        if any(r.paper_top1 is not None for r in result.rows):
            head.append("paper top-1 % (ImageNet, float)")
    title = (f"# ViT-T vs SkipAt-T on {result.rows[0].measured_on.split(':')[0]}" if cpu
             else f"# ViT-T vs SkipAt-T on the {result.device} NPU (AI Hub)")
    lines = [title, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        cells = [r.arch, str(r.resolution), f"{r.latency_ms:.2f}"]
        if cpu:
            cells += [f"{r.p90_ms:.2f}", f"{r.int8_latency_ms:.2f}"]
        cells += [f"{r.ratio_vs_vit:.3f}", f"{r.speedup_vs_vit:.2f}x"]
        if with_paper:
            cells.append("-" if r.paper_ms is None else f"{r.paper_ms:.2f}")
        if not cpu:
            sq = r.device_vs_cpu_sqnr_db
            cells.append("-" if sq is None else f"{sq:.1f} dB")
        if with_eval:
            ci = r.top1_int8_drop_ci
            cells += [f"{100 * r.top1_float:.1f} / {100 * r.top1_int8:.1f} ({r.eval_images})",
                      "-" if ci is None else f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f}"]
            if any(x.paper_top1 is not None for x in result.rows):
                cells.append("-" if r.paper_top1 is None else f"{r.paper_top1:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Measured on: {result.rows[0].measured_on}."]
    lines += [f"Note: {n}" for n in result.notices]
    return "\n".join(lines) + "\n"


def chart(result: CompareResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = sorted({r.resolution for r in result.rows})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    width = 0.38
    for k, fam in enumerate(FAMILIES):
        vals = [next(r.latency_ms for r in result.rows if r.model == fam and r.resolution == x) for x in res]
        bars = ax.bar([i + (k - 0.5) * width for i in range(len(res))], vals, width,
                      label="ViT-T" if fam == "vit" else "SkipAt-T")
        if fam == "skipat":
            ratios = [next(r.ratio_vs_vit for r in result.rows if r.model == fam and r.resolution == x) for x in res]
            for b, q in zip(bars, ratios):
                ax.annotate(f"{q:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(res)), [f"{x}px" for x in res])
    ax.set_ylabel("latency (ms)")
    import textwrap

    where = result.rows[0].measured_on
    ax.set_title(textwrap.fill(f"ViT-T vs SkipAt-T, {where}", 70), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

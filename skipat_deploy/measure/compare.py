"""ViT-T against SkipAt at 224 / 384: the question the toolchain exists to answer.

Given the models of both families at every resolution, measures and reports, per model and
resolution, the latency, the SkipAt/ViT ratio and the speed-up, with the paper's Galaxy S22
numbers beside when the device is the S22 (Table 3: NPU, INT8). Written into ``out_dir``:
``compare.md``, ``compare.json``, ``compare.csv`` and ``compare.png``.

Backends: ``cpu`` (ONNX Runtime on this machine, FP32 and INT8, timed side by side,
:func:`cpu_rows`), ``hub`` (the phone's NPU through AI Hub, :func:`hub_rows`) and ``adb`` (the
user's phone over USB with their QAIRT SDK, the models alternated in rounds, :func:`adb_rows`);
``auto`` is adb when one phone is attached and an SDK is set, else hub when AI Hub is
configured, else cpu (:func:`resolve_backend`). Making the models is :mod:`skipat_deploy.commands.compare`'s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..devices import DeviceProfile, cpu_host, device_option
from ..core.errors import UserError
from ..npu import hub as hub_mod
from ..export import DEFAULT_RESOLUTIONS
from ..npu.config import CompileConfig, hub_timeout_option
from ..core.options import option
from . import adb
from .latency import (Ratio, inferences_option, interleaved, measure_on_option, qairt_sdk_option,
                      ratio_interval, rounds_option, serial_option, threads_option)
from .profile import submit_device_profile

FAMILIES = ("vit", "skipat")
DEFAULT_ARCHS = {"vit": "vit_tiny_patch16", "skipat": "skipat_tiny_patch16"}
# The two INT8 models, named the same way in every output: what each backend measures as "INT8"
# (cpu: quant.cpu's model for ONNX Runtime's integer kernels; hub: the QDQ model the NPU runs,
# scored on the CPU for --eval).
INT8_MODEL = {"cpu": "the CPU INT8 model", "hub": "the NPU's QDQ model", "adb": "the NPU's QDQ model"}
# The paper's Table 3: Galaxy S22 NPU, INT8, ms.
PAPER_S22_MS = {("vit", 224): 5.65, ("vit", 384): 20.49, ("skipat", 224): 4.76, ("skipat", 384): 15.22}
# The paper's Table 1: ImageNet-1k top-1 %, float, 224 px, for the T-size models.
PAPER_TOP1 = {("vit_tiny_patch16", 224): 72.8, ("skipat_tiny_patch16", 224): 72.9}


@dataclass(frozen=True)
class CompareConfig:
    resolutions: tuple[int, ...] = option(DEFAULT_RESOLUTIONS, "Input size in px (repeatable).", flag="--resolution", repeat=True)
    device: str = device_option()
    measure_on: str = measure_on_option()
    # cpu: timed runs per round; rounds continue until the ratio is settled
    runs: int = option(30, "Timed CPU runs per model (after warm-up).")
    warmup: int = 5
    threads: int | None = threads_option()  # cpu: None = 1, pinned for steady paired figures (said so)
    hub_timeout_s: float = hub_timeout_option()
    ratio_target: float = 0.02  # cpu: stop once the SkipAt/ViT interval is within +-2 %
    budget_s: float = option(40.0, "CPU: stop timing a pair after this many seconds per resolution and model kind, settled or not (the table gives the interval reached).", flag="--time-budget")
    eval_dir: Path | None = option(None, "Labelled images (as for `evaluate --data`): float and INT8 top-1 beside the latency (needs trained --vit and --skipat).", flag="--eval")
    eval_labels: Path | None = option(None, "Labels file for --eval (as `evaluate --labels`).", flag="--eval-labels")
    # --eval: a stratified subset of this many images
    eval_samples: int | None = option(None, "Stratified subset of --eval (default: all).", flag="--eval-samples")
    serial: str | None = serial_option()
    qairt_sdk: Path | None = qairt_sdk_option()
    rounds: int = rounds_option()
    inferences: int = inferences_option()


@dataclass
class CompareRow:
    model: str  # "vit" or "skipat"
    arch: str
    resolution: int
    latency_ms: float  # the headline: NPU estimate (hub) or FP32 CPU median (cpu)
    p90_ms: float | None
    int8_latency_ms: float | None  # cpu: the CPU INT8 model on ONNX Runtime CPU
    ratio_vs_vit: float  # SkipAt / ViT at this resolution (median of paired ratios on the CPU)
    speedup_vs_vit: float
    paper_ms: float | None
    measured_on: str
    device_vs_cpu_sqnr_db: float | None = None  # hub: the phone's output vs the local QDQ model
    # cpu: 95 % interval of ratio_vs_vit from the paired runs, and how many pairs
    ratio_ci: tuple[float, float] | None = None
    ratio_pairs: int | None = None
    int8_ratio_vs_vit: float | None = None  # cpu: the same for the CPU INT8 models
    int8_ratio_ci: tuple[float, float] | None = None
    int8_vs_fp32: float | None = None  # cpu: INT8 median / FP32 median of this model
    # --eval: top-1 (fractions) of the float model and of INT8_MODEL[backend], on the CPU
    top1_float: float | None = None
    top1_int8: float | None = None
    top1_int8_drop_ci: tuple[float, float] | None = None
    eval_images: int | None = None
    paper_top1: float | None = None  # %
    # adb: quartiles of the round means, the fastest inference, the median context load time
    iqr_ms: tuple[float, float] | None = None
    min_ms: float | None = None
    first_load_ms: float | None = None
    # adb: the detailed run's share of the per-op cycles by part (attention, phi, mlp, other)
    cycle_shares: dict[str, float] | None = None


@dataclass
class CompareResult:
    backend: str
    device: str
    rows: list[CompareRow]
    files: dict[str, Path]
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # models made into the output folder (hub: QDQ models, AI Hub artifacts): (kind, path)
    made: list[tuple[str, Path]] = field(default_factory=list)
    host: dict | None = None  # cpu: the CPU that measured it (devices.CpuHost)
    phone: dict | None = None  # adb: the phone, the SDK, the profile, every round (PhoneTiming)

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        d["made"] = [dict(kind=k, path=str(p)) for k, p in self.made]
        return d


def resolve_backend(backend: str, notices: list[str], serial: str | None = None,
                    qairt_sdk: str | Path | None = None) -> str:
    """``backend``, or for ``auto`` the first that can run: adb (one phone ready, an SDK set),
    hub (AI Hub configured), cpu; a notice says which when it is not the phone."""
    if backend not in ("auto", "adb", "hub", "cpu"):
        raise UserError(f"unknown --backend {backend!r}: use auto, adb, hub or cpu")
    if backend != "auto":
        return backend
    phone = adb.usable(serial, qairt_sdk)
    if phone is not None:
        notices.append(f"--backend auto: timing on the phone {phone} over adb with the QAIRT SDK "
                       f"at {adb.sdk_root(qairt_sdk)}")
        return "adb"
    try:
        hub_mod.client_config()
        notices.append("--backend auto: timing on the phone through AI Hub (configured); no phone "
                       "over adb with a QAIRT SDK set")
        return "hub"
    except hub_mod.HubNotConfigured:
        notices.append("AI Hub is not configured: measuring on this machine's CPU (ONNX Runtime) "
                       "instead of the phone's NPU; `qai-hub configure --api_token <TOKEN>` to use a phone")
        return "cpu"


def cpu_rows(models: dict[tuple[str, int], tuple[Path, Path]], archs: dict[str, str],
             cfg: CompareConfig, device: DeviceProfile, step: Callable[[str], None],
             notices: list[str]) -> list[CompareRow]:
    """``models``: (family, resolution) -> (FP32 ONNX, CPU INT8 ONNX); ``archs``: family ->
    architecture name. Each pair is timed until its SkipAt/ViT interval is within
    ``cfg.ratio_target`` or ``cfg.budget_s`` runs out."""
    rows = []
    threads = timing_threads(cfg)
    if cfg.threads is None:
        notices.append("compare pins ONNX Runtime to 1 thread: paired figures on a shared machine "
                       "are steadier that way (`profile` uses all cores; --threads N here to change)")
    for res in cfg.resolutions:
        fp32 = {fam: models[(fam, res)][0] for fam in FAMILIES}
        int8 = {fam: models[(fam, res)][1] for fam in FAMILIES}
        step(f"timing ViT and SkipAt at {res}px side by side (FP32, then CPU INT8)")
        # FP32 and INT8 pairs are timed in passes of their own: a model that runs right after
        # a different kind of model (cold caches) reads slower, which would bias the ratio.
        timing = dict(runs=cfg.runs, warmup=cfg.warmup, threads=threads, until=[(1, 0)],
                      target=cfg.ratio_target, budget_s=cfg.budget_s)
        stats, times = interleaved([fp32["vit"], fp32["skipat"]], **timing)
        int8_stats, int8_times = interleaved([int8["vit"], int8["skipat"]], **timing)
        where = f"this machine's CPU: {cpu_host(stats[0].threads).describe()}"
        ratio, int8_ratio = ratio_interval(times, 1, 0), ratio_interval(int8_times, 1, 0)
        for r, kind in ((ratio, "FP32"), (int8_ratio, "CPU INT8")):
            if r.relative_half_width > cfg.ratio_target:
                notices.append(
                    f"{kind} SkipAt/ViT at {res}px: {r.value:.3f} (95 % interval {r.low:.3f} to "
                    f"{r.high:.3f} after {r.pairs} pairs): this machine was too noisy to pin it "
                    f"to +-{cfg.ratio_target:.0%} within {cfg.budget_s:.0f} s"
                    + ("; it cannot tell SkipAt from ViT here" if r.low <= 1 <= r.high else ""))
        for j, fam in enumerate(FAMILIES):
            own = ratio if fam == "skipat" else Ratio(1.0, 1.0, 1.0, ratio.pairs)
            own8 = int8_ratio if fam == "skipat" else Ratio(1.0, 1.0, 1.0, int8_ratio.pairs)
            rows.append(CompareRow(
                model=fam, arch=archs[fam], resolution=res,
                latency_ms=stats[j].median_ms, p90_ms=stats[j].p90_ms,
                int8_latency_ms=int8_stats[j].median_ms, ratio_vs_vit=own.value,
                speedup_vs_vit=1 / own.value,
                paper_ms=PAPER_S22_MS.get((fam, res)) if device.name == "Galaxy S22" else None,
                measured_on=where, ratio_ci=(own.low, own.high), ratio_pairs=own.pairs,
                int8_ratio_vs_vit=own8.value, int8_ratio_ci=(own8.low, own8.high),
                int8_vs_fp32=int8_stats[j].median_ms / stats[j].median_ms))
    notices.append("CPU latency: FP32 and the CPU INT8 model (ONNX Runtime's integer kernels, "
                   "skipat_deploy.quant.cpu); the paper's figures are the S22 NPU in INT8 and are "
                   "shown for reference, not as comparable numbers")
    return rows


def timing_threads(cfg: CompareConfig) -> int:
    """The threads ONNX Runtime times with: ``--threads``, else 1 (paired figures on a shared
    machine are steadier that way)."""
    return cfg.threads or 1


def hub_rows(models: dict[tuple[str, int], Path], archs: dict[str, str], out_dir: Path,
             cfg: CompareConfig, precision: str, device: DeviceProfile, step: Callable[[str], None],
             notices: list[str], made: list[tuple[str, Path]] | None = None) -> list[CompareRow]:
    """``models``: (family, resolution) -> QDQ ONNX (quantized at ``precision``). Submit every compile job at once, then
    every profiling job as its compile finishes; await them together. Jobs are recorded in
    ``out_dir`` (re-runs resume). ``made`` collects the files written there, (kind, path)."""
    made = [] if made is None else made
    client = hub_mod.client()
    ccfg = CompileConfig(device=cfg.device, compiler="hub", hub_timeout_s=cfg.hub_timeout_s)
    subs = {k: hub_mod.submit_compile(client, m, out_dir, ccfg, device, step) for k, m in models.items()}
    profiles = {}
    for k, sub in subs.items():
        made += hub_mod.finish_compile(sub, models[k], out_dir, ccfg, device, step).files().items()
        profiles[k] = submit_device_profile(client, sub, models[k], out_dir, device, step)
    figures = {}
    for k, (psub, reference, classifier) in profiles.items():
        figures[k] = hub_mod.finish_profile(psub, models[k], out_dir, device, reference, step,
                                            classifier, cfg.hub_timeout_s)
        made.append(("raw_profile", figures[k].raw_profile))
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
            measured_on=f"{p.hub_device} via AI Hub ({precision}; layers: {units})",
            device_vs_cpu_sqnr_db=None if p.device_check is None else p.device_check.sqnr_db))
    return rows


def adb_rows(binaries: dict[tuple[str, int], Path], inputs: dict[tuple[str, int], Path],
             archs: dict[str, str], logs_dir: Path, cfg: CompareConfig, precision: str,
             target: adb.AdbTarget, device: DeviceProfile, step: Callable[[str], None],
             notices: list[str]) -> tuple[list[CompareRow], adb.PhoneTiming]:
    """``binaries``: (family, resolution) -> context binary compiled for the phone, each fed
    ``inputs`` (float32 raw). All are timed in the same alternated rounds; SkipAt/ViT at each
    resolution is the median of the per-round ratios with its 95 % interval."""
    names = {k: f"{k[0]}_{k[1]}" for k in binaries}
    timing = adb.time_on_phone(target.phone, target.sdk, {names[k]: b for k, b in binaries.items()},
                               {names[k]: inputs[k] for k in binaries}, logs_dir, target.built_with,
                               cfg.rounds, cfg.inferences, step)
    notices.extend(timing.notices)
    where = (f"{timing.where} ({precision}, QAIRT {target.sdk.version}, {timing.perf_profile}; "
             f"{cfg.rounds} rounds of {cfg.inferences} inferences)")
    rows = []
    for (fam, res), name in names.items():
        m = timing.models[name]
        own = (timing.ratio(names[("skipat", res)], names[("vit", res)]) if fam == "skipat"
               else Ratio(1.0, 1.0, 1.0, cfg.rounds))
        rows.append(CompareRow(
            model=fam, arch=archs[fam], resolution=res, latency_ms=m.median_ms, p90_ms=None,
            int8_latency_ms=None, ratio_vs_vit=own.value, speedup_vs_vit=1 / own.value,
            paper_ms=PAPER_S22_MS.get((fam, res)) if device.name == "Galaxy S22" else None,
            measured_on=where, ratio_ci=(own.low, own.high), ratio_pairs=own.pairs,
            iqr_ms=m.iqr_ms, min_ms=m.min_ms, first_load_ms=m.first_load_ms,
            cycle_shares=None if m.cycles is None else m.cycles.shares))
    notices.append(f"measured on {timing.where}: the median and quartiles are over {timing.statistic}; "
                   f"SkipAt/ViT is the median of the {cfg.rounds} rounds' paired ratios with its 95 % "
                   "interval; first load is the median context load time")
    return rows, timing


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
    """The reports, written into ``tmp`` (a stage folder of ``out_dir``: they move in with
    it); returns where they will be."""
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
    return final


def markdown(result: CompareResult) -> str:
    cpu, phone = result.backend == "cpu", result.backend == "adb"
    head = ["model", "resolution", "FP32 ms (median)" if cpu else "NPU ms (median)" if phone
            else "NPU latency ms (estimate)"]
    if cpu:
        head += ["p90 ms", "CPU INT8 ms", "INT8/FP32"]
    if phone:
        head += ["IQR ms", "min ms", "first load ms"]
    head += ["SkipAt/ViT (95 % CI)" if cpu or phone else "SkipAt/ViT", "speed-up"]
    if cpu:
        head.append("SkipAt/ViT, CPU INT8 (95 % CI)")
    with_paper = any(r.paper_ms is not None for r in result.rows)
    if with_paper:
        head.append("paper, S22 NPU INT8 ms")
    if result.backend == "hub":
        head.append("phone vs local QDQ SQNR")
    with_eval = any(r.top1_float is not None for r in result.rows)
    if with_eval:
        head += ["top-1 % float / INT8 (n)", "INT8 drop 95 % CI (points)"]
        if any(r.paper_top1 is not None for r in result.rows):
            head.append("paper top-1 % (ImageNet, float)")
    title = (f"# ViT-T vs SkipAt-T on {result.rows[0].measured_on.split(':')[0]}" if cpu
             else f"# ViT-T vs SkipAt-T on the NPU of {result.phone['measured_on']}" if phone
             else f"# ViT-T vs SkipAt-T on the {result.device} NPU (AI Hub)")
    lines = [title, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        cells = [r.arch, str(r.resolution), f"{r.latency_ms:.2f}"]
        if cpu:
            cells += [f"{r.p90_ms:.2f}", f"{r.int8_latency_ms:.2f}", f"{r.int8_vs_fp32:.2f}"]
        if phone:
            cells += [f"{r.iqr_ms[0]:.2f}-{r.iqr_ms[1]:.2f}", f"{r.min_ms:.2f}", f"{r.first_load_ms:.0f}"]
        cells += [_ratio(r.ratio_vs_vit, r.ratio_ci if r.model == "skipat" else None),
                  f"{r.speedup_vs_vit:.2f}x"]
        if cpu:
            cells.append(_ratio(r.int8_ratio_vs_vit, r.int8_ratio_ci if r.model == "skipat" else None))
        if with_paper:
            cells.append("-" if r.paper_ms is None else f"{r.paper_ms:.2f}")
        if result.backend == "hub":
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
    if phone and any(r.cycle_shares for r in result.rows):
        lines += ["", "Where the NPU's cycles go (one detailed profiling run per model: shares of "
                  "its per-op cycles, not milliseconds):", "",
                  "| model | resolution | attention | Φ | MLP | other |", "|---|---|---|---|---|---|"]
        for r in result.rows:
            if r.cycle_shares:
                lines.append(f"| {r.arch} | {r.resolution} | " + " | ".join(
                    f"{100 * r.cycle_shares[k]:.1f} %" for k in ("attention", "phi", "mlp", "other")) + " |")
        lines.append("")
    if phone:
        p, sdk = result.phone["phone"], result.phone["sdk"]
        lines += [f"Phone: {p['model']}, {p['soc']}, Android {p['android']}, build {p['build']}; "
                  f"QAIRT SDK {sdk['version']} (Hexagon {sdk['hexagon']}), binaries built by QNN "
                  f"{result.phone['qnn_built_with']}; --perf_profile {result.phone['perf_profile']}, "
                  f"--profiling_level {result.phone['profiling_level']} (the timed runs; detailed "
                  "for the cycles)."]
    lines += [f"Note: {n}" for n in result.notices]
    return "\n".join(lines) + "\n"


def _ratio(value: float, ci: tuple[float, float] | None) -> str:
    return f"{value:.3f}" if ci is None else f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def chart(result: CompareResult, path: Path) -> None:
    """Latency bars per resolution (FP32 and, on the CPU, CPU INT8, for both models), each
    SkipAt bar labelled with its SkipAt/ViT ratio and 95 % interval; the paper's S22 NPU ratio
    is written beside for reference."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = sorted({r.resolution for r in result.rows})
    row = {(r.model, r.resolution): r for r in result.rows}
    cpu = result.backend == "cpu"
    series = [("vit", "latency_ms", "ViT-T"), ("skipat", "latency_ms", "SkipAt-T")]
    if cpu:
        series = [("vit", "latency_ms", "ViT-T FP32"), ("skipat", "latency_ms", "SkipAt-T FP32"),
                  ("vit", "int8_latency_ms", "ViT-T CPU INT8"), ("skipat", "int8_latency_ms", "SkipAt-T CPU INT8")]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    width = 0.8 / len(series)
    for k, (fam, field_, label) in enumerate(series):
        vals = [getattr(row[(fam, x)], field_) for x in res]
        bars = ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(res))], vals,
                      width, label=label)
        if fam != "skipat":
            continue
        for b, x in zip(bars, res):
            r = row[(fam, x)]
            ratio, ci = ((r.ratio_vs_vit, r.ratio_ci) if field_ == "latency_ms"
                         else (r.int8_ratio_vs_vit, r.int8_ratio_ci))
            text = f"{ratio:.2f}" + (f"\n[{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    paper = {x: PAPER_S22_MS[("skipat", x)] / PAPER_S22_MS[("vit", x)] for x in res
             if ("skipat", x) in PAPER_S22_MS}
    if paper:
        ax.text(0.01, 0.97, "paper, S22 NPU INT8 SkipAt/ViT: "
                + ", ".join(f"{x}px {q:.2f}" for x, q in paper.items()),
                transform=ax.transAxes, va="top", fontsize=8, color="0.3")
    ax.set_xticks(range(len(res)), [f"{x}px" for x in res])
    ax.set_ylabel("latency (ms)")
    where = result.rows[0].measured_on
    ax.set_title(textwrap.fill(f"ViT-T vs SkipAt-T, {where} (labels: SkipAt/ViT, 95 % CI)", 80),
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.9))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

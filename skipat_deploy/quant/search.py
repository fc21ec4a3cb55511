"""``--precision auto``: the cheapest precision that keeps the user's goal, among what the HTP
runs.

Candidates, from cheapest to most precise (:func:`ladder`): w8a8 (rotated), w8a8 with growing
sets of 16-bit activation groups (a layer and the quantized ops that read it, as ``mixed``
groups them: the layers by their share of the output noise, measured on calibration samples
only), and w8a16. Each is built as the simulation of that plan for the device's Hexagon
version, so nothing runs on the CPU and no width the version rejects is asked for. fp16 is not
a candidate: it is the float model compiled as it is (``compile --fp16``), not a quantization.

The goal is judged on the held-out samples, on the end of a 95 % interval that would fail it
first: ``--min-sqnr`` on the **lower** end of a one-sided bootstrap interval of the output SQNR;
``--max-top1-drop`` (a labelled ``--eval`` folder) on the **upper** end of the Agresti-Min
interval of the paired top-1 drop against float. A candidate is chosen only when the goal holds
for images like the held-out ones, not just for these few, so the chosen model keeps it on
another set more often than it fails it. The per-layer sensitivity is measured first, on the
w8a8 simulation before its bias correction (a bias corrected for every quantizer at once would
make each layer alone look noisy). The search then evaluates w8a8 (that same simulation,
finished), then bisects the rest of the ladder, w8a16 last (the output SQNR grows with the 16-bit set):
about log2 of the ladder's length in further simulations. When the bisection ends at w8a16 and
even it misses, the goal cannot be met: exit 4, nothing written.

Cost: :mod:`.cost`, an estimate from the graph, relative to w8a8. With a
:class:`LatencyMeter` (the command builds one where AI Hub is configured: ``--cost``), every
candidate the search tried and found meeting the goal is then timed on the phone, and the
fastest measured one is chosen (:func:`choose_measured`); the estimate only orders the search.
A more precise candidate the bisection did not try is not timed: it would need its own
simulation, and the estimate ranks it dearer.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import QualityGateError
from ..core.metrics import paired_drop_interval

# 16-bit shares of the activation quantizers the ladder tries between w8a8 and w8a16.
LADDER_SHARES = (1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4)
BOOTSTRAP = 2000
CONFIDENCE = 0.95


class GoalNotMet(QualityGateError):
    """Even the most precise candidate the device can place misses the goal."""


@dataclass(frozen=True)
class Goal:
    """``min_sqnr`` (dB, on the interval's lower end) or ``max_top1_drop`` (points, on its upper
    end)."""

    kind: str
    target: float

    @property
    def unit(self) -> str:
        return "dB" if self.kind == "min_sqnr" else "points"

    @property
    def flag(self) -> str:
        """As the user typed it: ``--min-sqnr 24 dB``."""
        return f"--{self.kind.replace('_', '-')} {self.target:g} {self.unit}"

    def describe(self) -> str:
        return f"{self.kind} {self.target:g} {self.unit}"

    def bound(self, c: "Candidate") -> float:
        return c.sqnr_low_db if self.kind == "min_sqnr" else c.top1_drop_high

    def met(self, c: "Candidate") -> bool:
        b = self.bound(c)
        return b >= self.target if self.kind == "min_sqnr" else b <= self.target

    def reached(self, c: "Candidate") -> str:
        if self.kind == "min_sqnr":
            return f"{c.sqnr_db:.1f} dB on the held-out samples (95 % lower bound {c.sqnr_low_db:.1f} dB)"
        return (f"a top-1 drop of {c.top1_drop:.2f} points on the held-out images (95 % upper bound "
                f"{c.top1_drop_high:.2f})")


@dataclass
class Candidate:
    name: str
    precision: str  # w8a8 | mixed | w8a16: what the written model is
    promoted: tuple[str, ...]  # 16-bit activation layers (mixed)
    groups: int  # 16-bit groups
    cost: float  # estimated, w8a8 = 1.0
    sqnr_db: float | None = None  # held-out output SQNR vs float (the simulation)
    sqnr_low_db: float | None = None  # lower end of its one-sided 95 % interval
    top1_drop: float | None = None  # labelled held-out: float top-1 minus this one's, points
    top1_drop_high: float | None = None  # upper end of its 95 % interval
    meets: bool | None = None  # None: not tried
    latency_ms: float | None = None  # measured on the phone (a LatencyMeter), median inference time
    measured: dict | None = None  # how: runs, the job ids and links, the model's sha256


@dataclass
class SearchReport:
    goal: str  # "min_sqnr 24 dB"
    judged_on: str
    cost: str  # what the cost column is
    candidates: list[Candidate]
    chosen: int | None = None
    files: dict[str, Path] = field(default_factory=dict)
    measured_on: str | None = None  # where latency_ms was measured; None: estimate only

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


@dataclass(frozen=True)
class LatencyMeter:
    """Times QDQ models on a phone: ``measure({candidate name: QDQ path}, stem)`` returns
    ``{name: (median ms, how)}`` (``stem`` names the run's record, so an interrupted search
    resumes its jobs); ``where`` names the phone and the service, for every report."""

    where: str
    measure: Callable[[dict[str, Path], str], dict[str, tuple[float, dict]]]


def choose_measured(candidates: list[Candidate], chosen: int) -> int:
    """Among the candidates that met the goal and were timed, the fastest (ties: the cheaper
    estimate); ``chosen`` (the estimate's choice) when none was timed."""
    timed = [i for i, c in enumerate(candidates) if c.meets and c.latency_ms is not None]
    return min(timed, key=lambda i: (candidates[i].latency_ms, candidates[i].cost)) if timed else chosen


def sqnr_interval(ref: np.ndarray, out: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Output SQNR over the samples (pooled) and the lower end of its one-sided 95 % bootstrap
    interval (samples drawn with replacement)."""
    n = len(ref)
    r, o = ref.reshape(n, -1).astype(np.float64), out.reshape(n, -1).astype(np.float64)
    signal, noise = np.sum(r * r, 1), np.sum((r - o) ** 2, 1)
    point = 10 * np.log10(signal.sum() / max(noise.sum(), 1e-300))
    idx = np.random.default_rng(seed).integers(0, n, (BOOTSTRAP, n))
    boot = 10 * np.log10(signal[idx].sum(1) / np.maximum(noise[idx].sum(1), 1e-300))
    return float(point), float(np.quantile(boot, 1 - CONFIDENCE))


def top1_drop_interval(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Float top-1 minus the candidate's on the same labelled images, and the upper end of its
    95 % Agresti-Min interval, in points."""
    drop, _, high = paired_drop_interval(ref.argmax(1) == labels, out.argmax(1) == labels)
    return 100 * drop, 100 * high


def ladder(order: list[str], groups: dict[str, list[str]], n_act: int, shares=LADDER_SHARES) -> list[tuple[tuple[str, ...], int]]:
    """Growing 16-bit sets: layers by falling noise share (``order``), each with its group,
    up to each share of the ``n_act`` activation quantizers; (layers, groups) per rung, no two
    the same."""
    rungs, seen = [], set()
    for share in shares:
        budget, promoted, count = int(n_act * share), [], 0
        for name in order:
            new = [g for g in groups.get(name, [name]) if g not in promoted]
            if len(promoted) + len(new) <= budget:
                promoted += new
                count += 1
        key = tuple(promoted)
        if promoted and key not in seen:
            seen.add(key)
            rungs.append((key, count))
    return rungs


def choose(candidates: list[Candidate], evaluate: Callable[[Candidate], None], goal: Goal,
           step: Callable[[str], None] = lambda s: None) -> int:
    """The index of the cheapest candidate meeting the goal (candidates sorted by cost, the last
    the most precise); ``evaluate`` fills a candidate's figures. Raises :class:`GoalNotMet`."""
    def meets(i: int) -> bool:
        c = candidates[i]
        if c.meets is None:
            step(f"auto: trying {c.name}")
            evaluate(c)
            c.meets = goal.met(c)
        return c.meets

    if meets(0):
        return 0
    lo, hi = 1, len(candidates) - 1  # the first that meets is in [lo, hi], if any does
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid + 1
    if not meets(hi):  # the most precise one misses too
        tried = [c for c in candidates if c.sqnr_db is not None]
        best = max(tried, key=goal.bound) if goal.kind == "min_sqnr" else min(tried, key=goal.bound)
        raise GoalNotMet(f"no precision this device runs keeps {goal.flag}: the best, "
                         f"{best.name}, reached {goal.reached(best)}; nothing written")
    return hi


def write_reports(report: SearchReport, folder: Path, stem: str) -> dict[str, Path]:
    """``<stem>.precision.csv`` / ``.json`` / ``.png`` in ``folder``: every candidate, tried or
    not, its cost, quality and whether it met the goal; the chart is cost against quality."""
    paths = {k: folder / f"{stem}.precision.{ext}" for k, ext in
             (("precision_csv", "csv"), ("precision_json", "json"), ("precision_png", "png"))}
    with open(paths["precision_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["candidate", "precision", "groups_16bit", "layers_16bit", "cost_estimate",
                    "sqnr_db", "sqnr_low_db", "top1_drop", "top1_drop_high", "meets_goal",
                    "latency_ms_measured", "chosen"])
        cell = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        for i, c in enumerate(report.candidates):
            w.writerow([c.name, c.precision, c.groups, len(c.promoted), f"{c.cost:.3f}",
                        cell(c.sqnr_db), cell(c.sqnr_low_db), cell(c.top1_drop), cell(c.top1_drop_high),
                        "" if c.meets is None else int(c.meets), cell(c.latency_ms), int(i == report.chosen)])
    paths["precision_json"].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    _chart(paths["precision_png"], report)
    return paths


def _chart(path: Path, report: SearchReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sqnr = report.goal.startswith("min_sqnr")
    value = (lambda c: c.sqnr_db) if sqnr else (lambda c: c.top1_drop)
    bound = (lambda c: c.sqnr_low_db) if sqnr else (lambda c: c.top1_drop_high)
    tried = [c for c in report.candidates if c.sqnr_db is not None]
    for c in tried:
        below, above = (value(c) - bound(c), 0) if sqnr else (0, bound(c) - value(c))
        ax.errorbar([c.cost], [value(c)], yerr=[[below], [above]], fmt="o",
                    color="tab:green" if c.meets else "tab:red", capsize=3)
        label = c.name if c.latency_ms is None else f"{c.name}: {c.latency_ms:.2f} ms measured"
        ax.annotate(label, (c.cost, value(c)), textcoords="offset points", xytext=(5, 5), fontsize=7)
    for c in report.candidates:
        if c.sqnr_db is None:
            ax.axvline(c.cost, color="0.85", lw=0.8, zorder=0)
    if report.chosen is not None:
        c = report.candidates[report.chosen]
        ax.plot([c.cost], [value(c)], marker="*", markersize=16, color="gold", markeredgecolor="k",
                label=f"chosen: {c.name}")
    goal = float(report.goal.split()[1])
    ax.axhline(goal, color="k", ls="--", lw=1,
               label=f"goal {report.goal.split(' ', 1)[1]} (95 % {'lower' if sqnr else 'upper'} bound)")
    ax.set_xlabel(f"cost ({report.cost})")
    ax.set_ylabel("output SQNR vs float, held-out (dB)" if sqnr else "top-1 drop vs float, held-out (points)")
    where = f"; ms: measured on {report.measured_on}" if report.measured_on else ""
    ax.set_title(f"--precision auto: candidates tried (grey lines: not tried){where}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""CPU latency with ONNX Runtime, measured side by side.

Shared machines are noisy: models that are compared are timed in one process, interleaved run
by run (A B A B ...), and a comparison is the median of the per-pair ratios with a 95 %
distribution-free interval (order statistics of the paired ratios). :func:`interleaved` can keep
timing until every requested ratio is known to about +-2 % or a time budget ends. Figures are
medians and 90th percentiles of wall time per inference after warm-up.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import UserError
from ..core.options import option


def measure_on_option():
    """Where the latency commands (profile, compare) measure; its flag is --backend."""
    return option("auto", "Where to measure: adb (the phone on this machine's USB, with your QAIRT SDK), hub (the phone's NPU via AI Hub), cpu (ONNX Runtime here) or auto (adb when one phone is attached and an SDK is set, else hub when AI Hub is configured, else cpu).", flag="--backend", choices=("auto", "adb", "hub", "cpu"))


def serial_option():
    return option(None, "adb: the phone's serial (`adb devices`), when several are attached.")


def qairt_sdk_option():
    return option(None, "adb: the QAIRT SDK's root folder (default: $QAIRT_SDK_ROOT, else $QNN_SDK_ROOT).", flag="--qairt-sdk")


def rounds_option():
    return option(10, "adb: timed rounds; in each, every model runs --inferences times, the models in turn.", minimum=1)


def inferences_option():
    return option(20, "adb: inferences per model in each round (the profiling log gives their mean, min and max).", minimum=1)


def threads_option():
    return option(None, "ONNX Runtime CPU threads (default: all this machine's cores; 1 pins them for steadier figures on a shared machine).")


@dataclass
class CpuLatency:
    model: str
    median_ms: float
    p90_ms: float
    runs: int
    warmup: int
    threads: int
    provider: str = "CPUExecutionProvider"
    onnxruntime: str = ort.__version__


def session(path: str | Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for inp in sess.get_inputs():
        if any(not isinstance(d, int) for d in inp.shape):
            raise UserError(f"input {inp.name} has a dynamic shape {inp.shape}: export with a "
                            "static shape (skipat-deploy export does)")
        out[inp.name] = rng.standard_normal(inp.shape).astype(np.float32)
    return out


def default_threads() -> int:
    """What a user's machine gives ONNX Runtime unless told otherwise: all its cores."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Ratio:
    """Median of paired time ratios with its 95 % interval (order statistics: no assumption on
    the distribution of the noise)."""

    value: float
    low: float
    high: float
    pairs: int

    @property
    def relative_half_width(self) -> float:
        return (self.high - self.low) / 2 / self.value

    def to_json(self) -> dict:
        return dict(value=self.value, low=self.low, high=self.high, pairs=self.pairs)


def ratio_interval(times: np.ndarray, numerator: int, denominator: int, z: float = 1.959964) -> Ratio:
    """t[numerator] / t[denominator] over back-to-back pairs: median and the 95 % interval for
    the median from the ranks n/2 -+ z sqrt(n)/2 of the sorted ratios."""
    r = np.sort(times[:, numerator] / times[:, denominator])
    n = len(r)
    lo = max(0, math.floor(n / 2 - z * math.sqrt(n) / 2) - 1)
    hi = min(n - 1, math.ceil(n / 2 + z * math.sqrt(n) / 2) - 1)
    return Ratio(float(np.median(r)), float(r[lo]), float(r[hi]), n)


def interleaved(paths: list[str | Path], runs: int = 50, warmup: int = 5,
                threads: int | None = None, until: Sequence[tuple[int, int]] = (),
                target: float = 0.02, budget_s: float = 0.0, max_runs: int = 1000,
                ) -> tuple[list[CpuLatency], np.ndarray]:
    """Time every model ``runs`` times, one run of each in turn. With ``until`` (pairs of model
    indices), keep going in rounds of ``runs`` until each pair's ratio interval is within
    +-``target`` or ``budget_s`` seconds have been spent (or ``max_runs``). Returns the
    per-model figures and the raw times (runs x models, seconds) for per-pair ratios."""
    if runs < 1 or warmup < 0:
        raise UserError("--runs must be at least 1 and --warmup not negative")
    if budget_s < 0:
        raise UserError("--time-budget must not be negative (0: one round of --runs)")
    threads = threads or default_threads()
    sessions = [session(p, threads) for p in paths]
    feeds = [feed(s) for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    t0 = time.perf_counter()
    rounds = []
    while True:
        times = np.zeros((runs, len(paths)))
        for i in range(runs):
            for j, (s, f) in enumerate(zip(sessions, feeds)):
                t = time.perf_counter()
                s.run(None, f)
                times[i, j] = time.perf_counter() - t
        rounds.append(times)
        times = np.concatenate(rounds)
        settled = all(ratio_interval(times, a, b).relative_half_width <= target for a, b in until)
        if not until or settled or time.perf_counter() - t0 >= budget_s or len(times) >= max_runs:
            break
    stats = [CpuLatency(str(p), float(np.median(times[:, j]) * 1e3),
                        float(np.percentile(times[:, j], 90) * 1e3), len(times), warmup, threads)
             for j, p in enumerate(paths)]
    return stats, times


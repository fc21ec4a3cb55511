"""CPU latency with ONNX Runtime, measured side by side.

Shared machines are noisy: models that are compared are timed in one process, interleaved run
by run (A B A B ...), and a comparison is the median of the per-pair ratios. Figures are
medians and 90th percentiles of wall time per inference after warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import UserError


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


def interleaved(paths: list[str | Path], runs: int = 50, warmup: int = 5,
                threads: int | None = None) -> tuple[list[CpuLatency], np.ndarray]:
    """Time every model ``runs`` times, one run of each in turn. Returns the per-model figures
    and the raw times (runs x models, seconds) so callers can form per-pair ratios."""
    if runs < 1 or warmup < 0:
        raise UserError("--runs must be at least 1 and --warmup not negative")
    threads = threads or 1  # more threads made figures slower and noisier on shared 2-core machines
    sessions = [session(p, threads) for p in paths]
    feeds = [feed(s) for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times = np.zeros((runs, len(paths)))
    for i in range(runs):
        for j, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            times[i, j] = time.perf_counter() - t
    stats = [CpuLatency(str(p), float(np.median(times[:, j]) * 1e3),
                        float(np.percentile(times[:, j], 90) * 1e3), runs, warmup, threads)
             for j, p in enumerate(paths)]
    return stats, times


def pair_ratio(times: np.ndarray, numerator: int, denominator: int) -> float:
    """Median over runs of t[numerator] / t[denominator], each pair timed back to back."""
    return float(np.median(times[:, numerator] / times[:, denominator]))

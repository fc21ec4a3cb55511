"""How close a model's outputs are to a reference's: SQNR, cosine, top-1 agreement.

Used wherever two models are compared (quantized vs float, the NPU vs the CPU, the phone vs
this machine), so every report measures closeness the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np


@dataclass(frozen=True)
class Figure:
    """One measured figure as every output names it (``--json``'s measurements, the tables,
    the bundle manifest): each result's ``figures()`` is the one place its figures are named."""

    name: str
    value: float
    unit: str  # dB, s, ms, "" (a fraction)
    source: str  # what measured it
    subject: str  # the artifact it describes (a path)
    host: dict | None = None  # the CPU, where the figure depends on it


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref``, pooled over all values."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = np.sum((ref - test) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


@dataclass(frozen=True)
class Quality:
    """``test`` vs ``ref`` over a set of samples (all outputs pooled for SQNR)."""

    sqnr_db: float
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None  # classifiers only
    num_images: int


def quality(ref: np.ndarray, test: np.ndarray, classifier: bool) -> Quality:
    r, t = ref.reshape(len(ref), -1).astype(np.float64), test.reshape(len(test), -1).astype(np.float64)
    cos = np.sum(r * t, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1) + 1e-30)
    top1 = float(np.mean(r.argmax(1) == t.argmax(1))) if classifier else None
    return Quality(sqnr_db(r, t), float(cos.mean()), float(cos.min()), top1, len(r))


# The QDQ ONNX must compute what the AIMET simulation computes. What the check guards against is
# an export fault: a quantizer missing, mis-scaled or with a wrong zero point in the QDQ graph.
# A fault that matters adds error of the order of the whole quantization noise or more. A
# faithful export differs from the simulation only by integer rounding (int32 bias, summation
# order), whose noise adds to the simulation's own. So the QDQ model is refused only when its
# noise against float exceeds the simulation's by more than the simulation's whole noise (the
# export at least doubled the error): a QDQ model as good as the simulation always passes,
# whatever the photos, and the margin scales with the precision instead of being a fixed dB gap.
# The NPU gate (npu.compile) holds the compiled binary to the CPU QDQ model by the same rule.
QDQ_EXCESS_NOISE_DB = 10 * np.log10(2.0)


def noise_more_than_doubled(sqnr_db: float, reference_sqnr_db: float) -> bool:
    """Whether a model's noise against float exceeds a reference model's noise against float
    by more than that whole noise again (SQNRs in dB; see :data:`QDQ_EXCESS_NOISE_DB`)."""
    return sqnr_db < reference_sqnr_db - QDQ_EXCESS_NOISE_DB


# Intervals of top-1 (Wilson 1927) and of a paired top-1 drop (Agresti & Min 2005), 95 %: what
# evaluate reports and what --precision auto --max-top1-drop judges its goal on.
Z95 = 1.959964


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

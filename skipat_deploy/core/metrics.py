"""How close a model's outputs are to a reference's: SQNR, cosine, top-1 agreement.

Used wherever two models are compared (quantized vs float, the NPU vs the CPU, the phone vs
this machine), so every report measures closeness the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

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

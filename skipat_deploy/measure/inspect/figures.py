"""The statistics: per-tensor sums streamed one sample at a time, the table's rows, and the
tensors named (the largest QDQ drop, the first NPU divergence, the largest NPU drop)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .graph import DATA_MOVEMENT, Quantizer


@dataclass
class TensorRow:
    index: int
    tensor: str
    op: str
    layer: str
    bits: int
    scale: float
    rounding_sqnr_db: float | None
    op_vs_float_db: float | None  # the op's output in the QDQ model, before its quantizer
    qdq_vs_float_db: float | None
    npu_vs_float_db: float | None
    npu_vs_qdq_db: float | None
    qdq_drop_db: float | None
    npu_drop_db: float | None  # how much further the NPU falls behind the CPU QDQ model vs float here
    # the noise this activation quantizer adds (its output against its input, in the QDQ
    # model), as a fraction of its input's power: what largest_qdq_drop ranks by
    qdq_added_noise: float | None = None


@dataclass
class InspectResult:
    model: Path
    float_model: Path | None  # the output figures' reference; None: not known
    float_reference: str  # where the per-tensor float values come from
    device: str
    soc: str
    hexagon: str
    inputs: str  # what the samples are
    num_samples: int
    npu: str  # what the NPU columns come from, or why they are empty
    npu_partitions: int | None  # QNN partitions of the graph that ran on the HTP
    layers: list[TensorRow]
    output: dict  # the model's first output: SQNR of QDQ and NPU against float, and each other
    largest_qdq_drop: dict | None
    first_npu_divergence: dict | None
    largest_npu_drop: dict | None  # where the NPU falls furthest behind the CPU QDQ model vs float
    files: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = str(self.model)
        d["float_model"] = None if self.float_model is None else str(self.float_model)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return finite(d)


class Sums:
    """Per row, pooled over samples: signal powers and squared differences."""

    KEYS = ("ff", "qq", "nn", "fq", "fn", "qn", "fp", "pp", "pq", "size")

    def __init__(self, n: int):
        self.s = {k: np.zeros(n) for k in self.KEYS}
        self.have_f = np.ones(n, bool)
        self.have_n = np.zeros(n, bool)
        self.off_grid = np.zeros(n, bool)  # the NPU's value is not on the quantizer's grid

    def add(self, quant: Quantizer, f: np.ndarray | None, pre: np.ndarray, q: np.ndarray,
            n: np.ndarray | None) -> None:
        i = quant.index
        if n is not None and quant.zero_point is not None and n.size:
            # a float copy is off the grid everywhere (half its values by over a quarter step);
            # a quantized tensor the HTP dequantizes with its own rounding of the scale drifts
            # off it only toward the top of its range
            k = n.astype(np.float64) / quant.scale + quant.zero_point
            self.off_grid[i] |= bool(np.mean(np.abs(k - np.rint(k)) > 0.25) > 0.25)
            # compare the integers the NPU computed, dequantized with the model's own scale
            n = (np.rint(k) - quant.zero_point) * quant.scale
        q = q.astype(np.float64).ravel()
        self.s["qq"][i] += q @ q
        self.s["size"][i] += q.size
        pre = pre.astype(np.float64).ravel()
        self.s["pp"][i] += pre @ pre
        self.s["pq"][i] += np.sum((q - pre) ** 2)
        if f is None or f.size != q.size:
            self.have_f[i] = False
        else:
            f = f.astype(np.float64).ravel()
            self.s["ff"][i] += f @ f
            self.s["fq"][i] += np.sum((f - q) ** 2)
            self.s["fp"][i] += np.sum((f - pre) ** 2)
        if n is not None:
            n = n.astype(np.float64).ravel()
            self.have_n[i] = True
            self.s["nn"][i] += n @ n
            self.s["qn"][i] += np.sum((q - n) ** 2)
            if self.have_f[i] and f is not None and f.size == n.size:
                self.s["fn"][i] += np.sum((f - n) ** 2)


def _db(signal: float, noise: float) -> float | None:
    if signal <= 0:
        return None  # no signal: SQNR undefined
    return math.inf if noise <= 0 else 10 * math.log10(signal / noise)


def table_rows(quantizers: list[Quantizer], sums: Sums) -> list[TensorRow]:
    s = sums.s
    rows = []
    for q in quantizers:
        i = q.index
        f_ok, n_ok = bool(sums.have_f[i]), bool(sums.have_n[i] and not sums.off_grid[i])
        rows.append(TensorRow(
            index=i, tensor=q.tensor, op=q.op, layer=q.layer, bits=q.bits, scale=q.scale,
            rounding_sqnr_db=_db(s["qq"][i] / max(s["size"][i], 1), q.noise_power) if q.noise_power else None,
            op_vs_float_db=_db(s["ff"][i], s["fp"][i]) if f_ok else None,
            qdq_vs_float_db=_db(s["ff"][i], s["fq"][i]) if f_ok else None,
            npu_vs_float_db=_db(s["ff"][i], s["fn"][i]) if f_ok and n_ok else None,
            npu_vs_qdq_db=_db(s["qq"][i], s["qn"][i]) if n_ok else None,
            qdq_drop_db=None, npu_drop_db=None))
    for q, r in zip(quantizers, rows):
        r.npu_drop_db = _npu_drop(q, r, rows)
        if s["pp"][q.index] > 0:
            r.qdq_added_noise = float(s["pq"][q.index] / s["pp"][q.index])
        if r.qdq_vs_float_db is None or math.isinf(r.qdq_vs_float_db):
            continue
        if q.op in DATA_MOVEMENT:
            ref = r.op_vs_float_db
        else:
            before = [rows[j].qdq_vs_float_db for j in q.inputs]
            before = [b for b in before if b is not None and not math.isinf(b)]
            ref = min(before) if before else r.rounding_sqnr_db
        if ref is not None and not math.isinf(ref):
            r.qdq_drop_db = ref - r.qdq_vs_float_db
        elif ref is not None:  # exact before its quantizer (the input image): against one rounding
            r.qdq_drop_db = (r.rounding_sqnr_db or r.qdq_vs_float_db) - r.qdq_vs_float_db
    return rows


def _behind(r: TensorRow) -> float | None:
    """How far the NPU is behind the CPU QDQ model against float at ``r`` (dB; negative: ahead)."""
    q, n = r.qdq_vs_float_db, r.npu_vs_float_db
    if q is None or n is None or math.isinf(q) or math.isinf(n):
        return None
    return q - n


def _npu_drop(q: Quantizer, r: TensorRow, rows: list[TensorRow]) -> float | None:
    """How much further behind the CPU QDQ model (against float) the NPU falls at this op than
    at the quantized tensors it reads (the furthest behind of them; 0 for an op that reads
    none). None for ops that only move elements: they compute nothing (and may keep a subset
    the inputs' figures do not describe)."""
    own = _behind(r)
    if own is None or q.op in DATA_MOVEMENT:
        return None
    before = [b for j in q.inputs if (b := _behind(rows[j])) is not None]
    return own - (max(before) if before else 0.0)


def _excess_noise(r: TensorRow) -> float | None:
    """The NPU's noise against float beyond the CPU QDQ model's, as a fraction of the tensor's
    power (noises add, so this is what the NPU costs there)."""
    if _behind(r) is None:
        return None
    return 10 ** (-r.npu_vs_float_db / 10) - 10 ** (-r.qdq_vs_float_db / 10)


def _added_noise(q: Quantizer, r: TensorRow, rows: list[TensorRow]) -> float | None:
    """:func:`_excess_noise` at ``r`` less the most of it at the tensors the op reads."""
    own = _excess_noise(r)
    if own is None or r.npu_drop_db is None:
        return None
    before = [b for j in q.inputs if (b := _excess_noise(rows[j])) is not None]
    return own - (max(before) if before else 0.0)


def named(rows: list[TensorRow], quantizers: list[Quantizer]) -> tuple[dict | None, dict | None, dict | None]:
    drops = [r for r in rows if r.qdq_added_noise is not None]
    largest = None
    if drops:
        r = max(drops, key=lambda r: r.qdq_added_noise)
        inputs = [rows[j].tensor for j in quantizers[r.index].inputs]
        largest = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                       qdq_drop_db=r.qdq_drop_db, qdq_added_noise=r.qdq_added_noise,
                       qdq_vs_float_db=r.qdq_vs_float_db,
                       inputs=inputs,
                       inputs_qdq_vs_float_db=[rows[j].qdq_vs_float_db for j in quantizers[r.index].inputs])
    first = None
    for r in rows:
        if (r.npu_vs_qdq_db is not None and r.rounding_sqnr_db is not None
                and r.npu_vs_qdq_db < r.rounding_sqnr_db):
            first = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                         npu_vs_qdq_db=r.npu_vs_qdq_db, rounding_sqnr_db=r.rounding_sqnr_db)
            break
    # Ranked by the noise the NPU adds there (a fraction of the tensor's power), not by dB: a
    # 16-bit tensor 30 dB behind at 56 dB SQNR costs nothing next to an 8-bit softmax 15 dB
    # behind at 18 dB.
    added = {r.index: a for r in rows if (a := _added_noise(quantizers[r.index], r, rows)) is not None}
    npu = None
    if added and max(added.values()) > 0:
        r = rows[max(added, key=added.get)]
        ins = quantizers[r.index].inputs
        npu = dict(index=r.index, tensor=r.tensor, op=r.op, layer=r.layer, bits=r.bits,
                   npu_drop_db=r.npu_drop_db, added_noise=added[r.index], npu_vs_qdq_db=r.npu_vs_qdq_db,
                   npu_vs_float_db=r.npu_vs_float_db, qdq_vs_float_db=r.qdq_vs_float_db,
                   inputs=[rows[j].tensor for j in ins],
                   inputs_npu_vs_float_db=[rows[j].npu_vs_float_db for j in ins],
                   inputs_qdq_vs_float_db=[rows[j].qdq_vs_float_db for j in ins])
    return largest, first, npu


def finite(x):
    """JSON has no infinity: an SQNR of identical tensors is written "inf"."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x

"""The files inspect writes: ``<stem>.inspect.csv``, ``.json`` and ``.png``, together."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...core.files import model_stem
from ...core.staging import staged
from .figures import InspectResult

Step = Callable[[str], None]


CSV_COLUMNS = ("index", "tensor", "op", "layer", "bits", "scale", "rounding_sqnr_db",
               "op_vs_float_db", "qdq_vs_float_db", "npu_vs_float_db", "npu_vs_qdq_db", "qdq_drop_db", "qdq_added_noise",
               "npu_drop_db")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) and v > 0 else "-inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


def write_reports(result: InspectResult, out_dir: Path, step: Step) -> None:
    stem = model_stem(result.model)
    names = {"inspect_csv": f"{stem}.inspect.csv", "inspect_json": f"{stem}.inspect.json",
             "inspect_png": f"{stem}.inspect.png"}
    step(f"writing {stem}.inspect.csv / .json / .png")
    with staged(out_dir) as stage:  # the three files move in together
        with open(stage.path(names["inspect_csv"]), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in result.layers:
                w.writerow([_cell(getattr(r, c)) for c in CSV_COLUMNS])
        write_chart(stage.path(names["inspect_png"]), result)
        result.files = {k: out_dir / v for k, v in names.items()}
        stage.path(names["inspect_json"]).write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _short(v) -> str:
    return "-" if v is None else "inf" if math.isinf(v) else f"{v:.1f}"


def write_chart(path: Path, result: InspectResult) -> None:
    """The three SQNR curves along the graph, the rounding SQNR dotted, the two named rows
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.layers
    idx = np.arange(len(rows))

    def curve(key):
        vals = [getattr(r, key) for r in rows]
        return np.array([np.nan if v is None or math.isinf(v) else v for v in vals], float)

    fig, ax = plt.subplots(figsize=(max(9, 0.02 * len(rows) + 6), 4.8), dpi=100)
    shown = [v for key in ("qdq_vs_float_db", "npu_vs_float_db", "npu_vs_qdq_db")
             for v in curve(key) if np.isfinite(v)]
    if shown:  # a constant tensor's 140 dB would flatten the rest: 100 dB is exact enough
        ax.set_ylim(min(shown) - 2, min(max(shown) + 2, 100))
    for key, label, style in (("qdq_vs_float_db", "CPU QDQ vs float", "-"),
                              ("npu_vs_float_db", "NPU vs float", "-"),
                              ("npu_vs_qdq_db", "NPU vs CPU QDQ", "-"),
                              ("rounding_sqnr_db", "one rounding (scale²/12)", ":")):
        y = curve(key)
        if np.isfinite(y).any():
            ax.plot(idx, y, style, lw=1.1, label=label)
    for mark, colour, label in ((result.largest_qdq_drop, "tab:red", "largest QDQ drop"),
                                (result.first_npu_divergence, "tab:purple", "first NPU divergence"),
                                (result.largest_npu_drop, "tab:brown", "largest NPU drop")):
        if mark is not None:
            ax.axvline(mark["index"], color=colour, ls="--", lw=1)
            ax.annotate(f"{label}: {mark['layer']} ({mark['op']})", (mark["index"], 1.0),
                        xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                        fontsize=7, color=colour)
    ax.set_xlabel(f"{len(rows)} quantized activations, input to output")
    ax.set_ylabel("SQNR (dB)")
    ax.set_xlim(-1, len(rows))
    ax.legend(loc="lower left", fontsize=8)
    o = result.output
    fig_title = (f"{result.model.name} on {result.device} ({result.soc}); {result.num_samples} samples; "
                 f"output vs float: CPU QDQ {_short(o['qdq_vs_float_db'])} dB, NPU {_short(o['npu_vs_float_db'])} dB")
    ax.set_title(fig_title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

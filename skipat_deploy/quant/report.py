"""What the quantization report says per layer: how much of the output noise each layer's
activations cause, and which layers run at 16 bit."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    bitwidth: int  # activation bitwidth in the final model
    sqnr_alone_db: float  # output SQNR when only this layer's activations are quantized
    noise_share: float  # its share of the summed activation noise power (0..1)


def write_layers_csv(path: Path, sens: list[LayerSensitivity], promoted: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "activation_bitwidth", "sqnr_alone_db", "noise_share", "promoted"])
        for s in sens:
            w.writerow([s.layer, s.bitwidth, f"{s.sqnr_alone_db:.3f}", f"{s.noise_share:.5f}",
                        int(s.layer in promoted)])


def _model_order(name: str) -> list:
    """Sort key that puts ``blocks.10`` after ``blocks.9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def write_noise_chart(path: Path, sens: list[LayerSensitivity], title: str) -> None:
    """A PNG of each activation layer's share of the output noise, in model order, 16-bit layers
    in their own colour: where the noise is, and what mixed precision bought."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(sens, key=lambda s: _model_order(s.layer))
    shares = [100 * s.noise_share for s in rows]
    colours = ["tab:orange" if s.bitwidth == 16 else "tab:blue" for s in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.06 * len(rows) + 4), 4.5), dpi=100)
    ax.bar(range(len(rows)), shares, color=colours, width=0.9)
    for i in sorted(range(len(rows)), key=lambda i: -shares[i])[:8]:  # name the largest
        ax.annotate(rows[i].layer, (i, shares[i]), rotation=60, fontsize=7, ha="left", va="bottom")
    ax.set_xlim(-1, len(rows))
    ax.set_ylim(0, max(shares + [1]) * 1.35)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(rows)} activation quantizers, input to output")
    ax.set_ylabel("share of the output noise (%)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:blue", label="8-bit"), Patch(color="tab:orange", label="16-bit")],
              loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

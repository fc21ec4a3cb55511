"""What the quantization report says per layer: how much of the output noise each layer's
activations cause, and which layers run at 16 bit."""

from __future__ import annotations

import csv
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

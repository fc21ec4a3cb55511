"""Mixed precision: which activation layers go 16-bit, from each layer's share of the output noise."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...core.metrics import sqnr_db
from .sim import _out_bw, activation_modules, input_sources, module_consumers

# Calibration samples the per-layer sensitivity is measured on (one forward of them per
# activation quantizer). Measured on DINOv2 ViT-S/14 mixed (a budget of 43 16-bit layers): the
# sets chosen on two disjoint single samples share 39-72 % of their layers (Jaccard), on two
# disjoint pairs 48 %, on two disjoint sets of 4 samples 76 %; a pass takes 60 s with one
# sample, 106 s with 4 (2 cores).
SENSITIVITY_SAMPLES = 4
MAX_PROMOTED_FRACTION = 0.25  # at most a quarter of the activation quantizers go 16-bit


def promotion_groups(model: nn.Module, quantized: set[str]) -> dict[str, list[str]]:
    """For every activation layer, what promoting it to 16 bit takes: the layer and the
    quantized ops that read its output. An op computes at one bitwidth on the HTP, so a
    consumer left at 8 bit would requantize the 16-bit tensor to 8 bit at its input and undo
    the promotion (a 16-bit softmax needs its attention-times-v matmul at 16 bit too)."""
    consumers = module_consumers(input_sources(model))

    def readers(name: str, depth: int = 0) -> list[str]:
        out = []
        for c in consumers.get(name, []):
            out += [c] if c in quantized or depth > 8 else readers(c, depth + 1)
        return out

    return {n: [n] + [c for c in dict.fromkeys(readers(n)) if c != n] for n in quantized}


def choose_promoted(rows, share: dict[str, float], groups: dict[str, list[str]], budget: int) -> list[str]:
    """Layers by falling noise share, each with its group, while the budget lasts."""
    promoted: list[str] = []
    for name, _, _ in rows:
        if share[name] <= 0.002:
            break
        new = [g for g in groups.get(name, [name]) if g not in promoted]
        if len(promoted) + len(new) <= budget:
            promoted += new
    return promoted


def isolated_sensitivity(sim, x: torch.Tensor, ref: np.ndarray, step=lambda s: None,
                         per_layer: bool = True):
    """Output SQNR with only the weights quantized, and per activation layer (``per_layer``):
    output SQNR when only that layer's activations are quantized (weights stay quantized
    everywhere). Quantization noise from different layers adds up roughly independently, so
    each layer's share of the noise power says what promoting it to 16 bit would recover."""
    from aimet_torch.utils import remove_activation_quantizers

    mods = dict(sim.model.named_modules())
    names = activation_modules(sim)
    quantized = [m for m in mods.values() if hasattr(m, "output_quantizers")]
    rows = []
    with remove_activation_quantizers(quantized):
        with torch.no_grad():
            weights_only = sqnr_db(ref, sim.model(x).numpy())
    for k, n in enumerate(names if per_layer else ()):
        if k % 8 == 0:
            step(f"sensitivity {k + 1}/{len(names)}")
        with remove_activation_quantizers([m for m in quantized if m is not mods[n]]):
            with torch.no_grad():
                rows.append((n, _out_bw(mods[n]), sqnr_db(ref, sim.model(x).numpy())))
    return weights_only, rows


def noise_share(rows, weights_only_db: float) -> dict[str, float]:
    """Fraction of the summed activation noise power each layer contributes (noise relative to
    the output power, less the weights' own noise that every measurement includes)."""
    floor = 10 ** (-weights_only_db / 10)
    power = {n: max(10 ** (-s / 10) - floor, 0.0) for n, _, s in rows}
    total = sum(power.values()) or 1.0
    return {n: p / total for n, p in power.items()}



"""An estimate of what a quantized model costs the Hexagon NPU, from its graph: for every op with
an activation quantizer, its multiply-accumulates and the activation bytes it writes, at the
width it runs at. Named an *estimate* wherever it is shown: no phone timed it.

    cost = sum over ops of  MACs x MAC_COST[bits] + BYTES_WEIGHT x output elements x bits / 8

Relative units (w8a8 of the same model = 1.0). What it assumes: a 16-bit activation op takes
twice the MAC time of an 8-bit one (the HMX / HVX int16 paths run at half the int8 rate) and
moves twice the bytes. What it ignores: op fusion, tiling, the cost of requantizing between
widths, DDR against VTCM. ``BYTES_WEIGHT`` is fitted on the published Galaxy S22 INT8 latencies
the project cites (the SkipAt paper's Table 3: ViT-T 5.65 / 20.49 ms, SkipAt-T 4.76 / 15.22 ms at
224 / 384; ``benchmarks/precision_cost.py`` refits it): MACs alone put SkipAt/ViT at 0.91 / 0.84
where the phone measured 0.84 / 0.74, because attention's n² elementwise traffic costs the NPU
more than its MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MAC_COST = {8: 1.0, 16: 2.0}
# MAC-equivalents per activation byte written: an elementwise op (softmax, GELU, LayerNorm:
# no MACs) is not free, and at 16 bit it costs twice. The ratio of HMX int8 MAC throughput to
# HVX vector bytes per cycle (4 HVX contexts x 128 B against ~4096 MACs per cycle) is about 8.
BYTES_WEIGHT = 8.0


@dataclass(frozen=True)
class OpCost:
    macs: int
    elements: int  # of its output


def op_costs(model: nn.Module, dummy: torch.Tensor, names: list[str]) -> dict[str, OpCost]:
    """MACs and output size of each module in ``names`` (the activation-quantized ones), from
    one forward of ``dummy`` (a single sample)."""
    mods = dict(model.named_modules())
    out: dict[str, OpCost] = {}
    hooks = []

    def hook(name):
        def record(m, inputs, y):
            y = y[0] if isinstance(y, (tuple, list)) else y
            elements = int(y.numel()) if torch.is_tensor(y) else 0
            macs = 0
            if isinstance(m, nn.Linear):
                macs = elements * m.in_features
            elif isinstance(m, nn.Conv2d):
                k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                macs = elements * k
            elif type(m).__name__ == "MatMul" and len(inputs) == 2:
                macs = elements * int(inputs[0].shape[-1])
            if not isinstance(m, nn.Identity):  # moves nothing on the NPU
                out[name] = OpCost(macs, elements)
        return record

    for n in names:
        if n in mods:
            hooks.append(mods[n].register_forward_hook(hook(n)))
    try:
        with torch.no_grad():
            model(dummy)
    finally:
        for h in hooks:
            h.remove()
    return out


def estimate(costs: dict[str, OpCost], sixteen_bit: set[str] | None) -> float:
    """The cost of the model whose ``sixteen_bit`` ops run at 16 bit (None: every op, w8a16),
    relative to the same model at w8a8."""
    def total(is16) -> float:
        return sum(c.macs * MAC_COST[16 if is16(n) else 8]
                   + BYTES_WEIGHT * c.elements * (2 if is16(n) else 1) for n, c in costs.items())

    base = total(lambda n: False) or 1.0
    return total((lambda n: True) if sixteen_bit is None else (lambda n: n in sixteen_bit)) / base

"""Where a model's NPU cycles go: a detailed profiling run's cycles per op, grouped by the part
of the network each op belongs to. SkipAt (Venkataramanan et al., ICLR 2024) replaces the
attention of its middle blocks by Φ, a small convolutional function of an earlier block's
attention output, so the shares of attention and Φ are where SkipAt and ViT differ.

The ops are read in the order the graph ran them, and named by the ONNX nodes of the export
(:mod:`skipat_deploy.export`): ``/norm1*`` opens a block's attention sublayer (its LayerNorm,
q/k/v, the two products, softmax, the projection) and ``/attn_residual*`` closes it; ``/norm2*``
opens the MLP and ``/mlp_residual*`` closes it; ``/param_*`` and ``/phi_*`` are Φ; everything
else (patch embedding, the head, layout and (de)quantization at the graph's edges, the residual
adds of skipped blocks) is "other". Shares are of the sum of the per-op cycles: cycles, never
converted to milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .viewer import OpCycles

PARTS = ("attention", "phi", "mlp", "other")
_PHI = re.compile(r"/(param_\d+|phi_[a-z_]+(\.\d+)?)/")
_OPENS = {re.compile(r"/norm1(_\d+)?/"): "attention", re.compile(r"/norm2(_\d+)?/"): "mlp"}
_CLOSES = {re.compile(r"/attn_residual(_\d+)?/"): "attention", re.compile(r"/mlp_residual(_\d+)?/"): "mlp"}


@dataclass(frozen=True)
class CycleShares:
    """Per part: the share of the model's per-op cycles, and how many ops."""

    shares: dict[str, float]
    ops: dict[str, int]
    cycles: int  # the sum of the per-op cycles
    accelerator_cycles: int | None  # the run's "Accelerator (execute) time (cycles)"

    def to_json(self) -> dict:
        return dict(shares=self.shares, ops=self.ops, per_op_cycles=self.cycles,
                    accelerator_cycles=self.accelerator_cycles)


def part_of_each(names: list[str]) -> list[str]:
    """The part (:data:`PARTS`) of each op, ``names`` in the order they ran."""
    parts, open_part = [], None
    for name in names:
        if _PHI.search(name):
            parts.append("phi")
            continue
        opened = next((p for rx, p in _OPENS.items() if rx.search(name)), None)
        if opened:
            open_part = opened
        closed = next((p for rx, p in _CLOSES.items() if rx.search(name)), None)
        if closed:
            # a residual add outside its sublayer: a skipped block's (Φ's output joining the stream)
            parts.append(closed if open_part == closed else "other")
            open_part = None
            continue
        parts.append(open_part or "other")
    return parts


def cycle_shares(run: OpCycles) -> CycleShares:
    names = [n for n, _ in run.ops]
    cycles = dict.fromkeys(PARTS, 0)
    count = dict.fromkeys(PARTS, 0)
    for part, (_, c) in zip(part_of_each(names), run.ops):
        cycles[part] += c
        count[part] += 1
    total = sum(cycles.values())
    return CycleShares({p: (cycles[p] / total if total else 0.0) for p in PARTS}, count, total, run.total)

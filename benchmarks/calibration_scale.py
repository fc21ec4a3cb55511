"""Calibration set cost against the folder's size (issue 21): choosing, decoding and
pre-processing the ``--num-calib`` samples (and the held-out ones) on a folder of N JPEGs in 10
class folders, and on a folder of 64, each run in its own subprocess for its peak RSS. Only
the calibration-set stage of ``quantize`` (``calibration_images`` + ``load_samples``), no AIMET.

    .venv/bin/python benchmarks/calibration_scale.py              # N = 20,000
    .venv/bin/python benchmarks/calibration_scale.py --n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 10


def make_folder(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (CLASSES, 64, 64, 3), dtype=np.uint8)
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True)
    for i in range(n):
        c = i % CLASSES
        Image.fromarray(np.roll(base[c], i, axis=1)).save(root / f"class{c:02d}" / f"img{i:06d}.jpg",
                                                           quality=80)
    return root


def measure(folder: str, num_calib: int, num_eval: int, res: int) -> dict:
    """One run (in a fresh process): the stage ``quantize`` runs before any model."""
    from skipat_deploy.images import calibration
    from skipat_deploy.images.preprocess import Preprocess
    from skipat_deploy.quant.quantize import QuantizeConfig, calibration_images

    import tracemalloc

    decoded = []
    real = calibration.open_rgb
    calibration.open_rgb = lambda p: decoded.append(p) or real(p)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports (torch) only
    tracemalloc.start()
    t = time.perf_counter()
    cfg = QuantizeConfig(calib_dir=Path(folder), num_calib=num_calib, num_eval=num_eval)
    calib, held = calibration_images(cfg, [])
    calib, xc = calibration.load_samples(calib, res, Preprocess(), num_calib, cfg.seed)
    held, xe = calibration.load_samples(held, res, Preprocess(), num_eval, cfg.seed + 1)
    seconds = time.perf_counter() - t
    traced_peak = tracemalloc.get_traced_memory()[1]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return dict(seconds=seconds, peak_rss_mib=rss_kb / 1024,
                stage_rss_mib=(rss_kb - rss_before_kb) / 1024, traced_mib=traced_peak / 2**20,
                decoded=len(decoded),
                classes=len({f.split("/")[0] for f in calib.files()}), shape=list(xc.shape),
                eval_shape=list(xe.shape), disjoint=set(calib.paths).isdisjoint(held.paths))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="JPEGs in the large folder")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--num-eval", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    a = ap.parse_args()
    if a.run:
        print(json.dumps(measure(a.run, a.num_calib, a.num_eval, a.resolution)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        big = make_folder(Path(tmp) / "big", a.n)
        small = make_folder(Path(tmp) / "small", 64)
        print(f"generated {a.n} + 64 JPEGs (64x64) in {time.perf_counter() - t:.1f} s", flush=True)
        rows = {}
        for name, folder in (("64 files", small), (f"{a.n} files", big)):
            out = subprocess.run([sys.executable, __file__, "--run", str(folder), "--num-calib",
                                  str(a.num_calib), "--num-eval", str(a.num_eval),
                                  "--resolution", str(a.resolution)],
                                 check=True, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
            rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    (s_name, s), (b_name, b) = rows.items()
    print(f"\n--num-calib {a.num_calib} --num-eval {a.num_eval} at {a.resolution} px "
          "(list, draw, decode, pre-process; one process each)")
    print(f"{'':24s}{s_name:>14s}{b_name:>16s}{'ratio':>9s}")
    for key, label, fmt in (("seconds", "time (s)", "{:.3f}"), ("peak_rss_mib", "peak RSS (MiB)", "{:.1f}"),
                            ("stage_rss_mib", "  of it this stage (MiB)", "{:.1f}"),
                            ("traced_mib", "Python heap peak (MiB)", "{:.1f}"),
                            ("decoded", "files decoded", "{:d}"), ("classes", "classes in calib", "{:d}")):
        ratio = b[key] / s[key] if s[key] else float("nan")
        print(f"{label:24s}{fmt.format(s[key]):>14s}{fmt.format(b[key]):>16s}{ratio:>8.2f}x")
    assert b["classes"] == CLASSES and s["classes"] == CLASSES, "not every class in the calibration list"
    assert b["disjoint"] and s["disjoint"], "held-out files overlap the calibration files"
    print(f"all {CLASSES} classes in both calibration lists; held-out files disjoint")


if __name__ == "__main__":
    main()

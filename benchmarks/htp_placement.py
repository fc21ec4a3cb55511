"""Every quantization variant on the Galaxy S22's NPU: ViT-T and SkipAt-T at 224 and 384, each
precision, compiled with CPU fallback off (every node on the HTP) and run on the HTP simulator
against the QDQ model on the CPU. Freshly initialised official architectures (placement and
agreement do not depend on trained weights; quality does: see quant_quality.py).

    python benchmarks/htp_placement.py [--precision w8a8 ...] [--resolution 224 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from skipat_deploy import api
from skipat_deploy.core.errors import UserError

ARCHS = ("vit_tiny_patch16", "skipat_tiny_patch16")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", action="append", choices=("w8a16", "w8a8", "mixed"))
    ap.add_argument("--resolution", action="append", type=int)
    ap.add_argument("--out", type=Path, default=Path("export/bench_htp"))
    a = ap.parse_args()
    rows = []
    for arch in ARCHS:
        for res in a.resolution or (224, 384):
            for precision in a.precision or ("w8a16", "w8a8", "mixed"):
                t = time.perf_counter()
                try:
                    c = api.compile(ckpt=None, arch=arch, out_dir=a.out / f"{arch}_{res}_{precision}",
                                    resolution=res, precision=precision, num_calib=16, npu_samples=1)
                    status = f"all nodes on the HTP; simulator vs CPU QDQ {c.check.sqnr_db:.1f} dB"
                except UserError as e:
                    status = "FAILED: " + str(e).splitlines()[0]
                rows.append((arch, res, precision, status, time.perf_counter() - t))
                print(*rows[-1][:4], f"{rows[-1][4]:.0f} s", flush=True)
    print("\n| model | resolution | precision | Galaxy S22 (v69) | time |\n|---|---|---|---|---|")
    for arch, res, precision, status, sec in rows:
        print(f"| {arch} | {res} | {precision} | {status} | {sec:.0f} s |")


if __name__ == "__main__":
    main()

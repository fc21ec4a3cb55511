"""Evaluation throughput and memory (issue 21): ``evaluate`` against the limit, a plain ONNX
Runtime loop over tensors decoded beforehand (same model, same threads), side by side in one
process; then peak memory of ``evaluate`` on 500 and on 5,000 images, each in its own
process; and the ImageNet-val (50,000 images) projection of ``torch,onnx,qdq`` from the
measured rate. The images are generated JPEGs of ImageNet's typical size (500x375) in 10 class
folders; the model is ViT-T/16 (freshly initialised: speed does not depend on the weights).

    .venv/bin/python benchmarks/evaluate_throughput.py            # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/evaluate_throughput.py --small 200 --large 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 10
IMAGENET_VAL = 50_000


def make_folder(root: Path, n: int) -> Path:
    """``n`` JPEGs of 500x375 with photo-like content (smooth shapes, texture, noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = rng.uniform(0.005, 0.05, 3)
        base = np.stack([128 + 100 * np.sin(xx * f[0] + yy * f[1] + i),
                         128 + 100 * np.cos(yy * f[2] + i * 0.3),
                         128 + 80 * np.sin((xx + yy) * f[1])], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / str(i % CLASSES) / f"img{i:06d}.jpg", quality=90)
    return root


def ckpt_and_export(tmp: Path) -> tuple[Path, Path]:
    import torch

    from skipat_deploy import api
    from skipat_deploy.models.checkpoint import fresh_checkpoint

    ck = fresh_checkpoint("vit_tiny_patch16")
    path = tmp / "vit_t.pth"
    torch.save(ck.state_dict, path)
    (r,) = api.export(path, tmp / "export", resolutions=(224,))
    return path, r.path


def plain_ort_loop(model: Path, data: Path, n: int) -> float:
    """images/s of ONNX Runtime alone: every tensor decoded before the clock starts."""
    import numpy as np

    from skipat_deploy.export import read_metadata
    from skipat_deploy.images.dataset import load_dataset
    from skipat_deploy.measure.targets import onnx_runner
    from skipat_deploy.images.preprocess import Preprocess, load_image

    pp = Preprocess.from_dict(read_metadata(model)["preprocess"])
    items = load_dataset(data).items[:n]
    x = np.concatenate([load_image(p, 224, pp) for p, _ in items])
    runner = onnx_runner(model, "onnx")  # the same session options evaluate uses
    runner.run(x[:4])  # warm-up
    t = time.perf_counter()
    runner.run(x)
    return n / (time.perf_counter() - t)


def evaluate_rate(model_or_ckpt: Path, data: Path, out: Path, n: int, targets: tuple[str, ...]) -> dict:
    from skipat_deploy import api

    kw = dict(model=model_or_ckpt) if model_or_ckpt.suffix == ".onnx" else dict(ckpt=model_or_ckpt)
    r = api.evaluate(data, out_dir=out, targets=targets, num_samples=n, **kw)
    return dict(wall_images_per_s=r.num_images / r.scoring_seconds,
                **{t.name: t.images_per_s for t in r.targets}, n=r.num_images)


def peak_memory(model: str, data: str, out: str) -> dict:
    """One ``evaluate --targets onnx`` in this (fresh) process: its peak RSS."""
    from skipat_deploy import api

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    r = api.evaluate(data, model=model, out_dir=out, targets=("onnx",))
    return dict(n=r.num_images, seconds=time.perf_counter() - t,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                before_mib=before / 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--projection-images", type=int, default=200,
                    help="images of the torch,onnx,qdq run the ImageNet projection is made from")
    ap.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)  # internal: one measurement
    a = ap.parse_args()
    if a.memory:
        print(json.dumps(peak_memory(*a.memory)))
        return
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        data = make_folder(tmp / "data", a.large)
        print(f"generated {a.large} JPEGs (500x375) in {time.perf_counter() - t:.0f} s", flush=True)
        ckpt, model = ckpt_and_export(tmp)

        plain, streamed, wall = [], [], []
        for i in range(a.repeats):
            plain.append(plain_ort_loop(model, data, a.small))
            e = evaluate_rate(model, data, tmp / f"e{i}", a.small, ("onnx",))
            streamed.append(e["onnx"])
            wall.append(e["wall_images_per_s"])
        p, s, w = (statistics.median(v) for v in (plain, streamed, wall))
        print(f"\nthroughput on {a.small} images, ViT-T 224, float ONNX (median of {a.repeats}):")
        print("| plain ORT loop (pre-decoded) | evaluate: onnx target | ratio | evaluate end to end (decode included) |")
        print(f"| {p:.1f} images/s | {s:.1f} images/s | {s / p:.2f} | {w:.1f} images/s ({w / p:.2f}) |", flush=True)

        e = evaluate_rate(ckpt, data, tmp / "proj", a.projection_images, ("torch", "onnx", "qdq"))
        minutes = IMAGENET_VAL / e["wall_images_per_s"] / 60
        print(f"\ntorch,onnx,qdq on {e['n']} images: torch {e['torch']:.1f}, onnx {e['onnx']:.1f}, "
              f"qdq {e['qdq']:.1f} images/s each; together {e['wall_images_per_s']:.1f} images/s "
              f"end to end -> ImageNet val ({IMAGENET_VAL}) projected at {minutes:.0f} min "
              "(scoring only; quantizing once adds its own minutes)", flush=True)

        mem = {}
        for n in (a.small, a.large):
            sub = tmp / f"data{n}"
            if n == a.large:
                sub = data
            else:  # the first n images of each class, in a folder of their own
                for c in range(CLASSES):
                    (sub / str(c)).mkdir(parents=True)
                    for f in sorted((data / str(c)).iterdir())[: n // CLASSES]:
                        (sub / str(c) / f.name).symlink_to(f)
            out = subprocess.run([sys.executable, __file__, "--memory", str(model), str(sub), str(tmp / f"m{n}")],
                                 capture_output=True, text=True, check=True)
            mem[n] = json.loads(out.stdout.strip().splitlines()[-1])
        print("\npeak memory of evaluate --targets onnx (own process each):")
        print("| images | peak RSS MiB | seconds |")
        for n, m in mem.items():
            print(f"| {m['n']} | {m['peak_rss_mib']:.0f} | {m['seconds']:.0f} |")
        print(f"ratio {a.large} / {a.small}: {mem[a.large]['peak_rss_mib'] / mem[a.small]['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()

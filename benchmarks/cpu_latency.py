"""CPU latency of ViT-T vs SkipAt-T: the project's exports against a naive export of reference
model definitions, at 224 and 384, measured side by side in one process.

Reference definitions: timm's ``VisionTransformer`` (ViT-T/16) and, for SkipAt, the official
code's structure on top of it (``BlockSkipAt`` + ``LeFF`` with its ``rearrange`` transposes and
``eca_layer_1d``), exported with a plain ``torch.onnx.export`` (opset 17, what a user gets
without this project). Both sets get the same (random) weights: latency does not depend on
their values.

Each resolution times the four models interleaved (A B C D A B C D ...) and reports the median
latency and the median of per-pair SkipAt/ViT ratios.

A second table puts the CPU INT8 model (skipat_deploy.quant.cpu) beside its peers, each as a
paired ratio to the project's FP32 export with its 95 % interval: the NPU's QDQ model (what the
CPU column used to time), ONNX Runtime's transformer optimizer on our FP32, ONNX Runtime dynamic
INT8, and eager PyTorch. Latency does not depend on weight values; the CPU INT8 model calibrates
on the bundled photos.

    pip install -e ".[bench]" && python benchmarks/cpu_latency.py [--runs 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from skipat_deploy import api
from skipat_deploy.measure.latency import feed, interleaved, ratio_interval, session



def reference_models(resolution: int):
    """timm ViT-T and an official-style SkipAt-T (same block structure as the released code)."""
    import timm.models.vision_transformer as tv

    class ECA(nn.Module):  # the official eca_layer_1d
        def __init__(self):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool1d(1)
            self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            y = self.avg_pool(x.transpose(-1, -2))
            y = self.sigmoid(self.conv(y.transpose(-1, -2)))
            return x * y.expand_as(x)

    class LeFF(nn.Module):  # the official Φ; rearrange written as the transposes it performs
        def __init__(self, dim, hidden):
            super().__init__()
            self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
            self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 5, 1, 2, groups=hidden), nn.GELU())
            self.linear2 = nn.Sequential(nn.Linear(hidden, dim))
            self.eca = ECA()

        def forward(self, x):
            bs, hw, c = x.size()
            hh = int(math.sqrt(hw))
            x = self.linear1(x)
            x = x.transpose(1, 2).reshape(bs, -1, hh, hh)
            x = self.dwconv(x)
            x = x.reshape(bs, x.shape[1], hw).transpose(1, 2)
            return self.eca(self.linear2(x))

    class SkipAt(tv.VisionTransformer):
        def __init__(self, skip=(3, 4, 5, 6, 7, 8), **kw):
            super().__init__(**kw)
            self.skip = skip
            self.parametric = nn.ModuleList(LeFF(kw["embed_dim"], 2 * kw["embed_dim"]) for _ in skip)

        def forward_features(self, x, **_):
            x = self._pos_embed(self.patch_embed(x))
            k = 0
            cls = rest = prev = None
            for i, blk in enumerate(self.blocks):
                if i not in self.skip:
                    val = blk.attn(blk.norm1(x))
                    cls, rest = val[:, :1], val[:, 1:]
                else:
                    prev = self.parametric[k](rest if k == 0 else prev)
                    val = torch.cat((cls, prev), dim=1)
                    k += 1
                x = x + val
                x = x + blk.mlp(blk.norm2(x))
            return self.norm(x)

    kw = dict(img_size=resolution, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=1000)
    return tv.VisionTransformer(**kw).eval(), SkipAt(**kw).eval()


def mac_ratio(resolution: int) -> float:
    """SkipAt-T / ViT-T multiply-accumulates, counted by torch's FlopCounter (every matmul and
    convolution). The paper's rounded 1.2 / 1.1 GFLOPs suggest 0.91 at 224; exactly it is 0.937."""
    from torch.utils.flop_counter import FlopCounterMode

    from skipat_deploy.models.registry import build_model

    flops = []
    for arch in ("vit_tiny_patch16", "skipat_tiny_patch16"):
        model = build_model(api.load(None, arch).arch, resolution // 16).eval()
        model.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, resolution, resolution))
        flops.append(counter.get_total_flops())
    return flops[1] / flops[0]


def naive_export(model: nn.Module, resolution: int, path: Path) -> Path:
    x = torch.randn(1, 3, resolution, resolution)
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    return path


def peers(arch: str, res: int, tmp: Path, runs: int, threads: int) -> list[tuple[str, object]]:
    """(name, paired ratio to our FP32) for each CPU peer of one model at one resolution."""
    import time

    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from skipat_deploy.models.checkpoint import load_weights
    from skipat_deploy.models.registry import build_model

    ck = api.load(None, arch)
    (fp32,) = api.export(None, tmp / arch, resolutions=(res,), arch=arch)
    cpu = api.cpu_int8(None, tmp / arch, resolution=res, arch=arch, num_calib=16, num_eval=4)
    npu = api.quantize(None, tmp / arch, resolution=res, precision="w8a8", quant_backend="ort",
                       arch=arch, num_calib=8, num_eval=4).qdq_onnx
    dyn = tmp / arch / f"dynamic_{res}.onnx"
    quantize_dynamic(str(fp32.path), str(dyn), weight_type=QuantType.QInt8)
    opt = tmp / arch / f"ortopt_{res}.onnx"
    optimize_model(str(fp32.path), model_type="vit", num_heads=3, hidden_size=192).save_model_to_file(str(opt))
    models = {"ours FP32": fp32.path, "CPU INT8 (ours)": cpu.path, "NPU QDQ w8a8 on the CPU": npu,
              "ORT transformer optimizer": opt, "ORT dynamic INT8": dyn}
    sessions = {k: session(v, threads) for k, v in models.items()}
    feeds = {k: feed(s) for k, s in sessions.items()}
    torch.set_num_threads(threads)
    eager = load_weights(build_model(ck.arch, res // 16), ck.state_dict, ck.spec.name).eval()
    x = torch.from_numpy(next(iter(feeds["ours FP32"].values())))
    names = list(models) + ["eager PyTorch"]
    times = np.zeros((runs, len(names)))
    with torch.inference_mode():
        for i in range(runs + 3):
            for j, name in enumerate(names):
                t = time.perf_counter()
                if name == "eager PyTorch":
                    eager(x)
                else:
                    sessions[name].run(None, feeds[name])
                if i >= 3:
                    times[i - 3, j] = time.perf_counter() - t
    return [(name, ratio_interval(times, j, 0)) for j, name in enumerate(names) if j]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resolution", type=int, action="append")
    a = ap.parse_args()
    threads = a.threads or 1
    print(f"ONNX Runtime CPU, {threads} threads, {a.runs} interleaved runs per model; medians")
    print("| resolution | naive ViT-T ms | naive SkipAt ms | naive ratio | ours ViT-T ms | ours SkipAt ms "
          "| ours ratio | MAC ratio |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for res in a.resolution or [224, 384]:
            vit, skipat = reference_models(res)
            paths = [naive_export(vit, res, tmp / f"naive_vit_{res}.onnx"),
                     naive_export(skipat, res, tmp / f"naive_skipat_{res}.onnx")]
            for arch in ("vit_tiny_patch16", "skipat_tiny_patch16"):
                (r,) = api.export(None, tmp / "ours", resolutions=(res,), arch=arch)
                paths.append(r.path)
            stats, times = interleaved(paths, runs=a.runs, threads=threads)
            ms = [s.median_ms for s in stats]
            print(f"| {res} | {ms[0]:.2f} | {ms[1]:.2f} | {ratio_interval(times, 1, 0).value:.3f} | {ms[2]:.2f} "
                  f"| {ms[3]:.2f} | {ratio_interval(times, 3, 2).value:.3f} | {mac_ratio(res):.3f} |", flush=True)
        print("\nLatency relative to the project's FP32 export (median of paired ratios, 95 % interval)")
        rows = {}
        for arch in ("vit_tiny_patch16", "skipat_tiny_patch16"):
            for res in a.resolution or [224, 384]:
                rows[(arch, res)] = peers(arch, res, tmp / "peers", a.runs, threads)
        names = [n for n, _ in next(iter(rows.values()))]
        print("| model | resolution | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for (arch, res), found in rows.items():
            cells = [f"{r.value:.2f} ({r.low:.2f}-{r.high:.2f})" for _, r in found]
            print(f"| {arch} | {res} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

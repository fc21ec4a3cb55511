"""Model definitions: parity with the official SkipAt code and timm, traceability, registry."""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.fx

from skipat_deploy.models.checkpoint import load_checkpoint, load_weights
from skipat_deploy.core.errors import ArchitectureError
from skipat_deploy.models.config import SKIPAT, VIT, ArchConfig
from skipat_deploy.models.layers import ARITHMETIC_MODULES
from skipat_deploy.models.registry import build_model, get_spec

from .conftest import random_state_dict


def _run(ckpt, grid, x):
    model = load_weights(build_model(ckpt.arch, grid), ckpt.state_dict, ckpt.spec.name)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("family", ["skipat", "vit"])
@pytest.mark.parametrize("res", [224, 384])
def test_golden_parity_torch(golden, family, res):
    ckpt = load_checkpoint(golden["ckpt"][family])
    y = _run(ckpt, res // 16, golden["inputs"][f"x{res}"])
    want = golden["expected"][f"{family}_micro_{res}"]
    assert np.abs(y - want).max() <= 1e-4
    assert y.argmax() == want.argmax()


def _timm_vit(**kw):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    timm.layers.set_fused_attn(False)
    return VisionTransformer(**kw).eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(patch_size=16, img_size=64, embed_dim=64, depth=2, num_heads=1, num_classes=10),
        # DINOv2 layout: patch 14, LayerScale, head-less (class token after the final norm)
        dict(patch_size=14, img_size=56, embed_dim=128, depth=2, num_heads=2, num_classes=0,
             init_values=1e-5),
    ],
)
@pytest.mark.parametrize("scale", [1, 2])
def test_vit_matches_timm(tmp_path, kw, scale):
    """Same weights, same outputs as timm 1.x; at scale 2 timm's own checkpoint filter resamples
    pos_embed, so this also checks our resampling."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref = _timm_vit(**kw)
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    torch.save(sd, tmp_path / "timm.pth")
    ckpt = load_checkpoint(tmp_path / "timm.pth")
    assert ckpt.arch.layer_scale == ("init_values" in kw)
    assert ckpt.arch.num_classes == kw["num_classes"]
    size = kw["img_size"] * scale
    ref2 = _timm_vit(**{**kw, "img_size": size})
    ref2.load_state_dict(checkpoint_filter_fn(sd, ref2))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = ref2(x).numpy()
    got = _run(ckpt, size // kw["patch_size"], x.numpy())
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_skipat_runs_phi_chain_not_attention():
    """Skipped blocks' attention weights must not influence the output; Φ weights must."""
    arch = get_spec("skipat_nano_patch16").arch
    sd = random_state_dict(arch, seed=3)
    x = torch.randn(1, 3, 224, 224)

    def out(state):
        m = build_model(arch)
        m.load_state_dict(state)
        with torch.no_grad():
            return m(x)

    base = out(sd)
    skipped = {k: v * 3 for k, v in sd.items() if k.startswith("blocks.4.attn.")}
    assert torch.equal(out({**sd, **skipped}), base)
    phi = {k: v * 3 for k, v in sd.items() if k.startswith("param_2.")}
    assert not torch.allclose(out({**sd, **phi}), base)


_ARITHMETIC = {operator.add, operator.mul, operator.matmul, torch.matmul, torch.cat, torch.add,
               torch.mul, torch.softmax, torch.nn.functional.softmax, torch.mean}


@pytest.mark.parametrize("name", ["vit_nano_patch16", "skipat_nano_patch16",
                                  "vit_small_patch14_dinov2"])
def test_fx_trace_has_arithmetic_only_in_modules(name):
    """AIMET quantizes module outputs: every add, multiply, matmul, softmax, concat and mean
    must be a module, and no shape arithmetic may reach the graph."""
    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, ARITHMETIC_MODULES) or super().is_leaf_module(m, qualname)

    model = build_model(get_spec(name).arch)
    gm = torch.fx.GraphModule(model, Tracer().trace(model))
    bad = [n.format_node() for n in gm.graph.nodes
           if n.op == "call_function" and n.target in _ARITHMETIC]
    assert bad == []
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and n.target is getattr]
    x = torch.randn(1, 3, model.img_size, model.img_size)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


@pytest.mark.parametrize(
    "name,params",
    [("vit_tiny_patch16", 5_717_416), ("vit_small_patch16", 22_050_664),
     ("vit_base_patch16", 86_567_656)],
)
def test_official_sizes_match_timm_param_counts(name, params):
    assert sum(p.numel() for p in build_model(get_spec(name).arch).parameters()) == params


def test_skipat_tiny_has_six_phi_and_official_keys():
    sd = build_model(get_spec("skipat_tiny_patch16").arch).state_dict()
    assert {k.split(".")[0] for k in sd if k.startswith("param_")} == {
        f"param_{i}" for i in range(1, 7)}
    for key in ("param_1.linear1.0.weight", "param_1.dwconv.0.weight", "param_1.linear2.0.bias",
                "param_6.eca.conv.weight", "blocks.5.attn.qkv.weight", "head.bias"):
        assert key in sd


@pytest.mark.parametrize(
    "skips,msg",
    [((0, 1), "must lie in"), ((2, 1), "increasing"), ((1, 1), "increasing"), ((1, 9), "must lie in"),
     ((), "at least one")],
)
def test_bad_skip_indices(skips, msg):
    with pytest.raises(ArchitectureError, match=msg):
        ArchConfig(SKIPAT, 64, 4, 1, skip_indices=skips)


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ArchitectureError, match="did you mean.*skipat_tiny_patch16"):
        get_spec("skipat_tiny")
    with pytest.raises(ArchitectureError, match="no skipped blocks"):
        ArchConfig(VIT, 64, 4, 1, skip_indices=(1,))

"""Float-equivalent rewrites the quantizer applies: residual-stream rotation and the qkv split
keep what the model computes (<= 1e-4 relative on the outputs) for ViT, LayerScale ViT
(head-less, the DINOv2 layout) and SkipAt."""

from __future__ import annotations

import copy

import pytest
import torch

from skipat_deploy.models.config import SKIPAT, VIT, ArchConfig
from skipat_deploy.models.layers import SplitAttention
from skipat_deploy.models.registry import build_model
from skipat_deploy.quant import equalize
from skipat_deploy.quant.rotate import hadamard, rotate_residual_stream, rotation

from .conftest import random_state_dict

ARCHS = {
    "vit": ArchConfig(VIT, 64, 3, 1, num_classes=10),
    "vit_layerscale_headless": ArchConfig(VIT, 96, 3, 2, num_classes=0, layer_scale=True),
    "skipat": ArchConfig(SKIPAT, 64, 6, 1, num_classes=10, skip_indices=(2, 3, 4)),
}


def _model(name: str, seed: int):
    arch = ARCHS[name]
    model = build_model(arch)
    model.load_state_dict(random_state_dict(arch, seed=seed))
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("d", [64, 96, 192, 384, 768, 100])
def test_rotation_is_orthogonal_fixes_ones_and_spreads(d):
    q = rotation(d, seed=1)
    assert torch.allclose(q @ q.T, torch.eye(d, dtype=q.dtype), atol=1e-12)
    assert torch.allclose(q @ torch.ones(d, dtype=q.dtype), torch.ones(d, dtype=q.dtype), atol=1e-12)
    # an outlier channel is spread: no output channel keeps more than a small part of it
    assert float(q.abs().max()) < 0.6
    assert (hadamard(d) is not None) == (d in (64, 96, 192, 384, 768))


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("seed", [0, 7])
def test_rotation_keeps_the_function(name, seed):
    model = _model(name, seed)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
        rotated = rotate_residual_stream(copy.deepcopy(model), seed=seed)
        out = rotated(x)
    assert _rel(out, ref) <= 1e-4
    assert not any("gamma" in k for k in rotated.state_dict())
    # the stream really is rotated: the class token differs, its norm does not
    assert not torch.allclose(rotated.cls_token, model.cls_token)
    assert torch.allclose(rotated.cls_token.norm(), model.cls_token.norm(), rtol=1e-5)


@pytest.mark.parametrize("name", list(ARCHS))
def test_split_qkv_and_head_rotation_keep_the_function(name):
    from skipat_deploy.quant.rotate import rotate_heads

    model = _model(name, 3)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
        split = equalize.split_qkv(rotate_residual_stream(copy.deepcopy(model)))
        assert all(isinstance(b.attn, SplitAttention) for b in split.blocks)
        assert _rel(split(x), ref) <= 1e-4
        assert _rel(rotate_heads(split)(x), ref) <= 1e-4


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("rotates", [True, False])
def test_the_quantizers_starting_point_keeps_the_function(name, rotates):
    """rewrite.prepare, what both NPU backends quantize, leaves the model it was given alone."""
    from skipat_deploy.quant.rewrite import prepare

    model = _model(name, 5)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        prepared = prepare(model, x, rotates)
        assert _rel(prepared(x[:2]), ref[:2]) <= 1e-4
    assert all(isinstance(b.attn, SplitAttention) for b in prepared.blocks)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_dropping_the_key_bias_keeps_the_function_and_removes_the_offset(name, qkv_bias):
    """Keys offset by a vector shared by all tokens (as a trained ViT's keys are: their bias,
    or the norm's folded into it): the rewrite takes the offset out of k, and the model
    computes what it did."""
    import dataclasses

    arch = dataclasses.replace(ARCHS[name], qkv_bias=qkv_bias)
    model = build_model(arch)
    model.load_state_dict(random_state_dict(arch, seed=3))
    model.eval()
    d = arch.embed_dim
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for blk in model.blocks:
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[d : 2 * d] += 3.0 * torch.randn(d, generator=gen)
            else:
                blk.norm1.bias += 20.0 * torch.randn(d, generator=gen)
    if not qkv_bias:  # as quant.rewrite.prepare does first: the norm's bias goes into qkv's
        model = equalize.fold_norm_affine(model, alpha=0.5)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def key_range(m):
        out = []
        hooks = [b.attn.qkv.register_forward_hook(lambda mod, i, o: out.append(o[..., d : 2 * d].abs().max()))
                 for b in m.blocks]
        with torch.no_grad():
            y = m(x)
        for h in hooks:
            h.remove()
        return y, max(out)

    ref, before = key_range(model)
    got, after = key_range(equalize.drop_key_bias(copy.deepcopy(model)))
    assert _rel(got, ref) < 1e-4
    assert after < 0.5 * before

"""Float-equivalent weight transforms that make a trained ViT easier to quantize.

Each rewrites weights so the float model computes the same function (up to float rounding)
while the tensors that get quantized per-tensor lose their outlier channels:

* :func:`fold_layer_scale`: LayerScale ``gamma`` into the Linear before it (``attn.proj``,
  ``mlp.fc2``): per-output-channel weight quantization absorbs it for free, and one Mul and its
  8-bit quantizer disappear (SkipAt's skipped blocks, and the blocks they read, keep theirs);
* :func:`fold_norm_affine`: LayerNorm ``weight`` / ``bias`` into the Linear after it, so the
  quantized LayerNorm output is the plain normalised tensor (trained ViTs have outlier channels
  in the LayerNorm scale);
* :func:`equalize_attention`: per-channel rescaling of q against k and of v against ``proj``
  (SmoothQuant-style, Xiao et al. 2023), so the 8-bit symmetric k and v that HTP v69 requires
  lose their outlier channels;
* :func:`drop_key_bias`: the keys' bias dropped, where HTP v66-v69 quantize k 8-bit symmetric
  (a trained ViT's keys sit far from zero: DINOv2's block 3 reaches |k| 38.9);
* :func:`split_qkv`: the fused ``qkv`` Linear as three (:class:`SplitAttention`), so q gets an
  encoding of its own instead of sharing one with k and v.

The residual-stream rotation (:mod:`.rotate`) builds on the first two.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.layers import Attention, Block, LayerScale, SplitAttention


@torch.no_grad()
def run_with_hooks(model: nn.Module, calib: torch.Tensor, hooks: list, pre: bool = False) -> None:
    """Run ``calib`` through ``model`` in batches with (module, hook) pairs attached."""
    handles = [m.register_forward_pre_hook(f) if pre else m.register_forward_hook(f) for m, f in hooks]
    try:
        for x in calib.split(8):
            model(x)
    finally:
        for h in handles:
            h.remove()


def _blocks(model: nn.Module) -> list[Block]:
    return [m for m in model.modules() if isinstance(m, Block)]


def unfoldable_layer_scales(model: nn.Module) -> set[int]:
    """Blocks whose ``ls1`` cannot go into their ``attn.proj``: SkipAt's skipped blocks (their
    attention output comes from Φ, not from ``proj``) and the attention blocks whose output the
    skipped blocks also read before LayerScale (:meth:`VisionTransformerSkipAt.feeding_blocks`)."""
    skipped = getattr(model, "skipped_blocks", dict)()
    feeding = getattr(model, "feeding_blocks", set)()
    return set(skipped) | set(feeding)


@torch.no_grad()
def fold_layer_scale(model: nn.Module) -> nn.Module:
    """Every ``ls2`` into ``mlp.fc2``; every ``ls1`` into ``attn.proj`` except in the blocks of
    :func:`unfoldable_layer_scales`, which keep it (:mod:`.rotate` moves those elsewhere)."""
    keep = unfoldable_layer_scales(model)
    for i, blk in enumerate(_blocks(model)):
        pairs = [("ls2", blk.mlp.fc2)] + ([] if i in keep else [("ls1", blk.attn.proj)])
        for attr, linear in pairs:
            ls = getattr(blk, attr)
            if isinstance(ls, LayerScale):
                g = ls.gamma
                linear.weight.mul_(g[:, None])
                linear.bias.mul_(g)
                setattr(blk, attr, nn.Identity())
    return model


@torch.no_grad()
def _fold_norm(norm: nn.LayerNorm, linear: nn.Linear, alpha: float) -> None:
    """Move the bias and a part of the gain of the norm into the Linear: with ``alpha`` = 1 all
    of it, sign included, so the norm's affine becomes the identity (what the residual-stream
    rotation needs; trained norms have negative and zero gains); with ``alpha`` < 1,
    |gain|**alpha (zero gains stay in the norm)."""
    w, b = norm.weight.clone(), norm.bias.clone()
    s = w if alpha == 1.0 else torch.where(w == 0, torch.ones_like(w), w.abs() ** alpha)
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features))
    linear.bias.add_(linear.weight @ b)
    linear.weight.mul_(s[None, :])
    if alpha == 1.0:
        norm.weight.fill_(1.0)
    else:
        norm.weight.div_(s)
    norm.bias.zero_()


def fold_norm_affine(model: nn.Module, alpha: float = 1.0) -> nn.Module:
    """norm1 -> qkv and norm2 -> fc1 in every block (the final norm stays: it is the output of
    head-less models, and cheap to quantize in front of a head)."""
    for blk in _blocks(model):
        _fold_norm(blk.norm1, blk.attn.qkv, alpha)
        _fold_norm(blk.norm2, blk.mlp.fc1, alpha)
    return model


@torch.no_grad()
def equalize_attention(model: nn.Module, calib: torch.Tensor, alpha: float = 0.5) -> nn.Module:
    """Rescale q/k and v/proj channels from ranges seen on ``calib``: k_c *= s_c, q_c /= s_c with
    s_c = sqrt(max|q_c| / max|k_c|); v_c *= t_c, proj[:, c] /= t_c with t_c = (max_c' r / r_c)^alpha."""
    ranges: dict[int, torch.Tensor] = {}
    blocks = _blocks(model)

    def hook(i):
        def record(mod, inp, out):
            r = out.detach().abs().amax(dim=tuple(range(out.ndim - 1)))
            ranges[i] = r if i not in ranges else torch.maximum(ranges[i], r)
        return record

    run_with_hooks(model, calib, [(blk.attn.qkv, hook(i)) for i, blk in enumerate(blocks)])
    for i, blk in enumerate(blocks):
        if i not in ranges:  # skipped SkipAt blocks never run their attention
            continue
        d = blk.attn.dim
        rq, rk, rv = ranges[i][:d], ranges[i][d : 2 * d], ranges[i][2 * d :]
        eps = 1e-6
        s = torch.sqrt((rq + eps) / (rk + eps))
        t = ((rv.max() + eps) / (rv + eps)) ** alpha
        qkv, proj = blk.attn.qkv, blk.attn.proj
        scale = torch.cat([1 / s, s, t])
        qkv.weight.mul_(scale[:, None])
        if qkv.bias is not None:
            qkv.bias.mul_(scale)
        proj.weight.div_(t[None, :])
    return model


@torch.no_grad()
def drop_key_bias(model: nn.Module) -> nn.Module:
    """Keys lose their bias (the norm's bias folded into it included). The same function: a
    vector added to every key shifts each query's logits by one constant, which the softmax
    ignores. An offset shared by all tokens is range a symmetric 8-bit k spends on nothing.
    (Subtracting the keys' mean over calibration tokens instead, which also removes the part
    that depends on the image, lost 11 dB on two of 24 held-out DINOv2 samples, 24.6 against
    35.9 dB; moving the values' mean into ``proj``'s bias, exact since the rows of ``P`` sum to
    1, made the HTP depart from the CPU on a SkipAt at w8a8 beyond the NPU gate: not done.)"""
    for blk in _blocks(model):
        qkv = blk.attn.qkv
        if isinstance(blk.attn, Attention) and qkv.bias is not None:
            d = blk.attn.dim
            qkv.bias[d : 2 * d] = 0.0
    return model


def split_qkv(model: nn.Module) -> nn.Module:
    """In place: every block's fused attention becomes a :class:`SplitAttention` (same function)."""
    for blk in _blocks(model):
        if isinstance(blk.attn, Attention):
            blk.attn = SplitAttention(blk.attn)
    return model

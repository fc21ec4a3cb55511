"""Residual-stream rotation: a float-equivalent rewrite that spreads outlier channels.

Trained ViTs carry a few huge channels in the residual stream (DINOv2 ViT-S/14: one class-token
channel near 15 against a patch RMS of 0.3-0.5; a constant -20 in two channels of block 11).
Per-tensor activation scales set by those values starve every other channel. Multiplying the
stream by an orthogonal Q spreads each outlier over all channels (QuaRot, Ashkboos et al. 2024;
SpinQuant, Liu et al. 2024), and the weights absorb Q so the float model computes the same
function:

* writers of the stream (patch embedding, class token, position embedding, ``attn.proj``,
  ``mlp.fc2``) produce ``x Q``; readers (``qkv``, ``fc1``, the head) take ``Q^T`` in;
* Q fixes the all-ones vector, so ``LayerNorm(x Q) = LayerNorm(x) Q`` once the norms' affine
  parameters are folded into the Linears that read them (LayerScale into the Linears before);
* the final norm's output is rotated back inside the head (or by one extra Linear for a
  head-less model, whose output is the normalised class token);
* SkipAt's first Φ reads the stream-rotated attention output (Q^T goes into ``linear1``), but
  its ECA gate scales channels by input-dependent factors, which does not commute with Q: what
  a skipped block adds to the stream gets one explicit d x d op after ECA
  (``VisionTransformerSkipAt.phi_out``, with the block's LayerScale in it), and the Φ chain
  itself stays unrotated.

:func:`rotate_heads` does the same inside attention, per head: q and k by one orthogonal R
(``(q R)(k R)^T = q k^T``), v by another whose transpose ``proj`` absorbs. The 8-bit symmetric
k and v of Hexagon v66-v69 lose their outlier channels.

Q is a randomized Hadamard transform ``H^T D H / d`` (H a Hadamard matrix whose first row is all
ones, D random signs with D_00 = +1), which fixes the all-ones vector; for a width with no
Hadamard matrix here, a seeded random orthogonal matrix with the same property.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models.layers import Block, LayerScale, Pointwise, SplitAttention
from ..models.skipat import VisionTransformerSkipAt
from .equalize import fold_layer_scale, fold_norm_affine


def _paley12() -> np.ndarray:
    """A Hadamard matrix of order 12 (Paley I, q = 11) with an all-ones first row."""
    q = 11
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in squares else -1 for i in range(1, q)])
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((12, 12), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    h = np.eye(12, dtype=np.int64) + s
    return h * h[0][None, :]  # flip columns so the first row is all ones


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n with an all-ones first row (Sylvester, or 12 x Sylvester),
    or None when n is neither a power of two nor 12 times one."""
    base = None
    for b, mat in ((1, np.ones((1, 1), dtype=np.int64)), (12, _paley12())):
        k = n // b
        if n % b == 0 and k & (k - 1) == 0:
            base = mat
            break
    if base is None:
        return None
    h = base
    h2 = np.array([[1, 1], [1, -1]], dtype=np.int64)
    while h.shape[0] < n:
        h = np.kron(h2, h)
    return h


def rotation(d: int, seed: int = 0) -> torch.Tensor:
    """An orthogonal d x d matrix (float64) that spreads every channel over all channels and
    maps the all-ones vector to itself."""
    rng = np.random.default_rng(seed)
    h = hadamard(d)
    if h is not None:
        signs = rng.choice([-1.0, 1.0], size=d)
        signs[0] = 1.0
        q = (h.T * signs[None, :]) @ h / d
    else:  # 1/d 11^T + B M B^T: B an orthonormal basis of the complement of 1, M random orthogonal
        basis, _ = np.linalg.qr(np.column_stack([np.ones(d), rng.standard_normal((d, d - 1))]))
        m, _ = np.linalg.qr(rng.standard_normal((d - 1, d - 1)))
        b = basis[:, 1:]
        q = np.full((d, d), 1.0 / d) + b @ m @ b.T
    return torch.from_numpy(q)


@torch.no_grad()
def _writer(module: nn.Module, q: torch.Tensor) -> None:
    """``module``'s output channels (dim 0 of its weight) become ``y Q``."""
    w = module.weight
    w.copy_((q.T @ w.double().flatten(1)).view_as(w))
    if module.bias is not None:
        module.bias.copy_(q.T @ module.bias.double())


@torch.no_grad()
def _reader(module: nn.Module, q: torch.Tensor) -> None:
    """``module`` takes ``x Q`` in and computes what it computed on ``x``."""
    w = module.weight
    w.copy_((w.double().flatten(1) @ q).view_as(w))


@torch.no_grad()
def _fold_final_norm(model: nn.Module, q: torch.Tensor) -> None:
    """The final norm's affine goes into the head, which also rotates the stream back; a
    head-less model gets a Linear that does both."""
    norm = model.norm
    g, b = norm.weight.double(), norm.bias.double()
    d = g.numel()
    if isinstance(model.head, nn.Linear):
        head = model.head
        w = head.weight.double()
        head.bias.copy_(head.bias.double() + w @ b)
        head.weight.copy_((w * g[None, :]) @ q)  # W diag(g) Q
    else:
        head = nn.Linear(d, d)
        head.weight.copy_(g[:, None] * q)  # y = u Q^T diag(g): weight (out, in) = diag(g) Q
        head.bias.copy_(b)
        model.head = head
    norm.weight.fill_(1.0)
    norm.bias.zero_()


def _linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.copy_(weight)
    return lin


def _gain(module: nn.Module) -> torch.Tensor | None:
    return module.gamma.detach().double() if isinstance(module, LayerScale) else None


@torch.no_grad()
def _rotate_skipat(model: nn.Module, q: torch.Tensor) -> None:
    """SkipAt's parts of the rotation. Φ_0 reads the rotated patch tokens of the block before
    the first skipped one (``linear1`` absorbs Q^T); the chain Φ_k -> Φ_k+1 stays unrotated.
    What a skipped block adds to the stream gets its LayerScale and Q where ECA's gate commutes
    with neither: ``phi_out`` (the grid, ``e diag(g) Q``) and ``phi_cls`` (the rotated class
    token, ``Q^T diag(g) Q``). A block the skipped ones read keeps its attention output
    unscaled for them and applies its LayerScale to its own residual as ``Q^T diag(g) Q``."""
    d = q.shape[0]
    blocks = list(model.blocks)
    for i in model.feeding_blocks():
        g = _gain(blocks[i].ls1)
        if g is not None:
            blocks[i].ls1 = _linear(q.T @ (g[:, None] * q))
    _reader(model.param_1.linear1[0], q)
    for i, k in model.skipped_blocks().items():
        g = _gain(blocks[i].ls1)
        out = q.T if g is None else q.T * g[None, :]  # Pointwise weight (out, in) = (diag(g) Q)^T
        model.phi_out[k] = Pointwise(d, d, bias=False)
        model.phi_out[k].weight.copy_(out.reshape(d, d, 1, 1))
        if g is not None:
            model.phi_cls[k] = _linear(q.T @ (g[:, None] * q))
        blocks[i].ls1 = nn.Identity()


@torch.no_grad()
def rotate_residual_stream(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: fold LayerScale and every LayerNorm's affine, then rotate the residual stream
    by :func:`rotation` (see the module docstring). The float model's outputs are unchanged up
    to float rounding."""
    d = model.arch.embed_dim
    q = rotation(d, seed)
    fold_layer_scale(model)
    fold_norm_affine(model, alpha=1.0)
    _fold_final_norm(model, q)
    _writer(model.patch_embed.proj, q)
    for p in (model.cls_token, model.pos_embed):
        p.copy_(p.double() @ q)
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        _reader(blk.attn.qkv, q)
        _writer(blk.attn.proj, q)
        _reader(blk.mlp.fc1, q)
        _writer(blk.mlp.fc2, q)
    if isinstance(model, VisionTransformerSkipAt):
        _rotate_skipat(model, q)
    return model


@torch.no_grad()
def rotate_heads(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place, on :class:`SplitAttention` blocks: q and k rotated by one orthogonal R per
    head (the attention logits are unchanged), v by another that ``proj`` absorbs."""
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        attn = blk.attn
        if not isinstance(attn, SplitAttention):
            raise TypeError("rotate_heads needs split attention (quant.equalize.split_qkv)")
        hd, h = attn.head_dim, attn.num_heads
        r_qk = torch.block_diag(*[_head_rotation(hd, seed + 1) for _ in range(h)])
        r_v = torch.block_diag(*[_head_rotation(hd, seed + 2) for _ in range(h)])
        _writer(attn.q, r_qk)
        _writer(attn.k, r_qk)
        _writer(attn.v, r_v)
        _reader(attn.proj, r_v)
    return model


@torch.no_grad()
def rotate_values(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place, on fused-qkv attention: v rotated by one orthogonal R per head, which ``proj``
    absorbs (``proj``'s 8-bit input loses its outlier channels; q and k, untouched, stay float
    on the CPU). Same function; no extra op."""
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        attn = blk.attn
        if isinstance(attn, SplitAttention):
            raise TypeError("rotate_values works on fused qkv; use rotate_heads on split attention")
        d = attn.proj.in_features
        r_v = torch.block_diag(*[_head_rotation(attn.head_dim, seed + 2) for _ in range(attn.num_heads)])
        w, b = attn.qkv.weight, attn.qkv.bias
        w[2 * d :].copy_(r_v.T @ w[2 * d :].double())
        if b is not None:
            b[2 * d :].copy_(r_v.T @ b[2 * d :].double())
        _reader(attn.proj, r_v)
    return model


def _head_rotation(n: int, seed: int) -> torch.Tensor:
    """A randomized Hadamard ``H D / sqrt(n)`` (nothing to fix inside a head), else random."""
    rng = np.random.default_rng(seed)
    h = hadamard(n)
    if h is None:
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return torch.from_numpy(q)
    return torch.from_numpy(h * rng.choice([-1.0, 1.0], size=n)[None, :] / np.sqrt(n))

"""Building blocks shared by the ViT and SkipAt models.

Written for three consumers at once: ``torch.onnx`` (static shapes), ``torch.fx`` as used by
AIMET (every arithmetic op is a module so it gets its own quantizer, no shape arithmetic in
``forward``) and the Hexagon NPU (4-D attention tensors, constant reshapes). The elementwise
modules mirror ``aimet_torch.nn.modules.custom`` so the quantizer can swap them one for one.
"""

from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class Multiply(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor | float) -> torch.Tensor:
        return x * y


class MatMul(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, y)


class Concat(nn.Module):
    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class Mean(nn.Module):
    def __init__(self, dim: int, keepdim: bool = True):
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=self.dim, keepdim=self.keepdim)


class Pointwise(nn.Conv2d):
    """A Linear applied to every pixel of an NCHW map: a 1x1 convolution that loads and saves
    its weight as ``nn.Linear``'s (out, in), so checkpoints keep their Linear layout.

    SkipAt's Φ computes on the patch grid; keeping it in NCHW between its depthwise
    convolution and its Linears removes the token <-> image transposes a Linear on tokens
    would need (those transposes cost CPUs and NPUs real time)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, kernel_size=1, bias=bias)
        self._register_state_dict_hook(_pointwise_save)
        self._register_load_state_dict_pre_hook(_pointwise_load)


def _pointwise_save(module, state_dict, prefix, local_metadata):
    key = prefix + "weight"
    # state_dict(keep_vars=True) (torch.jit, optimizers) must see the Parameter itself.
    if key in state_dict and state_dict[key].dim() == 4 and not isinstance(state_dict[key], nn.Parameter):
        state_dict[key] = state_dict[key].flatten(1)
    return state_dict


def _pointwise_load(state_dict, prefix, *args):
    key = prefix + "weight"
    if key in state_dict and state_dict[key].dim() == 2:
        state_dict[key] = state_dict[key][:, :, None, None]


# Modules that stand for one arithmetic op: leaves for torch.fx, one quantizer each for AIMET.
ARITHMETIC_MODULES = (Add, Multiply, MatMul, Concat, Mean)


class PatchEmbed(nn.Module):
    """Image to patch tokens: (B, 3, H, W) -> (B, grid**2, dim)."""

    def __init__(self, patch_size: int, dim: int, grid: int, in_chans: int = 3):
        super().__init__()
        self.dim, self.num_patches = dim, grid * grid
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).reshape(-1, self.dim, self.num_patches).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with timm's state-dict names (``qkv``, ``proj``).

    q, k and v are sliced out of one 4-D tensor (B, N, 3*heads, head_dim); k is permuted straight
    into (B, heads, head_dim, N) so no separate transpose is needed before the first matmul.
    The scale head_dim**-0.5 is a power of two for head_dim 64, so scaling q first (timm 1.x)
    or the logits (timm 0.5, the official SkipAt code) gives identical float results.
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.num_tokens = dim, num_heads, num_tokens
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_scale = Multiply()
        self.qk_matmul = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.av_matmul = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        qkv = self.qkv(x).reshape(-1, self.num_tokens, 3 * h, self.head_dim)
        q = qkv[:, :, :h].permute(0, 2, 1, 3)
        k = qkv[:, :, h : 2 * h].permute(0, 2, 3, 1)
        v = qkv[:, :, 2 * h :].permute(0, 2, 1, 3)
        attn = self.softmax(self.qk_matmul(self.q_scale(q, self.scale), k))
        x = self.av_matmul(attn, v).permute(0, 2, 1, 3).reshape(-1, self.num_tokens, self.dim)
        return self.proj(x)


class SplitAttention(nn.Module):
    """:class:`Attention` with q, k and v as three Linears: what the quantized model runs, so
    that q has an encoding of its own while k and v follow the Hexagon v66-v69 rule (a
    MatMul's second input is 8-bit symmetric). Checkpoints and the float export keep ``qkv``."""

    def __init__(self, fused: Attention):
        super().__init__()
        self.dim, self.num_heads, self.num_tokens = fused.dim, fused.num_heads, fused.num_tokens
        self.head_dim, self.scale = fused.head_dim, fused.scale
        d, bias = fused.dim, fused.qkv.bias
        for i, name in enumerate(("q", "k", "v")):
            lin = nn.Linear(d, d, bias=bias is not None)
            with torch.no_grad():
                lin.weight.copy_(fused.qkv.weight[i * d : (i + 1) * d])
                if bias is not None:
                    lin.bias.copy_(bias[i * d : (i + 1) * d])
            setattr(self, name, lin)
        self.q_scale, self.qk_matmul, self.softmax = fused.q_scale, fused.qk_matmul, fused.softmax
        self.av_matmul, self.proj = fused.av_matmul, fused.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, self.num_tokens, self.num_heads, self.head_dim)
        q = self.q(x).reshape(shape).permute(0, 2, 1, 3)
        k = self.k(x).reshape(shape).permute(0, 2, 3, 1)
        v = self.v(x).reshape(shape).permute(0, 2, 1, 3)
        attn = self.softmax(self.qk_matmul(self.q_scale(q, self.scale), k))
        x = self.av_matmul(attn, v).permute(0, 2, 1, 3).reshape(-1, self.num_tokens, self.dim)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale (CaiT; used by DINOv2), state-dict name ``gamma``."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))
        self.mul = Multiply()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mul(x, self.gamma)


class Block(nn.Module):
    """Pre-norm transformer block; :meth:`residual` lets SkipAt feed its own attention output."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        num_tokens: int,
        qkv_bias: bool = True,
        layer_scale: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, num_tokens, qkv_bias)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.attn_residual = Add()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()
        self.mlp_residual = Add()

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm1(x))

    def residual(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        x = self.attn_residual(x, self.ls1(attn_out))
        return self.mlp_residual(x, self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x, self.attention(x))

"""SkipAt (Venkataramanan et al., "Skip-Attention: Improving Vision Transformers by Paying Less
Attention", ICLR 2024).

Follows what the official code computes (not the paper's prose): the blocks at ``skip_indices``
(0-based, default 3..8) do not run attention. The k-th skipped block feeds Φ_k (``param_{k+1}``)
with the patch-token attention output of the last attention block when k == 0, else with
Φ_{k-1}'s output, and uses ``cat(cls, Φ_k(...))`` as its attention output, where ``cls`` is the
class-token attention output of the last attention block. The MLP half of every block runs.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ArchConfig
from .layers import Concat, Mean, Multiply, Pointwise
from .vit import VisionTransformer


class ECA(nn.Module):
    """Efficient channel attention: x * sigmoid(conv1d(mean of x over the grid)), on NCHW."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mean = Mean(dim=(2, 3), keepdim=False)
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()
        self.gate = Multiply()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, g, g)
        y = self.conv(self.mean(x).reshape(-1, 1, self.dim))  # the conv slides along channels
        return self.gate(x, self.sigmoid(y).reshape(-1, self.dim, 1, 1))


class SkipAtPhi(nn.Module):
    """Φ, the official ``LeFF``: Linear(d, 2d) + GELU, depthwise 5x5 conv + GELU on the patch
    grid, Linear(2d, d), ECA. State-dict names and shapes are the official ones
    (``linear1.0``, ``dwconv.0``, ``linear2.0``, ``eca.conv``).

    Computed on the (B, C, g, g) patch grid from end to end (the Linears as 1x1 convolutions):
    the official code's token -> image -> token transposes around the depthwise conv are gone,
    and a chain of Φs passes grids from one to the next (what it computes is unchanged)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = 2 * dim
        self.linear1 = nn.Sequential(Pointwise(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size=5, padding=2, groups=hidden), nn.GELU()
        )
        self.linear2 = nn.Sequential(Pointwise(hidden, dim))
        self.eca = ECA(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, g, g) -> (B, d, g, g)
        return self.eca(self.linear2(self.dwconv(self.linear1(x))))


class VisionTransformerSkipAt(VisionTransformer):
    def __init__(self, arch: ArchConfig, grid: int | None = None):
        super().__init__(arch, grid)
        for k in range(arch.num_phi):
            self.add_module(f"param_{k + 1}", SkipAtPhi(arch.embed_dim))
        self.phi_concats = nn.ModuleList(Concat(dim=1) for _ in range(arch.num_phi))
        # What a skipped block adds to the residual stream, apart from the Φ chain: Identity in
        # a checkpoint. The quantizer's rewrites put linear maps here (a skipped block's
        # LayerScale, the residual-stream rotation: ECA's per-channel gate commutes with
        # neither), so the chain itself stays as Φ computes it.
        self.phi_out = nn.ModuleList(nn.Identity() for _ in range(arch.num_phi))  # on Φ's grid
        self.phi_cls = nn.ModuleList(nn.Identity() for _ in range(arch.num_phi))  # on the class token
        # Skipped blocks keep their (unused) attention weights: the checkpoints carry them.
        self.skip_indices = frozenset(arch.skip_indices)

    def skipped_blocks(self) -> dict[int, int]:
        """Block index -> k, for the k-th skipped block (the one Φ_k = ``param_{k+1}`` serves)."""
        return {i: k for k, i in enumerate(sorted(self.skip_indices))}

    def feeding_blocks(self) -> set[int]:
        """Attention blocks whose attention output (before LayerScale) is also read by the
        skipped blocks after them: the class token, and the patch tokens Φ_0 starts from."""
        return {i for i in range(len(self.blocks)) if i not in self.skip_indices and i + 1 in self.skip_indices}

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        d, g = self.arch.embed_dim, self.grid
        cls = rest = prev = None
        k = 0
        for i, blk in enumerate(self.blocks):
            if i in self.skip_indices:
                if k == 0:  # patch tokens, row-major -> (B, d, g, g)
                    prev = rest.transpose(1, 2).reshape(-1, d, g, g)
                prev = getattr(self, f"param_{k + 1}")(prev)
                tokens = self.phi_out[k](prev).reshape(-1, d, g * g).transpose(1, 2)
                val = self.phi_concats[k](self.phi_cls[k](cls), tokens)
                k += 1
            else:
                val = blk.attention(x)
                cls, rest = val[:, :1], val[:, 1:]
            x = blk.residual(x, val)
        return x

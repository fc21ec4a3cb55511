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
from .layers import Concat, Mean, Multiply
from .vit import VisionTransformer


class ECA(nn.Module):
    """Efficient channel attention over tokens: x * sigmoid(conv1d(mean over tokens))."""

    def __init__(self):
        super().__init__()
        self.mean = Mean(dim=1)
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.sigmoid = nn.Sigmoid()
        self.gate = Multiply()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d)
        return self.gate(x, self.sigmoid(self.conv(self.mean(x))))


class SkipAtPhi(nn.Module):
    """Φ, the official ``LeFF``: Linear(d, 2d) + GELU, depthwise 5x5 conv + GELU on the patch
    grid, Linear(2d, d), ECA. State-dict names: ``linear1.0``, ``dwconv.0``, ``linear2.0``,
    ``eca.conv``."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        hidden = 2 * dim
        self.hidden, self.grid = hidden, grid
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size=5, padding=2, groups=hidden), nn.GELU()
        )
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim))
        self.eca = ECA()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, grid**2, d), tokens row-major
        g, c = self.grid, self.hidden
        x = self.linear1(x).transpose(1, 2).reshape(-1, c, g, g)
        x = self.dwconv(x).reshape(-1, c, g * g).transpose(1, 2)
        return self.eca(self.linear2(x))


class VisionTransformerSkipAt(VisionTransformer):
    def __init__(self, arch: ArchConfig, grid: int | None = None):
        super().__init__(arch, grid)
        for k in range(arch.num_phi):
            self.add_module(f"param_{k + 1}", SkipAtPhi(arch.embed_dim, self.grid))
        self.phi_concats = nn.ModuleList(Concat(dim=1) for _ in range(arch.num_phi))
        # Skipped blocks keep their (unused) attention weights: the checkpoints carry them.
        self.skip_indices = frozenset(arch.skip_indices)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        cls = rest = prev = None
        k = 0
        for i, blk in enumerate(self.blocks):
            if i in self.skip_indices:
                cur = getattr(self, f"param_{k + 1}")(rest if k == 0 else prev)
                val = self.phi_concats[k](cls, cur)
                prev, k = cur, k + 1
            else:
                val = blk.attention(x)
                cls, rest = val[:, :1], val[:, 1:]
            x = blk.residual(x, val)
        return x

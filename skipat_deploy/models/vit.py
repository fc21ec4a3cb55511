"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

timm's ``VisionTransformer`` with the same state-dict names (timm 0.5 and 1.x agree): class token,
learned absolute position embedding, pre-norm blocks, final norm, linear head on the class token.
Optional LayerScale (DINOv2 layout) and a head-less variant whose output is the class token's
features after the final norm. The model is built for one patch grid: every reshape is a constant.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ArchConfig
from .layers import Add, Block, Concat, PatchEmbed


class VisionTransformer(nn.Module):
    def __init__(self, arch: ArchConfig, grid: int | None = None):
        super().__init__()
        self.arch = arch
        self.grid = grid or arch.grid
        num_tokens = self.grid * self.grid + 1
        d = arch.embed_dim
        self.patch_embed = PatchEmbed(arch.patch_size, d, self.grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, d))
        self.cls_concat = Concat(dim=1)
        self.pos_add = Add()
        self.blocks = nn.ModuleList(
            Block(d, arch.num_heads, arch.mlp_hidden, num_tokens, arch.qkv_bias, arch.layer_scale)
            for _ in range(arch.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, arch.num_classes) if arch.num_classes else nn.Identity()

    @property
    def img_size(self) -> int:
        return self.grid * self.arch.patch_size

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        # expand_as keeps the batch size out of Python: no shape arithmetic for fx to trace.
        x = self.cls_concat(self.cls_token.expand_as(x[:, :1]), x)
        x = self.pos_add(x, self.pos_embed)
        x = self.norm(self.forward_blocks(x))
        return self.head(x[:, 0])

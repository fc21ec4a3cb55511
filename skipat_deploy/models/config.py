"""Architecture hyper-parameters: what the weights of a ViT or SkipAt model determine."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.errors import ArchitectureError

VIT, SKIPAT = "vit", "skipat"
DEFAULT_SKIP_INDICES = (3, 4, 5, 6, 7, 8)  # 0-based, as the official code and checkpoints use


@dataclass(frozen=True)
class ArchConfig:
    family: str  # VIT or SKIPAT
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    grid: int = 14  # the patch grid pos_embed was trained at (224 px / patch 16)
    num_classes: int = 1000  # 0 = head-less: the output is the class token after the final norm
    mlp_hidden: int = 0  # 0 = 4 * embed_dim
    qkv_bias: bool = True
    layer_scale: bool = False
    skip_indices: tuple[int, ...] = ()  # SkipAt only: blocks whose attention Φ replaces

    def __post_init__(self) -> None:
        if not self.mlp_hidden:
            object.__setattr__(self, "mlp_hidden", 4 * self.embed_dim)
        object.__setattr__(self, "skip_indices", tuple(self.skip_indices))
        self.check()

    @property
    def num_phi(self) -> int:
        return len(self.skip_indices)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def with_skip_indices(self, skip_indices: tuple[int, ...]) -> "ArchConfig":
        if len(skip_indices) != self.num_phi:
            raise ArchitectureError(
                f"--skip-indices names {len(skip_indices)} blocks but the weights hold "
                f"{self.num_phi} Φ modules (param_1..param_{self.num_phi}); give exactly "
                f"{self.num_phi} indices"
            )
        return replace(self, skip_indices=tuple(skip_indices))

    def check(self) -> None:
        if self.family not in (VIT, SKIPAT):
            raise ArchitectureError(f"unknown model family {self.family!r}; expected vit or skipat")
        if self.embed_dim % self.num_heads:
            raise ArchitectureError(
                f"embed dim {self.embed_dim} is not divisible by {self.num_heads} heads; "
                "pass --head-dim to match the checkpoint"
            )
        if self.family == VIT and self.skip_indices:
            raise ArchitectureError("a plain ViT has no skipped blocks; drop --skip-indices")
        if self.family == SKIPAT:
            s = self.skip_indices
            if not s:
                raise ArchitectureError("a SkipAt model needs at least one skipped block")
            if list(s) != sorted(set(s)):
                raise ArchitectureError(f"skip indices {list(s)} must be increasing and unique")
            if s[0] < 1 or s[-1] >= self.depth:
                raise ArchitectureError(
                    f"skip indices {list(s)} must lie in 1..{self.depth - 1}: block 0 computes "
                    "the attention that the first Φ starts from"
                )

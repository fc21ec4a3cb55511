"""Registry of model specs: architecture, pre-processing and export tolerance, side by side.

Like timm's model entry points, each spec has a name (``skipat_tiny_patch16``) and everything
needed to build it; the checkpoint loader matches inferred architectures against this table.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from ..core.errors import ArchitectureError
from ..core.lazy import torch
from ..images.preprocess import Preprocess
from .config import DEFAULT_SKIP_INDICES, SKIPAT, VIT, ArchConfig


@dataclass(frozen=True)
class Tolerance:
    """Largest |onnx - torch| accepted: atol + rtol * |torch|, elementwise."""

    atol: float = 1e-4
    rtol: float = 1e-4


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: ArchConfig
    preprocess: Preprocess = field(default_factory=Preprocess)
    tolerance: Tolerance = field(default_factory=Tolerance)
    doc: str = ""

    def __post_init__(self) -> None:
        # Values nobody gave and no checkpoint carried are this spec's guess, and say so.
        object.__setattr__(self, "preprocess", self.preprocess.defaulting_to(self.name))


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _pair(size: str, dim: int, depth: int, heads: int, doc: str):
    register(ModelSpec(f"vit_{size}_patch16", ArchConfig(VIT, dim, depth, heads), doc=f"ViT-{doc}/16"))
    register(
        ModelSpec(
            f"skipat_{size}_patch16",
            ArchConfig(SKIPAT, dim, depth, heads, skip_indices=DEFAULT_SKIP_INDICES),
            doc=f"SkipAt ViT-{doc}/16 (ICLR 2024)",
        )
    )


_pair("tiny", 192, 12, 3, "T")
_pair("small", 384, 12, 6, "S")
_pair("base", 768, 12, 12, "B")
# Test sizes: `micro` is the layout of the golden parity data; `nano` is for fast tests: ViT
# with 4 blocks, SkipAt with the 10 it needs for the official skip indices (so that its
# checkpoints load without --skip-indices).
_pair("micro", 128, 12, 2, "micro")
_pair("nano", 64, 10, 1, "nano")
register(ModelSpec("vit_nano_patch16", ArchConfig(VIT, 64, 4, 1), doc="ViT-nano/16"))
register(
    ModelSpec(
        "vit_small_patch14_dinov2",
        ArchConfig(VIT, 384, 12, 6, patch_size=14, grid=37, num_classes=0, layer_scale=True),
        preprocess=Preprocess(crop_pct=1.0),
        doc="DINOv2 ViT-S/14 (Oquab et al., 2023), head-less, LayerScale",
    )
)


def list_specs() -> list[ModelSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ArchitectureError(
            f"unknown architecture {name!r}{hint} (`skipat-deploy models` lists them)"
        ) from None


def _same_shape(a: ArchConfig, b: ArchConfig) -> bool:
    keys = ("family", "embed_dim", "depth", "num_heads", "patch_size", "mlp_hidden", "layer_scale")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and a.num_phi == b.num_phi


def match_spec(arch: ArchConfig) -> ModelSpec:
    """The registered spec with this architecture (its name, pre-processing, tolerance), with the
    checkpoint's own class count, grid and skip indices; a custom spec if none matches."""
    for spec in _REGISTRY.values():
        if _same_shape(spec.arch, arch):
            return replace(spec, arch=arch)
    name = f"{arch.family}_custom_d{arch.embed_dim}_l{arch.depth}_p{arch.patch_size}"
    return ModelSpec(name, arch, doc="architecture inferred from the checkpoint")


def build_model(arch: ArchConfig, grid: int | None = None) -> "torch.nn.Module":
    """An uninitialised model of this architecture for one patch grid, in eval mode."""
    from .skipat import VisionTransformerSkipAt  # defining nn.Modules imports torch: here, not on import
    from .vit import VisionTransformer

    cls = VisionTransformerSkipAt if arch.family == SKIPAT else VisionTransformer
    return cls(arch, grid).eval()


def init_weights(model: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """timm's default init (truncated normal 0.02), seeded: same seed, same weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif name.endswith("gamma"):
                p.fill_(1e-5)
            elif p.ndim == 1:  # LayerNorm weight
                p.fill_(1.0)
            else:
                torch.nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04, generator=gen)
    return model

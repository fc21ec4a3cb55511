"""The float-equivalent rewrites every NPU quantizer starts from (AIMET and ONNX Runtime alike).

:func:`prepare` returns a copy of the float model that computes the same function and is easier
to quantize: LayerScale and LayerNorm affine folded (:mod:`.equalize`), with ``rotate`` the
residual stream rotated (:mod:`.rotate`), the keys' bias dropped, q-k and v-proj equalized,
qkv split so that q, k and v get encodings of their own, and with ``rotate`` each head's q, k
and v rotated.

Every run proves that on the user's own weights (:func:`check_float_equivalent`): a rewrite
that is exact in real arithmetic differs from the original only by rounding its new weights to
float32 once, which is less than the float32 rounding the original model's own forward pass
already carries. Compared in float64, where that forward rounding is gone, the rewritten model
must stay within it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..core.errors import RewriteError
from . import equalize, rotate

# Samples the equivalence check runs (three forward passes each, two of them in float64).
EQUIVALENCE_SAMPLES = 4


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(torch.float64).tiny))


@torch.no_grad()
def check_float_equivalent(original: nn.Module, rewritten: nn.Module, x: torch.Tensor,
                           what: str) -> float:
    """Raise :class:`RewriteError` unless ``rewritten`` computes what ``original`` computes on
    ``x`` (the first :data:`EQUIVALENCE_SAMPLES`). Both run in float64, so what is left is the
    rewrite's float32 weights; that must not exceed the relative error of the original's own
    float32 forward pass on the same samples (rounding each weight once is a subset of the
    roundings that pass makes: measured at 0.12-0.37 of it on ViT, SkipAt and DINOv2 weights).
    Returns the rewrite's relative error."""
    x = x[:EQUIVALENCE_SAMPLES]
    exact = copy.deepcopy(original).double()(x.double())
    floor = _relative(original(x), exact)
    error = _relative(copy.deepcopy(rewritten).double()(x.double()), exact)
    if not error <= floor:  # NaN fails too
        raise RewriteError(
            f"{what} changed what the model computes: relative output error {error:.3g} on "
            f"{len(x)} calibration samples, above the float32 rounding of the model itself "
            f"({floor:.3g}); nothing was written. This is a bug: please report it with the checkpoint")
    return error



def prepare(model: nn.Module, calib: torch.Tensor, rotates: bool, seed: int = 0,
            step: Callable[[str], None] = lambda msg: None) -> nn.Module:
    out = copy.deepcopy(model)
    if rotates:
        step("rotating the residual stream (LayerScale and LayerNorm affine folded)")
        rotate.rotate_residual_stream(out, seed=seed)
    else:
        step("folding LayerScale / LayerNorm bias")
        equalize.fold_layer_scale(out)
        equalize.fold_norm_affine(out, alpha=0.5)
    step("dropping the keys' bias, equalizing q-k and v-proj, splitting qkv")
    with torch.no_grad():
        equalize.drop_key_bias(out)
        equalize.equalize_attention(out, calib)
    equalize.split_qkv(out)
    if rotates:
        rotate.rotate_heads(out, seed=seed)
    step("checking on calibration samples that the rewritten model computes the same function")
    check_float_equivalent(model, out, calib, "the float-equivalent rewrites before quantizing")
    return out

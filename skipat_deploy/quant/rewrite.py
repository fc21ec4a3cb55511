"""The float-equivalent rewrites every NPU quantizer starts from (AIMET and ONNX Runtime alike).

:func:`prepare` returns a copy of the float model that computes the same function (tested to
1e-4) and is easier to quantize: LayerScale and LayerNorm affine folded (:mod:`.equalize`), with
``rotate`` the residual stream rotated (:mod:`.rotate`), q-k and v-proj equalized, qkv split so
that q, k and v get encodings of their own, and with ``rotate`` each head's q, k and v rotated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from . import equalize, rotate


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
    step("equalizing q-k and v-proj, splitting qkv")
    with torch.no_grad():
        equalize.equalize_attention(out, calib)
    equalize.split_qkv(out)
    if rotates:
        rotate.rotate_heads(out, seed=seed)
    return out

"""The AIMET simulation and its bitwidth rules: a QuantizationSimModel that quantizes what the
Hexagon NPU quantizes.

AIMET only quantizes module leaves it has a quantized definition for. Our arithmetic modules
(``models.layers``) are swapped one for one for ``aimet_torch.nn.modules.custom`` (Mean gets a
quantized definition of its own), so every matmul, softmax, add, multiply, concat and mean is
simulated as the NPU runs it. Two more rules make the simulation honest and the QDQ graph
loadable by the QNN HTP backend:

* parameters that enter arithmetic as operands (``pos_embed``, ``cls_token``, LayerScale
  ``gamma``) get input quantizers, otherwise they would stay float;
* every op computes at one bitwidth: where a producer's bitwidth differs from the op's output
  bitwidth, the op gets an input quantizer at its own bitwidth (an explicit requantize). The
  exception is the HTP v66-v69 rule that a MatMul's second input is 8-bit symmetric.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from ...models import layers as L

_registered = False
# From this HTP version on, a MatMul takes its second input at 16 bit; v66-v69 take it 8-bit
# symmetric (AIMET's htp_v69 config; profiles/htp_capabilities.json).
MATMUL_16BIT_RHS_FROM = 73


def _aimet():
    """Import AIMET lazily (it is heavy) and register our Mean once."""
    global _registered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from aimet_torch.common.utils import AimetLogger

        # AIMET logs to stdout, which belongs to --json: errors only.
        AimetLogger.set_level_for_all_areas(logging.ERROR)
        import aimet_torch.nn.modules.custom as custom
        from aimet_torch.nn import QuantizationMixin
        from aimet_torch.nn.true_quant import _DispatchMixin
        from aimet_torch.onnx_utils import map_torch_types_to_onnx

    if not _registered:
        map_torch_types_to_onnx.setdefault(L.Mean, ["ReduceMean"])

        @QuantizationMixin.implements(L.Mean)
        class QuantizedMean(_DispatchMixin, QuantizationMixin, L.Mean):  # noqa: F841
            __quant_init__ = QuantizationMixin.__unary__
            _builtin_torch_fn = torch.mean

        _registered = True
    return custom


def swap_to_aimet(model: nn.Module) -> nn.Module:
    """In place: our Add / Multiply / MatMul / Concat leaves -> AIMET's, Pointwise -> a plain
    1x1 nn.Conv2d (same computation)."""
    custom = _aimet()
    table = {L.Add: custom.Add, L.Multiply: custom.Multiply, L.MatMul: custom.MatMul}
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) in table:
                setattr(parent, name, table[type(child)]())
            elif type(child) is L.Concat:
                setattr(parent, name, custom.Concat(axis=child.dim))
            elif type(child) is L.Pointwise:  # AIMET knows nn.Conv2d, not our subclass
                conv = nn.Conv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(child.weight)
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
    return model


# --------------------------------------------------------------------------------------------
# Where each module input comes from (module, parameter or model input), read off torch.fx.

@dataclass(frozen=True)
class InputSource:
    kind: str  # "module", "param" or "input"
    name: str


_VIEW_METHODS = {"reshape", "view", "permute", "transpose", "expand_as", "expand", "contiguous",
                 "flatten", "unsqueeze", "squeeze", "__getitem__"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        # Pointwise is an nn.Conv2d that fx would otherwise trace through (it is not in torch.nn).
        return isinstance(m, (*L.ARITHMETIC_MODULES, L.Pointwise)) or super().is_leaf_module(m, qualname)


def input_sources(model: nn.Module) -> dict[str, list[InputSource | None]]:
    """For every leaf module call: the source of each tensor argument, looking through views."""
    graph = _Tracer().trace(model)

    def resolve(node) -> InputSource | None:
        while True:
            if not isinstance(node, torch.fx.Node):
                return None
            if node.op == "call_module":
                return InputSource("module", node.target)
            if node.op == "get_attr":
                return InputSource("param", node.target)
            if node.op == "placeholder":
                return InputSource("input", node.target)
            if node.op in ("call_method", "call_function") and (
                node.op == "call_function" or node.target in _VIEW_METHODS
            ):
                node = node.args[0]
                continue
            return None

    out: dict[str, list[InputSource | None]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            out[node.target] = [resolve(a) for a in node.args]
    return out


def module_consumers(sources: dict[str, list[InputSource | None]]) -> dict[str, list[str]]:
    """The other way round: for every module, the modules that read its output."""
    consumers: dict[str, list[str]] = {}
    for name, srcs in sources.items():
        for src in srcs:
            if src is not None and src.kind == "module":
                consumers.setdefault(src.name, []).append(name)
    return consumers


# --------------------------------------------------------------------------------------------

def _qdq(bitwidth: int, symmetric: bool):
    from aimet_torch.quantization.affine import QuantizeDequantize

    return QuantizeDequantize(shape=(), bitwidth=bitwidth, symmetric=symmetric)


def _out_bw(module) -> int | None:
    qs = [q for q in getattr(module, "output_quantizers", []) if q is not None]
    return qs[0].bitwidth if qs else None


@dataclass(frozen=True)
class SimPlan:
    activation_bw: int  # 8 or 16: default activation bitwidth
    promoted: tuple[str, ...] = ()  # modules whose outputs are 16-bit in an 8-bit model
    htp_arch: int = 69
    quant_scheme: str = "post_training_tf_enhanced"


def build_sim(model: nn.Module, dummy: torch.Tensor, plan: SimPlan, config_file: str):
    """A QuantizationSimModel of ``model`` (left untouched) following ``plan``; not calibrated."""
    _aimet()
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    sources = input_sources(model)
    float_model = swap_to_aimet(copy.deepcopy(model)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = QuantizationSimModel(
            float_model,
            dummy,
            quant_scheme=QuantScheme[plan.quant_scheme],
            default_output_bw=plan.activation_bw,
            default_param_bw=8,
            in_place=True,
            config_file=config_file,
        )
    mods = dict(sim.model.named_modules())
    # Output bitwidths: the plan's, asymmetric. The HTP config forces MatMul second inputs to
    # 8-bit symmetric by changing their producer (qkv); that is restored here and applied at
    # the MatMul's input instead, so qkv computes at one bitwidth. AIMET may share one quantizer
    # between modules (concat inputs): a shared quantizer is 16-bit if any owner is promoted.
    owners: dict[int, list[str]] = {}
    quantizers: dict[int, object] = {}
    for name, m in mods.items():
        for q in getattr(m, "output_quantizers", []):
            if q is not None:
                owners.setdefault(id(q), []).append(name)
                quantizers[id(q)] = q
    for key, q in quantizers.items():
        promoted = plan.activation_bw == 16 or any(n in plan.promoted for n in owners[key])
        target = 16 if promoted else 8
        if q.bitwidth != target or (q.symmetric and target == 16):
            q.bitwidth, q.symmetric = target, False
    custom = _aimet()
    # AIMET ties a Concat's output quantizer to its producers' (one encoding for all), but
    # calibrates it at one call site only: SkipAt's cat(cls, Φ(x)) then clips the class token to
    # Φ's range. Each Concat gets a quantizer of its own.
    for name, m in mods.items():
        if isinstance(m, custom.Concat) and m.output_quantizers[0] is not None:
            q = m.output_quantizers[0]
            if len(owners[id(q)]) > 1:
                m.output_quantizers[0] = _qdq(q.bitwidth, False)
    bw = {n: _out_bw(m) for n, m in mods.items()}
    consumers = module_consumers(sources)

    def computes_at(name: str, depth: int = 0) -> int | None:
        """The bitwidth an op computes at: its output quantizer's, or for an op without one
        (the first of a fused pair such as Conv + GELU, the attention scale multiply) the
        bitwidth at which its result is next quantized downstream."""
        if bw.get(name) is not None or depth > 8:
            return bw.get(name)
        return next((b for c in consumers.get(name, []) if (b := computes_at(c, depth + 1))), None)

    for name, srcs in sources.items():
        m = mods.get(name)
        if m is None or not hasattr(m, "input_quantizers"):
            continue
        own = computes_at(name) or plan.activation_bw
        for i, src in enumerate(srcs[: len(m.input_quantizers)]):
            if src is None:
                continue
            is_matmul_rhs = isinstance(m, custom.MatMul) and i == 1
            if is_matmul_rhs and plan.htp_arch < MATMUL_16BIT_RHS_FROM:
                if own == 16 or (src.kind == "module" and bw.get(src.name) != 8):
                    m.input_quantizers[i] = _qdq(8, True)
                continue
            if src.kind == "param":
                gamma = src.name.endswith("gamma")
                if m.input_quantizers[i] is None:
                    m.input_quantizers[i] = _qdq(8 if gamma else own, gamma)
            elif src.kind == "module" and bw.get(src.name) not in (None, own):
                m.input_quantizers[i] = _qdq(own, False)
            elif src.kind == "input":  # the model input: quantized at its consumer's bitwidth
                q = m.input_quantizers[i]
                if q is None or q.bitwidth != own:
                    m.input_quantizers[i] = _qdq(own, False)
    return sim


def freeze_weight_scales(sim, scales: dict[str, torch.Tensor]) -> None:
    """Pin per-channel symmetric weight encodings to the grids GPTQ rounded onto."""
    mods = dict(sim.model.named_modules())
    for name, s in scales.items():
        pq = getattr(mods.get(name), "param_quantizers", None)
        q = pq["weight"] if pq is not None and "weight" in pq else None
        if q is None:
            continue
        s = s.reshape(q.shape) if tuple(q.shape) != () else s.max()
        q.set_range(s * q.qmin, s * q.qmax)
        q.allow_overwrite(False)


def calibrate(sim, batches: Iterable[torch.Tensor]) -> None:
    batches = list(batches)

    def forward(model):
        with torch.no_grad():
            for b in batches:
                model(b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.compute_encodings(forward)


def activation_modules(sim) -> list[str]:
    """Names of modules with an activation output quantizer (the unit of mixed precision)."""
    return [n for n, m in sim.model.named_modules() if _out_bw(m) is not None]


def export_qdq(sim, dummy: torch.Tensor, path: str, input_name: str, output_name: str) -> None:
    """One QDQ ONNX at opset 21 (16-bit Q/DQ need it; GELU stays one op)."""
    import aimet_torch.onnx as aimet_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aimet_onnx.export(sim, (dummy,), path, input_names=[input_name], output_names=[output_name],
                          opset_version=21, dynamo=False)


def export_aimet_folder(sim, dummy: torch.Tensor, folder: str, input_name: str, output_name: str) -> None:
    """The ``.aimet`` folder AI Hub takes: one float ONNX + encodings 2.0.0."""
    os.makedirs(folder, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.onnx.export((dummy,), os.path.join(folder, "model.onnx"), encoding_version="2.0.0",
                        dynamo=False, input_names=[input_name], output_names=[output_name],
                        opset_version=21)



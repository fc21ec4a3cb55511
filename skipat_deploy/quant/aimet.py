"""AIMET backend: a QuantizationSimModel that quantizes what the Hexagon NPU quantizes.

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

import numpy as np
import torch
import torch.fx
from torch import nn

from ..metrics import sqnr_db
from ..models import layers as L
from .qdq import store_weights_as_integers
from .report import LayerSensitivity

_registered = False


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
class Source:
    kind: str  # "module", "param" or "input"
    name: str


_VIEW_METHODS = {"reshape", "view", "permute", "transpose", "expand_as", "expand", "contiguous",
                 "flatten", "unsqueeze", "squeeze", "__getitem__"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        # Pointwise is an nn.Conv2d that fx would otherwise trace through (it is not in torch.nn).
        return isinstance(m, (*L.ARITHMETIC_MODULES, L.Pointwise)) or super().is_leaf_module(m, qualname)


def input_sources(model: nn.Module) -> dict[str, list[Source | None]]:
    """For every leaf module call: the source of each tensor argument, looking through views."""
    graph = _Tracer().trace(model)

    def resolve(node) -> Source | None:
        while True:
            if not isinstance(node, torch.fx.Node):
                return None
            if node.op == "call_module":
                return Source("module", node.target)
            if node.op == "get_attr":
                return Source("param", node.target)
            if node.op == "placeholder":
                return Source("input", node.target)
            if node.op in ("call_method", "call_function") and (
                node.op == "call_function" or node.target in _VIEW_METHODS
            ):
                node = node.args[0]
                continue
            return None

    out: dict[str, list[Source | None]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            out[node.target] = [resolve(a) for a in node.args]
    return out


def module_consumers(sources: dict[str, list[Source | None]]) -> dict[str, list[str]]:
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
            if is_matmul_rhs and plan.htp_arch < 73:
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


# The QDQ export stores each bias as int32 with scale (input scale x weight scale), as the HTP
# computes it. A weight channel whose scale is tiny next to its bias (an all-zero row of a
# classifier trained on a subset of classes, with bias -10; a pruned channel) would need a bias
# far beyond int32: it saturates, and the exported layer adds ~0 where the simulation (which
# keeps biases in float) adds -10. Each such channel's scale is raised until its bias fits in
# half the int32 range (the other half is left to the sum of the products, which shares the
# accumulator). Zero weights stay exactly zero on any grid; a non-zero channel this touches has
# weights tiny next to its bias, so its coarser grid costs nothing that shows.
BIAS_INT32_LIMIT = 2.0**30


def _input_quantizer(mods: dict, name: str, srcs: list):
    """The quantizer that sets the encoding of module ``name``'s first input."""
    own = getattr(mods[name], "input_quantizers", [None])[0]
    if own is not None:
        return own
    src = srcs[0] if srcs else None
    if src is not None and src.kind == "module":
        qs = getattr(mods.get(src.name), "output_quantizers", None)
        return qs[0] if qs else None
    return None


def fit_weight_scales_to_biases(sim, sources: dict[str, list[Source | None]]) -> list[str]:
    """Raise per-channel weight scales whose int32 bias would saturate (see
    :data:`BIAS_INT32_LIMIT`); returns the modules changed."""
    mods = dict(sim.model.named_modules())
    changed = []
    with torch.no_grad():
        for name, srcs in sources.items():
            m = mods.get(name)
            pq = getattr(m, "param_quantizers", None)
            wq = pq["weight"] if pq is not None and "weight" in pq else None
            iq = _input_quantizer(mods, name, srcs)
            if (wq is None or getattr(m, "bias", None) is None or iq is None
                    or not wq.is_initialized() or not iq.is_initialized()):
                continue
            s_in = iq.get_scale().detach().double().max()
            s_w = wq.get_scale().detach().double()
            need = m.bias.detach().double().abs() / (s_in * BIAS_INT32_LIMIT)
            need = need.max().reshape(s_w.shape) if s_w.numel() == 1 else need.reshape(s_w.shape)
            if bool((need > s_w).any()):
                s_w = torch.maximum(s_w, need)
                wq.set_range((s_w * wq.qmin).float(), (s_w * wq.qmax).float())
                changed.append(name)
    return changed


def calibrate(sim, batches: Iterable[torch.Tensor]) -> None:
    batches = list(batches)

    def forward(model):
        with torch.no_grad():
            for b in batches:
                model(b)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.compute_encodings(forward)


# GELU(x) > -1.3e-4 for every x below -4: a fifth of the 8-bit step of any GELU output (whose
# range spans at least GELU's minimum, -0.17: step >= 6.7e-4), so what an 8-bit producer read
# only by a GELU computes below -4 does not reach the GELU's 8-bit output. Its calibrated range
# stops there and the rest of its range gets the resolution (a trained ViT's fc1 spans about
# [-9, 2.4]). A 16-bit step is finer than 1.3e-4: 16-bit producers keep their range.
GELU_FLOOR = -4.0


def gelu_only_producers(model: nn.Module) -> list[str]:
    """Modules whose every consumer is a GELU (``mlp.fc1``)."""
    mods = dict(model.named_modules())
    consumers = module_consumers(input_sources(model))
    return [n for n, cs in consumers.items() if all(isinstance(mods.get(c), nn.GELU) for c in cs)]


def promotion_groups(model: nn.Module, quantized: set[str]) -> dict[str, list[str]]:
    """For every activation layer, what promoting it to 16 bit takes: the layer and the
    quantized ops that read its output. An op computes at one bitwidth on the HTP, so a
    consumer left at 8 bit would requantize the 16-bit tensor to 8 bit at its input and undo
    the promotion (a 16-bit softmax needs its attention-times-v matmul at 16 bit too)."""
    consumers = module_consumers(input_sources(model))

    def readers(name: str, depth: int = 0) -> list[str]:
        out = []
        for c in consumers.get(name, []):
            out += [c] if c in quantized or depth > 8 else readers(c, depth + 1)
        return out

    return {n: [n] + [c for c in dict.fromkeys(readers(n)) if c != n] for n in quantized}


def choose_promoted(rows, share: dict[str, float], groups: dict[str, list[str]], budget: int) -> list[str]:
    """Layers by falling noise share, each with its group, while the budget lasts."""
    promoted: list[str] = []
    for name, _, _ in rows:
        if share[name] <= 0.002:
            break
        new = [g for g in groups.get(name, [name]) if g not in promoted]
        if len(promoted) + len(new) <= budget:
            promoted += new
    return promoted


def floor_gelu_inputs(sim, names: list[str]) -> None:
    """Raise the calibrated minimum of these modules' output quantizers to :data:`GELU_FLOOR`."""
    mods = dict(sim.model.named_modules())
    with torch.no_grad():
        for name in names:
            qs = getattr(mods.get(name), "output_quantizers", None)
            q = qs[0] if qs else None
            if (q is None or q.bitwidth != 8 or not q.is_initialized()
                    or float(q.get_min()) >= GELU_FLOOR):
                continue
            q.set_range(torch.tensor(GELU_FLOOR), q.get_max().reshape(()))


# Softmax outputs are calibrated for the probabilities' own SQNR, which keeps the range near
# the few largest attention weights (about [0, 1] in a trained ViT); then every weight below half
# a step reads 0, and a ViT's many small weights carry much of P·V. What the network sees is P·V,
# so the max is chosen for that error instead, from the calibrated max times 2^(-k/5),
# k = 0..25 (down to 1/32 of it). DINOv2 ViT-S/14 w8a8: the chosen max falls to 0.4-0.9;
# 16.1 -> 17.3 dB on held-out photos (14.2 -> 15.9 dB with the photo sets swapped).
SOFTMAX_MAX_FACTORS = 2.0 ** -torch.linspace(0, 5, 26, dtype=torch.float64)
SOFTMAX_SEARCH_SAMPLES = 16


def _fake_quant(x: torch.Tensor, lo: float, hi: float, bitwidth: int) -> torch.Tensor:
    steps = 2**bitwidth - 1
    s = (hi - lo) / steps
    z = round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, steps) - z) * s


def softmax_value_pairs(model: nn.Module) -> dict[str, str]:
    """Softmax modules whose output is the first input of a MatMul (attention P·V): {softmax: matmul}."""
    sources = input_sources(model)
    mods = dict(model.named_modules())
    pairs = {}
    for name, srcs in sources.items():
        if isinstance(mods.get(name), L.MatMul) and srcs and srcs[0] is not None \
                and isinstance(mods.get(srcs[0].name), nn.Softmax):
            pairs[srcs[0].name] = name
    return pairs


def fit_softmax_ranges(sim, pairs: dict[str, str], x: torch.Tensor) -> None:
    """Set each 8-bit softmax output range to [0, m], m the calibrated max times the one of
    :data:`SOFTMAX_MAX_FACTORS` that minimises the error of P·V over ``x``, with the
    simulation's own (quantized) logits and values."""
    mods = dict(sim.model.named_modules())
    errors: dict[str, torch.Tensor] = {}
    probs: dict[str, torch.Tensor] = {}
    grids: dict[str, list[float]] = {}
    hooks = []
    for sm, mm in pairs.items():
        q = mods[sm].output_quantizers[0]
        if q is None or q.bitwidth != 8 or not q.is_initialized():
            continue
        grids[sm] = (float(q.get_max().detach()) * SOFTMAX_MAX_FACTORS).tolist()

        def keep(_, inp, sm=sm):
            probs[sm] = inp[0].float()

        def measure(_, inp, sm=sm, bitwidth=q.bitwidth):
            # float32 (a third of float64's time; plenty to rank the grid), sums in float64
            p, v = probs.pop(sm), inp[1].float()
            e = errors.setdefault(sm, torch.zeros(len(grids[sm]), dtype=torch.float64))
            for i, hi in enumerate(grids[sm]):
                e[i] += ((_fake_quant(p, 0.0, hi, bitwidth) - p) @ v).double().pow(2).sum()

        hooks += [q.register_forward_pre_hook(keep), mods[mm].register_forward_pre_hook(measure)]
    try:
        with torch.no_grad():
            for b in x.split(4):
                sim.model(b)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for sm, e in errors.items():
            hi = grids[sm][int(e.argmin())]
            mods[sm].output_quantizers[0].set_range(torch.tensor(0.0), torch.tensor(hi))


# Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization
# and Bias Correction", ICCV 2019, section 4.2): quantization shifts the mean of a layer's output
# (8-bit softmax loses small attention weights, GELU's clipped floor), and a shift in the
# residual stream adds up over the blocks. Each Linear / Conv's bias is moved by the mean of its
# output's error against the float model, in network order so that each layer sees its
# predecessors already corrected: one forward with every sample in one batch, the correction
# applied as the forward reaches each layer. The means are over every token, while a ViT's
# output is often its class token alone, so a correction can also hurt (DINOv2 ViT-S/14 mixed:
# -0.6 to -0.7 dB even on the samples it was fitted on); it is kept only when it improves the output on
# the calibration samples. DINOv2 ViT-S/14 w8a8: +1.8 dB on held-out photos (64 samples; +0.8
# with the photo sets swapped, +1.2 with 8 calibration images). A second pass, range learning
# after it (--qat-steps) and output-aware ranges for fc1 and the residual adds all lost.
BIAS_CORRECTION_SAMPLES = 64
BIAS_CORRECTION_BATCH_BYTES = 2**30  # the largest attention-probability tensor of that forward


def bias_correction_samples(model: nn.Module, available: int) -> int:
    """How many samples one bias-correction forward takes: at most
    :data:`BIAS_CORRECTION_SAMPLES`, and few enough that the attention probabilities of one
    layer stay within :data:`BIAS_CORRECTION_BATCH_BYTES`."""
    per_sample = 4 * model.arch.num_heads * (model.grid**2 + 1) ** 2
    return max(1, min(available, BIAS_CORRECTION_SAMPLES, BIAS_CORRECTION_BATCH_BYTES // per_sample))


def correct_biases(sim, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """In place on ``sim``: sequential empirical bias correction of every Linear and Conv with a
    bias, against ``model`` (the float model the simulation was built from) on ``x``. Returns
    each corrected module's bias as it was before. :func:`bias_correction` keeps the
    correction only where it helps."""
    fmods = dict(model.named_modules())
    smods = dict(sim.model.named_modules())
    names = [n for n, m in fmods.items() if isinstance(m, (nn.Linear, nn.Conv2d))
             and m.bias is not None and n in smods]
    before = {n: smods[n].bias.detach().clone() for n in names}

    def channel_mean(m: nn.Module, out: torch.Tensor) -> torch.Tensor:
        dim = 1 if isinstance(m, nn.Conv2d) else out.dim() - 1
        return out.detach().double().movedim(dim, -1).reshape(-1, out.shape[dim]).mean(0)

    float_means: dict[str, torch.Tensor] = {}

    def record(n):
        def hook(m, inp, out):
            float_means[n] = channel_mean(m, out)
        return hook

    def correct(n):
        def hook(m, inp, out):
            shift = (channel_mean(m, out) - float_means[n]).to(out.dtype)
            m.bias.sub_(shift)
            view = [1] * out.dim()
            view[1 if isinstance(m, nn.Conv2d) else -1] = -1
            return out - shift.view(view)
        return hook

    for mods, make, net in ((fmods, record, model), (smods, correct, sim.model)):
        hooks = [mods[n].register_forward_hook(make(n)) for n in names]
        try:
            with torch.no_grad():
                net(x)
        finally:
            for h in hooks:
                h.remove()
    return before


BIAS_CHECK_SAMPLES = 8


def bias_correction(sim, model: nn.Module, x: torch.Tensor) -> float:
    """:func:`correct_biases` on ``x``, undone unless the simulation's output on the first
    :data:`BIAS_CHECK_SAMPLES` of ``x`` got closer to the float model's. Returns the change in
    output SQNR (dB) it made there, kept or not."""
    check = x[:BIAS_CHECK_SAMPLES]
    with torch.no_grad():
        ref = model(check).numpy()
        before = sqnr_db(ref, sim.model(check).numpy())
    biases = correct_biases(sim, model, x)
    with torch.no_grad():
        gain = sqnr_db(ref, sim.model(check).numpy()) - before
        if gain <= 0:
            mods = dict(sim.model.named_modules())
            for n, b in biases.items():
                mods[n].bias.copy_(b)
    return float(gain)


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


# --------------------------------------------------------------------------------------------
# The whole AIMET pass: rewrites -> GPTQ (or AdaRound) -> sim -> calibrate -> softmax ranges ->
# sensitivity -> (mixed) -> bias correction (8-bit) -> (QAT)

SENSITIVITY_SAMPLES = 1  # one forward per activation quantizer (about 0.5 s each on ViT-S, 2 cores)
MAX_PROMOTED_FRACTION = 0.25  # at most a quarter of the activation quantizers go 16-bit
CALIB_BATCH = 8


@dataclass
class AimetOutcome:
    sim: object
    dummy: torch.Tensor
    promoted: list
    sensitivity: list
    num_activation_quantizers: int
    sim_outputs: np.ndarray
    weights_only_sqnr_db: float
    # output SQNR change bias correction made on the calibration samples (kept when > 0);
    # None: not tried (16-bit activations)
    bias_correction_db: float | None = None

    def export(self, qdq_path, aimet_dir, input_name: str, output_name: str) -> None:
        export_qdq(self.sim, self.dummy, str(qdq_path), input_name, output_name)
        store_weights_as_integers(qdq_path)
        export_aimet_folder(self.sim, self.dummy, str(aimet_dir), input_name, output_name)


def isolated_sensitivity(sim, x: torch.Tensor, ref: np.ndarray, step=lambda s: None,
                         per_layer: bool = True):
    """Output SQNR with only the weights quantized, and per activation layer (``per_layer``):
    output SQNR when only that layer's activations are quantized (weights stay quantized
    everywhere). Quantization noise from different layers adds up roughly independently, so
    each layer's share of the noise power says what promoting it to 16 bit would recover."""
    from aimet_torch.utils import remove_activation_quantizers

    mods = dict(sim.model.named_modules())
    names = activation_modules(sim)
    quantized = [m for m in mods.values() if hasattr(m, "output_quantizers")]
    rows = []
    with remove_activation_quantizers(quantized):
        with torch.no_grad():
            weights_only = sqnr_db(ref, sim.model(x).numpy())
    for k, n in enumerate(names if per_layer else ()):
        if k % 8 == 0:
            step(f"sensitivity {k + 1}/{len(names)}")
        with remove_activation_quantizers([m for m in quantized if m is not mods[n]]):
            with torch.no_grad():
                rows.append((n, _out_bw(mods[n]), sqnr_db(ref, sim.model(x).numpy())))
    return weights_only, rows


def noise_share(rows, weights_only_db: float) -> dict[str, float]:
    """Fraction of the summed activation noise power each layer contributes (noise relative to
    the output power, less the weights' own noise that every measurement includes)."""
    floor = 10 ** (-weights_only_db / 10)
    power = {n: max(10 ** (-s / 10) - floor, 0.0) for n, _, s in rows}
    total = sum(power.values()) or 1.0
    return {n: p / total for n, p in power.items()}


def _adaround(model: nn.Module, dummy, batches, config_file: str, folder: str) -> tuple[nn.Module, str]:
    from aimet_torch.adaround import Adaround, AdaroundParameters
    from aimet_torch.common.defs import QuantScheme

    swapped = swap_to_aimet(copy.deepcopy(model)).eval()
    params = AdaroundParameters(data_loader=[(b, None) for b in batches], num_batches=len(batches),
                                default_num_iterations=200,
                                forward_fn=lambda m, batch: m(batch[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rounded = Adaround.apply_adaround(swapped, dummy, params, path=folder, filename_prefix="adaround",
                                          default_param_bw=8,
                                          default_quant_scheme=QuantScheme.post_training_tf_enhanced,
                                          default_config_file=config_file)
    return rounded, os.path.join(folder, "adaround.encodings")


def _qat(sim, model: nn.Module, xc: torch.Tensor, steps: int, step=lambda s: None) -> None:
    """Distillation fine-tune of the quantizer ranges (activation ranges and weight scales)
    toward the float model's outputs on the calibration images; the weight values stay frozen. Learning everything at a
    small learning rate made DINOv2 w8a8 worse (14.0 -> 10.8 dB after 60 steps); learning only
    the ranges (Adam 1e-3, batch 8, relative output MSE) gave 14.08 -> 14.83 dB for the QDQ
    model after 40 steps."""
    ranges = []
    for name, p in sim.model.named_parameters():
        if "quantizer" in name:
            ranges.append(p)
        else:
            p.requires_grad_(False)
    opt = torch.optim.Adam(ranges, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        targets = torch.cat([model(b) for b in xc.split(CALIB_BATCH)])
    sim.model.train()
    for i in range(steps):
        idx = torch.randint(0, len(xc), (min(CALIB_BATCH, len(xc)),), generator=gen)
        target = targets[idx]
        loss = ((sim.model(xc[idx]) - target) ** 2).sum() / (target**2).sum().clamp_min(1e-12)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 5 == 0:
            step(f"QAT step {i + 1}/{steps}")
    sim.model.eval()


def run(model: nn.Module, xc_np: np.ndarray, xe_np: np.ndarray, ref: np.ndarray, cfg, device,
        step=lambda s: None) -> AimetOutcome:
    import tempfile

    from . import gptq, rewrite

    xc, xe = torch.from_numpy(xc_np), torch.from_numpy(xe_np)
    dummy = xc[:1]
    batches = list(xc.split(CALIB_BATCH))
    act_bw = 16 if cfg.precision == "w8a16" else 8
    frozen = None
    base_model = rewrite.prepare(model, xc, cfg.rotates, cfg.seed, step)
    scales: dict = {}
    with tempfile.TemporaryDirectory() as work:
        if cfg.adaround:
            step("AdaRound (weights)")
            base_model, frozen = _adaround(base_model, dummy, batches, device.aimet_config, work)
        else:
            step("GPTQ rounding of Linear weights")
            with torch.no_grad():
                scales = gptq.gptq_linears(base_model, xc)

        gelu_inputs = gelu_only_producers(base_model)
        softmax_pairs = softmax_value_pairs(base_model)
        sources = input_sources(base_model)

        def make(plan):
            sim = build_sim(base_model, dummy, plan, device.aimet_config)
            if frozen:
                sim.set_and_freeze_param_encodings(frozen)
            freeze_weight_scales(sim, scales)
            step(f"calibrating on {len(xc)} samples")
            calibrate(sim, batches)
            floor_gelu_inputs(sim, gelu_inputs)
            fit_softmax_ranges(sim, softmax_pairs, xc[:SOFTMAX_SEARCH_SAMPLES])
            fit_weight_scales_to_biases(sim, sources)
            return sim

        step(f"building the simulation ({device.aimet_config})")
        sim = make(SimPlan(act_bw, htp_arch=device.htp_arch))
        n_act = len(activation_modules(sim))
        xs, rs = xe[:SENSITIVITY_SAMPLES], ref[:SENSITIVITY_SAMPLES]
        # The per-layer pass (one forward per quantizer, a third of a w8a8 run) is what mixed
        # precision decides with; w8a8 and w8a16 report the weights' own noise only.
        weights_only_db, rows = isolated_sensitivity(sim, xs, rs, step,
                                                     per_layer=cfg.precision == "mixed")
        share = noise_share(rows, weights_only_db)
        rows.sort(key=lambda r: -share[r[0]])
        promoted: list[str] = []
        if cfg.precision == "mixed":
            budget = int(n_act * MAX_PROMOTED_FRACTION)
            groups = promotion_groups(base_model, set(activation_modules(sim)))
            promoted = choose_promoted(rows, share, groups, budget)
            step(f"promoting {len(promoted)} of {n_act} activation layers to 16 bit")
            sim = make(SimPlan(8, tuple(promoted), htp_arch=device.htp_arch))
        bias_gain = None
        if act_bw == 8:
            n = bias_correction_samples(base_model, len(xc))
            step(f"bias correction on {n} samples")
            bias_gain = bias_correction(sim, base_model, xc[:n])
        if cfg.qat_steps:
            _qat(sim, model, xc, cfg.qat_steps, step)
        fit_weight_scales_to_biases(sim, sources)  # bias correction and QAT moved biases and ranges
    bits = {n: _out_bw(m) for n, m in sim.model.named_modules()}
    sens = [LayerSensitivity(n, bits.get(n) or b, s, share[n]) for n, b, s in rows]
    with torch.no_grad():
        outs = np.concatenate([sim.model(b).numpy() for b in xe.split(CALIB_BATCH)])
    return AimetOutcome(sim, dummy, promoted, sens, n_act, outs, weights_only_db, bias_gain)

"""What the simulation gets after calibration, before export: each fix changes encodings (or
biases) where plain calibration gets a trained ViT wrong, and each is kept honest by the
simulation, which the QDQ export must reproduce."""

from __future__ import annotations

import torch
from torch import nn

from ...core.metrics import sqnr_db
from ...models import layers as L
from ..qdq import power_of_two_step
from .sim import InputSource, input_sources, module_consumers

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


def fit_weight_scales_to_biases(sim, sources: dict[str, list[InputSource | None]]) -> list[str]:
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
# so the max is chosen for that error instead. The HTP's 8-bit Softmax needs a power-of-two step
# (:func:`..qdq.power_of_two_step`), so the candidates are the power-of-two steps from the one
# that holds the calibrated max down to 1/32 of it. DINOv2 ViT-S/14 w8a8, with the earlier grid
# of the calibrated max times 2^(-k/5): the chosen max fell to 0.4-0.9; 16.1 -> 17.3 dB on
# held-out photos (14.2 -> 15.9 dB with the photo sets swapped).
SOFTMAX_SEARCH_OCTAVES = 6  # 2^-5 = 1/32 below the step that holds the max, that one included
SOFTMAX_SEARCH_SAMPLES = 16


def softmax_max_grid(calibrated_max: float, bitwidth: int = 8) -> list[float]:
    """Candidate maxima for a softmax output: power-of-two steps times ``2^bitwidth - 1``,
    largest first, from the one that covers ``calibrated_max``."""
    levels = 2**bitwidth - 1
    top = power_of_two_step(calibrated_max / levels, levels)
    return [levels * top * 2.0**-k for k in range(SOFTMAX_SEARCH_OCTAVES)]


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
        grids[sm] = softmax_max_grid(float(q.get_max().detach()), q.bitwidth)

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
    snap_softmax_steps_in_sim(sim)


def snap_softmax_steps_in_sim(sim) -> list[str]:
    """Put every 8-bit softmax output step on a power of two, as the HTP needs (those not
    fitted above; the fitted ones already are). Returns the softmaxes changed."""
    changed = []
    with torch.no_grad():
        for name, m in sim.model.named_modules():
            qs = getattr(m, "output_quantizers", None)
            q = qs[0] if isinstance(m, nn.Softmax) and qs else None
            if q is None or q.bitwidth != 8 or not q.is_initialized():
                continue
            lo, hi = float(q.get_min().detach()), float(q.get_max().detach())
            levels = 2**q.bitwidth - 1
            step = power_of_two_step((hi - min(lo, 0.0)) / levels, levels)
            if lo != 0.0 or hi != levels * step:
                q.set_range(torch.tensor(0.0), torch.tensor(levels * step))
                changed.append(name)
    return changed


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



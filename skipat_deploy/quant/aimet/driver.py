"""The whole AIMET pass: rewrites -> GPTQ (or AdaRound) -> sim -> calibrate -> fixes (GELU
floor, softmax ranges, int32-safe weight scales) -> sensitivity -> (mixed) -> bias correction
(8-bit) -> (QAT)."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..report import LayerSensitivity
from .fixes import (SOFTMAX_SEARCH_SAMPLES, bias_correction, bias_correction_samples,
                    fit_softmax_ranges, fit_weight_scales_to_biases, floor_gelu_inputs,
                    gelu_only_producers, softmax_value_pairs)
from .mixed import (MAX_PROMOTED_FRACTION, SENSITIVITY_SAMPLES, choose_promoted,
                    isolated_sensitivity, noise_share, promotion_groups)
from .sim import (SimPlan, _out_bw, activation_modules, build_sim, calibrate, export_aimet_folder,
                  export_qdq, freeze_weight_scales, input_sources, swap_to_aimet)

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
    precision: str = ""  # what was built (auto: the chosen candidate's)
    search: object | None = None  # auto: the search.SearchReport
    cost_estimate: float | None = None  # the NPU cost estimated from the graph (quant.cost), w8a8 = 1

    def export(self, qdq_path, aimet_dir, input_name: str, output_name: str) -> None:
        export_qdq(self.sim, self.dummy, str(qdq_path), input_name, output_name)
        export_aimet_folder(self.sim, self.dummy, str(aimet_dir), input_name, output_name)


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
        step=lambda s: None, labels: np.ndarray | None = None, timer=None) -> AimetOutcome:
    """``timer`` (``--precision auto``, timed on a phone): ``[(Candidate, sim)] -> {name: (ms,
    how)}`` for the candidates that meet the goal."""
    import tempfile

    from .. import gptq, rewrite

    xc, xe = torch.from_numpy(xc_np), torch.from_numpy(xe_np)
    dummy = xc[:1]
    batches = list(xc.split(CALIB_BATCH))
    act_bw = 16 if cfg.precision == "w8a16" else 8
    frozen = None
    base_model = rewrite.prepare(model, xc, cfg.rotates, cfg.seed, step)
    # The rewritten float model, before GPTQ / AdaRound round its weights: what bias
    # correction corrects toward (the rounded weights are part of the error it corrects).
    float_model = base_model
    scales: dict = {}
    with tempfile.TemporaryDirectory() as work:
        if cfg.adaround:
            step("AdaRound (weights)")
            base_model, frozen = _adaround(base_model, dummy, batches, device.aimet_config, work)
        else:
            step("GPTQ rounding of Linear weights")
            base_model = copy.deepcopy(base_model)
            with torch.no_grad():
                scales = gptq.gptq_linears(base_model, xc)

        gelu_inputs = gelu_only_producers(base_model)
        softmax_pairs = softmax_value_pairs(base_model)
        sources = input_sources(base_model)

        def make(plan, base=None, base_scales=None):
            """The calibrated simulation of ``plan`` on the prepared model (or ``base``, whose
            GPTQ scales are ``base_scales``)."""
            net = base_model if base is None else base
            sim = build_sim(net, dummy, plan, device.aimet_config)
            if frozen and base is None:
                sim.set_and_freeze_param_encodings(frozen)
            freeze_weight_scales(sim, scales if base is None else base_scales)
            step(f"calibrating on {len(xc)} samples")
            calibrate(sim, batches)
            same = base is None
            floor_gelu_inputs(sim, gelu_inputs if same else gelu_only_producers(net))
            fit_softmax_ranges(sim, softmax_pairs if same else softmax_value_pairs(net),
                               xc[:SOFTMAX_SEARCH_SAMPLES])
            fit_weight_scales_to_biases(sim, sources if same else input_sources(net))
            return sim

        step(f"building the simulation ({device.aimet_config})")
        sim = make(SimPlan(act_bw, htp_arch=device.htp_arch))
        n_act = len(activation_modules(sim))
        # The report's weights-only figure is on held-out samples, like its other figures.
        weights_only_db, _ = isolated_sensitivity(sim, xe, ref, per_layer=False)
        rows: list = []
        share: dict = {}
        promoted: list[str] = []

        def sensitivity():
            # What mixed precision decides with (one forward per quantizer, a third of a w8a8
            # run): calibration samples only, so the held-out figures judge the choice.
            xs = xc[:SENSITIVITY_SAMPLES]
            with torch.no_grad():
                rs = model(xs).numpy()
            calib_weights_only_db, found = isolated_sensitivity(sim, xs, rs, step)
            rows[:] = found
            share.update(noise_share(rows, calib_weights_only_db))
            rows.sort(key=lambda r: -share[r[0]])
            # layers by falling share of the output noise, and what promoting each takes
            return [r[0] for r in rows], promotion_groups(base_model, set(activation_modules(sim)))

        def finish(s, bw):
            """Bias correction (8-bit), QAT, the int32-safe weight scales: the last steps."""
            gain = None
            if bw == 8:
                n = bias_correction_samples(base_model, len(xc))
                step(f"bias correction on {n} samples")
                gain = bias_correction(s, float_model, xc[:n])
            if cfg.qat_steps:
                _qat(s, model, xc, cfg.qat_steps, step)
                fit_softmax_ranges(s, softmax_pairs, xc[:SOFTMAX_SEARCH_SAMPLES])  # QAT moved them
            fit_weight_scales_to_biases(s, sources)  # bias correction and QAT moved biases and ranges
            return gain

        def make_w8a16():
            """w8a16 as ``--precision w8a16`` builds it: not rotated (at 16-bit activations the
            weights dominate the noise, and rotation makes them harder to round: DINOv2 33.9 dB
            plain against 28.6 rotated), its own GPTQ rounding."""
            if not cfg.rotates or cfg.adaround:
                return make(SimPlan(16, htp_arch=device.htp_arch))
            plain = copy.deepcopy(rewrite.prepare(model, xc, False, cfg.seed, step))
            with torch.no_grad():
                plain_scales = gptq.gptq_linears(plain, xc)
            return make(SimPlan(16, htp_arch=device.htp_arch), plain, plain_scales)

        search = None
        if cfg.precision == "auto":
            sim, promoted, act_bw, bias_gain, search = _auto(
                sim, n_act, sensitivity, finish, make, make_w8a16, xe, ref, cfg, device, step, labels, timer)
        else:
            if cfg.precision == "mixed":
                _, groups = sensitivity()
                budget = int(n_act * MAX_PROMOTED_FRACTION)
                promoted = choose_promoted(rows, share, groups, budget)
                step(f"promoting {len(promoted)} of {n_act} activation layers to 16 bit")
                sim = make(SimPlan(8, tuple(promoted), htp_arch=device.htp_arch))
            bias_gain = finish(sim, act_bw)
    bits = {n: _out_bw(m) for n, m in sim.model.named_modules()}
    sens = [LayerSensitivity(n, bits.get(n) or b, s, share[n]) for n, b, s in rows]
    with torch.no_grad():
        outs = np.concatenate([sim.model(b).numpy() for b in xe.split(CALIB_BATCH)])
    chosen = search.candidates[search.chosen].precision if search else cfg.precision
    from ..cost import estimate, op_costs

    cost = estimate(op_costs(sim.model, xe[:1], activation_modules(sim)),
                    None if act_bw == 16 else set(promoted))
    return AimetOutcome(sim, dummy, list(promoted), sens, n_act, outs, weights_only_db, bias_gain,
                        chosen, search, cost)


def _auto(sim, n_act, sensitivity, finish, make, make_w8a16, xe, ref, cfg, device, step, labels,
          timer=None):
    """``--precision auto`` (:mod:`..search`): w8a8 (``sim``, built already) first, then the
    ladder of 16-bit sets and w8a16, each a simulation of its plan; the cheapest that keeps the
    goal, or with a ``timer`` the fastest on the phone of those tried that keep it. Returns
    (sim, promoted, activation bits, bias-correction gain, SearchReport)."""
    from ..cost import estimate, op_costs
    from ..search import (CONFIDENCE, Candidate, SearchReport, choose, choose_measured, ladder,
                          sqnr_interval, top1_drop_interval)

    costs = op_costs(sim.model, xe[:1], activation_modules(sim))
    built: dict[str, tuple] = {}

    def outputs(s):
        with torch.no_grad():
            return np.concatenate([s.model(b).numpy() for b in xe.split(CALIB_BATCH)])

    def evaluate(c: Candidate) -> None:
        bw = 16 if c.precision == "w8a16" else 8
        if c.precision == "w8a8":
            s = sim
        elif c.precision == "w8a16":
            s = make_w8a16()
        else:
            s = make(SimPlan(bw, c.promoted, htp_arch=device.htp_arch))
        gain = finish(s, bw)
        out = outputs(s)
        c.sqnr_db, c.sqnr_low_db = sqnr_interval(ref, out, cfg.seed)
        if labels is not None:
            c.top1_drop, c.top1_drop_high = top1_drop_interval(ref, out, labels)
        built[c.name] = (s, bw, gain)

    first = Candidate("w8a8", "w8a8", (), 0, 1.0)
    order, groups = sensitivity()  # before w8a8 is finished: see search's docstring
    candidates = [first] + [Candidate(f"w8a8 + {g} group(s) at 16 bit ({len(p)} layers)", "mixed",
                                      p, g, estimate(costs, set(p)))
                            for p, g in ladder(order, groups, n_act)]
    candidates.append(Candidate("w8a16", "w8a16", (), 0, estimate(costs, None)))
    candidates.sort(key=lambda c: c.cost)
    goal = cfg.goal
    judged = (f"output SQNR vs float on the {len(xe)} held-out samples, lower end of a one-sided "
              f"{int(CONFIDENCE * 100)} % bootstrap interval" if goal.kind == "min_sqnr" else
              f"top-1 drop vs float on the {len(xe)} labelled held-out images, upper end of the "
              f"{int(CONFIDENCE * 100)} % Agresti-Min interval")
    report = SearchReport(goal.describe(), judged, "estimate from the graph, w8a8 = 1", candidates)
    report.chosen = choose(candidates, evaluate, goal, step)
    if timer is not None:
        met = [c for c in candidates if c.meets]
        step(f"auto: timing the {len(met)} candidate(s) that keep {goal.describe()} on the phone")
        times = timer([(c, built[c.name][0]) for c in met])
        for c in met:
            c.latency_ms, c.measured = times[c.name]
        report.chosen = choose_measured(candidates, report.chosen)
    chosen = candidates[report.chosen]
    s, bw, gain = built[chosen.name]
    how = (f"{chosen.latency_ms:.2f} ms measured" if chosen.latency_ms is not None
           else f"estimated cost {chosen.cost:.2f}x w8a8")
    step(f"auto: {chosen.name} ({how}) keeps {goal.describe()}")
    return s, chosen.promoted, bw, gain, report


"""How ``--precision auto`` compares the candidates that keep the goal (``--cost``): timed on the
phone on AI Hub (:func:`skipat_deploy.npu.hub.time_models`), or the estimate from the graph
(:mod:`skipat_deploy.quant.cost`). The meter is made here, where stages may chain: the quantizer
calls it without knowing AI Hub."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..npu.config import CompileConfig
from ..quant import QuantizeConfig
from ..quant.search import LatencyMeter

NOT_CONFIGURED = ("--precision auto compares its candidates by the NPU cost estimated from the "
                  "graph: AI Hub is not configured (`qai-hub configure --api_token <TOKEN>` to "
                  "time them on the phone, --cost estimate to say so)")


def latency_meter(qcfg: QuantizeConfig, out_dir: str | Path, step: Callable[[str], None],
                  notices: list[str], ccfg: CompileConfig | None = None) -> LatencyMeter | None:
    """The phone on AI Hub for ``--cost hub`` (and ``auto`` where AI Hub is configured and
    offers the device), reached now (one line when it cannot be) rather than after the search;
    None for the estimate. ``ccfg``: the command's compile options (QAIRT version, timeout)."""
    if qcfg.precision != "auto" or qcfg.cost == "estimate":
        return None
    from ..npu import hub

    ccfg = replace(ccfg or CompileConfig(), device=qcfg.device, compiler="hub")
    device = ccfg.check()
    if qcfg.cost == "auto":
        try:
            hub.client_config()
        except hub.HubNotConfigured:
            notices.append(NOT_CONFIGURED)
            return None
        if not device.hub_devices:
            notices.append(f"--precision auto compares its candidates by the NPU cost estimated "
                           f"from the graph: {device.name} is not offered on AI Hub")
            return None
    target = hub.preflight(device)
    where = f"{target.hub_device} (AI Hub)"
    notices.append(f"--precision auto: the candidates that keep the goal were timed on {where}")
    return LatencyMeter(where, lambda models, stem: hub.time_models(
        models, Path(out_dir) / f"{stem}.hub.json", ccfg, step))

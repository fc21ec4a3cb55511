"""Latency of one model: on the phone's NPU through AI Hub, or on this machine's CPU.

* ``hub``: compile for the device (:mod:`skipat_deploy.hub`), then an inference job with
  profiling on a real phone: estimated inference time, first-load time, peak memory, layers per
  compute unit, the raw profile document, and the phone's outputs against the local model's.
* ``cpu``: ONNX Runtime on this machine (:mod:`skipat_deploy.latency`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._io import atomic_path
from .compile import CompileConfig, check_inputs
from .errors import UserError
from .latency import CpuLatency, interleaved
from .validate import run_qdq_cpu


def profile_hub(model: str | Path, out_dir: str | Path, cfg: CompileConfig = CompileConfig(),
                step: Callable[[str], None] = lambda msg: None, hub=None):
    """(CompileResult, HubProfile) for a QDQ ONNX on ``cfg.device``; resumes recorded jobs."""
    from . import hub as hub_mod

    device = cfg.check()
    client = hub or hub_mod.client()
    model, out_dir = Path(model), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sub = hub_mod.submit_compile(client, model, out_dir, cfg, device, step)
    compiled = hub_mod.finish_compile(sub, model, out_dir, cfg, device, step)
    psub, reference, classifier = submit_device_profile(client, sub, model, out_dir, device, step)
    prof = hub_mod.finish_profile(psub, model, out_dir, device, reference, step, classifier,
                                  cfg.hub_timeout_s)
    return compiled, prof


def submit_device_profile(client, compiled_sub, model: Path, out_dir: Path, device, step):
    """Submit the profiling job with one real photo as input; the local QDQ model's output on
    the same photo is the reference the phone's output is compared with."""
    import onnx

    from . import hub as hub_mod

    graph = onnx.load(str(model), load_external_data=False).graph
    inp = graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x, _, classifier = check_inputs(model, 1, shape)
    reference = {graph.output[0].name: run_qdq_cpu(model, x[0])}
    sub = hub_mod.submit_profile(client, compiled_sub, model, out_dir, device, {inp.name: x[0]}, step)
    return sub, reference, classifier


@dataclass
class ProfileOutcome:
    backend: str
    device: str
    cpu: list[CpuLatency] = field(default_factory=list)
    hub: object | None = None  # hub.HubProfile
    compiled: object | None = None  # compile.CompileResult (hub)
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(backend=self.backend, device=self.device, cpu=[asdict(c) for c in self.cpu],
                    hub=None if self.hub is None else self.hub.to_json(),
                    compiled=None if self.compiled is None else self.compiled.to_json(),
                    notices=self.notices)


def profile_cpu_models(models: list[Path], runs: int, warmup: int, threads: int | None) -> list[CpuLatency]:
    for m in models:
        if not Path(m).is_file():
            raise UserError(f"model not found: {m}")
    stats, _ = interleaved(models, runs=runs, warmup=warmup, threads=threads)
    return stats


def fp32_and_int8(ckpt, resolution: int, precision: str, out_dir: Path,
                  step: Callable[[str], None]) -> list[Path]:
    """The float export and an INT8 QDQ model of it (ONNX Runtime quantization on four real
    photos: CPU latency does not depend on the calibration)."""
    from . import calibration
    from .export import ExportConfig, export_onnx
    from .quant_ort import quantize_ort

    if precision not in ("w8a8", "w8a16"):
        raise UserError(f"--precision {precision!r}: CPU timing quantizes with ONNX Runtime, "
                        "use w8a8 or w8a16")
    step(f"exporting at {resolution}px")
    (r,) = export_onnx(ckpt, out_dir, ExportConfig(resolutions=(resolution,)))
    calib, _ = calibration.bundled_photos()
    step(f"quantizing ({precision}, onnxruntime) for the INT8 timing")
    x = calibration.image_batch(calib, resolution, ckpt.spec.preprocess, 4)
    int8 = r.path.with_name(r.path.name.replace(".onnx", f"_{precision}_ort.qdq.onnx"))
    with atomic_path(int8) as tmp:
        quantize_ort(str(r.path), str(tmp), x, r.input_name, 16 if precision == "w8a16" else 8, 1)
    return [r.path, int8]

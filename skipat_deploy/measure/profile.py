"""Latency of one model: on the phone's NPU through AI Hub, or on this machine's CPU.

* ``hub``: compile for the device (:mod:`skipat_deploy.npu.hub`), then an inference job with
  profiling on a real phone: estimated inference time, first-load time, peak memory, layers per
  compute unit, the raw profile document, and the phone's outputs against the local model's.
* ``adb``: the user's phone over USB with their QAIRT SDK (:mod:`.adb`): median, quartiles and
  minimum per inference, first-load time.
* ``cpu``: ONNX Runtime on this machine (:mod:`.latency`).

Both take models that exist; making them from a checkpoint is :mod:`skipat_deploy.commands.profile`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..export import one_sample, run_qdq_cpu
from ..npu import hub as hub_mod
from ..devices import device_option
from ..export import DEFAULT_RESOLUTION
from ..npu.config import CompileConfig, hub_timeout_option
from ..core.options import option
from ..core.staging import staged
from .latency import (CpuLatency, Ratio, inferences_option, interleaved, measure_on_option,
                      qairt_sdk_option, ratio_interval, rounds_option, serial_option, threads_option)

@dataclass(frozen=True)
class ProfileConfig:
    resolution: int = option(DEFAULT_RESOLUTION, "With --ckpt: input size in px.")
    device: str = device_option()
    measure_on: str = measure_on_option()
    runs: int = option(50, "Timed CPU runs per model (after warm-up).")
    warmup: int = 5
    threads: int | None = threads_option()
    hub_timeout_s: float = hub_timeout_option()
    budget_s: float = option(60.0, "CPU: stop timing the FP32 / INT8 pair after this many seconds, settled within +-2 % or not (the report gives the interval reached).", flag="--time-budget")
    serial: str | None = serial_option()
    qairt_sdk: Path | None = qairt_sdk_option()
    rounds: int = rounds_option()
    inferences: int = inferences_option()

    def compile_config(self) -> CompileConfig:
        """What compiles the model on AI Hub (hub)."""
        return CompileConfig(device=self.device, compiler="hub", hub_timeout_s=self.hub_timeout_s)


def profile_hub(model: str | Path, out_dir: str | Path, cfg: CompileConfig = CompileConfig(),
                step: Callable[[str], None] = lambda msg: None, hub=None):
    """(CompileResult, HubProfile) for a QDQ ONNX on ``cfg.device``; resumes recorded jobs."""
    device = cfg.check()
    client = hub or hub_mod.client()
    model, out_dir = Path(model), Path(out_dir)
    with staged(out_dir):  # the compiled model, its record and the raw profile: all or none
        sub = hub_mod.submit_compile(client, model, out_dir, cfg, device, step)
        compiled = hub_mod.finish_compile(sub, model, out_dir, cfg, device, step)
        psub, reference, classifier = submit_device_profile(client, sub, model, out_dir, device, step)
        prof = hub_mod.finish_profile(psub, model, out_dir, device, reference, step, classifier,
                                      cfg.hub_timeout_s)
    return compiled, prof


def submit_device_profile(client, compiled_sub, model: Path, out_dir: Path, device, step):
    """Submit the profiling job with one real photo as input; the local QDQ model's output on
    the same photo is the reference the phone's output is compared with."""
    s = one_sample(model)
    reference = {s.output_name: run_qdq_cpu(model, s.x)}
    sub = hub_mod.submit_profile(client, compiled_sub, model, out_dir, device, {s.input_name: s.x}, step)
    return sub, reference, s.classifier


@dataclass
class ProfileOutcome:
    backend: str
    device: str
    cpu: list[CpuLatency] = field(default_factory=list)
    # cpu, two models: the second's latency over the first's (CPU INT8 / FP32), paired runs
    cpu_ratio: Ratio | None = None
    hub: object | None = None  # hub.HubProfile
    phone: object | None = None  # adb: measure.adb.PhoneTiming
    phone_logs: Path | None = None  # adb: the viewer's text of every timed run
    compiled: object | None = None  # npu.CompileResult (hub)
    notices: list[str] = field(default_factory=list)
    # models made from a checkpoint into the output folder first: (kind, path)
    made: list[tuple[str, Path]] = field(default_factory=list)

    def files(self) -> list[tuple[str, Path]]:
        """Every file written, as (kind, path): the models made, the compiled model, its
        record and the raw profile (hub)."""
        out = list(self.made)
        if self.compiled is not None:
            out += list(self.compiled.files().items())
        if self.hub is not None:
            out.append(("raw_profile", self.hub.raw_profile))
        if self.phone_logs is not None:
            out.append(("phone_logs", self.phone_logs))
        return out

    def to_json(self) -> dict:
        return dict(backend=self.backend, device=self.device, cpu=[asdict(c) for c in self.cpu],
                    cpu_ratio=None if self.cpu_ratio is None else self.cpu_ratio.to_json(),
                    hub=None if self.hub is None else self.hub.to_json(),
                    phone=None if self.phone is None else self.phone.to_json(),
                    compiled=None if self.compiled is None else self.compiled.to_json(),
                    notices=self.notices, files=[dict(kind=k, path=str(p)) for k, p in self.files()])


def profile_cpu_models(models: list[Path], runs: int, warmup: int, threads: int | None,
                       budget_s: float) -> tuple[list[CpuLatency], Ratio | None]:
    """Time ``models`` side by side; with two, also the second over the first (paired), timed
    until its interval is within +-2 % or ``budget_s`` seconds have passed."""
    for m in models:
        if not Path(m).is_file():
            raise UserError(f"model not found: {m}")
    pair = [(1, 0)] if len(models) == 2 else []
    stats, times = interleaved(models, runs=runs, warmup=warmup, threads=threads, until=pair,
                               budget_s=budget_s)
    return stats, (ratio_interval(times, 1, 0) if pair else None)

"""``bundle``: load -> per resolution, quantize once per Hexagon version among the devices ->
compile each device -> the CPU INT8 model -> the manifest (:mod:`skipat_deploy.bundle`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..bundle import write_manifest
from ..core.options import option
from ..core.staging import staged
from ..devices import DEFAULT_DEVICE, resolve_device
from ..export import DEFAULT_RESOLUTION, artifact_name, check_resolution
from ..models.checkpoint import LoadConfig, LoadedCheckpoint, load
from ..npu.compile import compile_local
from ..npu.config import CompileConfig
from ..quant import QuantizeConfig, QuantizeResult, quantize
from ..quant.cpu import CpuInt8Config, quantize_cpu
from ..quant.search import LatencyMeter
from .inputs import noted
from .timing import latency_meter

Step = Callable[[str], None]


@dataclass(frozen=True)
class BundleConfig:
    """What ``bundle`` makes besides the quantizer's options (a :class:`QuantizeConfig`)."""

    devices: tuple[str, ...] = option((DEFAULT_DEVICE,), "Target phone (repeatable; `skipat-deploy devices`).", flag="--device", repeat=True)
    resolutions: tuple[int, ...] = option((DEFAULT_RESOLUTION,), "Input size in px (repeatable).", flag="--resolution", repeat=True)
    zip: bool = option(False, "Also write <folder>.zip.", flag="--zip")

    def check(self, qcfg: QuantizeConfig) -> None:
        """Each device's quantization options, before any work (each Hexagon version gets a
        QDQ model of its own)."""
        for d in self.devices:
            replace(qcfg, device=d).check()


@dataclass
class BundleResult:
    folders: list[Path]
    manifests: list[Path]
    zips: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def run(load_cfg: LoadConfig, out_dir: str | Path, cfg: BundleConfig, qcfg: QuantizeConfig,
        step: Step) -> BundleResult:
    cfg.check(qcfg)
    notices: list[str] = []
    meters = {}  # Hexagon version -> where its candidates are timed (--precision auto)
    for name in cfg.devices:
        dev = resolve_device(name)
        if dev.hexagon not in meters:
            meters[dev.hexagon] = latency_meter(replace(qcfg, device=dev.name), out_dir, step, notices)
    loaded = load(load_cfg)
    result = bundle(loaded, out_dir, cfg, qcfg, step, meters)
    result.notices[:0] = [n for n in dict.fromkeys(notices)]
    return noted(result, loaded)


def bundle(ckpt: LoadedCheckpoint, out_dir: str | Path, cfg: BundleConfig, qcfg: QuantizeConfig,
           step: Step, latency: dict[str, LatencyMeter | None] | None = None) -> BundleResult:
    """One app bundle folder per resolution in ``out_dir``: quantize once per Hexagon version
    among the devices, compile each device from the model of its version, add the CPU INT8
    model (same calibration options) as the fallback where there is no NPU, describe it all in
    the manifest. The folders (and with ``cfg.zip`` their zips) are built in a stage and moved
    in together when all are complete: an existing bundle of the same name is replaced only
    then."""
    t0 = time.perf_counter()
    devices = [resolve_device(d) for d in cfg.devices]
    for r in cfg.resolutions:
        check_resolution(r, ckpt.arch.patch_size)
    out_dir = Path(out_dir)
    result = BundleResult([], [])
    with staged(out_dir) as stage:
        for res in cfg.resolutions:
            name = artifact_name(ckpt, res, 1).removesuffix(".onnx")
            folder = stage.path(name)
            quantized: dict[str, QuantizeResult] = {}  # Hexagon version -> its QDQ model
            compiled = []
            for dev in devices:
                if dev.hexagon not in quantized:
                    step(f"quantizing for Hexagon {dev.hexagon}")
                    quantized[dev.hexagon] = quantize(
                        ckpt, folder, replace(qcfg, resolution=res, device=dev.name), step,
                        latency=(latency or {}).get(dev.hexagon))
                q = quantized[dev.hexagon]
                step(f"compiling for {dev.name} ({dev.soc})")
                c = compile_local(q.qdq_onnx, folder, CompileConfig(device=dev.name), step)
                c.record.unlink()  # the manifest carries what the record says
                compiled.append(c)
            for made in [*quantized.values(), *compiled]:
                result.notices.extend(n for n in made.notices if n not in result.notices)
            cpu = quantize_cpu(ckpt, folder, CpuInt8Config.like(replace(qcfg, resolution=res)), step)
            for extra in [*(f for q in quantized.values()
                             for f in (q.report_json, q.layers_csv, q.noise_png)), cpu.report]:
                if extra is not None:
                    extra.unlink()
            write_manifest(folder, list(quantized.values()), compiled, cpu)
            result.folders.append(stage.final(folder))
            result.manifests.append(stage.final(folder) / "manifest.json")
            if cfg.zip:
                step(f"zipping {name}")
                archive = shutil.make_archive(str(folder), "zip", root_dir=stage.dir, base_dir=name)
                result.zips.append(stage.final(archive))
    result.seconds = time.perf_counter() - t0
    return result

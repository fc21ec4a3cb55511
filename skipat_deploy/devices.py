"""Device profiles: the Snapdragon targets, read from ``profiles/devices.json`` (data, not code).

Quantization (Hexagon version -> AIMET HTP config) and compilation (QNN ``soc_model``, AI Hub
device names) read the same table.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .core.errors import UserError

DEFAULT_DEVICE = "Galaxy S22"


def device_option(help: str = "Target phone, by name or alias (`skipat-deploy devices`).", **facts):
    """The --device option, declared once for every config that targets one phone."""
    from .core.options import option

    return option(DEFAULT_DEVICE, help, **facts)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    aliases: tuple[str, ...]
    hub_devices: tuple[str, ...]  # AI Hub device names; the first is the one submitted to
    hub_chipset: str  # AI Hub device attribute
    chipset: str
    soc: str
    qnn_soc_model: int  # ONNX Runtime QNN EP `soc_model`
    hexagon: str  # HTP architecture, e.g. "v69"
    fp16: bool = False  # the HTP runs float16 graphs
    weight_sharing: bool = False  # one context binary may hold several graphs sharing weights
    os: str = "Android"
    form_factor: str = "phone"

    @property
    def htp_arch(self) -> int:
        return int(self.hexagon.removeprefix("v"))

    @property
    def aimet_config(self) -> str:
        """Name of AIMET's shipped HTP quantsim config for this Hexagon version."""
        return f"htp_{self.hexagon}"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", name.lower().replace("samsung", ""))


@lru_cache(maxsize=1)
def load_profiles() -> tuple[DeviceProfile, ...]:
    doc = json.loads(resources.files("skipat_deploy.profiles").joinpath("devices.json").read_text())
    return tuple(
        DeviceProfile(
            **{**d, "aliases": tuple(d["aliases"]), "hub_devices": tuple(d["hub_devices"])}
        )
        for d in doc["devices"]
    )


def resolve_device(name: str) -> DeviceProfile:
    """A profile by name, alias, SoC or AI Hub name, ignoring case, spaces and punctuation."""
    table = {}
    for p in load_profiles():
        for n in (p.name, p.soc, p.chipset, *p.aliases, *p.hub_devices):
            table.setdefault(_key(n), p)
    if _key(name) in table:
        return table[_key(name)]
    names = [p.name for p in load_profiles()]
    close = difflib.get_close_matches(name, names + [a for p in load_profiles() for a in p.aliases], n=3, cutoff=0.4)
    hint = f"closest: {', '.join(dict.fromkeys(close))}; " if close else ""
    raise UserError(
        f"unknown device {name!r} ({hint}known: {', '.join(names)}; `skipat-deploy devices` lists them)"
    )


def merge_live(live: list[dict]) -> tuple[list[dict], list[str]]:
    """AI Hub's live devices (``name``, ``chipset``, ``hexagon``, ``soc_model``, ``os``) beside
    the local table: each row gains ``profile`` (the local target, or None where the table
    lacks it); also the local targets AI Hub does not offer now."""
    profiles = load_profiles()
    by_chipset = {p.hub_chipset.removeprefix("chipset:"): p for p in profiles}
    by_name = {n: p for p in profiles for n in p.hub_devices}
    rows, seen = [], set()
    for d in live:
        p = by_name.get(d["name"]) or by_chipset.get(d.get("chipset") or "")
        rows.append({**d, "profile": p.name if p else None})
        if p:
            seen.add(p.name)
    missing = [p.name for p in profiles if p.hub_devices and p.name not in seen]
    return rows, missing


# --------------------------------------------------------------------------------------------
# What each target's HTP accepts: established on the QNN HTP simulator by profiles/probe_htp.py
# (profiles/htp_capabilities.json), per QNN soc_model.

PRECISION_FEATURES = {
    "w8a8": ("matmul_8x8", "layernorm_a8", "softmax_a8", "gelu_a8", "add_a8", "depthwise_conv_a8"),
    # 16-bit activations; AIMET makes a MatMul's second input 8-bit before v73
    "w8a16": ("matmul_16x8", "layernorm_a16", "softmax_a16", "gelu_a16", "add_a16", "depthwise_conv_a16"),
    "fp16": ("layernorm_fp16", "softmax_fp16", "gelu_fp16", "add_fp16", "depthwise_conv_fp16"),
}
PRECISION_FEATURES["mixed"] = PRECISION_FEATURES["w8a8"] + PRECISION_FEATURES["w8a16"]
PRECISIONS = ("w8a16", "w8a8", "mixed", "fp16")


@lru_cache(maxsize=1)
def htp_capabilities() -> dict[int, dict[str, bool]]:
    """QNN soc_model -> feature -> accepted and run by the HTP simulator."""
    doc = json.loads(resources.files("skipat_deploy.profiles").joinpath("htp_capabilities.json").read_text())
    return {row["soc_model"]: {k: v is True for k, v in row["features"].items()} for row in doc["soc"]}


def unsupported(device: DeviceProfile, precision: str) -> list[str]:
    """The features ``precision`` needs that ``device``'s HTP refused on the simulator (empty
    when it can run it, or when the SoC was never probed)."""
    caps = htp_capabilities().get(device.qnn_soc_model)
    if caps is None:
        return []
    return [f for f in PRECISION_FEATURES[precision] if caps.get(f) is False]


def check_precision(device: DeviceProfile, precision: str) -> None:
    """Refuse, before any work, a precision the target's HTP cannot run; name what it can."""
    missing = unsupported(device, precision)
    if not missing:
        return
    can = [p for p in PRECISIONS if p != "fp16" and not unsupported(device, p)]
    asked = "--fp16" if precision == "fp16" else f"--precision {precision}"
    raise UserError(
        f"{device.name} ({device.soc}, Hexagon {device.hexagon}) cannot run {asked}: "
        f"its HTP refuses {', '.join(missing)} (QNN validation on the HTP simulator, "
        f"profiles/htp_capabilities.json); use --precision {' or '.join(can)}")


# --------------------------------------------------------------------------------------------
# The CPU a figure was measured on (the CPU fallback's accuracy and speed depend on it)

@dataclass(frozen=True)
class CpuHost:
    """This machine's CPU as ONNX Runtime's integer kernels see it. ``dot8``: the 8-bit dot
    product instructions that sum u8 x s8 products in 32 bit (x86: AVX512-VNNI or AVX-VNNI;
    ARM: the dot-product extension, ``asimddp``); None when it could not be read. Without them
    x86's AVX2 kernels add pairs of u8 x s8 products in 16 bit, with saturation."""

    model: str
    arch: str  # platform.machine(): x86_64, aarch64, ...
    dot8: bool | None
    threads: int
    onnxruntime: str

    @property
    def host_class(self) -> str:
        """What the CPU INT8 encodings are chosen by: ``x86-vnni``, ``x86`` (no VNNI), ``arm-dot``,
        ``arm``, or the bare architecture when its flags are unknown."""
        family = "x86" if self.arch.lower() in ("x86_64", "amd64", "i686", "x86") else (
            "arm" if self.arch.lower() in ("aarch64", "arm64") else self.arch)
        if self.dot8 is None or family not in ("x86", "arm"):
            return family
        return family + ({"x86": "-vnni", "arm": "-dot"}[family] if self.dot8 else "")

    def describe(self) -> str:
        dot = {"x86": "VNNI", "arm": "dot product"}.get(self.host_class.split("-")[0], "8-bit dot product")
        has = "unknown" if self.dot8 is None else ("yes" if self.dot8 else "no")
        return (f"{self.model} ({self.arch}, {dot}: {has}), {self.threads} thread(s), "
                f"ONNX Runtime {self.onnxruntime}")

    def to_json(self) -> dict:
        return dict(cpu=self.model, arch=self.arch, dot8=self.dot8, host_class=self.host_class,
                    threads=self.threads, onnxruntime=self.onnxruntime)

    @classmethod
    def from_json(cls, d: dict) -> "CpuHost":
        return cls(d["cpu"], d["arch"], d["dot8"], d["threads"], d["onnxruntime"])


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip().lower(), value.strip())
    return out


def cpu_host(threads: int | None = None) -> CpuHost:
    """This machine's :class:`CpuHost`; ``threads``: what ONNX Runtime is given (None: all cores)."""
    import os
    import platform

    import onnxruntime

    info = _cpuinfo()
    arch = platform.machine() or "unknown"
    flags = info.get("flags") or info.get("features")
    dot8 = None
    if flags is not None:
        names = set(flags.split())
        dot8 = bool(names & {"avx512_vnni", "avx_vnni", "avx512vnni", "asimddp"})
    model = info.get("model name") or info.get("hardware") or platform.processor() or arch
    return CpuHost(model, arch, dot8, threads or os.cpu_count() or 1, onnxruntime.__version__)


# What the CPU INT8 model's integer ops hold, and on which host classes ONNX Runtime's kernels
# compute that exactly (MLAS: x86 AVX2 / AVX512 without VNNI sums pairs of u8 x s8 products in
# 16 bit with saturation, 255 x 127 x 2 > 32767; VNNI and ARM's kernels sum in 32 bit; u8 x u8
# is widened to 16 bit first on every x86). Measured: benchmarks/cpu_int8_encodings.py.
ALL_HOSTS = ("x86", "x86-vnni", "arm", "arm-dot")


@dataclass(frozen=True)
class CpuEncoding:
    name: str
    activation: str  # u8 / s8
    weight: str  # u8 / s8
    weight_bits: int  # 7: ONNX Runtime's reduce_range
    holds_on: tuple[str, ...]  # host classes (CpuHost.host_class) whose kernels do not saturate
    # 8-bit weights whose scale per output channel is set so that any two weights the kernel
    # pairs (neighbours along the reduction) add up to at most this many steps: 255 x 128 fits
    # in int16 (None: no such limit)
    pair_limit: int | None = None

    def to_json(self) -> dict:
        return dict(name=self.name, activation=self.activation, weight=self.weight,
                    weight_bits=self.weight_bits, holds_on=list(self.holds_on),
                    **({"pair_limit": self.pair_limit} if self.pair_limit else {}))


CPU_ENCODINGS = {e.name: e for e in (
    CpuEncoding("u8s8", "u8", "s8", 8, ("x86-vnni", "arm", "arm-dot")),
    CpuEncoding("u8s8_rr", "u8", "s8", 7, ALL_HOSTS),
    CpuEncoding("u8s8_pairs", "u8", "s8", 8, ALL_HOSTS, pair_limit=128),
    CpuEncoding("u8u8", "u8", "u8", 8, ALL_HOSTS),
    CpuEncoding("s8s8", "s8", "s8", 8, ("x86-vnni", "arm", "arm-dot")),
)}


def cpu_int8_warning(quantization: dict, model: str, host: CpuHost) -> str | None:
    """One line when a CPU INT8 model (its metadata's ``quantization``) runs on a host class its
    encoding does not hold on; None when it holds or the host's flags are unknown. Models made
    before the encoding was recorded are u8 x s8 with 8-bit weights."""
    if quantization.get("target") != "cpu" or host.dot8 is None:
        return None
    enc = quantization.get("encoding") or CPU_ENCODINGS["u8s8"].to_json()
    if host.host_class in enc["holds_on"]:
        return None
    return (f"{model} holds {enc['activation']} x {enc['weight']} ({enc['weight_bits']}-bit weights), "
            f"made for {', '.join(enc['holds_on'])}; this CPU ({host.describe()}) sums pairs of "
            "such products in 16 bit with saturation, so what it computes here is not the model: "
            "re-make it with `skipat-deploy quantize --target cpu` (--cpu-isa any)")

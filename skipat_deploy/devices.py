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

from .errors import UserError

DEFAULT_DEVICE = "Galaxy S22"


def device_option(help: str = "Target phone, by name or alias (`skipat-deploy devices`).", **facts):
    """The --device option, declared once for every config that targets one phone."""
    from .options import option

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
    can = [p for p in PRECISIONS if not unsupported(device, p)]
    raise UserError(
        f"{device.name} ({device.soc}, Hexagon {device.hexagon}) cannot run --precision {precision}: "
        f"its HTP refuses {', '.join(missing)} (QNN validation on the HTP simulator, "
        f"profiles/htp_capabilities.json); use --precision {' or '.join(can)}")

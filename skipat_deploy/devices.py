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

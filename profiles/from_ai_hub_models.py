"""Regenerate ``profiles/devices.json`` from AI Hub's own device table.

The table ships inside the ``qai-hub-models`` wheel as ``qai_hub_models/devices_and_chipsets.yaml``
(it is not a dependency: download the wheel and point this script at the file). One profile per
chipset whose NPU the QNN execution provider can target (Hexagon v68 and newer), named the way
people say it, with every AI Hub device of that chipset and the names people type as aliases.
Hand-written aliases already in devices.json are kept.

    pip download qai-hub-models --no-deps -d /tmp/w && unzip /tmp/w/*.whl '*/devices_and_chipsets.yaml' -d /tmp/w
    python profiles/from_ai_hub_models.py /tmp/w/qai_hub_models/devices_and_chipsets.yaml
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
MIN_HTP = 68  # the oldest htp_arch the QNN execution provider compiles for
# Names people type that the table does not spell out.
EXTRA_ALIASES = {
    "Galaxy S26": ["8 elite gen 5", "snapdragon 8 elite gen 5"],
    "Snapdragon X Plus 8-Core": ["x plus", "snapdragon x plus"],
    "Dragonwing RB3 Gen 2 Vision Kit": ["rb3 gen 2", "rb3"],
    "SA8775P ADP": ["sa8775p ride"],
}
FORM = {"Phone": "phone", "Tablet": "tablet", "Compute": "laptop", "IoT": "iot", "Auto": "automotive", "XR": "xr"}


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("®", "").replace("™", "").replace("Qualcomm", "")).strip()


def _display(devices: list[str], chipset: dict) -> str:
    first = devices[0] if devices else chipset["reference_device"]
    m = re.match(r"Samsung (Galaxy (?:S|A|Tab S)\d+)", first)
    if m:
        return m.group(1)
    return re.sub(r" (CRD|QRD|MTP|EVK|ADP)$", "", first) if not first.startswith("SA") else first


def _aliases(name: str, chip_id: str, chipset: dict, devices: list[str]) -> list[str]:
    out = [a for a in chipset["aliases"]]
    marketing = _clean(chipset["marketing_name"])
    out += [marketing, marketing.removeprefix("Snapdragon ").removesuffix(" Mobile"),
            marketing.removesuffix(" Mobile")]
    m = re.search(r"\b(\d+) (Gen \d+|Elite(?: Gen \d+)?)(?: Mobile)?$", marketing)
    if m:
        out.append(f"{m.group(1)} {m.group(2)}")
    for d in devices + [chipset["reference_device"]]:
        out.append(d)
        short = re.sub(r"^Samsung ", "", d).removesuffix(" 5G")
        out += [short, short.removeprefix("Galaxy ")]
        out.append(re.sub(r" (CRD|QRD|MTP|EVK|ADP)$", "", short))
    if name.startswith("Galaxy S"):
        base = name.removeprefix("Galaxy ")
        out += [base, f"{base}+", f"{base} Ultra", f"{name} Family"]
    seen, keep = set(), []
    for a in out:
        k = a.lower().strip()
        if k and k != name.lower() and k not in seen:
            seen.add(k)
            keep.append(a.lower())
    return keep


def main(path: str) -> None:
    table = yaml.safe_load(Path(path).read_text())
    current = {d["name"]: d for d in json.loads((HERE / "devices.json").read_text())["devices"]}
    by_chip: dict[str, list[tuple[str, dict]]] = {}
    for name, dev in table["devices"].items():
        by_chip.setdefault(dev["chipset"], []).append((name, dev))
    profiles = []
    for chip_id, chip in table["chipsets"].items():
        if chip.get("htp_version", 0) < MIN_HTP:
            continue
        devs = by_chip.get(chip_id, [])
        hub = [n for n, d in devs if d.get("available_in_workbench", True)]
        name = _display([n for n, _ in devs], chip)
        if name.startswith("Galaxy S") and hub:
            hub.insert(0, f"Samsung {name} (Family)")
        old = current.get(name, {})
        soc = next((a.upper() for a in chip["aliases"] if re.match(r"^(sm|sc|qcs|qcm|sa)\d", a)),
                   chip_id.removeprefix("qualcomm-").upper())
        os_types = sorted({d.get("os", {}).get("ostype", "?") for _, d in devs})
        form = sorted({FORM.get(d.get("form_factor"), "other") for _, d in devs})
        profiles.append({
            "name": name,
            "aliases": list(dict.fromkeys(old.get("aliases", []) + EXTRA_ALIASES.get(name, [])
                                          + _aliases(name, chip_id, chip, [n for n, _ in devs]))),
            "hub_devices": list(dict.fromkeys(old.get("hub_devices", []) + hub)),
            "hub_chipset": f"chipset:{chip_id}",
            "chipset": _clean(chip["marketing_name"]),
            "soc": soc.split("-")[0],
            "qnn_soc_model": int(chip["soc_model"]),
            "hexagon": f"v{chip['htp_version']}",
            "fp16": bool(chip.get("supports_fp16", False)),
            "weight_sharing": bool(chip.get("supports_weight_sharing", False)),
            "os": "/".join(os_types),
            "form_factor": "/".join(form),
            "world": chip.get("world", "?"),
        })
    order = {"Mobile": 0, "Compute": 1, "IoT": 2, "Automotive": 3, "XR": 4}
    profiles.sort(key=lambda p: (order.get(p["world"], 9), int(p["hexagon"][1:]), p["name"]))
    for p in profiles:
        del p["world"]
    owner: dict[str, str] = {}
    for p in profiles:  # a name people type must lead to one target
        for a in [p["name"], p["soc"], *p["aliases"]]:
            k = re.sub(r"[^a-z0-9+]", "", a.lower().replace("samsung", ""))
            if owner.setdefault(k, p["name"]) != p["name"]:
                raise SystemExit(f"{a!r} names both {owner[k]} and {p['name']}")
    doc = {
        "schema_version": 2,
        "about": ("Snapdragon targets, one per chipset with a Hexagon HTP the QNN execution "
                  "provider compiles for (v68+): AI Hub device names and chipset attribute, SoC, "
                  "QNN soc_model, Hexagon version, fp16 and weight-sharing support, OS, and the "
                  "names people type. Generated from AI Hub's device table "
                  "(qai-hub-models devices_and_chipsets.yaml) by profiles/from_ai_hub_models.py."),
        "devices": profiles,
    }
    (HERE / "devices.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(profiles)} targets written")


if __name__ == "__main__":
    main(sys.argv[1])

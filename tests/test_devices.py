"""Device profiles: lookup by name, alias, SoC and AI Hub name; unknown names."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skipat_deploy.cli import app
from skipat_deploy.devices import check_precision, htp_capabilities, load_profiles, resolve_device, unsupported
from skipat_deploy.core.errors import UserError


@pytest.mark.parametrize(
    "name,soc,hexagon,soc_model",
    [("Galaxy S22", "SM8450", "v69", 36), ("galaxy s22", "SM8450", "v69", 36),
     ("Samsung Galaxy S22 Ultra 5G", "SM8450", "v69", 36), ("S23", "SM8550", "v73", 43),
     ("snapdragon 8 gen 3", "SM8650", "v75", 57), ("sm8750", "SM8750", "v79", 69),
     ("S24 Ultra", "SM8650", "v75", 57), ("Galaxy S25", "SM8750", "v79", 69),
     ("8 Gen 3", "SM8650", "v75", 57), ("X Elite", "SC8380XP", "v73", 60),
     ("galaxy s21", "SM8350", "v68", 30), ("QCS6490", "QCS6490", "v68", 93),
     ("SA8775P", "SA8775P", "v73", 52), ("Galaxy S26 Ultra", "SM8850", "v81", 87),
     ("7 gen 4", "SM7750", "v73", 86)],
)
def test_resolve(name, soc, hexagon, soc_model):
    p = resolve_device(name)
    assert (p.soc, p.hexagon, p.qnn_soc_model) == (soc, hexagon, soc_model)
    assert p.aimet_config == f"htp_{hexagon}"


def test_unknown_device_names_closest():
    with pytest.raises(UserError, match="unknown device 'Galaxy S2'.*closest: .*Galaxy S2"):
        resolve_device("Galaxy S2")


def test_profiles_are_complete():
    import re

    profiles = load_profiles()
    assert len(profiles) >= 15
    assert {p.name for p in profiles} >= {"Galaxy S22", "Galaxy S23", "Galaxy S24", "Galaxy S25"}
    assert {p.form_factor for p in profiles} >= {"phone", "laptop", "iot", "automotive"}
    keys = {}
    for p in profiles:
        assert p.hub_chipset.startswith("chipset:") and 68 <= p.htp_arch <= 85
        assert p.qnn_soc_model in htp_capabilities(), f"{p.name}: soc_model never probed"
        for n in (p.name, p.soc, *p.aliases, *p.hub_devices):
            k = re.sub(r"[^a-z0-9+]", "", n.lower().replace("samsung", ""))
            assert keys.setdefault(k, p.name) == p.name, f"{n!r} names {keys[k]} and {p.name}"


def test_aimet_has_a_config_for_every_hexagon_version():
    from aimet_torch.common.quantsim_config import quantsim_config

    shipped = set(quantsim_config._config_file_aliases)
    assert {p.aimet_config for p in load_profiles()} <= shipped


def test_a_precision_the_htp_refuses_is_refused_naming_the_alternative():
    rb3, s24 = resolve_device("qcs6490"), resolve_device("Galaxy S24")
    with pytest.raises(UserError, match=r"QCS6490.*cannot run --fp16.*use --precision w8a16"):
        check_precision(rb3, "fp16")
    for precision in ("w8a16", "w8a8", "mixed", "fp16"):
        check_precision(s24, precision)
    check_precision(rb3, "w8a8")
    assert unsupported(resolve_device("Galaxy S22"), "w8a16") == []


def test_devices_command():
    r = CliRunner().invoke(app, ["devices", "--json"])
    assert r.exit_code == 0
    names = {d["name"]: d for d in json.loads(r.stdout)["results"]}
    assert names["Galaxy S22"]["hub_devices"][0] == "Samsung Galaxy S22 (Family)"
    assert names["Galaxy S22"]["weight_sharing"] is False and names["Galaxy S24"]["weight_sharing"]


def test_devices_hub_flags_what_the_local_table_lacks(fake_hub):
    from .hub_fake.server import FakeDevice

    fake_hub.devices.append(FakeDevice("Snapdragon 9 Future QRD", "16", [
        "chipset:qualcomm-snapdragon-9-future", "hexagon:v91", "soc-model:999", "os:android"]))
    r = CliRunner().invoke(app, ["devices", "--hub", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    live = {d["name"]: d for d in doc["hub_devices"]}
    assert live["Samsung Galaxy S24 (Family)"]["profile"] == "Galaxy S24"
    assert live["Snapdragon 9 Future QRD"]["profile"] is None
    assert any("Snapdragon 9 Future QRD" in n and "lacks" in n for n in doc["notices"])

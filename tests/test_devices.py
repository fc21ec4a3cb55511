"""Device profiles: lookup by name, alias, SoC and AI Hub name; unknown names."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skipat_deploy.cli import app
from skipat_deploy.devices import load_profiles, resolve_device
from skipat_deploy.errors import UserError


@pytest.mark.parametrize(
    "name,soc,hexagon,soc_model",
    [("Galaxy S22", "SM8450", "v69", 36), ("galaxy s22", "SM8450", "v69", 36),
     ("Samsung Galaxy S22 Ultra 5G", "SM8450", "v69", 36), ("S23", "SM8550", "v73", 43),
     ("snapdragon 8 gen 3", "SM8650", "v75", 57), ("sm8750", "SM8750", "v79", 69)],
)
def test_resolve(name, soc, hexagon, soc_model):
    p = resolve_device(name)
    assert (p.soc, p.hexagon, p.qnn_soc_model) == (soc, hexagon, soc_model)
    assert p.aimet_config == f"htp_{hexagon}"


def test_unknown_device_names_closest():
    with pytest.raises(UserError, match="unknown device 'Galaxy S2'.*closest: .*Galaxy S2"):
        resolve_device("Galaxy S2")


def test_profiles_are_complete():
    profiles = load_profiles()
    assert {p.name for p in profiles} >= {"Galaxy S22", "Galaxy S23", "Galaxy S24", "Galaxy S25"}
    for p in profiles:
        assert p.hub_devices and p.hub_chipset.startswith("chipset:") and p.htp_arch >= 69


def test_devices_command():
    r = CliRunner().invoke(app, ["devices", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["results"][0]["hub_devices"][0] == "Samsung Galaxy S22 (Family)"

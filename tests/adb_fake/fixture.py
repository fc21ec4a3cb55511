"""A phone on a fake ``adb`` and a fake QAIRT SDK tree, for the ``--backend adb`` tests."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
S22 = {"ro.soc.model": "SM8450", "ro.product.model": "SM-S901U", "ro.build.version.release": "14",
       "ro.build.fingerprint": "samsung/r0quew/r0q:14/UP1A.231005.007/S901USQS9EXK1:user/release-keys"}
# per run of each binary: [init_us, mean_us, min_us, max_us]; entry 0 is the warm-up
STEADY = [[300000, 5000, 4900, 5200]]


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_sdk(root: Path, version: str = "2.51.0.251020", hexagon: str = "v69",
             leave_out: tuple[str, ...] = ()) -> Path:
    """A QAIRT SDK tree with what a Hexagon ``hexagon`` phone needs, less ``leave_out``
    (paths relative to the root)."""
    arch = hexagon.removeprefix("v")
    tool = f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_qnn.py"}" {{}} "$@"\n'
    files = {
        "bin/aarch64-android/qnn-net-run": tool.format("qnn-net-run"),
        "bin/x86_64-linux-clang/qnn-profile-viewer": tool.format("qnn-profile-viewer"),
        "lib/aarch64-android/libQnnHtp.so": "", "lib/aarch64-android/libQnnSystem.so": "",
        f"lib/aarch64-android/libQnnHtpV{arch}Stub.so": "",
        f"lib/hexagon-{hexagon}/unsigned/libQnnHtpV{arch}Skel.so": "",
        "sdk.yaml": f"name: qairt\nversion: {version}\n",
    }
    for rel, body in files.items():
        if rel not in leave_out:
            _script(root / rel, body) if body.startswith("#!") else (
                (root / rel).parent.mkdir(parents=True, exist_ok=True), (root / rel).write_text(body))
    return root


@dataclass
class FakePhone:
    dir: Path
    scenario: Path
    record: Path
    sdk: Path

    @property
    def tmp(self) -> Path:
        """The phone's /data/local/tmp."""
        return self.dir / "phone" / "data" / "local" / "tmp"

    def set(self, **changes) -> None:
        sc = json.loads(self.scenario.read_text())
        sc.update(changes)
        self.scenario.write_text(json.dumps(sc))

    def calls(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(ln) for ln in self.record.read_text().splitlines()]

    def adb_calls(self, verb: str) -> list[list[str]]:
        return [c["argv"] for c in self.calls() if "argv" in c and c["argv"][:1] == [verb]]

    def net_runs(self) -> list[list[str]]:
        return [c["qnn-net-run"] for c in self.calls() if "qnn-net-run" in c]

    def workspaces(self) -> list[Path]:
        return sorted(self.tmp.iterdir())


@pytest.fixture
def phone(tmp_path, monkeypatch) -> FakePhone:
    """One Galaxy S22 attached and authorized, a QAIRT SDK as new as the compiler here, every
    run at 5 ms (change with ``phone.set(...)``); ``adb`` on PATH, no SDK in the environment."""
    d = tmp_path / "adbfake"
    bin_dir, phone_bin, props = d / "bin", d / "phone-bin", d / "props"
    for name, value in S22.items():
        props.mkdir(parents=True, exist_ok=True)
        (props / name).write_text(value + "\n")
    _script(bin_dir / "adb", f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_adb.py"}" "$@"\n')
    _script(phone_bin / "getprop", f'#!/bin/sh\ncat "{props}/$1" 2>/dev/null\n')
    (d / "phone" / "data" / "local" / "tmp").mkdir(parents=True)
    fake = FakePhone(d, d / "scenario.json", d / "record.jsonl", fake_sdk(d / "qairt" / "2.51.0.251020"))
    fake.scenario.write_text(json.dumps({
        "devices": [["R5CT21ABCDE", "device"]], "phone": str(d / "phone"), "phone_bin": str(phone_bin),
        "record": str(fake.record), "runs": {}, "default_runs": STEADY}))
    monkeypatch.setenv("FAKE_ADB_SCENARIO", str(fake.scenario))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in ("ADB", "QAIRT_SDK_ROOT", "QNN_SDK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    fake.props = props
    return fake

"""The phone, through ``adb``: which one, whether it can be used, and what it is.

``adb devices`` lists ``<serial>\\t<state>`` lines under "List of devices attached" (states
``device``, ``unauthorized``, ``offline``, ...). ``adb shell`` passes the remote exit code back
only where the phone's adbd speaks shell protocol v2 (older ones always give 0), so every
command here ends with ``; echo __RC=$?`` and its status is read from that line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError
from ...devices import DeviceProfile, load_profiles

RC_MARK = "__RC="
SHELL_TIMEOUT_S = 120.0  # a shell command that is not a model run (getprop, mkdir, ls, rm)
USB_HINT = "connect it by USB with USB debugging on (Settings > Developer options)"


class PhoneError(UserError):
    """The phone failed while running (transport, skel, a context that will not load, a lost
    device): named from its error text, in one line."""

    exit_code = 5


class PhoneTimeout(PhoneError):
    """An adb command got no answer in its time: the caller names what hung."""


@dataclass
class Phone:
    """One attached, authorized phone and what ``getprop`` says it is."""

    adb: str
    serial: str
    model: str  # ro.product.model, e.g. SM-S901B
    soc: str  # ro.soc.model, e.g. SM8450
    android: str  # ro.build.version.release
    build: str  # ro.build.fingerprint
    device: DeviceProfile  # the target with that SoC

    def describe(self) -> str:
        return f"{self.model} ({self.soc}, Android {self.android}, serial {self.serial})"

    def _adb(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.adb, "-s", self.serial, *args], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PhoneTimeout(f"the phone {self.serial} did not answer `adb {args[0]}` within "
                               f"{timeout:.0f} s: check the cable, then `adb kill-server`") from None

    def shell(self, command: str, timeout: float = SHELL_TIMEOUT_S) -> tuple[int, str]:
        """(exit status, output) of ``command`` on the phone, whatever adb's own status says."""
        p = self._adb("shell", f"{command}; echo {RC_MARK}$?", timeout=timeout)
        out = p.stdout + p.stderr
        m = re.search(rf"^{RC_MARK}(\d+)\s*$", out, re.M)
        if m is None:  # adb itself failed: the phone went away or the transport broke
            raise PhoneError(f"lost the phone {self.serial} while running a command: "
                             f"{_first_line(out) or 'adb gave no output'}")
        return int(m.group(1)), out[: m.start()]

    def push(self, local: Path, remote: str) -> None:
        p = self._adb("push", str(local), remote, timeout=600.0)
        if p.returncode != 0:
            raise PhoneError(f"could not push {Path(local).name} to the phone {self.serial}: "
                             f"{_first_line(p.stdout + p.stderr)}")

    def pull(self, remote: str, local: Path) -> None:
        p = self._adb("pull", remote, str(local), timeout=300.0)
        if p.returncode != 0 or not Path(local).is_file():
            raise PhoneError(f"could not pull {remote} from the phone {self.serial}: "
                             f"{_first_line(p.stdout + p.stderr)}")


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _adb_exe() -> str:
    exe = shutil.which(os.environ.get("ADB", "adb"))
    if exe is None:
        raise UserError("adb not found: install Android SDK platform-tools and put adb on PATH "
                        "(or set ADB to its path)")
    return exe


def attached(adb: str) -> list[tuple[str, str]]:
    """``adb devices``: (serial, state) of every phone adb sees."""
    try:
        p = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError("`adb devices` did not answer within 30 s: run `adb kill-server` and "
                        "try again") from None
    if p.returncode != 0:
        raise UserError(f"`adb devices` failed: {_first_line(p.stdout + p.stderr)}")
    rows = []
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            rows.append((parts[0], parts[1]))
    return rows


def find_phone(serial: str | None, device: DeviceProfile | None) -> Phone:
    """The phone to time on (``serial``, or the only one attached), usable and, where
    ``device`` is given, of that device's SoC; otherwise one line saying what to do."""
    adb = _adb_exe()
    rows = every = attached(adb)
    if serial is not None:
        rows = [r for r in every if r[0] == serial]
        if not rows:
            listed = ", ".join(s for s, _ in every) or "none"
            raise UserError(f"no phone with serial {serial} is attached (adb sees: {listed})")
    if not rows:
        raise UserError(f"no phone attached: {USB_HINT}, then check `adb devices`")
    ready = [s for s, state in rows if state == "device"]
    if len(ready) > 1:
        raise UserError(f"{len(ready)} phones attached ({', '.join(ready)}): choose one with --serial")
    if not ready:
        s, state = rows[0]
        if state == "unauthorized":
            raise UserError(f"the phone {s} is unauthorized: unlock it and accept the \"Allow USB "
                            "debugging\" prompt, then run again")
        if state == "offline":
            raise UserError(f"the phone {s} is offline: reconnect the cable (or `adb kill-server`)")
        raise UserError(f"the phone {s} is in state {state!r}, not ready: {USB_HINT}")
    phone = Phone(adb, ready[0], "", "", "", "", None)  # type: ignore[arg-type]
    props = {}
    for name in ("ro.soc.model", "ro.product.model", "ro.build.version.release", "ro.build.fingerprint"):
        rc, out = phone.shell(f"getprop {name}", timeout=30.0)
        props[name] = out.strip() if rc == 0 else ""
    soc = props["ro.soc.model"]
    phone.model, phone.soc = props["ro.product.model"] or "unknown model", soc
    phone.android, phone.build = props["ro.build.version.release"], props["ro.build.fingerprint"]
    found = [p for p in load_profiles() if p.soc.lower() == soc.lower()] if soc else []
    if not found:
        known = ", ".join(f"{p.name} ({p.soc})" for p in load_profiles())
        raise UserError(f"the phone {phone.serial} reports SoC {soc or 'none (ro.soc.model is empty: Android 12 or newer needed)'}, "
                        f"which no target has: --backend adb needs a Snapdragon phone with a Hexagon "
                        f"NPU (known: {known})")
    phone.device = found[0]
    if device is not None and device.soc.lower() != soc.lower():
        raise UserError(f"the phone {phone.serial} is a {phone.model} with {soc} "
                        f"({phone.device.name}), not --device {device.name} ({device.soc}): "
                        f"give --device \"{phone.device.name}\"")
    return phone


def ready_serials() -> list[str]:
    """The phones adb sees ready to use; none where adb is not installed or does not answer."""
    try:
        return [s for s, state in attached(_adb_exe()) if state == "device"]
    except UserError:
        return []

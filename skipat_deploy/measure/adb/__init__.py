"""Latency on the user's own phone over adb, with the user's QAIRT SDK (``--backend adb``).

The context binary is compiled here for the phone's Hexagon version (``compile --backend local``,
its NPU gate included: the command does that); this package only times binaries that exist:
:mod:`.phone` finds the phone and reads what it is, :mod:`.sdk` finds what the SDK must provide
for it, :mod:`.viewer` reads ``qnn-profile-viewer``'s text, :mod:`.session` pushes, times the
models in alternated rounds and leaves the phone as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...devices import DeviceProfile
from .phone import Phone, PhoneError, find_phone, ready_serials
from .sdk import QairtSdk, find_sdk, sdk_root
from .session import PhoneTiming, time_on_phone, write_input


@dataclass(frozen=True)
class AdbTarget:
    """A phone checked and an SDK that can run what this machine compiles for it."""

    phone: Phone
    sdk: QairtSdk
    built_with: str  # the QNN version that compiles the context binaries here


def connect(serial: str | None, qairt_sdk: str | Path | None, device: DeviceProfile) -> AdbTarget:
    """Every check that can fail before anything is pushed or compiled: adb, the phone (one,
    authorized, of ``device``'s SoC), the SDK (complete for its Hexagon version, new enough)."""
    from ...npu.qnn import sdk_versions

    phone = find_phone(serial, device)
    built_with = sdk_versions()["qnn_sdk"]
    return AdbTarget(phone, find_sdk(qairt_sdk, phone.device.hexagon, built_with), built_with)


def usable(serial: str | None, qairt_sdk: str | Path | None) -> str | None:
    """For ``--backend auto``: the one phone adb sees ready (``serial``'s, when given), where an
    SDK is set; None otherwise."""
    if sdk_root(qairt_sdk) is None:
        return None
    ready = [s for s in ready_serials() if serial is None or s == serial]
    return ready[0] if len(ready) == 1 else None


__all__ = ["AdbTarget", "Phone", "PhoneError", "PhoneTiming", "QairtSdk", "connect", "find_phone",
           "find_sdk", "time_on_phone", "usable", "write_input"]

"""The user's QAIRT SDK: what it must provide to time a context binary on a phone.

Pushed to the phone (Hexagon ``vNN``): ``bin/aarch64-android/qnn-net-run`` and, from
``lib/aarch64-android/``, ``libQnnHtp.so``, ``libQnnSystem.so``, ``libQnnHtpVNNStub.so``, with
the DSP side ``lib/hexagon-vNN/unsigned/libQnnHtpVNNSkel.so`` (the files ExecuTorch's Qualcomm
backend and Qualcomm's own examples push), and where the SDK has them ``libQnnHtpPrepare.so``
(ExecuTorch pushes it too) and ``libc++_shared.so``. Run here: ``bin/x86_64-linux-clang/qnn-profile-viewer``,
which decodes the phone's binary profiling log. The SDK's version is ``sdk.yaml``'s ``version``.

A context binary loads only on a QNN runtime at least as new as the one that built it (older
ones fail with "Could not create context from binary ... err 5000"), so an SDK older than the
QNN that ``compile --backend local`` builds with is refused here, before anything is pushed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError

SDK_ENV = ("QAIRT_SDK_ROOT", "QNN_SDK_ROOT")
HOST = "x86_64-linux-clang"
TARGET = "aarch64-android"
OPTIONAL = ("libQnnHtpPrepare.so", "libc++_shared.so")  # pushed where the SDK has them


@dataclass(frozen=True)
class QairtSdk:
    root: Path
    version: str  # e.g. 2.51.0.251020
    hexagon: str  # the phone's, e.g. v69
    runner: Path  # qnn-net-run for the phone
    libs: tuple[Path, ...]  # pushed beside it: backend, system, stub, skel, the optional ones
    viewer: Path  # qnn-profile-viewer for this machine
    skel: Path  # the DSP side, named when the phone will not load it

    def pushed(self) -> list[Path]:
        return [self.runner, *self.libs]

    def to_json(self) -> dict:
        return dict(root=str(self.root), version=self.version, hexagon=self.hexagon,
                    pushed=[str(p.relative_to(self.root)) for p in self.pushed()])


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of ``2.51.0.251020`` or ``v2.51.0``."""
    nums = re.findall(r"\d+", version)[:3]
    return tuple(int(n) for n in nums)


def sdk_root(given: str | Path | None) -> Path | None:
    """``--qairt-sdk``, else ``QAIRT_SDK_ROOT`` / ``QNN_SDK_ROOT``; None when none is set."""
    if given:
        return Path(given).expanduser()
    for var in SDK_ENV:
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return None


def find_sdk(given: str | Path | None, hexagon: str, built_with: str) -> QairtSdk:
    """The SDK at ``given`` (or the environment's) with everything a Hexagon ``hexagon`` phone
    needs, no older than ``built_with`` (the QNN version that compiles the context binary);
    otherwise one line saying what to do."""
    root = sdk_root(given)
    if root is None:
        raise UserError("--backend adb needs Qualcomm's QAIRT SDK: give --qairt-sdk /path/to/qairt/"
                        f"<version> or set QAIRT_SDK_ROOT (QAIRT {_at_least(built_with)} or newer)")
    if not root.is_dir():
        raise UserError(f"--qairt-sdk {root}: no such folder (the QAIRT SDK root, the folder "
                        "holding bin/, lib/ and sdk.yaml)")
    version = _version(root)
    arch = hexagon.removeprefix("v")
    wanted = {
        "the phone's runner": root / "bin" / TARGET / "qnn-net-run",
        "the HTP backend": root / "lib" / TARGET / "libQnnHtp.so",
        "the QNN system library": root / "lib" / TARGET / "libQnnSystem.so",
        f"the Hexagon {hexagon} stub": root / "lib" / TARGET / f"libQnnHtpV{arch}Stub.so",
        f"the Hexagon {hexagon} skel": root / "lib" / f"hexagon-{hexagon}" / "unsigned" / f"libQnnHtpV{arch}Skel.so",
        "the profile viewer for this machine": root / "bin" / HOST / "qnn-profile-viewer",
    }
    for what, path in wanted.items():
        if not path.is_file():
            raise UserError(f"the QAIRT SDK at {root} lacks {what} ({path.relative_to(root)}): "
                            f"point --qairt-sdk at a full QAIRT SDK (Linux host, Android target, "
                            f"Hexagon {hexagon})")
    if not os.access(wanted["the profile viewer for this machine"], os.X_OK):
        raise UserError(f"{wanted['the profile viewer for this machine']} is not executable: "
                        "chmod +x it (unpacked without permissions?)")
    if version_tuple(version) < version_tuple(built_with):
        raise UserError(f"the QAIRT SDK at {root} is {version}, older than QNN {built_with}, which "
                        "compiles the context binary here (onnxruntime-qnn): the phone would not "
                        f"load it (err 5000); install QAIRT {_at_least(built_with)} or newer")
    *libs, viewer = list(wanted.values())[1:]
    libs += [p for p in (root / "lib" / TARGET / name for name in OPTIONAL) if p.is_file()]
    return QairtSdk(root, version, hexagon, wanted["the phone's runner"], tuple(libs), viewer,
                    wanted[f"the Hexagon {hexagon} skel"])


def _at_least(version: str) -> str:
    return ".".join(str(n) for n in version_tuple(version)[:2])


def _version(root: Path) -> str:
    yaml = root / "sdk.yaml"
    if yaml.is_file():
        for line in yaml.read_text(errors="replace").splitlines():
            if line.strip().startswith("version:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    if re.fullmatch(r"v?\d+\.\d+\.\d+(\.\d+)?", root.name):  # qairt/2.51.0.251020
        return root.name.removeprefix("v")
    raise UserError(f"cannot tell the version of the QAIRT SDK at {root}: it has no sdk.yaml "
                    "with a version line; point --qairt-sdk at the SDK's root folder")

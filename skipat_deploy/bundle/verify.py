"""Check an app bundle: the manifest against its schema, every file's size and sha256, and a
smoke inference of the CPU models. The first failure is one line naming the file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..export import cpu_session
from ..files import sha256_file
from .manifest import MANIFEST, SCHEMA_VERSION, BundleError, validate_manifest


@dataclass
class VerifyResult:
    folder: Path
    files_checked: int
    smoke: dict[str, list[int]]  # CPU model -> output shape
    runtimes: dict[str, str] = field(default_factory=dict)  # context binary -> runtime it needs


def verify(folder: str | Path) -> VerifyResult:
    """Every check of a bundle; the first failure is one line naming the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST} (is this a bundle folder?)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    validate_manifest(manifest, path)
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest['schema_version']} is newer than this "
                          f"tool understands ({SCHEMA_VERSION}); upgrade skipat-deploy")
    for entry in manifest["files"]:
        f = folder / entry["path"]
        if not f.is_file():
            raise BundleError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != entry["size_bytes"]:
            raise BundleError(f"{f}: size {size} bytes, the manifest says {entry['size_bytes']}")
        digest = sha256_file(f)
        if digest != entry["sha256"]:
            raise BundleError(f"{f}: sha256 {digest[:16]}… does not match the manifest's "
                              f"{entry['sha256'][:16]}…; the file changed after bundling")
    smoke = {}
    for entry in manifest["files"]:
        if entry["role"] in ("float_onnx", "qdq_onnx", "cpu_int8_onnx"):
            smoke[entry["path"]] = _smoke(folder / entry["path"], manifest)
    runtimes = {e["path"]: e.get("min_runtime") or "unknown (bundled before skipat-deploy recorded it)"
                for e in manifest["files"] if e["role"] == "context_binary"}
    return VerifyResult(folder, len(manifest["files"]), smoke, runtimes)


def _smoke(path: Path, manifest: dict) -> list[int]:
    try:
        sess = cpu_session(str(path))
        feeds = {t["name"]: np.random.default_rng(0).standard_normal(t["shape"]).astype(np.float32)
                 for t in manifest["inputs"]}
        (out,) = sess.run([manifest["outputs"][0]["name"]], feeds)
    except Exception as e:  # noqa: BLE001 - any failure to run is the finding
        raise BundleError(f"{path}: does not run on ONNX Runtime CPU ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    want = manifest["outputs"][0]["shape"]
    if list(out.shape) != want or not np.isfinite(out).all():
        raise BundleError(f"{path}: smoke inference gave shape {list(out.shape)} "
                          f"(manifest: {want}) or non-finite values")
    return list(out.shape)

"""File helpers every stage uses: atomic writes, artifact names, content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``final``; move it into place only if the block
    succeeds. On any error the temporary file is removed and ``final`` is left untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def artifact_stem(name: str) -> str:
    """File-name-safe stem of a checkpoint or model name (``vit_t.pth.tar`` -> ``vit_t``)."""
    for suffix in (".pth.tar", ".safetensors", ".pth", ".pt", ".t7", ".tar", ".bin", ".ckpt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def model_stem(model: Path) -> str:
    """A model file's name without its kind: ``x.qdq.onnx``, ``x.onnx``, ``x.aimet`` -> ``x``."""
    name = Path(model).name
    for suffix in (".qdq.onnx", ".onnx", ".aimet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def compiled_stem(model: Path, soc: str) -> str:
    """Stem of what is compiled from ``model`` for one SoC: ``x.qdq.onnx`` -> ``x.sm8450``."""
    return f"{model_stem(model)}.{soc.lower()}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()

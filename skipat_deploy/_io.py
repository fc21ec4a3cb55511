"""Small file helpers: atomic writes and artifact names."""

from __future__ import annotations

import contextlib
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

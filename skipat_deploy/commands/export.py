"""``export``: load -> export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..export import ExportConfig, ExportResult, export_onnx
from ..models.checkpoint import LoadConfig, load
from .inputs import noted


def run(load_cfg: LoadConfig, out_dir: str | Path, cfg: ExportConfig,
        step: Callable[[str], None]) -> list[ExportResult]:
    """Static-grid ONNX per resolution of the checkpoint ``load_cfg`` names."""
    loaded = load(load_cfg)
    return [noted(r, loaded) for r in export_onnx(loaded, out_dir, cfg, step)]

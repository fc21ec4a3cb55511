"""Python API: what the CLI calls, one function per command.

    >>> from skipat_deploy import api
    >>> results = api.export("skipat_tiny.t7", "export/", resolutions=(224, 384))
    >>> api.predict(results[0].path, ["cat.jpg"])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .export import ExportConfig, ExportResult, export_onnx, fresh_checkpoint
from .predict import Prediction, predict

DEFAULT_ARCH = "skipat_tiny_patch16"

__all__ = ["export", "load", "predict", "quantize", "ExportResult", "Prediction", "DEFAULT_ARCH"]


def load(
    ckpt: str | Path | None,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
) -> LoadedCheckpoint:
    """A checkpoint's weights and model spec; freshly initialised ``arch`` (default
    SkipAt-T) when ``ckpt`` is None."""
    if ckpt is None:
        loaded = fresh_checkpoint(arch or DEFAULT_ARCH)
        if skip_indices is not None:
            from dataclasses import replace

            spec = loaded.spec
            loaded = replace(loaded, spec=replace(spec, arch=spec.arch.with_skip_indices(skip_indices)))
        return loaded
    return load_checkpoint(ckpt, arch, skip_indices, head_dim, allow_code_execution)


def export(
    ckpt: str | Path | None,
    out_dir: str | Path = "export",
    resolutions: tuple[int, ...] = (224, 384),
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    batch_size: int = 1,
    allow_code_execution: bool = False,
    step: Callable[[str], None] = lambda msg: None,
) -> list[ExportResult]:
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution)
    config = ExportConfig(resolutions=tuple(resolutions), batch_size=batch_size)
    return export_onnx(loaded, out_dir, config, step)


def quantize(
    ckpt: str | Path | None,
    out_dir: str | Path = "export",
    resolution: int = 224,
    precision: str = "w8a16",
    backend: str = "aimet",
    device: str = "Galaxy S22",
    calib_dir: str | Path | None = None,
    eval_dir: str | Path | None = None,
    num_calib: int = 64,
    num_eval: int = 16,
    adaround: bool = False,
    qat_steps: int = 0,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = 64,
    allow_code_execution: bool = False,
    step: Callable[[str], None] = lambda msg: None,
):
    """Quantize for the NPU; returns a :class:`skipat_deploy.quantize.QuantizeResult`."""
    from .quantize import QuantizeConfig, quantize as run_quantize

    cfg = QuantizeConfig(
        resolution=resolution, precision=precision, backend=backend, device=device,
        calib_dir=Path(calib_dir) if calib_dir else None,
        eval_dir=Path(eval_dir) if eval_dir else None, num_calib=num_calib, num_eval=num_eval,
        adaround=adaround, qat_steps=qat_steps,
    )
    cfg.check()
    loaded = load(ckpt, arch, skip_indices, head_dim, allow_code_execution)
    return run_quantize(loaded, out_dir, cfg, step)

"""Export a checkpoint to static-grid ONNX and prove it computes what PyTorch computes.

One function, :func:`export_onnx`: checkpoint -> one ``.onnx`` per resolution, written as one
staged set (:mod:`skipat_deploy.core.staging`: nothing sits at a final path until every resolution
has passed every check). Per resolution:

1. build the model for the grid, resampling ``pos_embed`` (timm's convention);
2. ``torch.onnx.export`` with static shapes at opset 20, where GELU is one ``Gelu`` op (the HTP
   cannot run ``Erf``);
3. ``onnx.checker`` (full check);
4. onnxsim, and a numeric check that simplified == unsimplified;
5. metadata (architecture, grid, skip indices, pre-processing and where it came from, source
   checkpoint sha256, versions);
6. validation against PyTorch on fixed inputs: names, then shapes, then values.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..models.checkpoint import LoadedCheckpoint, load_weights
from ..core.errors import ExportValidationError, ResolutionError, UserError
from ..core.files import artifact_stem, sha256_file
from ..core.lazy import torch
from ..models.registry import build_model
from .artifact import METADATA_KEY
from ..core.options import option
from ..core.staging import Stage, staged
from .validate import cpu_session, run_all, validate_onnx

INPUT_NAME = "image"
DEFAULT_RESOLUTION = 224  # px: every command that makes one model from a checkpoint
DEFAULT_RESOLUTIONS = (DEFAULT_RESOLUTION, 384)
# onnxsim folds constants and fuses ops; anything beyond float rounding noise (relative to the
# outputs' magnitude) is a bug.
SIMPLIFY_ATOL = 1e-5
FORBIDDEN_OPS = {"Erf"}  # not supported by the Hexagon NPU


@dataclass(frozen=True)
class ExportConfig:
    resolutions: tuple[int, ...] = option(DEFAULT_RESOLUTIONS, "Input size in px (repeatable).", flag="--resolution", repeat=True)
    batch_size: int = option(1, "Static batch size of the exported graph.", flag="--batch")
    opset: int = 20
    simplify: bool = True
    num_validation_inputs: int = 2
    seed: int = 0  # seeds the validation inputs


@dataclass(frozen=True)
class ExportResult:
    path: Path
    model_name: str
    family: str
    resolution: int
    grid: int
    batch_size: int
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    sha256: str
    size_bytes: int
    seconds: float  # wall time of this resolution's export, checks included
    max_abs_diff: float  # |onnx - torch| over the validation inputs
    simplify_max_abs_diff: float | None
    num_nodes: int
    metadata: dict = field(repr=False, default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def check_resolution(resolution: int, patch_size: int) -> int:
    if resolution <= 0 or resolution % patch_size:
        lo = max(patch_size, resolution // patch_size * patch_size)
        raise ResolutionError(
            f"resolution {resolution} is not a positive multiple of the patch size {patch_size}; "
            f"use e.g. {lo} or {lo + patch_size}"
        )
    return resolution // patch_size


def output_name(ckpt: LoadedCheckpoint) -> str:
    return "logits" if ckpt.arch.num_classes else "features"


def artifact_name(ckpt: LoadedCheckpoint, resolution: int, batch_size: int) -> str:
    stem = artifact_stem(Path(ckpt.info.path).name if ckpt.info else ckpt.spec.name)
    return f"{stem}_{resolution}" + (f"_b{batch_size}" if batch_size != 1 else "") + ".onnx"


def model_metadata(ckpt: LoadedCheckpoint, resolution: int, cfg: ExportConfig) -> dict:
    a, grid = ckpt.arch, resolution // ckpt.arch.patch_size
    if ckpt.info:
        source = {
            "checkpoint": Path(ckpt.info.path).name,
            "sha256": ckpt.info.sha256,
            "container_key": ckpt.info.container_key,
            "storage_dtype": ckpt.info.storage_dtype,
        }
    else:
        source = {"checkpoint": None, "weights": "freshly initialised (seed 0), not trained"}
    return {
        "tool": "skipat-deploy",
        "tool_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model_name": ckpt.spec.name,
        "family": a.family,
        "embed_dim": a.embed_dim,
        "depth": a.depth,
        "num_heads": a.num_heads,
        "patch_size": a.patch_size,
        "layer_scale": a.layer_scale,
        "skip_indices": list(a.skip_indices),
        "resolution": resolution,
        "grid": grid,
        "num_tokens": grid * grid + 1,
        "trained_grid": a.grid,
        "batch_size": cfg.batch_size,
        "num_classes": a.num_classes,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "output": {"name": output_name(ckpt), "dtype": "float32"},
        "preprocess": ckpt.spec.preprocess.to_dict(),
        # "given", "checkpoint:<where>" or "default:<spec> (a guess)" (per value when they differ)
        "preprocess_source": ckpt.spec.preprocess.source,
        "source": source,
        "opset": cfg.opset,
    }


def validation_inputs(resolution: int, cfg: ExportConfig) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch_size, 3, resolution, resolution)
    return [torch.randn(shape, generator=gen).numpy() for _ in range(cfg.num_validation_inputs)]


def _export_one(
    ckpt: LoadedCheckpoint, resolution: int, stage: Stage, cfg: ExportConfig, step: Callable,
    model=None,
) -> ExportResult:
    t0 = time.perf_counter()
    grid = check_resolution(resolution, ckpt.arch.patch_size)
    out_name = output_name(ckpt)
    part = stage.path(artifact_name(ckpt, resolution, cfg.batch_size))
    final = stage.final(part)
    if model is None:
        step(f"{final.name}: build model at {grid}x{grid}")
        model = load_weights(build_model(ckpt.arch, grid), ckpt.state_dict, ckpt.spec.name)
    inputs = validation_inputs(resolution, cfg)
    with torch.no_grad():
        expected = [{out_name: model(torch.from_numpy(x)).numpy()} for x in inputs]
    feeds = [{INPUT_NAME: x} for x in inputs]

    tmp = stage.scratch / str(resolution)
    tmp.mkdir(exist_ok=True)
    raw = tmp / "raw.onnx"
    step(f"{final.name}: torch.onnx.export (opset {cfg.opset})")
    torch.onnx.export(
        model,
        (torch.from_numpy(inputs[0]),),
        str(raw),
        input_names=[INPUT_NAME],
        output_names=[out_name],
        opset_version=cfg.opset,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load(str(raw))
    step(f"{final.name}: onnx.checker")
    onnx.checker.check_model(proto, full_check=True)

    simplify_diff = None
    if cfg.simplify:
        step(f"{final.name}: onnxsim + numeric check")
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if not ok:
            raise ExportValidationError(str(final), ["onnxsim could not verify its result"])
        simp = tmp / "simplified.onnx"
        onnx.save(simplified, str(simp))
        reference = run_all(cpu_session(str(raw)), feeds)
        scale = max(1.0, max(float(np.abs(v).max()) for r in reference for v in r.values()))
        simplify_diff = validate_onnx(str(simp), feeds, reference, SIMPLIFY_ATOL * scale, 0.0)
        proto = simplified

    bad_ops = sorted({n.op_type for n in proto.graph.node} & FORBIDDEN_OPS)
    if bad_ops:
        raise ExportValidationError(str(final), [f"graph contains {bad_ops} (not NPU-runnable)"])
    meta = model_metadata(ckpt, resolution, cfg)
    proto.doc_string = f"{ckpt.spec.name} at {resolution}px, exported by skipat-deploy"
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))

    step(f"{final.name}: validate against PyTorch")
    tol = ckpt.spec.tolerance
    onnx.save(proto, str(part))
    max_diff = validate_onnx(str(part), feeds, expected, tol.atol, tol.rtol)
    shutil.rmtree(tmp)

    return ExportResult(
        path=final,
        model_name=ckpt.spec.name,
        family=ckpt.arch.family,
        resolution=resolution,
        grid=grid,
        batch_size=cfg.batch_size,
        input_name=INPUT_NAME,
        input_shape=tuple(inputs[0].shape),
        output_name=out_name,
        output_shape=tuple(expected[0][out_name].shape),
        sha256=sha256_file(part),
        size_bytes=part.stat().st_size,
        seconds=time.perf_counter() - t0,
        max_abs_diff=max_diff,
        simplify_max_abs_diff=simplify_diff,
        num_nodes=len(proto.graph.node),
        metadata=meta,
    )


def export_onnx(
    ckpt: LoadedCheckpoint,
    out_dir: str | Path,
    config: ExportConfig = ExportConfig(),
    step: Callable[[str], None] = lambda msg: None,
    model=None,
) -> list[ExportResult]:
    """Export ``ckpt`` at every resolution of ``config`` into ``out_dir``.

    All resolutions are checked before anything is exported; ``step`` is called with a short
    description as each stage starts (for progress display). ``model``: export this module
    (built at the one resolution of ``config``; e.g. a float-equivalent rewrite of ``ckpt``'s
    model) instead of building it from the weights; the ONNX is validated against it.
    """
    if model is not None and len(config.resolutions) != 1:
        raise ValueError("export_onnx(model=...) exports one resolution")
    for r in config.resolutions:
        check_resolution(r, ckpt.arch.patch_size)
    if config.batch_size < 1:
        raise ResolutionError(f"batch size must be at least 1, got {config.batch_size}")
    with staged(out_dir) as stage:
        return [_export_one(ckpt, r, stage, config, step, model) for r in config.resolutions]

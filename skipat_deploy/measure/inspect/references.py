"""What inspect compares with: the float model (given, or the one the QDQ model's metadata names,
trusted by sha256), the per-tensor float graph, and the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ...core.errors import UserError
from ...export import sample_inputs
from ...export.artifact import ModelArtifact, read_model
from ...images import calibration
from ...images.preprocess import Preprocess
from .config import InspectConfig
from .graph import TWIN, Quantizer, float_twin, load_graph, tensor_names


def float_model(model: ModelArtifact, cfg: InspectConfig, notices: list[str]) -> Path | None:
    if cfg.float_model is not None:
        return Path(cfg.float_model)
    path, why = model.float_model()
    if path is None:
        notices.append(f"no float model: {why}; give --float X.onnx for figures against float "
                       "(the per-tensor float values come from the QDQ graph itself)")
    return path


def float_names(rows: list[Quantizer], names: set[str]) -> list[str | None]:
    """Each row's tensor in a float graph holding ``names``: what its quantizer reads, else what
    its DequantizeLinear writes (a graph output keeps its name there), else, for a tensor
    quantized again (16 -> 8 bit before a MatMul), the float value of the one it requantizes."""
    out: list[str | None] = []
    for r in rows:
        if r.tensor in names:
            out.append(r.tensor)
        elif r.exposed in names:
            out.append(r.exposed)
        else:
            out.append(out[r.inputs[0]] if r.op == "Requantize" and r.inputs else None)
    return out


def float_graph(model: Path, qdq: onnx.ModelProto, rows: list[Quantizer], float_path: Path | None,
                 notices: list[str]) -> tuple[onnx.ModelProto, str, bool]:
    """The per-tensor float reference (see the module docstring): the model, what it is, and
    whether it is the float model itself."""
    candidates = []
    if float_path is not None:
        candidates.append((float_path, f"the float model {float_path.name}", True))
    aimet = read_model(model).aimet_dir()
    if aimet is not None:
        graphs = sorted(aimet.glob("*.onnx"))
        if len(graphs) == 1:
            candidates.append((graphs[0], f"the float graph AIMET quantized ({aimet.name}/{graphs[0].name})", False))
    for path, what, is_float in candidates:
        graph = load_graph(path)
        names = tensor_names(graph)
        if all(n is not None for n in float_names(rows, names)):
            return graph, what, is_float
    if float_path is not None:
        notices.append(f"the QDQ graph's tensors are not all in {float_path.name} (the model was "
                       "rewritten before quantizing: rotated, split or exported by AIMET), so the "
                       f"per-tensor float values come from {TWIN}; the output figures are against "
                       f"{float_path.name}")
    return float_twin(qdq, rows), TWIN, False


def samples(model: Path, cfg: InspectConfig, shape: tuple, notices: list[str]) -> tuple[np.ndarray, str]:
    """(N, 1, C, H, W) samples: ``--images`` pre-processed as the model's metadata says, else
    the held-out photos compile's NPU gate uses (seeded noise without metadata)."""
    n = cfg.num_samples
    if cfg.images is None:
        x, described, _ = sample_inputs(model, n, shape)
        return x, described
    meta = read_model(model).metadata
    if "preprocess" not in meta:
        raise UserError(f"{model.name} has no skipat-deploy pre-processing metadata, so --images "
                        "cannot be prepared for it; leave --images out (seeded noise inputs)")
    chosen, _ = calibration.draw(calibration.list_images(cfg.images, "--images"), n, seed=0)
    got, x = calibration.load_samples(chosen, int(meta["resolution"]),
                                      Preprocess.from_dict(meta["preprocess"]), n, seed=0)
    notices.extend(chosen.skipped_notice("--images") + got.unusable_notice("--images"))
    return x[:, None], f"{n} samples of {len(got.paths)} photos from {got.source}"

"""Sample inputs for an exported model, chosen from its metadata: real photos pre-processed as
the model expects, or seeded noise for a model exported elsewhere. The NPU check, the phone's
output check and anything else that compares two runs of one model feed it these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import calibration
from ..images.preprocess import Preprocess
from .artifact import read_metadata


def sample_inputs(model: Path, count: int, shape: tuple) -> tuple[np.ndarray, str, bool]:
    """``count`` inputs, each of ``shape``; also says what they are and whether the model is a
    classifier (then top-1 agreement is reported)."""
    meta = read_metadata(model)
    shape = tuple(d if isinstance(d, int) else 1 for d in shape)
    classifier = int(meta.get("num_classes", 0)) > 0
    if "preprocess" in meta and len(shape) == 4 and shape[0] == 1:
        _, evaluation = calibration.bundled_photos()
        pp = Preprocess.from_dict(meta["preprocess"])
        x = calibration.image_batch(evaluation, int(meta["resolution"]), pp, count, seed=1)
        return x[:, None], f"{count} samples of real photos ({evaluation.source})", classifier
    rng = np.random.default_rng(0)
    x = rng.standard_normal((count, *shape)).astype(np.float32)
    return x, f"{count} seeded noise inputs (no skipat-deploy metadata)", classifier


@dataclass(frozen=True)
class OneSample:
    """One input for a model's first graph input, of its static shape, with the names a
    runner on a phone feeds and reads."""

    input_name: str
    output_name: str
    x: np.ndarray
    classifier: bool


def one_sample(model: Path) -> OneSample:
    """A sample (:func:`sample_inputs`) for ``model``'s first input, its shape read from the
    graph (a dynamic dimension as 1)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    inp = graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x, _, classifier = sample_inputs(model, 1, shape)
    return OneSample(inp.name, graph.output[0].name, x[0], classifier)

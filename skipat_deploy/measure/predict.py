"""CPU fallback: run an exported model with ONNX Runtime on images, pre-processed as its
metadata says."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..export import cpu_session, read_metadata
from ..images.imagenet import imagenet_classes
from ..core.options import option
from ..images.preprocess import Preprocess, load_image


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[ClassScore] = field(default_factory=list)  # classifiers
    feature_dim: int = 0  # head-less models
    feature_norm: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@dataclass(frozen=True)
class PredictConfig:
    top_k: int = option(5, "How many classes to print.")


def predict(model: str | Path, images: list[str | Path], top_k: int = PredictConfig.top_k) -> list[Prediction]:
    model = Path(model)
    if not model.is_file():
        raise UserError(f"model not found: {model}")
    meta = read_metadata(model)
    if not meta:
        raise UserError(f"{model} was not exported by skipat-deploy (no pre-processing metadata)")
    if not images:
        raise UserError("no images given")
    pp = Preprocess.from_dict(meta["preprocess"])
    size, batch = meta["resolution"], meta["batch_size"]
    pixels = [load_image(p, size, pp) for p in images]  # read all first: fail before running
    sess = cpu_session(str(model))
    out: list[Prediction] = []
    for start in range(0, len(pixels), batch):
        chunk = pixels[start : start + batch]
        x = np.concatenate(chunk + [chunk[-1]] * (batch - len(chunk)))  # pad to static batch
        y = sess.run(None, {meta["input"]["name"]: x})[0]
        for j in range(len(chunk)):
            out.append(_prediction(str(images[start + j]), y[j], meta, top_k))
    return out


def _prediction(image: str, y: np.ndarray, meta: dict, top_k: int) -> Prediction:
    if not meta["num_classes"]:
        return Prediction(image, feature_dim=int(y.size), feature_norm=float(np.linalg.norm(y)))
    probs = _softmax(y.astype(np.float64))
    labels = imagenet_classes() if meta["num_classes"] == 1000 else None
    idx = np.argsort(-probs)[:top_k]
    top = [ClassScore(int(i), labels[i] if labels else f"class {i}", float(probs[i])) for i in idx]
    return Prediction(image, top)

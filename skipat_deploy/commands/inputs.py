"""What commands are given: a checkpoint (loaded once, its pre-processing notice kept) or an
exported model, never both."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..models.checkpoint import LoadConfig, LoadedCheckpoint


def noted(result, *loaded: LoadedCheckpoint):
    """``result`` with the notice that a checkpoint's pre-processing is (partly) the registry's
    guess added. Freshly initialised weights get none: their outputs mean nothing anyway."""
    notes = [n for c in loaded if c.info is not None
             and (n := c.spec.preprocess.guess_notice(c.spec.name))]
    result.notices.extend(n for n in dict.fromkeys(notes) if n not in result.notices)
    return result


def one_source(model, ckpt: Path | None, what: str = "--model (a quantized ONNX)") -> None:
    """A command takes a model or a checkpoint, not both."""
    if model and ckpt is not None:
        raise UserError(f"give {what} or --ckpt, not both")


def model_preprocess(load_cfg: LoadConfig, model) -> None:
    """An exported ``model`` carries its own pre-processing (its metadata): given values are
    refused rather than ignored, and checked before any slow work."""
    pp = load_cfg.check().preprocess
    if model:
        pp.refuse_for(model if not isinstance(model, (list, tuple)) else model[0])

"""Typed errors.

Every error a user can cause derives from :class:`UserError`: the CLI prints its message as one
line and exits non-zero without a traceback. Anything else is a bug and keeps its traceback
behind ``--debug``.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong option, an unusable checkpoint."""

    exit_code = 2


class QualityGateError(UserError):
    """A model measured worse than a gate allows (evaluate's --max-top1-drop, compile's NPU
    gate): exit code 4, so CI can tell it from bad input (2) and AI Hub failures (3)."""

    exit_code = 4


class CheckpointError(UserError):
    """The checkpoint cannot be read, or its weights do not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """Unpickling the checkpoint would import or call code outside the allowed list."""


class ArchitectureError(UserError):
    """The architecture cannot be inferred from the weights, or an override does not fit."""


class ResolutionError(UserError):
    """The requested input resolution cannot be used with this model."""


class ExportValidationError(Exception):
    """The exported ONNX does not compute what the PyTorch model computes.

    Carries every failed check (names, then shapes, then values) and the largest absolute
    difference seen, so a report can say how far off the export is.
    """

    def __init__(self, path: str, failures: list[str], max_abs_diff: float | None = None):
        self.path = path
        self.failures = list(failures)
        self.max_abs_diff = max_abs_diff
        diff = "" if max_abs_diff is None else f" (max abs diff {max_abs_diff:.3g})"
        super().__init__(f"{path} failed validation{diff}: " + "; ".join(self.failures))


class RewriteError(Exception):
    """A rewrite meant to keep the float function (LayerScale / LayerNorm folding, rotation,
    equalization) changed what the model computes on the user's own weights: a bug, caught
    before anything is quantized or written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (CI cancelling a job), raised like Ctrl-C's ``KeyboardInterrupt`` so that every
    cleanup runs (:func:`skipat_deploy.core.staging.interrupts_as_exceptions`); the CLI exits 143."""

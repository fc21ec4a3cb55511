"""Check an ONNX model against reference outputs: names, then shapes, then values.

Like optimum's exporter validation, every failed check is collected before raising, and the
error carries the largest absolute difference seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from ..core.errors import ExportValidationError

Feed = dict[str, np.ndarray]


def cpu_session(path: str, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_qdq_cpu(path, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """A QDQ model's first output on the CPU, ``batch`` samples of ``x`` at a time. Graph
    optimisations are off, so ORT keeps Q/DQ as separate ops (no fusion into integer kernels),
    which reproduces the QDQ semantics exactly."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def run_all(session: ort.InferenceSession, feeds: Sequence[Feed]) -> list[Feed]:
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed))) for feed in feeds]


def validate_onnx(
    path: str,
    feeds: Sequence[Feed],
    expected: Sequence[Feed],
    atol: float,
    rtol: float,
    session: ort.InferenceSession | None = None,
) -> float:
    """Max |onnx - expected| over all feeds; raises ExportValidationError listing every failure."""
    sess = session or cpu_session(path)
    failures: list[str] = []
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    want_in, want_out = list(feeds[0]), list(expected[0])
    if in_names != want_in:
        failures.append(f"inputs are {in_names}, expected {want_in}")
    if out_names != want_out:
        failures.append(f"outputs are {out_names}, expected {want_out}")
    if failures:
        raise ExportValidationError(str(path), failures)

    for spec, arr in zip(sess.get_inputs(), feeds[0].values()):
        if list(spec.shape) != list(arr.shape):
            failures.append(f"input {spec.name} has shape {spec.shape}, expected {list(arr.shape)}")
    for spec, arr in zip(sess.get_outputs(), expected[0].values()):
        if list(spec.shape) != list(arr.shape):
            failures.append(f"output {spec.name} has shape {spec.shape}, expected {list(arr.shape)}")
    if failures:
        raise ExportValidationError(str(path), failures)

    max_diff = 0.0
    for i, (feed, want) in enumerate(zip(feeds, expected)):
        got = dict(zip(out_names, sess.run(out_names, feed)))
        for name, ref in want.items():
            diff = np.abs(got[name].astype(np.float64) - ref.astype(np.float64))
            max_diff = max(max_diff, float(diff.max()))
            bad = diff > atol + rtol * np.abs(ref)
            if bad.any():
                failures.append(
                    f"input #{i} output {name}: {int(bad.sum())} of {bad.size} values off "
                    f"(max abs diff {float(diff.max()):.3g} > atol {atol:g} + rtol {rtol:g})"
                )
    if failures:
        raise ExportValidationError(str(path), failures, max_diff)
    return max_diff

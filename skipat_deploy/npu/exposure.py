"""The HTP side of ``inspect``: the QDQ graph with every activation exposed as an output, placed
on the HTP (the simulator on x86-64) when QNN can place it, else the model's own outputs; and
the check that exposing did not change what the NPU computes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..core.errors import UserError
from ..devices import DeviceProfile
from .config import HTP_SIMULATOR

Step = Callable[[str], None]


@dataclass
class HtpSide:
    session: ort.InferenceSession | None
    exposes: bool  # every activation, or the model's outputs only
    what: str
    partitions: int | None


def placed_session(model: Path, ctx: Path, device: DeviceProfile) -> tuple[ort.InferenceSession, int]:
    """A strict HTP session (every node on the NPU), and how many partitions QNN made of the
    graph: the EPContext nodes of the context model it writes beside ``ctx``."""
    from . import qnn

    sess = qnn.htp_session(model, device, context_file=ctx)
    nodes = onnx.load(str(ctx), load_external_data=False).graph.node
    return sess, sum(n.op_type == "EPContext" for n in nodes)


def htp_side(model: Path, exposed: Path, tmp: Path, device: DeviceProfile, notices: list[str],
         step: Step) -> tuple[HtpSide, dict[str, str]]:
    from . import qnn

    try:
        versions = qnn.sdk_versions()
    except UserError as e:
        notices.append(f"NPU columns are empty: {e}")
        return HtpSide(None, False, f"not run: {e}", None), {}
    where = f"{HTP_SIMULATOR}, {device.soc} (Hexagon {device.hexagon})"
    step(f"placing the graph with every activation as an output on the HTP ({device.soc})")
    try:
        sess, parts = placed_session(exposed, tmp / "exposed.ctx.onnx", device)
        return HtpSide(sess, True, where, parts), versions
    except Exception as e:  # noqa: BLE001 - the EP's refusal comes as several exception types
        why = str(e).splitlines()[0][:200]
    try:
        sess, parts = placed_session(model, tmp / "model.ctx.onnx", device)
    except Exception:  # noqa: BLE001
        rejected = qnn.rejected_nodes(model, device)
        named = "; ".join(f"{r.node} ({r.op_type}): {r.reason}" for r in rejected[:3]) or why
        notices.append(f"NPU columns are empty: {model.name} does not run entirely on the "
                       f"{device.soc} NPU ({named})")
        return HtpSide(None, False, f"not run: the model is not placed on the NPU ({named})", None), versions
    notices.append(f"exposing every activation as an output broke the model's placement on the "
                   f"HTP ({why}): the NPU columns give the model's outputs only")
    return HtpSide(sess, False, where + "; the model's outputs only", parts), versions


def exposure_check(model: Path, device: DeviceProfile, feed: dict, got: list[np.ndarray],
                    n_out: int, notices: list[str]) -> None:
    """The model's own outputs must not change when its activations are exposed."""
    from ..core.metrics import sqnr_db
    from . import qnn

    sess = qnn.htp_session(model, device)
    with qnn.native_output():
        want = sess.run(None, feed)
    for w, g in zip(want, got[:n_out]):
        if not np.array_equal(w, g):
            notices.append(f"exposing the activations changed the NPU's own output ({sqnr_db(w, g):.1f} "
                           "dB SQNR against the model as given, first sample): the HTP compiles the "
                           "exposed graph differently; read the NPU columns with that in mind")
            return

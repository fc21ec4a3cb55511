"""The inspect stage: measure (no files) and inspect (measure, then write)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import UserError
from ...core.files import sha256_file
from ...export.artifact import read_model
from ...npu.exposure import HtpSide, exposure_check, htp_side
from .config import InspectConfig
from .figures import InspectResult, Sums, named, table_rows
from .graph import activation_quantizers, cpu_session, load_graph, tensor_names, with_outputs
from .references import float_graph, float_model, float_names, samples
from .report import write_reports

Step = Callable[[str], None]


def inspect(model: str | Path, out_dir: str | Path = "inspect", cfg: InspectConfig = InspectConfig(),
            step: Step = lambda msg: None) -> InspectResult:
    """Inspect the QDQ ``model`` (see the module docstring); writes ``<stem>.inspect.csv``,
    ``.json`` and ``.png`` into ``out_dir``, together."""
    t0 = time.perf_counter()
    result = measure(model, cfg, step)
    write_reports(result, Path(out_dir), step)
    result.seconds = time.perf_counter() - t0
    return result


def measure(model: str | Path, cfg: InspectConfig = InspectConfig(),
            step: Step = lambda msg: None) -> InspectResult:
    """What :func:`inspect` reports on the QDQ ``model``, without writing anything."""
    from ...core.metrics import sqnr_db

    t0 = time.perf_counter()
    artifact = read_model(model)
    model = artifact.path
    if not artifact.int8:
        raise UserError(f"{model.name} is not a QDQ model (no QuantizeLinear): give the .qdq.onnx "
                        "from `skipat-deploy quantize`")
    qdq = load_graph(model)
    device = cfg.check(artifact)
    notices: list[str] = []
    made_for = artifact.quantization.hexagon if artifact.quantization else None
    if made_for is not None and made_for != device.hexagon:
        notices.append(f"{model.name} was quantized for Hexagon {made_for}, inspected on {device.name}'s "
                       f"{device.hexagon} HTP (compile refuses that pairing)")
    quantizers = activation_quantizers(qdq)
    if not quantizers:
        raise UserError(f"{model.name} quantizes no activation (every QuantizeLinear reads a constant)")
    float_path = float_model(artifact, cfg, notices)
    step("loading the float reference")
    fgraph, float_what, fgraph_is_float = float_graph(model, qdq, quantizers, float_path, notices)
    fnames = tensor_names(fgraph)
    f_inputs = {i.name for i in fgraph.graph.input}
    f_of = float_names(quantizers, fnames)
    input_name = qdq.graph.input[0].name
    out_names = [o.name for o in qdq.graph.output]
    exposed = [q.exposed for q in quantizers]

    graph_inputs = {i.name for i in qdq.graph.input}
    pre = [q.tensor for q in quantizers if q.tensor not in graph_inputs]
    sess_q = cpu_session(with_outputs(qdq, exposed + pre))
    x, described = samples(model, cfg, tuple(sess_q.get_inputs()[0].shape), notices)
    f_wanted = [n for n in f_of if n not in f_inputs]
    sess_f = cpu_session(with_outputs(fgraph, f_wanted))
    f_out0 = fgraph.graph.output[0].name
    sess_float = None if fgraph_is_float or float_path is None else cpu_session(float_path)
    q_names = [o.name for o in sess_q.get_outputs()]

    with tempfile.TemporaryDirectory(prefix="skipat-inspect-") as tmp_s:
        npu = HtpSide(None, False, "not run: --no-npu", None)
        versions: dict[str, str] = {}
        if cfg.npu:
            exposed_path = Path(tmp_s) / model.name
            onnx.save(with_outputs(qdq, exposed), str(exposed_path))
            npu, versions = htp_side(model, exposed_path, Path(tmp_s), device, notices, step)
        sums = Sums(len(quantizers))
        outs = {"float": [], "qdq": [], "npu": []}
        if npu.session is not None:
            n_names = [o.name for o in npu.session.get_outputs()]
        for k, xi in enumerate(x):
            step(f"sample {k + 1}/{len(x)}: float, CPU QDQ" + (", HTP simulator" if npu.session else ""))
            feed = {input_name: xi}
            fo = dict(zip([o.name for o in sess_f.get_outputs()], sess_f.run(None, feed)))
            fo.update({n: xi for n in f_inputs})
            qo = dict(zip(q_names, sess_q.run(None, feed)))
            qo.update({n: xi for n in graph_inputs})
            no: dict[str, np.ndarray] = {}
            if npu.session is not None:
                from ...npu import qnn

                with qnn.native_output():
                    got = npu.session.run(None, feed)
                no = dict(zip(n_names, got))
                if k == 0 and npu.exposes:
                    exposure_check(model, device, feed, got, len(out_names), notices)
            for q, fname in zip(quantizers, f_of):
                sums.add(q, fo.get(fname), qo[q.tensor], qo[q.exposed], no.get(q.exposed))
            outs["float"].append(fo[f_out0] if sess_float is None else sess_float.run(None, feed)[0])
            outs["qdq"].append(qo[out_names[0]])
            if out_names[0] in no:
                outs["npu"].append(no[out_names[0]])

    rows = table_rows(quantizers, sums)
    off = [q.tensor for q in quantizers if sums.off_grid[q.index]]
    if off:
        notices.append(f"the HTP returned {len(off)} exposed tensor(s) off their quantization grid "
                       f"({', '.join(off[:3])}{', ...' if len(off) > 3 else ''}): not the quantized "
                       "values the NPU computes with (the QNN EP returns a Q/DQ pair on a graph "
                       "input as a float copy), so their NPU columns are left empty")
    largest, first, npu_drop = named(rows, quantizers)
    ref = np.stack(outs["float"]) if float_path is not None else None
    cpu_out = np.stack(outs["qdq"])
    npu_out = np.stack(outs["npu"]) if outs["npu"] else None
    output = dict(tensor=out_names[0],
                  qdq_vs_float_db=None if ref is None else sqnr_db(ref, cpu_out),
                  npu_vs_float_db=None if ref is None or npu_out is None else sqnr_db(ref, npu_out),
                  npu_vs_qdq_db=None if npu_out is None else sqnr_db(cpu_out, npu_out))
    if npu.session is not None and first is None and npu.exposes:
        notices.append("no tensor departs from the CPU QDQ model by more than its own rounding "
                       "noise on the NPU")
    result = InspectResult(
        model=model, float_model=float_path, float_reference=float_what, device=device.name,
        soc=device.soc, hexagon=device.hexagon, inputs=described, num_samples=len(x), npu=npu.what,
        npu_partitions=npu.partitions, layers=rows, output=output, largest_qdq_drop=largest,
        first_npu_divergence=first, largest_npu_drop=npu_drop, versions=versions, notices=notices)
    if float_path is not None:
        result.versions["float_model_sha256"] = sha256_file(float_path)
    result.seconds = time.perf_counter() - t0
    return result

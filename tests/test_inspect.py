"""`inspect`: float, CPU QDQ and NPU (HTP simulator) side by side, tensor by tensor."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.cli import app
from skipat_deploy.core.errors import UserError
from skipat_deploy.measure import inspect as insp
from skipat_deploy.measure.inspect import InspectConfig
from skipat_deploy.measure.inspect.graph import TWIN
from skipat_deploy.measure.inspect.references import float_names
from skipat_deploy.npu import exposure
from skipat_deploy.core.metrics import noise_more_than_doubled

HAS_QNN = importlib.util.find_spec("onnxruntime_qnn") is not None
FAST = dict(num_calib=8, num_eval=4, backend="ort")


@pytest.fixture(scope="module")
def made(tmp_path_factory, nano_ckpts):
    """ViT nano QDQ models from ONNX Runtime's quantizer (seconds): w8a8 (rotated first, so its
    graph is not the float model's) and w8a16 (the float graph with Q/DQ inserted)."""
    d = tmp_path_factory.mktemp("inspect")
    # w8a16 without the NPU figure in its report (--npu-samples 0), w8a8 with it (the default)
    return {p: api.quantize(nano_ckpts["vit_nano_patch16"], d, precision=p, **FAST,
                            npu_samples=0 if p == "w8a16" else 2)
            for p in ("w8a8", "w8a16")}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _mis_scaled(q, folder: Path, factor: float = 1 / 20) -> tuple[Path, str]:
    """A copy of the QDQ model (its float model beside it) with the scale of one activation
    quantizer mid-graph (block 1's MLP activation) made ``factor`` times its value."""
    folder.mkdir()
    shutil.copy(q.float_onnx, folder / q.float_onnx.name)
    model = onnx.load(str(q.qdq_onnx))
    rows = insp.activation_quantizers(model)
    target = [r for r in rows if r.op == "Gelu"][1]
    qnode = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == target.tensor)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == qnode.output[0])
    for init in model.graph.initializer:
        if init.name in (qnode.input[1], dq.input[1]):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    path = folder / q.qdq_onnx.name
    onnx.save(model, str(path))
    return path, target.tensor


def test_a_quantizer_20x_too_small_is_named_and_the_npu_columns_are_filled(tmp_path, made):
    q = made["w8a8"]
    model, bad = _mis_scaled(q, tmp_path / "models")
    r = api.inspect(model, tmp_path / "out", InspectConfig(num_samples=2, npu=HAS_QNN))
    rows = {row.tensor: row for row in r.layers}
    after = [row.tensor for row, quant in zip(r.layers, insp.activation_quantizers(onnx.load(str(model))))
             if rows[bad].index in quant.inputs]
    assert r.largest_qdq_drop["tensor"] in [bad, *after], r.largest_qdq_drop
    assert rows[bad].qdq_drop_db > 10 and rows[bad].qdq_vs_float_db < 15
    # rotated before quantizing: per-tensor float values from the QDQ graph, output vs float
    assert r.float_reference == TWIN and r.float_model.name == q.float_onnx.name
    assert any("not all in" in n for n in r.notices)
    assert r.output["qdq_vs_float_db"] < q.quality.sqnr_db  # the broken quantizer shows at the output
    assert [row.index for row in r.layers] == list(range(len(r.layers)))
    assert r.layers[0].op == "input" and r.layers[0].bits == 8
    if not HAS_QNN:
        pytest.skip("onnxruntime-qnn is not installed: the NPU columns are not checked")
    assert r.npu_partitions == 1 and "HTP simulator" in r.npu
    # every tensor the NPU computes; the image's Q/DQ on the graph input comes back from the
    # HTP as a float copy, off the quantization grid, and is left out with a notice
    assert r.layers[0].npu_vs_qdq_db is None and any("off their quantization grid (image)" in n for n in r.notices)
    assert all(row.npu_vs_qdq_db is not None and row.npu_vs_float_db is not None for row in r.layers[1:])
    assert r.largest_npu_drop is not None and r.largest_npu_drop["op"] not in insp.DATA_MOVEMENT
    assert r.output["npu_vs_float_db"] is not None and r.versions["qnn_sdk"]
    assert not any("changed the NPU's own output" in n for n in r.notices)
    # the divergence rule: below the tensor's own rounding SQNR (scale² / 12 against its power)
    d = r.first_npu_divergence
    if d is not None:
        assert d["npu_vs_qdq_db"] < d["rounding_sqnr_db"]
        assert all(row.npu_vs_qdq_db >= row.rounding_sqnr_db for row in r.layers[1 : d["index"]])


def test_cli_writes_csv_json_png_and_lists_them(tmp_path, made):
    q = made["w8a16"]
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["inspect", "--model", str(q.qdq_onnx), "--num-samples", "1",
                                   "--no-npu", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    stem = q.qdq_onnx.name.removesuffix(".qdq.onnx")
    names = [f"{stem}.inspect.csv", f"{stem}.inspect.json", f"{stem}.inspect.png"]
    assert [Path(a["path"]).name for a in doc["artifacts"]] == names
    assert all(a["sha256"] and a["size_bytes"] > 0 for a in doc["artifacts"])
    assert _files(out) == sorted(names)
    report = json.loads((out / names[1]).read_text())
    # the QDQ graph is the float graph with Q/DQ inserted: the float model is the reference
    assert report["float_reference"] == f"the float model {q.float_onnx.name}"
    layer = report["layers"][1]
    assert {"tensor", "op", "layer", "bits", "scale", "qdq_vs_float_db", "npu_vs_float_db",
            "npu_vs_qdq_db"} <= set(layer)
    assert layer["npu_vs_qdq_db"] is None and isinstance(layer["qdq_vs_float_db"], float)
    assert report["largest_qdq_drop"]["tensor"] and "first_npu_divergence" in report
    assert doc["largest_qdq_drop"] == report["largest_qdq_drop"]
    with open(out / names[0]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(report["layers"]) and table[0]["tensor"] == "image"
    assert (out / names[2]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = {x["name"]: x for x in doc["measurements"]}
    assert m["qdq_vs_float_sqnr"]["value"] == pytest.approx(report["output"]["qdq_vs_float_db"])
    assert "npu_vs_float_sqnr" not in m


def test_without_onnxruntime_qnn_the_cpu_columns_still_work(tmp_path, made, monkeypatch):
    from skipat_deploy.npu import qnn

    def missing():
        raise UserError("onnxruntime-qnn is not installed (it has wheels for Linux x86-64 and "
                        "Windows): pip install onnxruntime-qnn")

    monkeypatch.setattr(qnn, "sdk_versions", missing)
    r = api.inspect(made["w8a16"].qdq_onnx, tmp_path, InspectConfig(num_samples=1))
    assert any(n.startswith("NPU columns are empty: onnxruntime-qnn is not installed") for n in r.notices)
    assert r.npu.startswith("not run: onnxruntime-qnn is not installed")
    assert all(row.npu_vs_qdq_db is None and row.npu_vs_float_db is None for row in r.layers)
    assert all(row.qdq_vs_float_db is not None for row in r.layers)
    assert r.first_npu_divergence is None and r.output["npu_vs_float_db"] is None
    assert r.largest_qdq_drop is not None


@pytest.mark.skipif(not HAS_QNN, reason="needs onnxruntime-qnn")
def test_when_exposing_breaks_placement_only_the_outputs_are_compared(tmp_path, made, monkeypatch):
    real = exposure.placed_session

    def refuse_exposed(model, ctx, device):
        if ctx.name.startswith("exposed"):
            raise RuntimeError("This session contains graph nodes that are assigned to the default CPU EP")
        return real(model, ctx, device)

    monkeypatch.setattr(exposure, "placed_session", refuse_exposed)
    r = api.inspect(made["w8a8"].qdq_onnx, tmp_path, InspectConfig(num_samples=1))
    (note,) = [n for n in r.notices if "broke the model's placement" in n]
    assert "the model's outputs only" in note and r.npu.endswith("the model's outputs only")
    with_npu = [row for row in r.layers if row.npu_vs_qdq_db is not None]
    assert [row.index for row in with_npu] == [len(r.layers) - 1]  # the logits' quantizer
    assert r.output["npu_vs_qdq_db"] is not None


def _tiny_qdq(path: Path, op: str = "Relu", bits: int = 8) -> Path:
    """x -> Q/DQ -> Reshape (not quantized) -> op -> Q/DQ -> y."""
    zt = TensorProto.UINT8 if bits == 8 else TensorProto.UINT16
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
             helper.make_tensor("z", zt, [], [0]),
             numpy_helper.from_array(np.array([1, 8], np.int64), "shape")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Reshape", ["xd", "shape"], ["r"], name="/blocks.0/flat/Reshape"),
             helper.make_node(op, ["r"], ["e"], name="/blocks.0/act/" + op),
             helper.make_node("QuantizeLinear", ["e", "s", "z"], ["eq"]),
             helper.make_node("DequantizeLinear", ["eq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_the_graph_is_read_as_quantizers_in_order(tmp_path):
    model = onnx.load(str(_tiny_qdq(tmp_path / "t.onnx", bits=16)))
    first, second = insp.activation_quantizers(model)
    assert (first.tensor, first.exposed, first.op, first.inputs) == ("x", "xd", "input", ())
    # through the unquantized Reshape to the quantizer upstream
    assert (second.tensor, second.exposed, second.op, second.layer, second.inputs) == (
        "e", "y", "Relu", "blocks.0.act", (0,))
    assert second.bits == 16 and second.scale == pytest.approx(0.01)
    assert second.noise_power == pytest.approx(0.01**2 / 12)
    twin = insp.float_twin(model, [first, second])
    assert [n.op_type for n in twin.graph.node] == ["Identity", "Reshape", "Relu", "Identity"]


def test_a_model_the_npu_cannot_run_leaves_the_npu_columns_empty(tmp_path):
    if not HAS_QNN:
        pytest.skip("needs onnxruntime-qnn")
    model = _tiny_qdq(tmp_path / "erf.onnx", op="Erf")
    r = api.inspect(model, tmp_path / "out", InspectConfig(num_samples=1))
    (note,) = [n for n in r.notices if n.startswith("NPU columns are empty")]
    assert "/blocks.0/act/Erf (Erf)" in note and r.npu.startswith("not run")
    assert all(row.npu_vs_qdq_db is None for row in r.layers)
    assert "seeded noise" in r.inputs and r.float_model is None and r.float_reference == TWIN


@pytest.mark.parametrize("case", ["float", "missing", "not_onnx", "samples", "float_quantized"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, made, case):
    q = made["w8a16"]
    args = {"float": ["--model", str(q.float_onnx)],
            "missing": ["--model", str(tmp_path / "missing.qdq.onnx")],
            "not_onnx": ["--model", str(_text(tmp_path / "x.qdq.onnx"))],
            "samples": ["--model", str(q.qdq_onnx), "--num-samples", "0"],
            "float_quantized": ["--model", str(q.qdq_onnx), "--float", str(q.qdq_onnx)]}[case]
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["inspect", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: ")
    expected = {"float": "is not a QDQ model", "missing": "model not found",
                "not_onnx": "not a readable ONNX model", "samples": "--num-samples",
                "float_quantized": "is a quantized model"}[case]
    assert expected in line, line
    assert not out.exists()


def _text(path: Path) -> Path:
    path.write_text("not a model")
    return path


def test_the_quantize_report_gives_the_npus_own_figure(made):
    """Where onnxruntime-qnn is installed, a few held-out samples run on the HTP simulator: the
    NPU's SQNR vs float beside the CPU QDQ model's on the same samples, with their count."""
    off = made["w8a16"]
    assert off.npu is None and json.loads(off.report_json.read_text())["npu"] is None
    q = made["w8a8"]
    if not HAS_QNN:
        assert q.npu is None and any("onnxruntime-qnn is not installed" in n for n in q.notices)
        return
    n = q.npu
    assert n.num_samples == 2 and "HTP simulator" in n.runs_on
    assert np.isfinite(n.npu_sqnr_db) and np.isfinite(n.npu_vs_qdq_sqnr_db)
    # the CPU QDQ model on the same two samples, and the NPU held to it by compile's gate rule
    assert np.isfinite(n.qdq_sqnr_db) and not noise_more_than_doubled(n.npu_sqnr_db, n.qdq_sqnr_db)
    report = json.loads(q.report_json.read_text())["npu"]
    assert report["num_samples"] == 2 and report["npu_sqnr_db"] == pytest.approx(n.npu_sqnr_db)


def test_a_model_the_npu_refuses_gets_a_notice_not_a_figure():
    from skipat_deploy.quant.quantize import _npu_figure

    notices = []
    x = np.zeros((3, 1, 2, 2), np.float32)
    got = _npu_figure(lambda model, xs: (None, "m.qdq.onnx does not run entirely on the SM8450 NPU"),
                      Path("m.qdq.onnx"), x, x[:, 0], x[:, 0], 2, notices, lambda m: None)
    assert got is None and notices == ["no NPU figure in the report: m.qdq.onnx does not run entirely "
                                       "on the SM8450 NPU"]
    seen = []
    got = _npu_figure(lambda model, xs: (seen.append(len(xs)) or xs[:, 0] + 0.01, "sim"),
                      Path("m.qdq.onnx"), x + 1, (x + 1)[:, 0], (x + 1)[:, 0], 2, [], lambda m: None)
    assert seen == [2] and got.num_samples == 2 and got.runs_on == "sim"
    assert got.npu_sqnr_db == pytest.approx(40.0) and got.qdq_sqnr_db == float("inf")


def test_images_from_a_folder_are_preprocessed_as_the_model_says(tmp_path, made):
    from skipat_deploy.images import calibration

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in calibration.bundled_photos()[0].paths[:2]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "notes.txt").write_text("not an image")
    r = api.inspect(made["w8a16"].qdq_onnx, tmp_path / "out",
                    InspectConfig(images=photos, num_samples=3, npu=False))
    assert r.num_samples == 3 and r.inputs == f"3 samples of 2 photos from --images {photos}"
    assert any("skipped 1 files that are not images (notes.txt)" in n for n in r.notices)
    assert r.npu == "not run: --no-npu" and all(row.qdq_vs_float_db is not None for row in r.layers)


def test_a_requantized_tensor_takes_the_float_value_of_the_one_it_requantizes():
    def q(index, tensor, exposed, op, inputs=()):
        return insp.Quantizer(index, tensor, exposed, op, "l", 8, 0.1, 0.1**2 / 12, 0.0, inputs)

    rows = [q(0, "x", "x_qdq", "input"), q(1, "a", "a_qdq", "MatMul", (0,)),
            q(2, "a_qdq", "a_qdq2", "Requantize", (1,)), q(3, "y_pre", "y", "Add", (2,))]
    assert float_names(rows, {"x", "a", "y"}) == ["x", "a", "a", "y"]
    assert float_names(rows, {"x", "a"})[3] is None  # not this float graph's tensors


# --------------------------------------------------------------------------------------------
# A quantizer 20x too small, wherever it is: named, or the op right after it

FAULT_SAMPLE = 30  # injections per model and backend: one of every op type, the rest seeded
FAULT_SEED = 2026


@pytest.fixture(scope="module")
def fault_models(tmp_path_factory):
    """Nano ViT and SkipAt QDQ models at 112 px, made on first use, with attention sharp enough
    that a Softmax range matters (q and k weights scaled up: random weights attend uniformly,
    and a uniform Softmax is not clipped by a range 20x too small): ORT w8a16 (the float graph
    with Q/DQ: the float model is the per-tensor reference), ORT w8a8 rotated (the QDQ graph's
    float twin) and AIMET w8a16 (the .aimet float graph)."""
    import torch

    from .conftest import random_state_dict

    d = tmp_path_factory.mktemp("faults")
    made: dict = {}

    def get(fam: str, backend: str, precision: str):
        ckpt = d / f"{fam}.pth"
        if not ckpt.exists():
            sd = random_state_dict(f"{fam}_nano_patch16", seed=4)
            for k, w in sd.items():
                if k.endswith("attn.qkv.weight"):
                    w[: 2 * w.shape[1]] *= 6.0
            torch.save(sd, ckpt)
        key = (fam, backend, precision)
        if key not in made:
            made[key] = api.quantize(ckpt, d / "_".join(key), precision=precision, backend=backend,
                                     resolution=112, num_calib=8, num_eval=4, npu_samples=0)
        return made[key]

    return get


def _with_fault(q, folder: Path, target) -> Path:
    """A copy of ``q``'s QDQ model (its float model and .aimet folder beside it) whose
    quantizer of ``target`` alone (its scale unshared) has a scale 20x too small."""
    folder.mkdir()
    shutil.copy(q.float_onnx, folder / q.float_onnx.name)
    if q.aimet_dir is not None:
        shutil.copytree(q.aimet_dir, folder / q.aimet_dir.name)
    model = onnx.load(str(q.qdq_onnx))
    qnode = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == target.tensor)
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == qnode.output[0]]
    scale = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == qnode.input[1])
    model.graph.initializer.append(numpy_helper.from_array(scale / np.float32(20), "injected_scale"))
    for n in [qnode, *dqs]:
        n.input[1] = "injected_scale"
    path = folder / q.qdq_onnx.name
    onnx.save(model, str(path))
    return path


def _fault_sample(rows, rng) -> list:
    """One quantizer of every op type, then seeded draws up to FAULT_SAMPLE."""
    by_op: dict[str, list] = {}
    for r in rows:
        by_op.setdefault(r.op, []).append(r)
    chosen = {int(rng.choice([r.index for r in group])) for group in by_op.values()}
    rest = [r.index for r in rows if r.index not in chosen]
    chosen |= {int(i) for i in rng.choice(rest, max(0, FAULT_SAMPLE - len(chosen)), replace=False)}
    return [rows[i] for i in sorted(chosen)]


@pytest.mark.parametrize("key", [
    ("vit", "ort", "w8a16"), ("skipat", "aimet", "w8a16"),  # both models, both backends
    pytest.param(("skipat", "ort", "w8a16"), marks=pytest.mark.slow),
    pytest.param(("vit", "ort", "w8a8"), marks=pytest.mark.slow),  # rotated: the QDQ twin
], ids=lambda k: "-".join(k))
def test_a_quantizer_20x_too_small_is_named_wherever_it_is(tmp_path, fault_models, key):
    """Faults that hurt (the tensor's SQNR against float falls by more than 3 dB; a range 20x
    too small that clips nothing only rounds finer) are named: the tensor itself or an op that
    reads it, for at least 95 % of them."""
    q = fault_models(*key)
    cfg = InspectConfig(num_samples=2, npu=False)
    clean = {r.tensor: r for r in insp.measure(q.qdq_onnx, cfg).layers}
    rows = insp.activation_quantizers(onnx.load(str(q.qdq_onnx)))
    rng = np.random.default_rng(FAULT_SEED)
    named, missed, harmless = [], [], []
    for k, target in enumerate(_fault_sample(rows, rng)):
        r = insp.measure(_with_fault(q, tmp_path / str(k), target), cfg)
        own = next(x for x in r.layers if x.tensor == target.tensor)
        if own.qdq_vs_float_db > clean[target.tensor].qdq_vs_float_db - 3:
            harmless.append(target.op)
            continue
        readers = {rows[j].tensor for j in range(len(rows)) if target.index in rows[j].inputs}
        hit = r.largest_qdq_drop["tensor"] in {target.tensor, *readers}
        (named if hit else missed).append((target.op, target.tensor, r.largest_qdq_drop["tensor"]))
    ops = {op for op, _, _ in named + missed}
    print(f"{'-'.join(key)}: named {len(named)} of {len(named) + len(missed)} faults "
          f"(seed {FAULT_SEED}; {len(harmless)} harmless: {harmless}); op types {sorted(ops)}; missed {missed}")
    assert len(named) >= 0.95 * (len(named) + len(missed)), missed
    assert len(named) + len(missed) >= 0.8 * FAULT_SAMPLE  # most injections are real faults

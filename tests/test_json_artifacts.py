"""``--json`` lists every file a command wrote: each command runs into an empty --out, and the
files that appeared there (recursively, hidden ones included) are exactly the ones its
artifacts name (a listed folder stands for the files in it), each with a kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.cli import app
from skipat_deploy.core.files import sha256_file

FAST_QUANT = ["--precision", "w8a8", "--quant-backend", "ort", "--num-calib", "8"]


def listed(doc: dict) -> set[Path]:
    files = set()
    for a in doc["artifacts"]:
        assert a.get("kind"), a
        p = Path(a["path"])
        assert p.exists(), a
        if p.is_dir():
            files |= {f.resolve() for f in p.rglob("*") if f.is_file()}
        else:
            files.add(p.resolve())
            if "sha256" in a:
                assert sha256_file(p) == a["sha256"], a
    return files


def run_listing_exactly_what_appeared(out: Path, *args) -> dict:
    assert not out.exists()
    r = CliRunner().invoke(app, [str(a) for a in args] + ["--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    appeared = {f.resolve() for f in out.rglob("*") if f.is_file()}
    name = lambda files: sorted(f.relative_to(out.resolve()).as_posix() for f in files)  # noqa: E731
    assert name(appeared) == name(listed(doc))
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no stage left behind
    return doc


@pytest.fixture(scope="module")
def ckpt(nano_ckpts):
    return nano_ckpts["vit_nano_patch16"]


def test_export(tmp_path, ckpt):
    run_listing_exactly_what_appeared(tmp_path / "out", "export", "--ckpt", ckpt,
                                      "--resolution", 224, "--resolution", 256)


def test_quantize(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "quantize", "--ckpt", ckpt,
                                            "--precision", "w8a8", "--backend", "ort",
                                            "--num-calib", 8, "--num-eval", 4)
    assert {"qdq_onnx", "float_onnx", "quality_report"} <= {a["kind"] for a in doc["artifacts"]}


@pytest.mark.slow
def test_quantize_aimet(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "quantize", "--ckpt", ckpt,
                                            "--num-calib", 8, "--num-eval", 4)
    assert {"aimet_folder", "qdq_onnx", "float_onnx", "quality_report"} <= {a["kind"] for a in doc["artifacts"]}
    report = json.loads(Path(doc["results"][0]["report_json"]).read_text())
    for kind, path in (("qdq_onnx", report["qdq_onnx"]), ("float_onnx", report["float_onnx"])):
        assert report["sha256"][kind] == sha256_file(path)  # the report names the models beside it


def test_quantize_for_the_cpu(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "quantize", "--target", "cpu",
                                            "--ckpt", ckpt, "--num-calib", 8, "--num-eval", 4)
    report = json.loads(Path(doc["results"][0]["report"]).read_text())
    assert report["sha256"] == sha256_file(report["path"])


def test_compile_from_a_checkpoint(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "compile", "--ckpt", ckpt,
                                            *FAST_QUANT, "--num-check", 1)
    kinds = {a["kind"] for a in doc["artifacts"]}
    assert {"float_onnx", "qdq_onnx", "context_onnx", "context_binary", "compile_record"} <= kinds
    record = json.loads(Path(doc["results"][0]["record"]).read_text())
    assert record["sha256"]["context_binary"] == sha256_file(record["artifacts"]["context_binary"])


def test_profile_on_the_cpu_from_a_checkpoint(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "profile", "--backend", "cpu",
                                            "--ckpt", ckpt, "--runs", 3, "--threads", 1, "--time-budget", 1)
    assert {"float_onnx", "cpu_int8_onnx"} <= {a["kind"] for a in doc["artifacts"]}


def test_compare_on_the_cpu(tmp_path, nano_ckpts):
    run_listing_exactly_what_appeared(tmp_path / "out", "compare", "--backend", "cpu",
                                      "--vit", nano_ckpts["vit_nano_patch16"],
                                      "--skipat", nano_ckpts["skipat_nano_patch16"],
                                      "--resolution", 224, "--runs", 3, "--threads", 1,
                                      "--time-budget", 1)


def test_bundle(tmp_path, ckpt):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "bundle", "--ckpt", ckpt,
                                            "--precision", "w8a8", "--quant-backend", "ort",
                                            "--num-calib", 8, "--zip")
    assert sorted(a["kind"] for a in doc["artifacts"]) == ["bundle", "bundle_zip", "manifest"]


# AI Hub, through the real client against the loopback fake

@pytest.fixture
def hub(fake_hub, monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    monkeypatch.setattr(hub_mod, "_sleep", lambda s: None)
    return fake_hub


@pytest.fixture(scope="module")
def qdq(tmp_path_factory, ckpt):
    d = tmp_path_factory.mktemp("qdq")
    return api.quantize(ckpt, d, precision="w8a8", backend="ort", num_calib=4, num_eval=2,
                        npu_samples=0).qdq_onnx


def test_compile_on_hub(tmp_path, qdq, hub):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "compile", "--model", qdq,
                                            "--backend", "hub")
    assert {"target_model", "run_record", "compile_record"} <= {a["kind"] for a in doc["artifacts"]}


def test_profile_on_hub(tmp_path, qdq, hub):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "profile", "--model", qdq,
                                            "--backend", "hub")
    kinds = {a["kind"] for a in doc["artifacts"]}
    assert {"target_model", "run_record", "compile_record", "raw_profile"} <= kinds


def test_compare_on_hub_lists_the_models_it_sent(tmp_path, nano_ckpts, hub):
    doc = run_listing_exactly_what_appeared(tmp_path / "out", "compare", "--backend", "hub",
                                            "--vit", nano_ckpts["vit_nano_patch16"],
                                            "--skipat", nano_ckpts["skipat_nano_patch16"],
                                            "--resolution", 112, "--quant-backend", "ort")
    kinds = [a["kind"] for a in doc["artifacts"]]
    assert kinds.count("qdq_onnx") == 2 and kinds.count("raw_profile") == 2


def test_each_figure_is_named_in_one_place():
    """A result's figures are named by its figures() (Figure): the tables / --json (render.py)
    and the bundle manifest take them from there, so no figure name is written in both, and
    the manifest writes none of its own."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "skipat_deploy"

    def first_args(path: Path, call: str) -> set[str]:
        tree = ast.parse(path.read_text())
        return {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args
                and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)
                and (getattr(n.func, "attr", None) or getattr(n.func, "id", None)) == call}

    named = set().union(*(first_args(p, "Figure") for p in root.rglob("*.py")))
    assert {"sqnr_vs_float", "top1_agreement_vs_float", "npu_vs_cpu_sqnr"} <= named
    assert not first_args(root / "render.py", "measure") & named
    assert not first_args(root / "bundle" / "manifest.py", "_measure")

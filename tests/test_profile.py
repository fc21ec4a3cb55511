"""Latency: the CPU profiler, compare on small models, and the AI Hub profile path through the
real qai_hub client against the loopback fake (tests/hub_fake)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.cli import app
from skipat_deploy.core.errors import UserError
from skipat_deploy.npu.hub import parse_profile

from .hub_fake import FakeLayer, ProfileConfig


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))


def test_cpu_profile_of_a_checkpoint_times_fp32_and_int8(tmp_path, nano_ckpts, no_hub):
    r = api.profile(ckpt=nano_ckpts["skipat_nano_patch16"], out_dir=tmp_path, runs=5, warmup=1,
                    threads=1, budget_s=1)
    assert r.backend == "cpu" and any("not configured" in n for n in r.notices)
    fp32, int8 = r.cpu
    assert fp32.model.endswith("skipat_nano_patch16_224.onnx") and int8.model.endswith(".cpu_int8.onnx")
    for c in r.cpu:
        assert 0 < c.median_ms <= c.p90_ms and c.runs >= 5 and c.runs % 5 == 0 and c.threads == 1
    q = r.cpu_ratio
    assert q.low <= q.value <= q.high and q.pairs == fp32.runs


def test_cpu_profile_errors(tmp_path, nano_ckpts, no_hub):
    with pytest.raises(UserError, match="model not found"):
        api.profile(tmp_path / "nope.onnx", tmp_path, backend="cpu")
    with pytest.raises(UserError, match="unknown device"):
        api.profile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=tmp_path, device="Pixel 1")
    with pytest.raises(UserError, match="--backend .gpu.: choose one of auto, adb, hub, cpu"):
        api.profile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=tmp_path, backend="gpu")
    with pytest.raises(UserError, match="multiple of the patch size"):
        api.profile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=tmp_path, backend="cpu",
                    resolution=230)
    with pytest.raises(UserError, match="--time-budget must not be negative"):
        api.profile(ckpt=nano_ckpts["vit_nano_patch16"], out_dir=tmp_path / "b", backend="cpu",
                    budget_s=-1)
    assert not (tmp_path / "b").exists()


def test_compare_cpu_writes_the_table_files(tmp_path, nano_ckpts, no_hub):
    res = CliRunner().invoke(app, [
        "compare", "--vit", str(nano_ckpts["vit_nano_patch16"]),
        "--skipat", str(nano_ckpts["skipat_nano_patch16"]), "--resolution", "224",
        "--resolution", "112", "--runs", "3", "--threads", "1", "--time-budget", "1", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["results"][0]["backend"] == "cpu"
    assert any("AI Hub is not configured" in n for n in doc["notices"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.csv", "compare.json", "compare.md", "compare.png"]
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [(r["model"], r["resolution"]) for r in rows] == [
        ("vit", "224"), ("skipat", "224"), ("vit", "112"), ("skipat", "112")]
    for r in rows:
        assert float(r["latency_ms"]) > 0 and float(r["int8_latency_ms"]) > 0
        # Galaxy S22: the paper's figures beside, where the paper has one (224 and 384 px)
        assert (float(r["paper_ms"]) > 0) if r["resolution"] == "224" else r["paper_ms"] == ""
    assert all(float(r["ratio_vs_vit"]) == 1.0 for r in rows if r["model"] == "vit")
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "compare.md").read_text()
    assert "| vit_nano_patch16 | 224 |" in md and "paper, S22 NPU INT8 ms" in md
    assert "CPU INT8 ms" in md and "SkipAt/ViT (95 % CI)" in md
    for row in doc["results"][0]["rows"]:
        lo, hi = row["ratio_ci"]
        assert lo <= row["ratio_vs_vit"] <= hi and row["ratio_pairs"] >= 3
        assert row["int8_ratio_ci"][0] <= row["int8_ratio_vs_vit"] <= row["int8_ratio_ci"][1]
    ratios = [m for m in doc["measurements"] if m["name"] == "skipat_vit_ratio"]
    assert len(ratios) == 2 and "CPU" in ratios[0]["source"]


def test_compare_refuses_swapped_checkpoints(tmp_path, nano_ckpts, no_hub):
    with pytest.raises(UserError, match="holds a skipat model, not vit"):
        api.compare(vit=nano_ckpts["skipat_nano_patch16"], skipat=nano_ckpts["vit_nano_patch16"],
                    out_dir=tmp_path, resolutions=(224,), backend="cpu")
    assert not (tmp_path / "compare.md").exists()


# --------------------------------------------------------------------------------------------
# AI Hub through the loopback fake

@pytest.fixture
def hub(fake_hub, monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    monkeypatch.setattr(hub_mod, "_sleep", lambda seconds: None)
    monkeypatch.setattr(hub_mod, "RETRY_DELAYS", (0.0,))
    return fake_hub


def test_parse_profile_of_a_realistic_document():
    doc = {"execution_summary": {"estimated_inference_time": 4760, "first_load_time": 812345,
                                 "inference_memory_peak_range": (2 * 2**20, 6 * 2**20)},
           "execution_detail": [{"name": "a", "type": "Conv2d", "compute_unit": "NPU"},
                                {"name": "b", "type": "Gelu", "compute_unit": "NPU"},
                                {"name": "c", "type": "ArgMax", "compute_unit": "CPU"}]}
    f = parse_profile(doc)
    assert f == dict(estimated_inference_ms=4.76, first_load_ms=812.345,
                     peak_memory_mb=(2.0, 6.0), compute_units={"NPU": 2, "CPU": 1})
    with pytest.raises(UserError, match="estimated_inference_time"):
        parse_profile({})


def test_hub_profile_end_to_end(tmp_path, nano_ckpts, hub):
    from skipat_deploy.export import run_qdq_cpu

    q = api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path / "q", precision="w8a8",
                     backend="ort", num_calib=4, num_eval=2, npu_samples=0)
    hub.profile = ProfileConfig(estimated_inference_time_us=5650, first_load_time_us=90_000,
                                layers=[FakeLayer("conv", "Conv2d", "NPU", 10),
                                        FakeLayer("gelu", "Gelu", "NPU", 5)])
    # The "phone" computes what the QDQ model computes, to 1e-3.
    hub.inference_fn = lambda inputs: {"logits": [run_qdq_cpu(q.qdq_onnx, inputs["image"][0]) + 1e-3]}
    out = tmp_path / "results"
    r = api.profile(q.qdq_onnx, out, backend="hub")
    h = r.hub
    assert h.estimated_inference_ms == 5.65 and h.first_load_ms == 90.0
    assert h.compute_units == {"NPU": 2}
    assert h.device_check.sqnr_db > 40 and h.device_check.top1_agreement == 1.0
    raw = json.loads(h.raw_profile.read_text())
    assert raw["execution_summary"]["estimated_inference_time"] == 5650
    kinds = sorted(j.kind for j in hub.jobs.values())
    assert kinds == ["compile", "inference"]
    (inference,) = [j for j in hub.jobs.values() if j.kind == "inference"]
    assert inference.profile
    record = json.loads(next(out.glob("*.hub.json")).read_text())
    assert set(record["jobs"]) == {"compile qnn_context_binary", "inference profile"}
    # Running it again resumes both jobs: nothing new is submitted.
    again = api.profile(q.qdq_onnx, out, backend="hub")
    assert len(hub.jobs) == 2 and again.hub.estimated_inference_ms == 5.65


def test_compare_on_hub_has_the_same_table_shape(tmp_path, nano_ckpts, hub):
    def profile_for(job):
        return ProfileConfig(estimated_inference_time_us=1500 if "skipat_nano" in job.name else 2000)

    hub.profile = profile_for
    r = api.compare(nano_ckpts["vit_nano_patch16"], nano_ckpts["skipat_nano_patch16"],
                    tmp_path, resolutions=(112,), backend="auto", quant_backend="ort")
    assert r.backend == "hub"
    compiles = [j for j in hub.jobs.values() if j.kind == "compile"]
    assert len(compiles) == 2 and len(hub.jobs) == 4
    # every compile job was submitted before the first profiling job
    order = [j.kind for j in sorted(hub.jobs.values(), key=lambda j: j.creation_time)]
    assert order == ["compile", "compile", "inference", "inference"]
    rows = {(row.model, row.resolution): row for row in r.rows}
    assert set(rows) == {("vit", 112), ("skipat", 112)}
    assert rows[("vit", 112)].latency_ms == 2.0 and rows[("skipat", 112)].latency_ms == 1.5
    assert rows[("skipat", 112)].ratio_vs_vit == pytest.approx(0.75)
    assert "AI Hub" in rows[("vit", 112)].measured_on
    assert rows[("vit", 112)].device_vs_cpu_sqnr_db is not None
    assert "phone vs local QDQ SQNR" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "compare.png").is_file() and (tmp_path / "compare.csv").is_file()


def test_profile_and_compare_take_a_skipats_own_skip_indices(tmp_path, no_hub, monkeypatch):
    """Skip indices are not stored in checkpoints: a SkipAt trained with 2..7 must be timed and
    compared as that function, not the default 3..8 one."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from skipat_deploy.commands import compare as command
    from skipat_deploy.models.registry import build_model, get_spec

    from .conftest import random_state_dict

    skips = (2, 3, 4, 5, 6, 7)
    arch = get_spec("skipat_nano_patch16").arch.with_skip_indices(skips)
    sd = random_state_dict(arch, seed=3)
    ckpt = tmp_path / "skipat_2to7.pth"
    torch.save(sd, ckpt)
    r = api.profile(ckpt=ckpt, out_dir=tmp_path / "prof", backend="cpu", skip_indices=skips,
                    runs=2, warmup=1, threads=1, budget_s=0.1)
    exported = r.cpu[0].model
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]

    def torch_out(indices):
        m = build_model(get_spec("skipat_nano_patch16").arch.with_skip_indices(indices))
        m.load_state_dict(sd)
        with torch.no_grad():
            return m.eval()(torch.from_numpy(x)).numpy()

    assert np.abs(got - torch_out(skips)).max() < 1e-4
    assert np.abs(got - torch_out((3, 4, 5, 6, 7, 8))).max() > 1e-2  # the indices matter here
    seen = {}
    monkeypatch.setattr(command, "compare", lambda ckpts, *a, **k: seen.update(ckpts) or 1 / 0)
    res = CliRunner().invoke(app, ["compare", "--skipat", str(ckpt), "--skip-indices", "2,3,4,5,6,7",
                                   "--head-dim", "64", "--backend", "cpu", "--out", str(tmp_path / "c")])
    assert seen["skipat"].arch.skip_indices == skips and seen["vit"].arch.skip_indices == ()
    assert res.exit_code != 0  # the stand-in stops the command once the models are loaded

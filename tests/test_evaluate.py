"""evaluate: labelled datasets as users hold them, top-1 that matches an independent count, the
intervals, the CI gate, and the phone target through the loopback AI Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.core.metrics import paired_drop_interval, wilson_interval
from skipat_deploy.models.checkpoint import load_checkpoint, load_weights
from skipat_deploy.cli import app
from skipat_deploy.core.errors import UserError
from skipat_deploy.images.imagenet import imagenet_synsets
from skipat_deploy.measure import evaluate as ev
from skipat_deploy.images.dataset import DatasetError, load_dataset, stratified_subset
from skipat_deploy.models.registry import build_model
from skipat_deploy.images.preprocess import load_image

from .conftest import default_signals

runner = CliRunner()
WN = imagenet_synsets()


def _photo(path: Path, seed: int, size=(96, 80), mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([(xx * (seed + 1)) % 256, (yy * 3 + seed * 40) % 256, (xx + yy) % 256], -1)
    noise = rng.integers(0, 60, base.shape)
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Layouts

def test_wordnet_and_index_class_folders(tmp_path):
    for i, wn in enumerate((WN[0], WN[207])):
        for j in range(2):
            _photo(tmp_path / "wn" / wn / f"{j}.JPEG", i * 10 + j)
            _photo(tmp_path / "idx" / str(i * 207) / f"{j}.png", i * 10 + j)
    _photo(tmp_path / "wn" / "loose.jpg", 99)
    a, b = load_dataset(tmp_path / "wn"), load_dataset(tmp_path / "idx")
    assert sorted(a.labels) == sorted(b.labels) == [0, 0, 207, 207]
    assert "WordNet" in a.layout and "index" in b.layout
    assert any("outside any class folder" in n for n in a.notices)


def test_imagenette_root_uses_val_and_its_csv(tmp_path):
    root = tmp_path / "imagenette2-160"
    for split in ("train", "val"):
        for wn in (WN[0], WN[217]):
            _photo(root / split / wn / f"{split}_{wn}.JPEG", 1)
    ds = load_dataset(root)
    assert "val/" in ds.layout and len(ds.items) == 2
    csv = root / "noisy_imagenette.csv"
    csv.write_text("path,noisy_labels_0,noisy_labels_1,is_valid\n"
                   f"train/{WN[0]}/train_{WN[0]}.JPEG,{WN[0]},{WN[0]},False\n"
                   f"val/{WN[217]}/val_{WN[217]}.JPEG,{WN[217]},{WN[1]},True\n")
    listed = load_dataset(root, csv)
    assert [(p.name, c) for p, c in listed.items] == [(f"val_{WN[217]}.JPEG", 217)]


def test_imagenet_val_layouts(tmp_path):
    val = tmp_path / "val"
    for i in range(1, 4):
        _photo(val / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    (val / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n"
                                 "ILSVRC2012_val_00000003.JPEG n01751748\n")
    assert list(load_dataset(val).labels) == [65, 970, WN.index("n01751748")]
    (val / "val.txt").unlink()
    # Kaggle: ids without extension, labels as the first WordNet ID of PredictionString
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n09428293 1 2 3 4 n09428293 5 6 7 8\n")
    ds = load_dataset(val)
    assert list(ds.labels) == [WN.index("n09428293")] and "LOC_val_solution" in ds.layout
    (tmp_path / "LOC_val_solution.csv").unlink()
    # devkit: ILSVRC2012 IDs, which are not the 1k order, need the devkit's map
    (val / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n1\n")
    with pytest.raises(DatasetError, match="map_clsloc.txt"):
        load_dataset(val)
    (val / "map_clsloc.txt").write_text("n02119789 1 kit_fox\nn02100735 2 English_setter\n")
    assert list(load_dataset(val).labels) == [WN.index("n02119789"), WN.index("n02100735"),
                                              WN.index("n02119789")]


def test_labels_csv_and_its_errors(tmp_path):
    _photo(tmp_path / "imgs" / "a.png", 1)
    _photo(tmp_path / "imgs" / "sub" / "b.jpg", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("a.png,3\nsub/b.jpg,n01443537\nmissing.jpg,4\n")
    ds = load_dataset(tmp_path / "imgs", labels)
    assert list(ds.labels) == [3, 1] and any("missing.jpg" in n for n in ds.notices)
    labels.write_text("a.png,tabby\n")
    with pytest.raises(DatasetError, match="neither a class index nor a WordNet ID"):
        load_dataset(tmp_path / "imgs", labels)
    labels.write_text("a.png,n99999999\n")
    with pytest.raises(DatasetError, match="not one of the ImageNet-1k classes"):
        load_dataset(tmp_path / "imgs", labels)
    with pytest.raises(DatasetError, match="no labels found.*cats"):
        (tmp_path / "flat" / "cats").mkdir(parents=True)
        load_dataset(tmp_path / "flat")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "nowhere")


def test_stratified_subset_is_round_robin_and_seeded(tmp_path):
    from skipat_deploy.images.dataset import LabelledImages

    items = tuple((Path(f"{c}_{i}.jpg"), c) for c, size in ((0, 60), (1, 30), (2, 4)) for i in range(size))
    ds = LabelledImages(tmp_path, items, "test")
    sub = stratified_subset(ds, 20, seed=3)
    assert np.bincount(sub.labels, minlength=3).tolist() == [8, 8, 4]  # the small class runs out
    assert stratified_subset(ds, 20, seed=3).items == sub.items
    assert stratified_subset(ds, 20, seed=4).items != sub.items
    assert list(sub.items) == sorted(sub.items, key=items.index)  # the dataset's order
    assert stratified_subset(ds, 500).items == items


def test_stratified_indices_cover_the_classes():
    from skipat_deploy.images.dataset import stratified_indices

    labels = np.repeat(np.arange(10) * 7, 30)  # 10 classes in class order, as folders give them
    ten = stratified_indices(labels, 10, seed=0)
    assert len(set(labels[ten])) == 10 and len(ten) == 10
    assert stratified_indices(labels, 10, seed=0).tolist() == ten.tolist()
    assert stratified_indices(labels, 10, seed=1).tolist() != ten.tolist()
    few = stratified_indices(labels, 4, seed=0)  # fewer than the classes: 4 classes chosen
    assert len(set(labels[few])) == 4 and few.tolist() == stratified_indices(labels, 4, 0).tolist()
    assert np.bincount(labels[stratified_indices(labels, 25)] // 7).tolist() == [3] * 5 + [2] * 5


# --------------------------------------------------------------------------------------------
# Intervals

def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 13)
    assert lo == 0 and hi == pytest.approx(1.959964**2 / (13 + 1.959964**2), rel=1e-6)
    lo, hi = wilson_interval(364, 500)  # 72.8 % on 500 images: about +-3.9 points
    assert lo == pytest.approx(0.68737, abs=1e-4) and hi == pytest.approx(0.76516, abs=1e-4)


def test_paired_drop_interval_covers_the_true_drop():
    """Over many simulated paired evaluations the interval holds the true drop ~95 % of the
    time, and a 0.5-point drop on 500 images is indistinguishable from none."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ref = rng.random(300) < 0.72
        flip = rng.random(300) < 0.04  # INT8 flips 4 % of the answers either way
        test = np.where(flip, ~ref, ref)
        true_drop = 0.04 * (0.72 - 0.28)
        _, lo, hi = paired_drop_interval(ref, test)
        hits += lo <= true_drop <= hi
    assert 0.93 < hits / 2000 < 0.975
    ref = np.zeros(500, bool)
    ref[:364] = True
    test = ref.copy()
    test[:4] = False
    test[400:401] = True  # 4 lost, 1 gained: 0.6 points
    drop, lo, hi = paired_drop_interval(ref, test)
    assert drop == pytest.approx(0.006) and lo < 0 < hi


def test_gate_fails_exactly_above_the_limit():
    def result(drop_points):
        s = ev.TargetScore("qdq", "cpu", None, 100, 0.7, 0.9, (0.6, 0.8), 0.9, 20.0,
                           drop_points / 100, (0.0, 0.1), 1.0)
        return ev.EvaluateResult("m", "d", "l", 224, "w8a8", "torch", [s], 100, [], 2.0)

    for drop, fails in ((2.0, False), (1.99, False), (2.01, True), (0.0, False)):
        r = result(drop)
        ev.apply_gate(r)
        assert bool(r.gate_failures) == fails, drop


# --------------------------------------------------------------------------------------------
# End to end on a small classifier

@pytest.fixture(scope="module")
def labelled(tmp_path_factory, nano_ckpts):
    """12 images in WordNet-ID class folders: the first 8 labelled with the float model's own
    answer, the last 4 with another class, so float top-1 is 8/12 by construction."""
    tmp = tmp_path_factory.mktemp("labelled")
    ckpt = nano_ckpts["vit_nano_patch16"]
    loaded = load_checkpoint(ckpt)
    model = load_weights(build_model(loaded.arch), loaded.state_dict, loaded.spec.name).eval()
    modes = ["RGB", "L", "RGBA", "P", "CMYK", "RGB"]
    staged = [_photo(tmp / "staged" / f"img{i}.{'jpg' if modes[i % 6] in ('RGB', 'L', 'CMYK') else 'png'}",
                     i, size=(64 + 17 * i, 300 - 11 * i), mode=modes[i % 6]) for i in range(12)]
    data = tmp / "data"
    for i, p in enumerate(staged):
        with torch.no_grad():
            pred = int(model(torch.from_numpy(load_image(p, 224, loaded.spec.preprocess))).argmax())
        label = pred if i < 8 else (pred + 1) % 1000
        (data / WN[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, data / WN[label] / p.name)
    (data / WN[5]).mkdir(exist_ok=True)
    (data / WN[5] / "truncated.jpg").write_bytes(b"\xff\xd8\xff not really")
    return dict(ckpt=ckpt, data=data)


def test_evaluate_matches_an_independent_count(tmp_path, labelled):
    r = api.evaluate(labelled["data"], ckpt=labelled["ckpt"], out_dir=tmp_path,
                     targets=("torch", "onnx", "qdq"), precision="w8a8", quant_backend="ort")
    assert [t.name for t in r.targets] == ["torch", "onnx", "qdq"]
    assert r.num_images == 12 and len(r.unreadable) == 1
    torch_t, onnx_t, qdq_t = r.targets
    assert torch_t.top1 == pytest.approx(8 / 12) and torch_t.n == 12
    # independent: every file through `predict` (its own pre-processing and session)
    onnx_path = Path(onnx_t.model)
    files = sorted(p for p in labelled["data"].rglob("*") if p.is_file() and p.name != "truncated.jpg")
    preds = api.predict(onnx_path, files, top_k=5)
    truth = [WN.index(p.parent.name) for p in files]
    assert onnx_t.top1 == pytest.approx(np.mean([pr.top[0].index == t for pr, t in zip(preds, truth)]))
    assert onnx_t.top5 == pytest.approx(np.mean([t in [c.index for c in pr.top] for pr, t in zip(preds, truth)]))
    from skipat_deploy.export import run_qdq_cpu
    from skipat_deploy.images.preprocess import Preprocess
    from skipat_deploy.export import read_metadata

    pp = Preprocess.from_dict(read_metadata(qdq_t.model)["preprocess"])
    x = np.concatenate([load_image(p, 224, pp) for p in files])
    q_top1 = np.mean(run_qdq_cpu(qdq_t.model, x).argmax(1) == np.array(truth))
    assert qdq_t.top1 == pytest.approx(q_top1)
    assert onnx_t.agreement == 1.0 and onnx_t.top1_drop == 0.0
    assert qdq_t.top1_ci[0] <= qdq_t.top1 <= qdq_t.top1_ci[1]
    doc = json.loads(r.files["json"].read_text())
    assert [t["name"] for t in doc["targets"]] == ["torch", "onnx", "qdq"]
    assert "95 % CI" in r.files["markdown"].read_text()


def test_cli_json_gate_and_exit_codes(tmp_path, labelled, monkeypatch):
    args = ["evaluate", "--ckpt", labelled["ckpt"], "--data", labelled["data"], "--targets",
            "torch,qdq", "--precision", "w8a8", "--quant-backend", "ort", "--out", tmp_path, "--json"]
    ok = runner.invoke(app, [str(a) for a in args + ["--max-top1-drop", "0"]])
    doc = json.loads(ok.stdout)
    qdq = next(t for t in doc["targets"] if t["name"] == "qdq")
    assert {"name", "top1", "top5", "top1_ci", "agreement", "n"} <= set(qdq)
    drop = qdq["top1_drop"] * 100
    assert ok.exit_code == (ev.GATE_EXIT_CODE if drop > 0 else 0), ok.stderr
    # An INT8 model that gets every answer wrong: the gate names it and exits 4.
    from dataclasses import replace as dc_replace

    from skipat_deploy.measure import targets

    real = targets.TARGETS["qdq"]

    def wrong(src):
        r = real.make(src)
        run = r.run
        r.run = lambda x: -run(x)
        return r

    monkeypatch.setitem(targets.TARGETS, "qdq", dc_replace(real, make=wrong))
    bad = runner.invoke(app, [str(a) for a in args + ["--max-top1-drop", "10"]])
    assert bad.exit_code == ev.GATE_EXIT_CODE
    assert "qdq" in bad.stderr and "gate" in bad.stderr
    assert json.loads(bad.stdout)["ok"] is False


def test_refusals(tmp_path, labelled, nano_ckpts):
    sd = torch.load(nano_ckpts["vit_nano_patch16"], weights_only=True)
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("head.")}, headless)
    with pytest.raises(UserError, match="no classification head"):
        api.evaluate(labelled["data"], ckpt=headless, out_dir=tmp_path)
    with pytest.raises(UserError, match="not both|not neither"):
        api.evaluate(labelled["data"], out_dir=tmp_path)
    with pytest.raises(UserError, match="--targets"):
        api.evaluate(labelled["data"], ckpt=labelled["ckpt"], targets=("gpu",))
    with pytest.raises(UserError, match="add torch or onnx"):
        api.evaluate(labelled["data"], ckpt=labelled["ckpt"], targets=("qdq",), max_top1_drop=1)
    (r,) = api.export(labelled["ckpt"], tmp_path, resolutions=(224,))
    with pytest.raises(UserError, match="float model.*not qdq"):
        api.evaluate(labelled["data"], model=r.path, targets=("qdq",))
    res = runner.invoke(app, ["evaluate", "--model", str(r.path), "--data", str(tmp_path / "none")])
    assert res.exit_code == 2 and "not a folder" in res.stderr
    assert not list(tmp_path.glob("*.evaluate.*"))


def test_device_target_through_the_loopback_hub(tmp_path, labelled, fake_hub, monkeypatch):
    from skipat_deploy.export import run_qdq_cpu
    from skipat_deploy.npu import hub as hub_mod

    monkeypatch.setattr(hub_mod, "_sleep", lambda s: None)
    q = api.quantize(labelled["ckpt"], tmp_path / "q", precision="w8a8", backend="ort",
                     num_calib=4, num_eval=2, npu_samples=0)
    # the "phone" computes what the QDQ model computes
    fake_hub.inference_fn = lambda inputs: {"logits": [run_qdq_cpu(q.qdq_onnx, x) for x in inputs["image"]]}
    out = tmp_path / "eval"
    r = api.evaluate(labelled["data"], model=q.qdq_onnx, out_dir=out, targets=("qdq", "device"),
                     samples_per_job=5)
    qdq, device = r.targets
    assert device.n == 12 and device.top1 == qdq.top1 and device.agreement is None
    def uploaded():
        return [d for d in fake_hub.datasets.values() if d.name.startswith("skipat-deploy eval")]

    inference = [j for j in fake_hub.jobs.values() if j.kind == "inference"]
    assert len(inference) == 3 and len(uploaded()) == 3  # 5 + 5 + 2 images
    assert not any(j.profile for j in inference)
    again = api.evaluate(labelled["data"], model=q.qdq_onnx, out_dir=out, targets=("device",),
                         samples_per_job=5)
    assert again.targets[0].top1 == device.top1
    assert len([j for j in fake_hub.jobs.values() if j.kind == "inference"]) == 3
    assert len(uploaded()) == 3  # uploaded once, reused


def test_compare_eval_puts_accuracy_beside_latency(tmp_path, labelled, nano_ckpts):
    r = api.compare(nano_ckpts["vit_nano_patch16"], nano_ckpts["skipat_nano_patch16"], tmp_path,
                    resolutions=(224,), backend="cpu", runs=3, warmup=1, threads=1, budget_s=1,
                    eval_dir=labelled["data"])
    vit = next(row for row in r.rows if row.model == "vit")
    assert vit.top1_float == pytest.approx(8 / 12) and vit.eval_images == 12
    assert all(row.top1_int8 is not None and row.latency_ms > 0 for row in r.rows)
    table = r.files["markdown"].read_text()
    assert "top-1 % float / INT8 (n)" in table and "(12)" in table
    with pytest.raises(UserError, match="trained --vit"):
        api.compare(None, nano_ckpts["skipat_nano_patch16"], tmp_path, resolutions=(224,),
                    backend="cpu", eval_dir=labelled["data"])


def test_npu_and_num_samples_draw_per_class(tmp_path, nano_ckpts):
    """10 classes in class order: --npu-samples 10 and --num-samples 10 each score one image of
    every class (not the first class's images), the same ones for the same seed, and the
    report lists them."""
    data = tmp_path / "data"
    for c in range(10):
        for j in range(3):
            _photo(data / WN[c * 50] / f"{c}_{j}.jpg", c * 3 + j)
    q = api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path / "q", precision="w8a8",
                     backend="ort", num_calib=4, num_eval=2, npu_samples=0)
    r = api.evaluate(data, model=q.qdq_onnx, out_dir=tmp_path / "e", targets=("qdq", "npu"),
                     npu_samples=10)
    qdq, npu = r.targets
    assert qdq.n == 30 and qdq.num_classes == 10 and len(qdq.image_files) == 30
    assert npu.n == 10 and npu.num_classes >= 8
    assert len({f.split("/")[0] for f in npu.image_files}) == npu.num_classes
    assert all((data / f).is_file() for f in npu.image_files)
    doc = json.loads(r.files["json"].read_text())
    assert doc["targets"][1]["image_files"] == npu.image_files and doc["targets"][1]["num_classes"] == 10
    md = r.files["markdown"].read_text()
    assert "| classes |" in md and npu.image_files[0] in md
    subs = [api.evaluate(data, model=q.qdq_onnx, out_dir=tmp_path / f"s{i}", targets=("qdq",),
                         num_samples=10, seed=seed).targets[0] for i, seed in enumerate((5, 5, 6))]
    assert subs[0].num_classes == 10 and subs[0].image_files == subs[1].image_files
    assert subs[2].image_files != subs[0].image_files


def test_ctrl_c_in_a_real_process_then_the_same_command_resumes(tmp_path, nano_ckpts):
    """A real ``skipat-deploy evaluate`` process, Ctrl-C (SIGINT) once it has scored a first
    group, on the real clock: one line, non-zero exit, no report; the same command then
    continues from the scored images, says so, and reports what a run without the
    interruption reports."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    for i in range(1200):
        _photo(data / str(i % 4) / f"{i:05d}.png", i, size=(72, 64))
    (r,) = api.export(nano_ckpts["vit_nano_patch16"], tmp_path / "m", resolutions=(224,))
    cmd = [sys.executable, "-c", "from skipat_deploy.cli import main; main()", "evaluate", "--model", str(r.path),
           "--data", str(data), "--out", str(tmp_path / "out"), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_signals)
    cache = tmp_path / "out" / ev.CACHE

    def groups():  # scored groups; a group being written is a hidden .partial file
        return [p for p in cache.rglob("*.npz") if not p.name.startswith(".")]

    deadline = time.monotonic() + 120
    while not groups() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted: use more images"
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 130, errs
    assert "Traceback" not in errs and "interrupted" in errs.strip().splitlines()[-1]
    scored = len(groups())
    assert scored >= 1 and not list((tmp_path / "out").glob("*.evaluate.*"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert any(n.startswith("resumed: onnx had") for n in doc["notices"]), doc["notices"]
    assert not cache.exists()  # the scores are in the report now
    fresh = api.evaluate(data, model=r.path, out_dir=tmp_path / "fresh")
    (t,) = doc["targets"]
    assert t["n"] == fresh.targets[0].n == 1200
    assert t["top1"] == fresh.targets[0].top1 and t["image_files"] == fresh.targets[0].image_files

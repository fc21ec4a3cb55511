"""Pre-processing given (--mean ...), read from the checkpoint, or the registry's guess, said so."""

from __future__ import annotations

import argparse
import json

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from skipat_deploy import api

from skipat_deploy.images import calibration
from skipat_deploy.bundle import manifest_schema
from skipat_deploy.bundle.manifest import io_contract
from skipat_deploy.models.checkpoint import load_checkpoint
from skipat_deploy.cli import app
from skipat_deploy.core.errors import CheckpointError
from skipat_deploy.export import read_metadata
from skipat_deploy.images.preprocess import Preprocess, PreprocessOverrides, load_image
from skipat_deploy.quant import QuantizeConfig
from skipat_deploy.quant.quantize import quantization_samples

from .conftest import onnx_files, random_state_dict

NANO = "vit_nano_patch16"
GUESS = f"default:{NANO} (a guess)"
AUGREG = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9, "interpolation": "bilinear"}
FLAGS = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--crop-pct", "0.9"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(NANO, seed=3)


def _export(tmp_path, ckpt, *flags):
    r = cli("export", "--ckpt", ckpt, "--resolution", 224, "--out", tmp_path / "out", "--json", *flags)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    return read_metadata(doc["artifacts"][0]["path"]), doc, r.stderr


def test_given_values_are_recorded_as_given(tmp_path, nano_ckpts):
    meta, doc, stderr = _export(tmp_path, nano_ckpts[NANO], *FLAGS, "--interpolation", "bilinear")
    assert meta["preprocess"] == AUGREG
    assert meta["preprocess_source"] == "given"
    assert "a guess" not in stderr and doc["notices"] == []
    # The bundle manifest describes the input as the export's metadata does.
    onnx_path = doc["artifacts"][0]["path"]
    (inp,), _ = io_contract(onnx_path, onnx_path)
    assert {k: inp["preprocess"][k] for k in AUGREG} == AUGREG
    assert inp["preprocess"]["source"] == "given"
    schema = manifest_schema()
    jsonschema.validate(inp, {"$ref": "#/$defs/input", "$defs": schema["$defs"]})


def test_registry_default_is_recorded_and_noticed_as_a_guess(tmp_path, nano_ckpts):
    meta, doc, stderr = _export(tmp_path, nano_ckpts[NANO])
    assert meta["preprocess"]["crop_pct"] == 0.875 and meta["preprocess"]["std"] == [0.229, 0.224, 0.225]
    assert meta["preprocess_source"] == GUESS
    (note,) = [n for n in doc["notices"] if "pre-processing is a guess" in n]
    assert "crop_pct 0.875" in note and "--mean R,G,B --std R,G,B --crop-pct F" in note
    assert "pre-processing is a guess" in stderr


def test_unset_values_stay_a_guess_value_by_value(nano_ckpts):
    spec = api.load(nano_ckpts[NANO], preprocess=PreprocessOverrides.parse(*FLAGS[1::2])).spec
    pp = spec.preprocess
    assert (pp.mean, pp.std, pp.crop_pct, pp.interpolation) == ((0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert pp.source == f"mean, std, crop_pct: given; interpolation: {GUESS}"
    note = pp.guess_notice(spec.name)
    assert "interpolation bicubic" in note and note.endswith("pass --interpolation NAME")
    # Freshly initialised weights take given values too.
    assert api.load(None, NANO, preprocess=PreprocessOverrides(crop_pct=1)).spec.preprocess.crop_pct == 1.0


def _timm_args(**kw):
    base = dict(model="vit_nano", lr=1e-3, mean=None, std=None, crop_pct=None, interpolation="")
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("kind", ["pretrained_cfg", "default_cfg", "top level", "args", "args dict",
                                  "safetensors", "config.json", "config.json legacy"])
def test_checkpoint_carried_preprocessing_is_read(tmp_path, sd, kind):
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    where = kind
    if kind in ("pretrained_cfg", "default_cfg"):
        torch.save({"model": sd, kind: {**AUGREG, "num_classes": 1000, "input_size": (3, 224, 224)}}, path)
    elif kind == "top level":
        torch.save({"model": sd, **AUGREG}, path)
    elif kind.startswith("args"):
        # timm's train.py: --mean / --std take one or more values, unset ones are None / "".
        args = _timm_args(mean=[0.5, 0.5, 0.5], std=[0.5], crop_pct=0.9, interpolation="bilinear")
        torch.save({"epoch": 9, "state_dict": sd, "args": vars(args) if kind == "args dict" else args,
                    "metric": np.float64(1.0)}, path)
        where = "args"
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path,
                  metadata={"format": "pt", "pretrained_cfg": json.dumps(AUGREG)})
        where = "__metadata__[pretrained_cfg]"
    else:
        torch.save(sd, path)
        cfg = {"architecture": "vit_nano", **AUGREG} if kind.endswith("legacy") else \
            {"architecture": "vit_nano", "num_classes": 1000, "pretrained_cfg": AUGREG}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        where = "config.json"
    ckpt = load_checkpoint(path)
    pp = ckpt.spec.preprocess
    assert pp.to_dict() == AUGREG
    assert pp.source == f"checkpoint:{where}"
    assert [w for _, w in ckpt.info.preprocess_found][-1] == where
    assert pp.guess_notice(ckpt.spec.name) is None


def test_training_args_left_unset_fall_back_to_the_guess(tmp_path, sd):
    torch.save({"state_dict": sd, "args": _timm_args(crop_pct=0.95)}, tmp_path / "last.pth.tar")
    pp = load_checkpoint(tmp_path / "last.pth.tar").spec.preprocess
    assert pp.crop_pct == 0.95 and pp.mean == (0.485, 0.456, 0.406)
    assert pp.source == f"mean, std, interpolation: {GUESS}; crop_pct: checkpoint:args"


def test_args_beat_pretrained_cfg_and_flags_beat_both(tmp_path, sd):
    """timm's order inside the file (args over pretrained_cfg), then the command line over it."""
    path = tmp_path / "w.pth"
    torch.save({"state_dict": sd, "pretrained_cfg": AUGREG, "args": _timm_args(crop_pct=0.95)}, path)
    meta, doc, _ = _export(tmp_path, path, "--crop-pct", "1.0", "--std", "0.25,0.25,0.25")
    assert meta["preprocess"] == {**AUGREG, "crop_pct": 1.0, "std": [0.25, 0.25, 0.25]}
    assert meta["preprocess_source"] == "mean, interpolation: checkpoint:pretrained_cfg; std, crop_pct: given"
    assert not any("a guess" in n for n in doc["notices"])


def test_calibration_uses_the_resolved_values(nano_ckpts):
    given = PreprocessOverrides.parse(*FLAGS[1::2])
    loaded = api.load(nano_ckpts[NANO], preprocess=given)
    cfg = QuantizeConfig(resolution=224, num_calib=1, num_eval=1)
    calib_set, _, xc, *_ = quantization_samples(loaded, cfg, [], lambda m: None)
    want = calibration.image_batch(calib_set, 224, loaded.spec.preprocess, 1, seed=cfg.seed)
    guess = calibration.image_batch(calib_set, 224, Preprocess(), 1, seed=cfg.seed)
    assert np.array_equal(xc, want) and not np.allclose(xc, guess)


@pytest.mark.parametrize("flags,expect", [
    (["--std", "0,0.5,0.5"], "--std 0,0.5,0.5 must lie in (0, 1]"),
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5' must be three comma-separated numbers"),
    (["--mean", "123.7,116.3,103.5"], "divide 0-255 values by 255"),
    (["--crop-pct", "1.5"], "--crop-pct 1.5 must be in (0, 1]"),
    (["--crop-pct", "0"], "--crop-pct 0 must be in (0, 1]"),
    (["--crop-pct", "abc"], "--crop-pct 'abc' must be a number"),
    (["--interpolation", "random"], "--interpolation random must be one of bicubic, bilinear"),
])
def test_bad_values_are_one_line_errors(tmp_path, nano_ckpts, flags, expect):
    r = cli("export", "--ckpt", nano_ckpts[NANO], "--resolution", 224, "--out", tmp_path, *flags)
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert onnx_files(tmp_path) == []


def test_bad_checkpoint_value_is_refused_only_when_used(tmp_path, sd):
    path = tmp_path / "w.pth"
    torch.save({"model": sd, "pretrained_cfg": {**AUGREG, "crop_pct": 1.5}}, path)
    with pytest.raises(CheckpointError, match=r"crop_pct 1.5 read from the checkpoint \(pretrained_cfg\)"):
        load_checkpoint(path)
    assert load_checkpoint(path, preprocess=PreprocessOverrides(crop_pct=0.9)).spec.preprocess.crop_pct == 0.9
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json beside the checkpoint is not readable JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize("command", [["evaluate", "--data", "."], ["compile"], ["profile"]])
def test_flags_refused_for_an_exported_model(tmp_path, command):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    r = cli(*command, "--model", model, "--crop-pct", "0.9")
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--crop-pct: for --ckpt only" in lines[0], r.stderr


@pytest.mark.parametrize("interpolation", ["bilinear", "lanczos", "nearest"])
def test_interpolations_match_timm(tmp_path, interpolation):
    timm_data = pytest.importorskip("timm.data")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    pp = Preprocess((0.5,) * 3, (0.5,) * 3, 0.9, interpolation)
    tf = timm_data.create_transform(input_size=(3, 224, 224), crop_pct=0.9, interpolation=interpolation,
                                    mean=pp.mean, std=pp.std)
    want = tf(Image.open(tmp_path / "x.png").convert("RGB")).numpy()[None]
    assert np.abs(load_image(tmp_path / "x.png", 224, pp) - want).max() < 1e-5

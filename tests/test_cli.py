"""The CLI end to end: JSON output, artifacts on disk, one-line errors, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from skipat_deploy.cli import app
from skipat_deploy.core.files import sha256_file
from skipat_deploy.images.imagenet import imagenet_classes

from .conftest import onnx_files, random_state_dict

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 320x240 synthetic photo (gradients and a disc)."""
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([xx * 255 / 320, yy * 255 / 240, ((xx - 160) ** 2 + (yy - 120) ** 2 < 80**2) * 200], -1)
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    return path


def test_export_json_lists_artifacts(tmp_path, nano_ckpts):
    out = tmp_path / "out"
    r = cli("export", "--ckpt", nano_ckpts["skipat_nano_patch16"], "--resolution", 224,
            "--resolution", 256, "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["command"] == "export"
    assert [a["resolution"] for a in doc["artifacts"]] == [224, 256]
    for a in doc["artifacts"]:
        assert Path(a["path"]).is_file() and sha256_file(a["path"]) == a["sha256"]
    names = {m["name"] for m in doc["measurements"]}
    assert names == {"export_seconds", "max_abs_diff_vs_torch"}
    assert sorted(p.name for p in out.iterdir()) == ["skipat_nano_patch16_224.onnx",
                                                     "skipat_nano_patch16_256.onnx"]


def test_export_without_ckpt_says_weights_are_random(tmp_path):
    r = cli("export", "--arch", "vit_nano_patch16", "--resolution", 224, "--out", tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "freshly initialised vit_nano_patch16" in r.stderr
    assert (tmp_path / "vit_nano_patch16_224.onnx").is_file()


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


@pytest.mark.parametrize("case", ["pickle_code", "truncated", "missing", "res225", "bad_arch",
                                  "bad_skips"])
def test_user_errors_are_one_line(tmp_path, nano_ckpts, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = nano_ckpts["vit_nano_patch16"]
    out = tmp_path / "out"
    args = ["export", "--out", out, "--resolution", 224]
    expect = {
        "pickle_code": "would need to run code",
        "truncated": "corrupt or truncated",
        "missing": "checkpoint not found",
        "res225": "resolution 225 is not a positive multiple of the patch size 16",
        "bad_arch": "unknown architecture",
        "bad_skips": "must be comma-separated integers",
    }[case]
    if case == "pickle_code":
        torch.save({"model": random_state_dict("vit_nano_patch16"), "x": _RunsCode()}, tmp_path / "e.pth")
        args += ["--ckpt", tmp_path / "e.pth"]
    elif case == "truncated":
        (tmp_path / "t.pth").write_bytes(good.read_bytes()[:5000])
        args += ["--ckpt", tmp_path / "t.pth"]
    elif case == "missing":
        args += ["--ckpt", tmp_path / "nope.pth"]
    elif case == "res225":
        args += ["--ckpt", good, "--resolution", 225]
    elif case == "bad_arch":
        args += ["--ckpt", good, "--arch", "vit_huge"]
    else:
        args += ["--ckpt", nano_ckpts["skipat_nano_patch16"], "--skip-indices", "3,x"]
    line = one_line_error(cli(*args))
    assert expect in line
    assert onnx_files(tmp_path) == []
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_json_error_document(tmp_path):
    r = cli("export", "--ckpt", tmp_path / "nope.pth", "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and "not found" in doc["error"]


def test_debug_shows_traceback(tmp_path):
    r = cli("export", "--ckpt", tmp_path / "nope.pth", "--debug")
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_predict_prints_imagenet_labels(tmp_path, photo):
    assert cli("export", "--arch", "vit_nano_patch16", "--resolution", 224, "--out", tmp_path).exit_code == 0
    model = tmp_path / "vit_nano_patch16_224.onnx"
    r = cli("predict", "--model", model, "--top-k", 3, photo, photo, "--json")
    assert r.exit_code == 0, r.stderr
    preds = json.loads(r.stdout)["results"]
    assert len(preds) == 2 and preds[0] == preds[1]
    top = preds[0]["top"]
    assert len(top) == 3 and all(t["label"] == imagenet_classes()[t["index"]] for t in top)
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    text = cli("predict", "--model", model, photo)
    assert text.exit_code == 0 and top[0]["label"] in text.stdout


def test_predict_headless_batch2(tmp_path, photo):
    r = cli("export", "--arch", "vit_small_patch14_dinov2", "--resolution", 112, "--batch", 2,
            "--out", tmp_path)
    assert r.exit_code == 0, r.stderr
    model = tmp_path / "vit_small_patch14_dinov2_112_b2.onnx"
    r = cli("predict", "--model", model, photo, photo, photo, "--json")
    assert r.exit_code == 0, r.stderr
    preds = json.loads(r.stdout)["results"]
    assert [p["feature_dim"] for p in preds] == [384] * 3


def test_predict_errors(tmp_path, photo):
    assert "model not found" in one_line_error(cli("predict", "--model", tmp_path / "x.onnx", photo))
    (tmp_path / "x.onnx").write_bytes(b"junk")
    assert "not a readable ONNX model" in one_line_error(cli("predict", "--model", tmp_path / "x.onnx", photo))


def test_console_script_and_root_cli():
    """The installed entry point and `python cli.py` reach the same app."""
    root = Path(__file__).parents[1]
    exe = Path(sys.executable).with_name("skipat-deploy")
    for cmd in ([str(exe), "models", "--json"], [sys.executable, str(root / "cli.py"), "models", "--json"]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        names = [m["name"] for m in json.loads(p.stdout)["results"]]
        assert "skipat_tiny_patch16" in names and "vit_small_patch14_dinov2" in names


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"skipat-deploy {version('skipat-deploy')}"


@pytest.mark.parametrize("command, names", [("devices", "name"), ("models", "name")])
def test_tables_read_at_80_columns(command, names, monkeypatch):
    """In an 80-column terminal every cell is whole: no word broken or cut, no line over 80."""
    monkeypatch.setenv("COLUMNS", "80")
    listed = json.loads(CliRunner().invoke(app, [command, "--json"]).stdout)["results"]
    out = CliRunner().invoke(app, [command]).stdout
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" not in out
    words = {w for line in out.splitlines() for w in line.split()}
    for row in listed:  # every name and SoC whole, as a sequence of whole words
        for value in (row[names], row.get("soc")):
            assert value is None or all(w in words for w in str(value).split()), value
    assert "--json shows" in out  # and where the rest is

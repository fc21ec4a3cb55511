"""Checkpoint reading: every layout, dtype conversion, architecture inference, hostile files."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from skipat_deploy.models.checkpoint import infer_arch, load_checkpoint, read_state_dict
from skipat_deploy.core.errors import ArchitectureError, CheckpointError, UnsafeCheckpointError

from .conftest import random_state_dict

NANO = "skipat_nano_patch16"


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(NANO, seed=5)


def _same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key", ["model", "state_dict_ema", "state_dict", "model_ema", None])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".t7", ".pth.tar", ".bin"])
def test_layouts(tmp_path, sd, key, suffix):
    obj = sd if key is None else {key: sd, "epoch": 7}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(obj, path)
    ckpt = load_checkpoint(path)
    assert ckpt.info.container_key == key
    assert ckpt.spec.name == NANO
    _same(ckpt.state_dict, sd)


def test_official_loader_order_prefers_model(tmp_path, sd):
    other = {k: v + 1 for k, v in sd.items()}
    torch.save({"state_dict": other, "model": sd, "state_dict_ema": other}, tmp_path / "c.pth")
    _same(load_checkpoint(tmp_path / "c.pth").state_dict, sd)


def test_module_prefix_stripped_and_safetensors(tmp_path, sd):
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, tmp_path / "c.safetensors")
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.info.format == "safetensors"
    _same(ckpt.state_dict, sd)


def test_timm_training_checkpoint_loads_with_weights_only(tmp_path, sd):
    """An argparse.Namespace, optimizer state and NumPy metrics: allowed explicitly."""
    params = [torch.nn.Parameter(v.clone()) for v in list(sd.values())[:3]]
    opt = torch.optim.AdamW(params)
    sum(p.sum() for p in params).backward()
    opt.step()
    args = argparse.Namespace(model="skipat_nano", lr=5e-4, input_size=(3, 224, 224), resume="")
    torch.save(
        {"epoch": 299, "arch": "skipat_nano", "state_dict": {f"module.{k}": v for k, v in sd.items()},
         "optimizer": opt.state_dict(), "args": args, "metric": np.float64(72.9), "version": 2,
         "state_dict_ema": sd},
        tmp_path / "last.pth.tar",
    )
    ckpt = load_checkpoint(tmp_path / "last.pth.tar")
    assert ckpt.info.container_key == "state_dict_ema"
    _same(ckpt.state_dict, sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_computed_in_float32(tmp_path, sd, dtype):
    torch.save({k: v.to(dtype) for k, v in sd.items()}, tmp_path / "h.pth")
    ckpt = load_checkpoint(tmp_path / "h.pth")
    assert ckpt.info.storage_dtype == str(dtype).removeprefix("torch.")
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values())
    _same(ckpt.state_dict, {k: v.to(dtype).float() for k, v in sd.items()})


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path, sd):
    marker = tmp_path / "PWNED"
    torch.save({"model": sd, "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="run code.*system.*--allow-code-execution"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "mangle,msg",
    [
        (lambda b: b[: len(b) // 2], "corrupt or truncated"),
        (lambda b: b[:100], "corrupt or truncated"),
        (lambda b: b"", "is empty"),
        (lambda b: b"hello world, not a checkpoint", "neither a torch.save file"),
    ],
)
def test_damaged_files(tmp_path, sd, mangle, msg):
    torch.save(sd, tmp_path / "ok.pth")
    (tmp_path / "bad.pth").write_bytes(mangle((tmp_path / "ok.pth").read_bytes()))
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(tmp_path / "bad.pth")


def test_truncated_safetensors(tmp_path, sd):
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_no_weights_inside(tmp_path):
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=1)}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        load_checkpoint(tmp_path / "c.pth")


def test_missing_and_unexpected_keys_are_listed(tmp_path, sd):
    broken = {k: v for k, v in sd.items() if not k.startswith("blocks.0.mlp.fc2")}
    broken["blocks.0.extra.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c.pth")
    msg = str(e.value)
    assert "2 missing: blocks.0.mlp.fc2.bias, blocks.0.mlp.fc2.weight" in msg
    assert "1 unexpected: blocks.0.extra.weight" in msg


def test_not_a_vit(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(ArchitectureError, match="not a ViT / SkipAt checkpoint"):
        load_checkpoint(tmp_path / "resnet.pth")


def test_inference_reads_everything_from_weights(tmp_path):
    sd = random_state_dict("vit_small_patch14_dinov2")
    sd["mask_token"] = torch.zeros(1, 384)  # DINOv2 training artefact, ignored like timm does
    torch.save(sd, tmp_path / "dino.pth")
    a = load_checkpoint(tmp_path / "dino.pth").arch
    assert (a.family, a.embed_dim, a.depth, a.num_heads, a.patch_size, a.grid) == (
        "vit", 384, 12, 6, 14, 37)
    assert a.layer_scale and a.num_classes == 0


def test_ten_class_head_and_head_dim_override(sd):
    sd10 = {**sd, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    assert infer_arch(sd10).num_classes == 10
    assert infer_arch(sd10, head_dim=32).num_heads == 2
    with pytest.raises(ArchitectureError, match="--head-dim"):
        infer_arch(sd10, head_dim=48)


def test_skip_indices_checked_against_phi_count(tmp_path, sd):
    torch.save(sd, tmp_path / "c.pth")
    assert load_checkpoint(tmp_path / "c.pth").arch.skip_indices == (3, 4, 5, 6, 7, 8)
    custom = load_checkpoint(tmp_path / "c.pth", skip_indices=(1, 2, 4, 5, 7, 8))
    assert custom.arch.skip_indices == (1, 2, 4, 5, 7, 8)
    with pytest.raises(ArchitectureError, match="6 Φ modules but --skip-indices"):
        load_checkpoint(tmp_path / "c.pth", skip_indices=(2, 3))
    two_phi = {k: v for k, v in sd.items() if not k.startswith(("param_3", "param_4", "param_5",
                                                                 "param_6"))}
    with pytest.raises(ArchitectureError, match="2 Φ modules but the default skip indices"):
        infer_arch(two_phi)
    assert infer_arch(two_phi, skip_indices=(1, 2)).num_phi == 2


def test_arch_override(tmp_path, golden):
    ckpt = load_checkpoint(golden["ckpt"]["vit"], arch="vit_micro_patch16")
    assert ckpt.spec.name == "vit_micro_patch16"
    with pytest.raises(CheckpointError, match="do not fit vit_tiny_patch16.*wrong shape"):
        load_checkpoint(golden["ckpt"]["vit"], arch="vit_tiny_patch16")
    with pytest.raises(CheckpointError, match="missing: param_1"):
        load_checkpoint(golden["ckpt"]["vit"], arch="skipat_micro_patch16")


def test_read_state_dict_records_source(golden):
    sd, info = read_state_dict(golden["ckpt"]["skipat"])
    assert info.container_key == "model" and info.storage_dtype == "float16"
    assert len(info.sha256) == 64

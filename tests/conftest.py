from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from skipat_deploy.models.config import ArchConfig
from skipat_deploy.models.registry import build_model, get_spec

from .hub_fake.fixture import fake_hub  # noqa: F401  (a loopback AI Hub for the real client)

if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker: n workers on n cores, not n²
    os.environ["OMP_NUM_THREADS"] = "1"  # and the commands the tests start
    torch.set_num_threads(1)

# The suite never reaches the developer's own AI Hub account (an `auto` that finds it configured
# would upload): tests that want AI Hub use the loopback fake, which points the client at itself.
os.environ["QAIHUB_CLIENT_INI"] = str(Path(__file__).parent / "no-such-dir" / "client.ini")
# Nor the developer's own phone: `auto` takes a phone over adb where a QAIRT SDK is set.
for _var in ("QAIRT_SDK_ROOT", "QNN_SDK_ROOT", "ADB"):
    os.environ.pop(_var, None)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_micro"


@pytest.fixture(scope="session")
def golden():
    return dict(
        dir=GOLDEN,
        inputs=dict(np.load(GOLDEN / "inputs.npz")),
        expected=dict(np.load(GOLDEN / "expected.npz")),
        ckpt={"skipat": GOLDEN / "skipat_micro.t7", "vit": GOLDEN / "vit_micro.pth"},
    )


def random_state_dict(arch: ArchConfig | str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Perturbed random weights (non-zero biases, norms away from 1): parity tests need every
    parameter to matter."""
    if isinstance(arch, str):
        arch = get_spec(arch).arch
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in build_model(arch).state_dict().items():
        noise = torch.randn(v.shape, generator=gen)
        if re.search(r"norm\d?\.weight$", k):
            out[k] = 1.0 + 0.1 * noise
        elif k.endswith("gamma"):
            out[k] = 0.5 + 0.1 * noise
        else:
            out[k] = 0.05 * noise
    return out


@pytest.fixture(scope="session")
def nano_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Bare-state-dict checkpoints of the nano test sizes."""
    d = tmp_path_factory.mktemp("nano")
    paths = {}
    for name in ("vit_nano_patch16", "skipat_nano_patch16"):
        paths[name] = d / f"{name}.pth"
        torch.save(random_state_dict(name, seed=1), paths[name])
    return paths


def default_signals() -> None:
    """``preexec_fn`` for a command run as a user's terminal runs it: a test run as a background
    job would pass SIGINT on ignored, and the command keeps an ignored signal ignored."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def onnx_files(folder: Path) -> list[Path]:
    """Every ONNX file under folder, hidden partial files included."""
    return sorted(p for p in Path(folder).rglob("*") if ".onnx" in p.name)


def trained_like_state_dict(arch: ArchConfig | str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with the statistics of trained ones, where random draws around 1 hide bugs:
    LayerNorm gains negative (every 5th channel) and zero (every 11th), one outlier channel in
    every norm and in the patch embedding (a trained ViT's class token reaches 15 in one
    channel), LayerScale spanning 1e-5 .. 1 with zero and negative entries, pruned MLP units
    (all-zero fc1 rows with a bias, all-zero fc2 columns), and a classifier head trained on a
    subset of the classes (most rows zero, bias -10)."""
    if isinstance(arch, str):
        arch = get_spec(arch).arch
    out = random_state_dict(arch, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    for k, v in out.items():
        if re.search(r"norm\d?\.weight$", k):
            v[::5] *= -1
            v[::11] = 0.0
            v[3] = 6.0
        elif k.endswith("gamma"):
            v.copy_(10 ** (-5 * torch.rand(v.shape, generator=gen)))
            v[::7] = 0.0
            v[1::9] *= -1
    out["patch_embed.proj.bias"][5] = 8.0
    for k in [k for k in out if k.endswith("mlp.fc1.weight")]:
        out[k][::6] = 0.0  # pruned hidden units: fc1 rows zero (their bias stays) ...
        out[k.replace("fc1", "fc2")][:, ::6] = 0.0  # ... and nothing reads them
    if "head.weight" in out:
        w, b = out["head.weight"], out["head.bias"]
        live = torch.zeros(len(b), dtype=torch.bool)
        live[torch.randperm(len(b), generator=gen)[: max(2, len(b) // 5)]] = True
        w[~live] = 0.0
        w[live] *= 10  # the live classes' logits spread as a trained head's do
        b[~live] = -10.0
    return out


# Every layout the loader accepts, at test size: ViT and SkipAt, with and without LayerScale,
# with a head and head-less.
LAYOUTS = {
    "vit": ArchConfig("vit", 64, 4, 1, num_classes=100),
    "vit_layerscale_headless": ArchConfig("vit", 64, 4, 1, num_classes=0, layer_scale=True),
    "skipat": ArchConfig("skipat", 64, 6, 1, num_classes=100, skip_indices=(2, 3, 4)),
    "skipat_layerscale": ArchConfig("skipat", 64, 6, 1, num_classes=100, skip_indices=(1, 2, 4),
                                    layer_scale=True),
    "skipat_layerscale_headless": ArchConfig("skipat", 64, 6, 1, num_classes=0,
                                             skip_indices=(2, 3), layer_scale=True),
}


@pytest.fixture(scope="session")
def trained_like_ckpts(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint of :func:`trained_like_state_dict` weights for each of :data:`LAYOUTS`,
    plus ``*_fp16`` copies stored in float16 as many released checkpoints are."""
    d = tmp_path_factory.mktemp("trained_like")
    paths = {}
    for name, arch in LAYOUTS.items():
        sd = trained_like_state_dict(arch, seed=2)
        paths[name] = d / f"{name}.pth"
        torch.save(sd, paths[name])
        paths[f"{name}_fp16"] = d / f"{name}_fp16.pth"
        torch.save({k: v.half() for k, v in sd.items()}, paths[f"{name}_fp16"])
    return paths

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from skipat_deploy.models.config import ArchConfig
from skipat_deploy.models.registry import build_model, get_spec

from .hub_fake.fixture import fake_hub  # noqa: F401  (a loopback AI Hub for the real client)

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


def onnx_files(folder: Path) -> list[Path]:
    """Every ONNX file under folder, hidden partial files included."""
    return sorted(p for p in Path(folder).rglob("*") if ".onnx" in p.name)

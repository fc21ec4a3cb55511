"""Checkpoint loading: read weights safely, infer the architecture, fit them to a model.

Reads ``torch.save`` files (.pth .pt .t7 .pth.tar .bin) with ``weights_only=True`` and
``.safetensors``. Weights may sit under ``model``, ``state_dict_ema``, ``state_dict``,
``model_ema`` or be the whole file (the official SkipAt loader's order, plus timm's EMA key).
timm / DeiT training checkpoints carry an ``argparse.Namespace`` and NumPy scalars: those, and
nothing else, are allowed through the unpickler. :func:`checkpoint_filter_fn` remaps keys and
resamples the position embedding the way timm does.

Pre-processing the checkpoint carries is read too (:func:`read_preprocess`): timm's
``pretrained_cfg`` in a torch file, a training checkpoint's ``args``, a safetensors
``__metadata__`` entry, and a HF-hub style ``config.json`` beside the file.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import ArchitectureError, CheckpointError, UnsafeCheckpointError
from ..core.files import sha256_file
from ..core.lazy import functional as F, torch
from .config import DEFAULT_SKIP_INDICES, SKIPAT, VIT, ArchConfig
from .registry import ModelSpec, build_model, get_spec, init_weights, match_spec
from ..core.options import option
from ..images.preprocess import FIELDS, GIVEN, INTERPOLATIONS, PreprocessOverrides, parse_number, parse_rgb, resolve

CONTAINER_KEYS = ("model", "state_dict_ema", "state_dict", "model_ema")
TORCH_SUFFIXES = (".pth", ".pt", ".t7", ".pth.tar", ".tar", ".bin", ".ckpt")
# Keys some checkpoints carry that the exported model has no use for (timm drops them too).
IGNORED_KEYS = ("mask_token",)
DEFAULT_HEAD_DIM = 64
DEFAULT_ARCH = "skipat_tiny_patch16"  # what runs without a checkpoint


@dataclass(frozen=True)
class LoadConfig:
    """What loads a checkpoint (:func:`skipat_deploy.api.load`): the file, the architecture
    facts the weights do not carry, and pre-processing that replaces the checkpoint's own
    (given > the checkpoint's > the spec's default, value by value)."""

    ckpt: Path | None = option(None, "Checkpoint (.pth .pt .t7 .pth.tar .bin .safetensors); none = freshly initialised --arch.")
    arch: str | None = option(None, "Registered architecture to use instead of the inferred one (`skipat-deploy models`).")
    skip_indices: tuple[int, ...] | None = option(None, "SkipAt blocks replaced by Φ, 0-based, e.g. 3,4,5,6,7,8.", parse="ints")
    head_dim: int = option(DEFAULT_HEAD_DIM, "Attention head dim (heads are not stored in weights).")
    allow_code_execution: bool = option(False, "Unpickle with arbitrary code execution (only for checkpoints you trust).", flag="--allow-code-execution")
    mean: tuple[float, float, float] | None = option(None, "Normalisation mean per channel, pixels in [0, 1] (timm's augreg ViTs: 0.5,0.5,0.5). Default: the checkpoint's pretrained_cfg / args / config.json, else the architecture's (a guess, with a notice).", metavar="R,G,B", parse=parse_rgb, show_default=False)
    std: tuple[float, float, float] | None = option(None, "Normalisation std per channel (default as --mean).", metavar="R,G,B", parse=parse_rgb, show_default=False)
    crop_pct: float | None = option(None, "Resize to size / F, then center-crop, in (0, 1] (default as --mean).", metavar="F", parse=parse_number, show_default=False)
    interpolation: str | None = option(None, f"Resize filter: {', '.join(INTERPOLATIONS[:-1])} or {INTERPOLATIONS[-1]} (default as --mean).", metavar="NAME", show_default=False, choices=INTERPOLATIONS)

    @property
    def preprocess(self) -> PreprocessOverrides:
        return PreprocessOverrides(*(getattr(self, n) for n in FIELDS))

    def with_preprocess(self, given: PreprocessOverrides | None) -> "LoadConfig":
        """These options with the set values of ``given`` (the API's ``preprocess=``)."""
        if not given:
            return self
        return replace(self, **{n: getattr(given, n) for n in FIELDS if getattr(given, n) is not None})

    def check(self) -> "LoadConfig":
        """Refuse given pre-processing that cannot be right, before any slow work."""
        self.preprocess.check()
        return self
# Where a torch file keeps the model's pretrained config (timm; ``default_cfg`` is the older
# name), lowest precedence first. A training checkpoint's ``args`` beat both, as in timm's
# resolve_data_config: they are what the run was trained with.
CFG_KEYS = ("default_cfg", "pretrained_cfg")
HF_CONFIG = "config.json"  # timm's save_for_hf / the HF hub: pretrained_cfg beside the weights


def _numpy_allowlist() -> list:
    """NumPy scalars and dtypes as timm stores metrics: data, not code. NumPy 1 pickles name
    ``numpy.core``, NumPy 2 ``numpy._core``: both are allowed."""
    scalar = np._core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        (np.dtype, "numpy.dtype"),
        *dtypes,
        *[(t, f"numpy.dtypes.{t.__name__}") for t in dtypes],
    ]


SAFE_GLOBALS = [argparse.Namespace, *_numpy_allowlist()]


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    sha256: str
    format: str  # "torch" or "safetensors"
    container_key: str | None  # where the weights were found; None = the whole file
    storage_dtype: str  # dtype the floating weights were stored in
    # Pre-processing found in (or beside) the file: (values, where), lowest precedence first.
    preprocess_found: tuple[tuple[PreprocessOverrides, str], ...] = ()


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Float32 weights and the spec of the model they belong to."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    info: CheckpointInfo | None  # None: freshly initialised weights

    @property
    def arch(self) -> ArchConfig:
        return self.spec.arch


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save pickle
        return "torch"
    if not head:
        raise CheckpointError(f"{path} is empty")
    raise CheckpointError(
        f"{path} is neither a torch.save file nor a .safetensors file; "
        f"supported: {' '.join(TORCH_SUFFIXES)} .safetensors"
    )


def _read_torch(path: Path, allow_code_execution: bool) -> object:
    if allow_code_execution:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"global ([\w.]+)", str(e))
        what = f" ({m.group(1)})" if m else ""
        if "weights_only" in str(e) or m:
            raise UnsafeCheckpointError(
                f"{path} would need to run code to unpickle{what}; refused. Re-save it as "
                "safetensors, or pass --allow-code-execution only if you trust its author"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is corrupt or truncated ({reason})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the header's ``__metadata__`` (strings)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path), device="cpu"), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None


def _hf_pretrained_cfg(cfg: dict) -> dict:
    """timm's HF config: the values under ``pretrained_cfg``, or (the older single-dict form)
    at its top level."""
    return cfg["pretrained_cfg"] if isinstance(cfg.get("pretrained_cfg"), dict) else cfg


def _found(candidates: list[tuple[object, str]]) -> list[tuple[PreprocessOverrides, str]]:
    """The candidate configs (dicts or argparse Namespaces) that set any pre-processing value."""
    out = []
    for cfg, where in candidates:
        if isinstance(cfg, argparse.Namespace):
            cfg = vars(cfg)
        if isinstance(cfg, dict) and (values := PreprocessOverrides.from_config(cfg)):
            out.append((values, where))
    return out


def read_preprocess(path: str | Path, obj: object = None, metadata: dict[str, str] | None = None
                    ) -> list[tuple[PreprocessOverrides, str]]:
    """The pre-processing a checkpoint carries, as (values, where) lowest precedence first:
    ``config.json`` beside it, then in a torch file (``obj``) its top level, ``default_cfg``,
    ``pretrained_cfg`` and a training run's ``args``, or in a safetensors file its
    ``__metadata__`` (values as JSON, at the top or as a config under one key)."""
    path = Path(path)
    candidates: list[tuple[object, str]] = []
    config = path.with_name(HF_CONFIG)
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{config} beside the checkpoint is not readable JSON "
                                  f"({str(e).splitlines()[0]}): fix or move it") from None
        if isinstance(cfg, dict):
            candidates.append((_hf_pretrained_cfg(cfg), HF_CONFIG))
    if isinstance(obj, dict):
        if not _is_state_dict(obj):
            candidates.append((obj, "top level"))
        candidates += [(obj[k], k) for k in CFG_KEYS if k in obj]
        candidates.append((obj.get("args"), "args"))
    if metadata:
        decoded = {}
        for key, text in metadata.items():
            try:
                decoded[key] = json.loads(text)
            except ValueError:
                decoded[key] = text  # a bare string such as bicubic
        candidates.append((decoded, "__metadata__"))
        candidates += [(_hf_pretrained_cfg(v), f"__metadata__[{k}]") for k, v in decoded.items()
                       if isinstance(v, dict)]
    return _found(candidates)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if isinstance(obj, dict):
        for key in CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), key
        if _is_state_dict(obj):
            return dict(obj), None
    raise CheckpointError(
        f"{path} holds no model weights: expected a state dict, bare or under one of "
        f"{', '.join(CONTAINER_KEYS)}"
    )


def read_state_dict(
    path: str | Path, allow_code_execution: bool = False
) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Weights as float32 tensors with ``module.`` stripped, and where they came from."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    fmt = _sniff(path)
    if fmt == "safetensors":
        (sd, metadata), key = _read_safetensors(path), None
        found = read_preprocess(path, metadata=metadata)
    else:
        obj = _read_torch(path, allow_code_execution)
        sd, key = extract_state_dict(obj, path)
        found = read_preprocess(path, obj)
    float_dtypes = {str(v.dtype).removeprefix("torch.") for v in sd.values() if v.is_floating_point()}
    sd = {
        k.removeprefix("module."): (v.float() if v.is_floating_point() else v)
        for k, v in sd.items()
    }
    info = CheckpointInfo(str(path), sha256_file(path), fmt, key, ",".join(sorted(float_dtypes)),
                          tuple(found))
    return sd, info


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ArchitectureError(
            f"checkpoint has no {key!r}: not a ViT / SkipAt checkpoint "
            "(pass --arch if its keys are named differently)"
        )
    return tuple(sd[key].shape)


def infer_arch(
    sd: dict[str, torch.Tensor],
    head_dim: int = DEFAULT_HEAD_DIM,
    skip_indices: tuple[int, ...] | None = None,
) -> ArchConfig:
    """Read the architecture off the weights' names and shapes.

    Heads are not visible in the weights: every released ViT / SkipAt uses head dim 64.
    Skip indices are not stored either: the default is the official (3, 4, 5, 6, 7, 8).
    """
    embed_dim, _, patch, _ = _shape(sd, "patch_embed.proj.weight")
    num_pos = _shape(sd, "pos_embed")[1] - 1
    grid = math.isqrt(num_pos)
    if grid * grid != num_pos:
        raise ArchitectureError(f"pos_embed holds {num_pos} patch positions: not a square grid")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise ArchitectureError("checkpoint has no transformer blocks (blocks.N.*)")
    depth = max(blocks) + 1
    if embed_dim % head_dim:
        raise ArchitectureError(
            f"embed dim {embed_dim} is not a multiple of head dim {head_dim}; pass --head-dim"
        )
    phis = {int(m.group(1)) for k in sd if (m := re.match(r"param_(\d+)\.", k))}
    num_phi = len(phis)
    if phis and phis != set(range(1, num_phi + 1)):
        raise ArchitectureError(f"Φ modules are not numbered param_1..param_{num_phi}: {sorted(phis)}")
    if num_phi:
        skips = tuple(skip_indices) if skip_indices is not None else DEFAULT_SKIP_INDICES
        if len(skips) != num_phi:
            src = "--skip-indices" if skip_indices is not None else "the default skip indices"
            raise ArchitectureError(
                f"the checkpoint has {num_phi} Φ modules but {src} {list(skips)} name "
                f"{len(skips)} blocks; pass --skip-indices with {num_phi} block indices"
            )
    elif skip_indices:
        raise ArchitectureError("--skip-indices given but the checkpoint is a plain ViT (no param_N)")
    else:
        skips = ()
    return ArchConfig(
        family=SKIPAT if num_phi else VIT,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        patch_size=patch,
        grid=grid,
        num_classes=_shape(sd, "head.weight")[0] if "head.weight" in sd else 0,
        mlp_hidden=_shape(sd, "blocks.0.mlp.fc1.weight")[0],
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        layer_scale="blocks.0.ls1.gamma" in sd,
        skip_indices=skips,
    )


def resample_abs_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1):
    """timm's ``resample_abs_pos_embed`` defaults: keep the class-token entry, resample the grid
    part bicubically with antialias on."""
    old = math.isqrt(pos_embed.shape[1] - num_prefix_tokens)
    if old == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def checkpoint_filter_fn(sd: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Fit checkpoint weights to ``model``: drop ignorable keys, resample ``pos_embed``."""
    out = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    if "pos_embed" in out:
        out["pos_embed"] = resample_abs_pos_embed(out["pos_embed"], model.grid)
    return out


def load_weights(model, sd: dict[str, torch.Tensor], spec_name: str):
    """Strict load; a mismatch lists every missing, unexpected and mis-shaped key."""
    sd = checkpoint_filter_fn(sd, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"weights do not fit {spec_name}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return model


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    skip_indices: tuple[int, ...] | None = None,
    head_dim: int = DEFAULT_HEAD_DIM,
    allow_code_execution: bool = False,
    preprocess: PreprocessOverrides | None = None,
) -> LoadedCheckpoint:
    """Read a checkpoint and work out its model.

    ``arch`` names a registered spec to use instead of the inferred architecture (the class
    count and stored grid still come from the weights); the weights are checked against it.
    The spec's pre-processing is, value by value, ``preprocess`` (given), else what the
    checkpoint carries, else the spec's default (marked as a guess).
    """
    if preprocess:
        preprocess.check()  # before reading a large file
    sd, info = read_state_dict(path, allow_code_execution)
    if arch is None:
        spec = match_spec(infer_arch(sd, head_dim, skip_indices))
    else:
        spec = get_spec(arch)
        a = spec.arch
        num_pos = sd["pos_embed"].shape[1] - 1 if "pos_embed" in sd else a.grid**2
        overrides = dict(
            num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
            grid=math.isqrt(num_pos),
        )
        spec = _with_arch(spec, a, overrides, skip_indices)
    spec = replace(spec, preprocess=resolve(spec.preprocess, info.preprocess_found, preprocess))
    model = build_model(spec.arch)
    load_weights(model, sd, spec.name)  # fail now, not at export time
    return LoadedCheckpoint(spec, sd, info)


def _with_arch(spec: ModelSpec, a: ArchConfig, overrides: dict, skip_indices) -> ModelSpec:
    a = replace(a, **overrides)
    if skip_indices is not None:
        if a.family != SKIPAT:
            raise ArchitectureError(f"--skip-indices given but {spec.name} is a plain ViT")
        a = a.with_skip_indices(tuple(skip_indices))
    return replace(spec, arch=a)


def fresh_checkpoint(arch: str, seed: int = 0) -> LoadedCheckpoint:
    """Freshly initialised (seeded) weights of a registered architecture: for latency work and
    demos; its outputs mean nothing."""
    spec = get_spec(arch)
    model = init_weights(build_model(spec.arch), seed)
    return LoadedCheckpoint(spec, model.state_dict(), None)


def load(cfg: LoadConfig) -> LoadedCheckpoint:
    """The load stage: ``cfg.ckpt``'s weights and model spec (:func:`load_checkpoint`), or
    freshly initialised ``cfg.arch`` (default SkipAt-T) with the given head dim, skip indices
    and pre-processing when there is no checkpoint."""
    given = cfg.check().preprocess
    if cfg.ckpt is not None:
        return load_checkpoint(cfg.ckpt, cfg.arch, cfg.skip_indices, cfg.head_dim,
                               cfg.allow_code_execution, given)
    loaded = fresh_checkpoint(cfg.arch or DEFAULT_ARCH)
    spec = loaded.spec
    if cfg.head_dim not in (spec.arch.head_dim, DEFAULT_HEAD_DIM):  # the default: the arch's own
        if spec.arch.embed_dim % cfg.head_dim:
            raise ArchitectureError(f"{spec.name}'s embed dim {spec.arch.embed_dim} is not a "
                                    f"multiple of --head-dim {cfg.head_dim}")
        spec = replace(spec, arch=replace(spec.arch, num_heads=spec.arch.embed_dim // cfg.head_dim))
    if cfg.skip_indices is not None:
        spec = replace(spec, arch=spec.arch.with_skip_indices(cfg.skip_indices))
    if given:
        spec = replace(spec, preprocess=given.apply_to(spec.preprocess, GIVEN))
    return replace(loaded, spec=spec)

"""App bundles: everything a mobile team needs to wire a model into an app, and proof that the
files are the ones that were validated.

:func:`bundle` builds, per resolution, one folder holding the float ONNX, the QDQ ONNX, the
``.aimet`` folder, the EPContext ONNX + QNN context binary for every device, ``labels.txt`` for
ImageNet heads, and ``manifest.json`` (schema: ``skipat_deploy/data/manifest.schema.json``).
:func:`verify` checks a bundle: the manifest against its schema, every file's size and sha256,
and a smoke inference of the CPU models.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .checkpoint import sha256_file
from .errors import UserError
from .export import read_metadata

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(UserError):
    """A bundle does not verify: names the file and what is wrong."""


def manifest_schema() -> dict:
    text = resources.files("skipat_deploy").joinpath("data/manifest.schema.json").read_text()
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# The I/O contract, read off the models themselves.

def _initializer(graph, name: str):
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    return None


def io_quantization(qdq_path: Path) -> dict[str, dict]:
    """Scale / zero point of the QuantizeLinear that consumes each graph input and of the
    DequantizeLinear that produces each graph output: what an app feeding or reading integer
    tensors needs."""
    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    found: dict[str, dict] = {}
    for node in graph.node:
        tensor = None
        if node.op_type == "QuantizeLinear" and node.input[0] in inputs:
            tensor = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in outputs:
            tensor = node.output[0]
        if tensor is None or tensor in found:
            continue
        scale = _initializer(graph, node.input[1])
        zero = _initializer(graph, node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            continue
        found[tensor] = {
            "scale": float(scale.reshape(())),
            "zero_point": 0 if zero is None else int(zero.reshape(())),
            "dtype": "int8" if zero is None else str(zero.dtype),
        }
    return found


def _tensors(path: Path, which: str) -> list[dict]:
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    values = graph.input if which == "input" else graph.output
    out = []
    for v in values:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        out.append({"name": v.name, "shape": [d.dim_value for d in t.shape.dim],
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
    return out


def io_contract(float_onnx: Path, qdq_onnx: Path) -> tuple[list[dict], list[dict]]:
    meta = read_metadata(float_onnx)
    quant = io_quantization(qdq_onnx)
    inputs = _tensors(float_onnx, "input")
    for t in inputs:
        t["layout"] = meta.get("input", {}).get("layout", "NCHW")
        pp = meta.get("preprocess", {})
        t["preprocess"] = {
            "color": "RGB, values scaled to [0, 1] before normalisation",
            "resize": f"shorter side to round({meta.get('resolution')} / crop_pct), {pp.get('interpolation')}",
            "crop": f"center {meta.get('resolution')} x {meta.get('resolution')}",
            "crop_pct": pp.get("crop_pct"),
            "interpolation": pp.get("interpolation"),
            "mean": pp.get("mean"),
            "std": pp.get("std"),
        }
        t["quantization"] = quant.get(t["name"])
    outputs = _tensors(float_onnx, "output")
    for t in outputs:
        t["meaning"] = ("class logits (softmax for probabilities; labels.txt)" if meta.get("num_classes")
                        else "features: the class token after the final LayerNorm")
        t["quantization"] = quant.get(t["name"])
    return inputs, outputs


# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleConfig:
    devices: tuple[str, ...] = ("Galaxy S22",)
    resolutions: tuple[int, ...] = (224,)
    precision: str = "w8a16"
    quant_backend: str = "aimet"
    num_calib: int = 64
    calib_dir: Path | None = None
    zip: bool = False


@dataclass
class BundleResult:
    folders: list[Path]
    manifests: list[Path]
    zips: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def tool_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"skipat_deploy": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "aimet-torch", "qai-hub"):
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    try:
        from .qnn import sdk_versions

        out["qnn_sdk"] = sdk_versions()["qnn_sdk"]
    except UserError:
        out["qnn_sdk"] = None
    return out


def _file_entry(folder: Path, path: Path, role: str, **extra) -> dict:
    return {"path": path.relative_to(folder).as_posix(), "role": role,
            "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            **{k: v for k, v in extra.items() if v is not None}}


def bundle(ckpt, out_dir: str | Path, cfg: BundleConfig = BundleConfig(),
           step: Callable[[str], None] = lambda msg: None) -> BundleResult:
    """``ckpt``: a LoadedCheckpoint. One folder per resolution in ``out_dir``; each folder is
    built in a temporary place and moved in only when complete."""
    from .compile import CompileConfig, compile_local
    from .devices import resolve_device
    from .export import artifact_name, check_resolution
    from .quantize import QuantizeConfig, quantize

    t0 = time.perf_counter()
    devices = [resolve_device(d) for d in cfg.devices]
    for r in cfg.resolutions:
        check_resolution(r, ckpt.arch.patch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BundleResult([], [])
    for res in cfg.resolutions:
        name = artifact_name(ckpt, res, 1).removesuffix(".onnx")
        final = out_dir / name
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".bundle-") as tmp_s:
            folder = Path(tmp_s) / name
            q = quantize(ckpt, folder, QuantizeConfig(
                resolution=res, precision=cfg.precision, backend=cfg.quant_backend,
                device=devices[0].name, calib_dir=cfg.calib_dir, num_calib=cfg.num_calib), step)
            result.notices.extend(n for n in q.notices if n not in result.notices)
            files = [_file_entry(folder, q.float_onnx, "float_onnx"),
                     _file_entry(folder, q.qdq_onnx, "qdq_onnx", precision=cfg.precision)]
            if q.aimet_dir is not None:
                for f in sorted(q.aimet_dir.iterdir()):
                    role = "aimet_encodings" if f.suffix == ".encodings" else "aimet_onnx"
                    files.append(_file_entry(folder, f, role, precision=cfg.precision))
            measurements = [
                _measure("sqnr_vs_float", q.quality.sqnr_db, "dB", "cpu (onnxruntime, QDQ vs float PyTorch)", q.qdq_onnx),
                _measure("cosine_vs_float_mean", q.quality.cosine_mean, "", "cpu (onnxruntime, QDQ vs float PyTorch)", q.qdq_onnx),
            ]
            if q.quality.top1_agreement is not None:
                measurements.append(_measure("top1_agreement_vs_float", q.quality.top1_agreement, "",
                                             "cpu (onnxruntime, QDQ vs float PyTorch)", q.qdq_onnx))
            for dev in devices:
                step(f"compiling for {dev.name} ({dev.soc})")
                c = compile_local(q.qdq_onnx, folder, CompileConfig(device=dev.name), step)
                where = dict(device=dev.name, soc=dev.soc, hexagon=dev.hexagon)
                files.append(_file_entry(folder, c.artifacts["context_onnx"], "context_onnx", **where))
                files.append(_file_entry(folder, c.artifacts["context_binary"], "context_binary", **where))
                c.record.unlink()  # the manifest carries what the record says
                measurements.append(_measure("npu_vs_cpu_sqnr", c.check.sqnr_db, "dB", c.check.runs_on,
                                             c.artifacts["context_binary"]))
            for extra in (q.report_json, q.layers_csv):
                extra.unlink()
            if ckpt.arch.num_classes == 1000:
                from .predict import imagenet_classes

                labels = folder / "labels.txt"
                labels.write_text("\n".join(imagenet_classes()) + "\n")
                files.append(_file_entry(folder, labels, "labels"))
            inputs, outputs = io_contract(q.float_onnx, q.qdq_onnx)
            meta = read_metadata(q.float_onnx)
            manifest = {
                "schema": "skipat-deploy/manifest",
                "schema_version": SCHEMA_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": {
                    "name": meta["model_name"], "family": meta["family"],
                    "embed_dim": meta["embed_dim"], "depth": meta["depth"],
                    "num_heads": meta["num_heads"], "patch_size": meta["patch_size"],
                    "skip_indices": meta["skip_indices"], "resolution": res, "grid": meta["grid"],
                    "num_tokens": meta["num_tokens"], "num_classes": meta["num_classes"],
                    "source": meta["source"],
                },
                "inputs": inputs,
                "outputs": outputs,
                "files": files,
                "tools": tool_versions(),
                "measurements": measurements,
            }
            _validate(manifest, folder / MANIFEST)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            shutil.move(str(folder), final)
        result.folders.append(final)
        result.manifests.append(final / MANIFEST)
        if cfg.zip:
            step(f"zipping {final.name}")
            archive = shutil.make_archive(str(final), "zip", root_dir=out_dir, base_dir=final.name)
            result.zips.append(Path(archive))
    result.seconds = time.perf_counter() - t0
    return result


def _measure(name: str, value: float, unit: str, source: str, subject: Path) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "source": source,
            "subject": Path(subject).name}


def _validate(manifest: dict, where: Path) -> None:
    import jsonschema

    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise BundleError(f"{where}: does not follow the manifest schema at {path}: {e.message}") from None


# --------------------------------------------------------------------------------------------

@dataclass
class VerifyResult:
    folder: Path
    files_checked: int
    smoke: dict[str, list[int]]  # CPU model -> output shape


def verify(folder: str | Path) -> VerifyResult:
    """Every check of a bundle; the first failure is one line naming the file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST} (is this a bundle folder?)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    _validate(manifest, path)
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {manifest['schema_version']} is newer than this "
                          f"tool understands ({SCHEMA_VERSION}); upgrade skipat-deploy")
    for entry in manifest["files"]:
        f = folder / entry["path"]
        if not f.is_file():
            raise BundleError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != entry["size_bytes"]:
            raise BundleError(f"{f}: size {size} bytes, the manifest says {entry['size_bytes']}")
        digest = sha256_file(f)
        if digest != entry["sha256"]:
            raise BundleError(f"{f}: sha256 {digest[:16]}… does not match the manifest's "
                              f"{entry['sha256'][:16]}…; the file changed after bundling")
    smoke = {}
    for entry in manifest["files"]:
        if entry["role"] in ("float_onnx", "qdq_onnx"):
            smoke[entry["path"]] = _smoke(folder / entry["path"], manifest)
    return VerifyResult(folder, len(manifest["files"]), smoke)


def _smoke(path: Path, manifest: dict) -> list[int]:
    from .validate import cpu_session

    try:
        sess = cpu_session(str(path))
        feeds = {t["name"]: np.random.default_rng(0).standard_normal(t["shape"]).astype(np.float32)
                 for t in manifest["inputs"]}
        (out,) = sess.run([manifest["outputs"][0]["name"]], feeds)
    except Exception as e:  # noqa: BLE001 - any failure to run is the finding
        raise BundleError(f"{path}: does not run on ONNX Runtime CPU ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    want = manifest["outputs"][0]["shape"]
    if list(out.shape) != want or not np.isfinite(out).all():
        raise BundleError(f"{path}: smoke inference gave shape {list(out.shape)} "
                          f"(manifest: {want}) or non-finite values")
    return list(out.shape)

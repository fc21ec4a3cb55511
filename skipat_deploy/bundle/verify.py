"""Check an app bundle, a folder or the ``.zip`` that ``bundle --zip`` writes. In this order: every
listed path stays inside the folder (not absolute, no ``..``, no symlink leading out), the manifest
follows its schema, the folder holds nothing it does not list, every file's size and sha256, every
ONNX file's external data and EPContext binary are in the folder (a context model's the binary
listed beside it), then a smoke inference of the CPU models. The path checks come first, so
nothing outside the folder is ever hashed, parsed or run. The first failure is one line naming
the entry."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np

from ..export import cpu_session
from ..core.files import sha256_file
from .manifest import MANIFEST, SCHEMA_VERSION, BundleError, validate_manifest

SMOKE_ROLES = ("float_onnx", "qdq_onnx", "cpu_int8_onnx")
ONNX_ROLES = (*SMOKE_ROLES, "aimet_onnx", "context_onnx")
PAIR_KEYS = ("device", "soc", "hexagon", "qdq_model")  # a context model and its binary share these


@dataclass
class VerifyResult:
    folder: Path  # the bundle folder, or the zip it came in
    files_checked: int
    smoke: dict[str, list[int]]  # CPU model -> output shape
    runtimes: dict[str, str] = field(default_factory=dict)  # context binary -> runtime it needs


def verify(target: str | Path) -> VerifyResult:
    """Every check of a bundle folder, or of the ``.zip`` ``bundle --zip`` wrote (its entries
    checked, then extracted into a temporary folder only); the first failure is one line
    naming the entry."""
    target = Path(target)
    if target.is_file() and (target.suffix == ".zip" or zipfile.is_zipfile(target)):
        return _verify_zip(target)
    return _verify_folder(target, str(target))


def bad_name(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative, ``/``-separated path inside a folder; None if it is."""
    if not rel:
        return "is empty"
    if any(ord(c) < 32 for c in rel):
        return "has control characters"
    if "\\" in rel:  # a Windows separator: `..\x` or `C:\x` on the app's side
        return "has a backslash (paths are / separated)"
    if rel.startswith("/") or PureWindowsPath(rel).drive:
        return "is absolute"
    parts = rel.split("/")
    if ".." in parts:
        return "goes up out of the folder (..)"
    if "" in parts or "." in parts:
        return "has an empty or '.' segment"
    return None


def _verify_folder(folder: Path, label: str) -> VerifyResult:
    """Verify ``folder``; messages name entries as ``label/<path>``."""
    def shown(rel: str) -> str:
        return f"{label}/{rel}" if rel.isprintable() else f"{label}/{rel!r}"

    manifest_path = folder / MANIFEST
    if manifest_path.is_symlink():  # reading it would read whatever it points at
        raise BundleError(f"{shown(MANIFEST)}: a symlink; a bundle's manifest is a file in it")
    if not manifest_path.is_file():
        raise BundleError(f"{label}: no {MANIFEST} (is this a bundle folder?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as e:
        raise BundleError(f"{shown(MANIFEST)}: not valid JSON ({e})") from None
    root = folder.resolve()
    # Before the schema, so a hostile path gets a plain message; the schema's pattern says the
    # same for anyone else reading manifests, but it cannot see symlinks.
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(entries, list):
        _check_paths(root, [e.get("path") for e in entries if isinstance(e, dict)], shown)
    validate_manifest(manifest, Path(shown(MANIFEST)))
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(f"{shown(MANIFEST)}: schema_version {manifest['schema_version']} is newer "
                          f"than this tool understands ({SCHEMA_VERSION}); upgrade skipat-deploy")
    files = manifest["files"]
    _check_unlisted(folder, {e["path"] for e in files}, shown)
    for entry in files:
        f = folder / entry["path"]
        if not f.is_file():
            raise BundleError(f"{shown(entry['path'])}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != entry["size_bytes"]:
            raise BundleError(f"{shown(entry['path'])}: size {size} bytes, the manifest says "
                              f"{entry['size_bytes']}")
    for entry in files:
        digest = sha256_file(folder / entry["path"])
        if digest != entry["sha256"]:
            raise BundleError(f"{shown(entry['path'])}: sha256 {digest[:16]}… does not match the "
                              f"manifest's {entry['sha256'][:16]}…; the file changed after bundling")
    for entry in files:  # what ONNX Runtime would open besides each model: before it runs one
        if entry["role"] in ONNX_ROLES or entry["path"].endswith(".onnx"):
            _check_references(root, entry, files, shown)
    smoke = {e["path"]: _smoke(folder / e["path"], shown(e["path"]), manifest)
             for e in files if e["role"] in SMOKE_ROLES}
    runtimes = {e["path"]: e.get("min_runtime") or "unknown (bundled before skipat-deploy recorded it)"
                for e in files if e["role"] == "context_binary"}
    return VerifyResult(folder, len(files), smoke, runtimes)


def _check_paths(root: Path, paths: list, shown) -> None:
    """Every listed path is relative, has no ``..``, is listed once, and resolves (symlinks
    followed, parent folders too) inside ``root``."""
    seen = set()
    for rel in paths:
        if not isinstance(rel, str):
            continue  # the schema names what is wrong with it
        reason = bad_name(rel)
        if reason:
            raise BundleError(f"{shown(MANIFEST)}: file {rel!r} {reason}; a bundle's files stay "
                              "inside its folder")
        if rel in seen:
            raise BundleError(f"{shown(MANIFEST)}: file {rel!r} is listed twice")
        seen.add(rel)
        real = (root / rel).resolve()
        if not real.is_relative_to(root):
            raise BundleError(f"{shown(rel)}: resolves to {real}, outside the bundle folder "
                              "(a symlink leading out)")


def _check_unlisted(folder: Path, listed: set[str], shown) -> None:
    """Nothing in the folder but the manifest and what it lists: no extra file, symlink or
    folder of files."""
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinked folders are not descended
        dirnames.sort()
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]
        for name in sorted(filenames + links):
            rel = (here / name).relative_to(folder).as_posix()
            if rel != MANIFEST and rel not in listed:
                raise BundleError(f"{shown(rel)}: not listed in {MANIFEST}; a bundle holds only "
                                  "the files its manifest describes")


def _check_references(root: Path, entry: dict, files: list[dict], shown) -> None:
    """An ONNX file's external data and EPContext binaries: named plainly, inside the folder,
    present; a context model's binary is the one the manifest lists beside it. Reads the
    protobuf only, never the data it points at."""
    import onnx

    rel = entry["path"]
    try:
        model = onnx.load(str(root / rel), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the finding
        raise BundleError(f"{shown(rel)}: not a readable ONNX model ({type(e).__name__})") from None
    base = posixpath.dirname(rel)
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = {kv.key: kv.value for kv in tensor.external_data}.get("location", "")
        _inside(root, base, loc, f"{shown(rel)}: external data of {tensor.name!r} at {loc!r}")
    beside = sorted(e["path"] for e in files if e["role"] == "context_binary"
                    and posixpath.dirname(e["path"]) == base
                    and all(e.get(k) == entry.get(k) for k in PAIR_KEYS))
    contexts = [n for n in _nodes(model) if n.op_type == "EPContext"]
    if entry["role"] == "context_onnx" and not contexts:
        raise BundleError(f"{shown(rel)}: a context model without an EPContext node")
    for node in contexts:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("embed_mode", 1) != 0:
            continue  # the binary is inside the model
        name = attrs.get("ep_cache_context", b"").decode(errors="replace")
        what = f"{shown(rel)}: EPContext node {node.name!r} loads {name!r}"
        target = _inside(root, base, name, what)
        if entry["role"] == "context_onnx" and target not in beside:
            raise BundleError(f"{what}, not the context binary the manifest lists beside it "
                              f"({', '.join(beside) or 'none listed'})")


def _inside(root: Path, base: str, ref: str, what: str) -> str:
    """``ref`` (relative to the folder ``base`` of the file naming it; ``what`` names it in
    messages) as a bundle path: refused if absolute, going up, leading out through a symlink,
    or missing."""
    reason = bad_name(ref)
    if reason:
        raise BundleError(f"{what}, which {reason}; it must be a file in the bundle folder")
    rel = posixpath.join(base, ref)
    real = (root / rel).resolve()
    if not real.is_relative_to(root):
        raise BundleError(f"{what}, which resolves to {real}, outside the bundle folder")
    if not real.is_file():
        raise BundleError(f"{what}, which is missing")
    return rel


def _nodes(model):
    """Every node: the graph's, its subgraphs' (If / Loop / Scan bodies) and its functions'."""
    def walk(nodes):
        for node in nodes:
            yield node
            for a in node.attribute:
                for g in [a.g] if a.HasField("g") else a.graphs:
                    yield from walk(g.node)
    yield from walk(model.graph.node)
    for fn in model.functions:
        yield from walk(fn.node)


def _tensors(model):
    """Every tensor that can hold external data: initializers (sparse ones too) of the graph and
    its subgraphs, and tensor attributes of every node."""
    def graph_tensors(g):
        yield from g.initializer
        for s in g.sparse_initializer:
            yield from (s.values, s.indices)
    yield from graph_tensors(model.graph)
    for node in _nodes(model):
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for s in [a.sparse_tensor] if a.HasField("sparse_tensor") else a.sparse_tensors:
                yield from (s.values, s.indices)
            for g in [a.g] if a.HasField("g") else a.graphs:
                yield from graph_tensors(g)


def _verify_zip(path: Path) -> VerifyResult:
    """Check every entry's name and kind before extracting anything, extract into a temporary
    folder only, verify the one folder it holds; messages name entries as ``<zip>:<path>``."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{path}: not a readable zip ({e})") from None
    with zf, tempfile.TemporaryDirectory(prefix="skipat-verify-") as tmp:
        top = _check_entries(path, zf.infolist())
        if sum(i.file_size for i in zf.infolist()) > shutil.disk_usage(tmp).free:
            raise BundleError(f"{path}: unpacks to more than the free space in {tmp}")
        zf.extractall(tmp)
        result = _verify_folder(Path(tmp) / top, f"{path}:{top}")
    result.folder = path
    return result


def _check_entries(path: Path, infos: list[zipfile.ZipInfo]) -> str:
    """The zip's one top-level folder, once every entry is a plain relative name, listed once,
    a file or a folder (no symlink, device or fifo)."""
    seen, tops, files_at_top = set(), set(), False
    for info in infos:
        name = info.filename
        rel = name[:-1] if info.is_dir() else name
        reason = bad_name(rel)
        if reason:
            raise BundleError(f"{path}: entry {name!r} {reason}; nothing was extracted")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise BundleError(f"{path}: entry {name!r} is a symlink; nothing was extracted")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BundleError(f"{path}: entry {name!r} is not a file or a folder; nothing was "
                              "extracted")
        if rel in seen:
            raise BundleError(f"{path}: entry {name!r} appears twice; nothing was extracted")
        seen.add(rel)
        tops.add(rel.split("/")[0])
        files_at_top |= "/" not in rel and not info.is_dir()
    if len(tops) != 1 or files_at_top:
        raise BundleError(f"{path}: a bundle zip holds one folder; this one holds "
                          f"{', '.join(repr(t) for t in sorted(tops)) or 'nothing'}")
    return tops.pop()


def _smoke(path: Path, shown: str, manifest: dict) -> list[int]:
    try:
        sess = cpu_session(str(path))
        feeds = {t["name"]: np.random.default_rng(0).standard_normal(t["shape"]).astype(np.float32)
                 for t in manifest["inputs"]}
        (out,) = sess.run([manifest["outputs"][0]["name"]], feeds)
    except Exception as e:  # noqa: BLE001 - any failure to run is the finding
        raise BundleError(f"{shown}: does not run on ONNX Runtime CPU ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    want = manifest["outputs"][0]["shape"]
    if list(out.shape) != want or not np.isfinite(out).all():
        raise BundleError(f"{shown}: smoke inference gave shape {list(out.shape)} "
                          f"(manifest: {want}) or non-finite values")
    return list(out.shape)

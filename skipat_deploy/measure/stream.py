"""Streamed scoring: images decoded and pre-processed on all cores while the models run, in
bounded memory whatever the dataset's size, each model's logits kept on disk group by group so
that an interrupted evaluation continues where it stopped.

A model to score is a :class:`Runner` (it exists, it knows its images and how to run a batch).
The stream decodes each image once for all the runners that need it, in dataset order, a few
chunks ahead of the models, on a thread pool (Pillow releases the GIL while it decodes and
resizes). What is held at a time: the chunks in flight, one group of 8-bit crops per runner
and one group of its logits; everything else is a few numbers per image. Scores are computed
afterwards from the group files, streamed again.

Resume: a runner's groups live in ``<cache>/<key>/``, the key a hash of the target, the model's
identity (its file's sha256), the resolution, the pre-processing and its image list. A group
file is written atomically once its logits exist and is checked against the images it should
hold when read, so a file cut short by Ctrl-C is recomputed, never taken for a result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..images.preprocess import Preprocess, open_rgb, resize_and_crop

CHUNK = 16  # images one decode task reads
GROUP = 64  # images per run call and per cache file (a runner may choose another size)
MAX_WORKERS = 8  # decode threads beyond this only add memory: the models are the bottleneck

Step = Callable[[str], None]
Item = tuple[Path, int]  # (image file, class index)


@dataclass
class Runner:
    """A model that exists, ready to score images."""

    name: str  # its key among the runners (the target's name)
    run: Callable[[np.ndarray], np.ndarray]  # (n, 3, H, W) float32 -> (n, classes) logits
    identity: str  # what its results depend on besides the images: the model file's sha256
    model: Path | None = None  # the artifact that runs (None: the PyTorch model)
    indices: np.ndarray | None = None  # the images it scores, ascending; None: all
    group: int = GROUP  # images per run call and per cache file
    reference: str | None = None  # the runner its logits are compared with
    note: str | None = None


@dataclass
class Tally:
    """What scoring needs of one runner, a few numbers per image."""

    indices: np.ndarray  # the images scored (readable ones), ascending
    top1_hit: np.ndarray  # bool per image
    top5_hit: np.ndarray
    seconds: float  # in the model's run calls, summed over groups (cached ones as they ran)
    ref_top1_hit: np.ndarray | None = None  # the reference's, on the same images
    agreement: float | None = None  # top-1 agreement with the reference
    sqnr_db: float | None = None  # logits vs the reference's, pooled over all values


@dataclass
class StreamResult:
    tallies: dict[str, Tally]
    unreadable: list[tuple[str, str]]  # (path, why), in dataset order
    resumed: dict[str, int] = field(default_factory=dict)  # runner -> images found scored
    decoded: int = 0  # images decoded in this run
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Batches.

def normalise(crops: np.ndarray, pp: Preprocess) -> np.ndarray:
    """(n, H, W, 3) uint8 crops -> (n, 3, H, W) float32, as timm's eval transform normalises."""
    x = crops.astype(np.float32) / 255.0
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def in_batches(run_batch: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """``run_batch`` (exactly ``batch`` samples: exported models have a static batch) applied to
    any number of samples, the last batch padded by repeating its final sample."""

    def run(x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
            out.append(np.asarray(run_batch(np.ascontiguousarray(chunk)))[:n])
        return np.concatenate(out)

    return run


# --------------------------------------------------------------------------------------------
# The group files.

class GroupFiles:
    """One runner's logits, group by group, in ``folder``."""

    def __init__(self, folder: Path, groups: list[np.ndarray]):
        self.folder, self.groups = folder, groups

    def path(self, k: int) -> Path:
        return self.folder / f"{k:06d}.npz"

    def load(self, k: int) -> dict | None:
        """Group ``k`` as written, or None when absent or not the images it should hold."""
        try:
            with np.load(self.path(k), allow_pickle=False) as z:
                got = {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or cut short
            return None
        bad = set(got.get("bad_idx", np.zeros(0, np.int64)).tolist())
        if sorted(bad | set(got["idx"].tolist())) != self.groups[k].tolist():
            return None
        return got

    def save(self, k: int, idx: np.ndarray, logits: np.ndarray, seconds: float,
             bad: list[tuple[int, str, str]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{k:06d}.partial-{os.getpid()}.npz"
        try:
            np.savez(tmp, idx=np.asarray(idx, np.int64), logits=np.asarray(logits, np.float32),
                     seconds=np.float64(seconds),
                     bad_idx=np.asarray([b[0] for b in bad], np.int64),
                     bad_path=np.asarray([b[1] for b in bad], dtype=str),
                     bad_why=np.asarray([b[2] for b in bad], dtype=str))
            os.replace(tmp, self.path(k))
        finally:
            tmp.unlink(missing_ok=True)


def cache_key(runner: Runner, items: Sequence[Item], root: Path | None, size: int,
              pp: Preprocess) -> str:
    """The runner's cache folder name: its target, model, input and image list."""
    idx = range(len(items)) if runner.indices is None else runner.indices
    h = hashlib.sha256(json.dumps(dict(target=runner.name, identity=runner.identity, size=size,
                                       preprocess=pp.to_dict(), group=runner.group)).encode())
    for i in idx:
        path, label = items[i]
        h.update(f"\0{relative(path, root)}\t{label}".encode())
    return f"{runner.name}-{h.hexdigest()[:24]}"


def relative(path: Path, root: Path | None) -> str:
    try:
        return Path(path).relative_to(root).as_posix() if root else str(path)
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# The stream.

def _decode(items: Sequence[Item], idx: list[int], size: int, pp: Preprocess):
    out = []
    for i in idx:
        try:
            out.append((i, np.asarray(resize_and_crop(open_rgb(items[i][0]), size, pp), np.uint8), None))
        except UserError as e:
            out.append((i, None, str(e)))
    return out


def decoded(items: Sequence[Item], needed: np.ndarray, size: int, pp: Preprocess,
            workers: int | None = None) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """The images at ``needed`` (ascending), decoded and cropped in chunks, in order, a bounded
    number of chunks ahead of the consumer: ``(index, crop or None, why unreadable)``."""
    workers = workers or min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    chunks = [needed[s : s + CHUNK].tolist() for s in range(0, len(needed), CHUNK)]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    pending: list[Future] = []
    try:
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < workers + 2:
                pending.append(pool.submit(_decode, items, chunks[next_chunk], size, pp))
                next_chunk += 1
            yield pending.pop(0).result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _groups(runner: Runner, n: int) -> list[np.ndarray]:
    idx = np.arange(n) if runner.indices is None else np.asarray(runner.indices, np.int64)
    return [idx[s : s + runner.group] for s in range(0, len(idx), runner.group)]


def run_stream(items: Sequence[Item], root: Path | None, size: int, pp: Preprocess,
               runners: Sequence[Runner], cache: Path, step: Step = lambda m: None) -> StreamResult:
    """Score every runner on its images of ``items``: decode each image needed once, run each
    runner group by group into ``cache``, then tally. Groups already in ``cache`` (an earlier,
    interrupted run with the same models and images) are not run again."""
    t0 = time.perf_counter()
    n = len(items)
    files = {r.name: GroupFiles(cache / cache_key(r, items, root, size, pp), _groups(r, n)) for r in runners}
    todo: dict[str, list[int]] = {}  # runner -> groups still to run
    resumed: dict[str, int] = {}
    for r in runners:
        gf = files[r.name]
        todo[r.name] = [k for k in range(len(gf.groups)) if gf.load(k) is None]
        done = sum(len(gf.groups[k]) for k in range(len(gf.groups)) if k not in set(todo[r.name]))
        if done:
            resumed[r.name] = done
    # Which group of which runner each image still feeds.
    wanted = {r.name: np.full(n, -1, np.int64) for r in runners}
    for r in runners:
        for k in todo[r.name]:
            wanted[r.name][files[r.name].groups[k]] = k
    needed = np.flatnonzero(np.any(np.stack([w >= 0 for w in wanted.values()]), 0)) if runners else np.zeros(0, int)
    if resumed:
        step("resuming: " + ", ".join(f"{name} has {k} images scored" for name, k in resumed.items()))

    buffers: dict[str, dict[int, np.ndarray | None]] = {r.name: {} for r in runners}
    bad: dict[int, tuple[str, str]] = {}
    by_name = {r.name: r for r in runners}
    count, t_stream = 0, time.perf_counter()
    for chunk in decoded(items, needed, size, pp):
        for i, crop, why in chunk:
            if why is not None:
                bad[i] = (str(items[i][0]), why)
            for name, w in wanted.items():
                if w[i] >= 0:
                    buffers[name][i] = crop
        for name, buf in buffers.items():
            gf, queue = files[name], todo[name]
            while queue and all(int(j) in buf for j in gf.groups[queue[0]]):
                _run_group(by_name[name], gf, queue.pop(0), buf, bad, pp)
        count += len(chunk)
        rate = count / max(time.perf_counter() - t_stream, 1e-9)
        step(f"scoring: {count}/{len(needed)} images, {rate:.1f} images/s, about "
             f"{_duration((len(needed) - count) / rate)} left")
    for name, queue in todo.items():  # only images the stream had nothing to add to remain
        while queue:
            _run_group(by_name[name], files[name], queue.pop(0), buffers[name], bad, pp)

    tallies, unreadable = {}, {}
    for r in runners:
        tallies[r.name], bad_r = _tally(files[r.name], items, files.get(r.reference or ""))
        unreadable.update(bad_r)
    return StreamResult(tallies, [unreadable[i] for i in sorted(unreadable)], resumed,
                        len(needed), time.perf_counter() - t0)


def _run_group(runner: Runner, gf: GroupFiles, k: int, buf: dict, bad: dict, pp: Preprocess) -> None:
    idx = [int(j) for j in gf.groups[k]]
    ok = [j for j in idx if buf.get(j) is not None]
    t = time.perf_counter()
    logits = runner.run(normalise(np.stack([buf[j] for j in ok]), pp)) if ok else np.zeros((0, 0), np.float32)
    seconds = time.perf_counter() - t
    if len(logits) != len(ok):
        raise RuntimeError(f"{runner.name} returned {len(logits)} outputs for {len(ok)} images")
    gf.save(k, np.asarray(ok, np.int64), logits, seconds, [(j, *bad[j]) for j in idx if j in bad])
    for j in idx:
        buf.pop(j, None)


def _tally(gf: GroupFiles, items: Sequence[Item], ref: GroupFiles | None) -> tuple[Tally, dict]:
    """Per-image hits of one runner and, against ``ref``, agreement and pooled SQNR, reading the
    group files in order (the reference's alongside, a group or two at a time)."""
    labels_all = np.fromiter((c for _, c in items), np.int64, len(items))
    idx_parts, hit1, hit5, ref_hit1 = [], [], [], []
    seconds, agree, signal, noise = 0.0, 0, 0.0, 0.0
    bad: dict[int, tuple[str, str]] = {}
    ref_rows = _rows(ref) if ref is not None else None
    for k in range(len(gf.groups)):
        g = gf.load(k)
        if g is None:
            raise RuntimeError(f"scores of group {k} are missing from {gf.folder}")
        seconds += float(g["seconds"])
        bad.update({int(i): (str(p), str(w)) for i, p, w in zip(g["bad_idx"], g["bad_path"], g["bad_why"])})
        idx, y = g["idx"], g["logits"]
        if not len(idx):
            continue
        labels = labels_all[idx]
        idx_parts.append(idx)
        hit1.append(_topk(y, labels, 1))
        hit5.append(_topk(y, labels, 5))
        if ref_rows is not None:
            r = np.stack([ref_rows.row(int(i)) for i in idx])
            ref_hit1.append(_topk(r, labels, 1))
            agree += int(np.sum(r.argmax(1) == y.argmax(1)))
            r64 = r.astype(np.float64)
            signal += float(np.sum(r64**2))
            noise += float(np.sum((r64 - y) ** 2))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
    t = Tally(cat(idx_parts, np.int64), cat(hit1, bool), cat(hit5, bool), seconds)
    if ref_rows is not None and len(t.indices):
        t.ref_top1_hit = cat(ref_hit1, bool)
        t.agreement = agree / len(t.indices)
        t.sqnr_db = float("inf") if noise == 0 else float(10 * np.log10(signal / noise))
    return t, bad


class _rows:
    """Rows of a runner's logits by image index, read forward through its group files."""

    def __init__(self, gf: GroupFiles):
        self.gf, self.k, self.held = gf, 0, {}

    def row(self, i: int) -> np.ndarray:
        while i not in self.held:
            if self.k >= len(self.gf.groups):
                raise RuntimeError(f"the reference did not score image {i}")
            g = self.gf.load(self.k)
            self.k += 1
            if g is None:
                raise RuntimeError(f"reference scores missing from {self.gf.folder}")
            self.held = {j: v for j, v in self.held.items() if j >= i}  # earlier rows: passed
            self.held.update(zip(g["idx"].tolist(), g["logits"]))
        return self.held[i]


def _topk(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clear(cache: Path, runners: Sequence[Runner], items: Sequence[Item], root: Path | None,
          size: int, pp: Preprocess) -> None:
    """Remove the runners' group files (once their scores are reported) and ``cache`` if empty."""
    for r in runners:
        shutil.rmtree(cache / cache_key(r, items, root, size, pp), ignore_errors=True)
    try:
        cache.rmdir()
    except OSError:
        pass

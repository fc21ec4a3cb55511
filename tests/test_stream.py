"""Streamed scoring (measure/stream.py): each image decoded once for every model, a bounded
number of chunks ahead, scores equal to those computed on whole arrays, and a resume that
reruns only what an interrupted run had not written."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from skipat_deploy.measure import stream
from skipat_deploy.core.metrics import paired_drop_interval
from skipat_deploy.core.metrics import sqnr_db
from skipat_deploy.images.preprocess import Preprocess, load_image

CLASSES = 7


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """150 small photos in 5 class folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    items = []
    for i in range(150):
        c = i % 5
        p = root / f"c{c}" / f"{i:04d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        items.append((p, c))
    bad = root / "c0" / "0999.png"
    bad.write_bytes(b"not a png")
    items.insert(37, (bad, 0))
    return root, items


def _model(seed: int):
    """A fixed random linear classifier on the normalised pixels."""
    w = np.random.default_rng(seed).standard_normal((3 * 32 * 32, CLASSES)).astype(np.float32) / 50
    return lambda x: x.reshape(len(x), -1) @ w


def _runners(calls=None, fail_at=None):
    calls = calls if calls is not None else {}

    def counted(name, f):
        def run(x):
            calls[name] = calls.get(name, 0) + 1
            if fail_at is not None and name == fail_at[0] and calls[name] == fail_at[1]:
                raise KeyboardInterrupt
            return f(x)
        return run

    ref_f, q_f = _model(0), _model(0)
    q = lambda x: q_f(np.round(x * 8) / 8)  # noqa: E731 - a "quantized" copy of the reference
    return [stream.Runner("ref", counted("ref", ref_f), "ref-v1", group=20),
            stream.Runner("q", counted("q", q), "q-v1", group=32, reference="ref"),
            stream.Runner("sub", counted("sub", q), "q-v1", indices=np.arange(3, 151, 10), group=4,
                          reference="ref")]


def test_scores_equal_whole_array_figures_and_each_image_is_decoded_once(folder, tmp_path, monkeypatch):
    root, items = folder
    pp = Preprocess()
    opened = []
    real = stream.open_rgb
    monkeypatch.setattr(stream, "open_rgb", lambda p: opened.append(p) or real(p))
    res = stream.run_stream(items, root, 32, pp, _runners(), tmp_path / "cache")
    assert len(opened) == len(items)  # three models, one decode each
    assert res.unreadable == [(str(items[37][0]), res.unreadable[0][1])] and "cannot read" in res.unreadable[0][1]
    # The same figures from whole arrays.
    ok = [i for i in range(len(items)) if i != 37]
    x = np.concatenate([load_image(items[i][0], 32, pp) for i in ok])
    labels = np.array([items[i][1] for i in ok])
    ref, q = _model(0)(x), _model(0)(np.round(x * 8) / 8)
    tq = res.tallies["q"]
    assert tq.indices.tolist() == ok
    assert tq.top1_hit.tolist() == (q.argmax(1) == labels).tolist()
    assert tq.sqnr_db == pytest.approx(sqnr_db(ref, q), abs=1e-4)
    assert tq.agreement == pytest.approx(np.mean(ref.argmax(1) == q.argmax(1)))
    assert tq.ref_top1_hit.tolist() == (ref.argmax(1) == labels).tolist()
    ts = res.tallies["sub"]  # a subset, its groups straddling the reference's
    pos = [ok.index(i) for i in range(3, 151, 10) if i != 37]
    assert ts.indices.tolist() == [ok[p] for p in pos]
    assert ts.sqnr_db == pytest.approx(sqnr_db(ref[pos], q[pos]), abs=1e-4)
    assert res.tallies["ref"].sqnr_db is None and res.tallies["ref"].seconds > 0
    d = paired_drop_interval(ts.ref_top1_hit, ts.top1_hit)
    assert -1 <= d[1] <= d[0] <= d[2] <= 1


def test_decoding_stays_a_bounded_number_of_chunks_ahead(folder, monkeypatch):
    root, items = folder
    started, lock = [0], threading.Lock()
    real = stream._decode

    def counting(*a):
        with lock:
            started[0] += 1
        return real(*a)

    monkeypatch.setattr(stream, "_decode", counting)
    workers = 2
    ahead = []
    for consumed, _ in enumerate(stream.decoded(items, np.arange(len(items)), 32, Preprocess(), workers), 1):
        threading.Event().wait(0.02)  # a slow model
        ahead.append(started[0] - consumed)
    assert max(ahead) <= workers + 2
    assert consumed == -(-len(items) // stream.CHUNK)


def test_an_interrupted_run_resumes_with_only_the_missing_groups(folder, tmp_path):
    root, items = folder
    pp, cache = Preprocess(), tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        stream.run_stream(items, root, 32, pp, _runners(fail_at=("q", 3)), cache)
    written = sorted(p.name for p in cache.rglob("*.npz"))
    assert written and not list(cache.rglob(".*partial*"))
    # A group file cut short (as a kill mid-write would leave it, were it not atomic) is redone.
    victim = next(cache.glob("ref-*")) / "000000.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    calls = {}
    steps = []
    resumed = stream.run_stream(items, root, 32, pp, _runners(calls), cache, steps.append)
    groups = {"ref": -(-len(items) // 20), "q": -(-len(items) // 32), "sub": -(-15 // 4)}
    assert calls["q"] == groups["q"] - 2  # two were written before the interruption
    assert calls["ref"] < groups["ref"]  # redone: the cut file, and those not reached
    assert resumed.resumed["q"] == 64 and any("resuming" in s for s in steps)
    fresh = stream.run_stream(items, root, 32, pp, _runners(), tmp_path / "fresh")
    for name in groups:
        a, b = resumed.tallies[name], fresh.tallies[name]
        assert a.indices.tolist() == b.indices.tolist() and a.top1_hit.tolist() == b.top1_hit.tolist()
        assert a.sqnr_db == b.sqnr_db
    assert resumed.unreadable == fresh.unreadable
    # Another model (a new identity) or another image list starts from nothing.
    again = {}
    rs = _runners(again)
    rs[1].identity = "q-v2"
    stream.run_stream(items[:-1], root, 32, pp, rs[:2], cache)
    assert again == {"ref": -(-(len(items) - 1) // 20), "q": -(-(len(items) - 1) // 32)}
    stream.clear(cache, rs[:2], items[:-1], root, 32, pp)
    stream.clear(cache, _runners(), items, root, 32, pp)
    assert not cache.exists()


def test_cache_key_follows_model_images_and_preprocessing(folder):
    root, items = folder
    r = stream.Runner("onnx", lambda x: x, "abc")
    k = stream.cache_key(r, items, root, 224, Preprocess())
    assert k == stream.cache_key(r, list(items), root, 224, Preprocess())
    assert k != stream.cache_key(r, items[1:], root, 224, Preprocess())
    assert k != stream.cache_key(r, items, root, 256, Preprocess())
    assert k != stream.cache_key(r, items, root, 224, Preprocess(crop_pct=0.9))
    assert k != stream.cache_key(stream.Runner("onnx", lambda x: x, "abd"), items, root, 224, Preprocess())

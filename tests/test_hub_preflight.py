"""AI Hub preflight with the real clock: a refused port, a socket that never answers, a bad
token, an unknown device. Each ends in one line within seconds, before any model is made."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from skipat_deploy.cli import app

from .hub_fake.fixture import _bypass_proxies, point_global_client_at_ini

runner = CliRunner()
LIMIT_S = 60  # what a user may wait for a clear answer (the bound)


def _ini(tmp_path, url: str, token: str = "some-token"):
    path = tmp_path / "client.ini"
    path.write_text(f"[api]\napi_token = {token}\napi_url = {url}\nweb_url = {url}\n")
    return path


def _run(args, out):
    t0 = time.monotonic()
    result = runner.invoke(app, [str(a) for a in args])
    elapsed = time.monotonic() - t0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert "Traceback" not in result.stderr + result.stdout
    assert not [p for p in out.rglob("*") if p.is_file()], "work started before the preflight"
    return result, elapsed, " ".join(lines)


@pytest.fixture
def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest.fixture
def silent_port():
    """A listener that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def hold():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                pass

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    yield server.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    server.close()


def test_refused_endpoint_fails_fast_before_quantizing(tmp_path, monkeypatch, refused_port, nano_ckpts):
    point_global_client_at_ini(monkeypatch, _ini(tmp_path, f"http://127.0.0.1:{refused_port}"))
    _bypass_proxies(monkeypatch)
    out = tmp_path / "out"
    result, elapsed, line = _run(["profile", "--backend", "hub", "--ckpt",
                                  nano_ckpts["vit_nano_patch16"], "--out", out], out)
    assert result.exit_code == 3 and "refused the connection" in line, line
    assert elapsed < 10


def test_silent_endpoint_fails_within_the_bound(tmp_path, monkeypatch, silent_port, nano_ckpts):
    point_global_client_at_ini(monkeypatch, _ini(tmp_path, f"http://127.0.0.1:{silent_port}"))
    _bypass_proxies(monkeypatch)
    out = tmp_path / "out"
    result, elapsed, line = _run(["compare", "--backend", "hub", "--vit", nano_ckpts["vit_nano_patch16"],
                                  "--skipat", nano_ckpts["skipat_nano_patch16"], "--out", out], out)
    assert result.exit_code == 3 and "did not answer within" in line, line
    assert elapsed < LIMIT_S


def test_bad_token_and_unknown_device(tmp_path, fake_hub, nano_ckpts):
    out = tmp_path / "out"
    result, elapsed, line = _run(["compile", "--backend", "hub", "--device", "Galaxy S26",
                                  "--ckpt", nano_ckpts["vit_nano_patch16"], "--out", out], out)
    assert result.exit_code == 3 and "no device named 'Samsung Galaxy S26 (Family)'" in line, line
    ini = fake_hub.ini_path
    ini.write_text(ini.read_text().replace(fake_hub.token, "wrong-token"))
    result, elapsed, line = _run(["profile", "--backend", "hub", "--ckpt",
                                  nano_ckpts["vit_nano_patch16"], "--out", out], out)
    assert result.exit_code == 3 and "rejected the API token" in line, line
    assert elapsed < 10


def test_a_target_not_on_ai_hub_says_so(tmp_path, fake_hub, nano_ckpts):
    out = tmp_path / "out"
    result, _, line = _run(["compile", "--backend", "hub", "--device", "Dragonwing Q-8750",
                            "--ckpt", nano_ckpts["vit_nano_patch16"], "--out", out], out)
    assert result.exit_code == 3 and "not offered on AI Hub" in line, line

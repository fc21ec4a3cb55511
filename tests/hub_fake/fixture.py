"""The ``fake_hub`` pytest fixture: a running `FakeHubServer` plus a client.ini pointing at it.

Use from ``tests/conftest.py``::

    from .hub_fake.fixture import fake_hub  # noqa: F401

Per test it:

- starts a `FakeHubServer` on a free loopback port (``server.url``, ``server.token``);
- writes ``tmp_path / "qai_hub" / "client.ini"`` with ``[api]`` api_token / api_url /
  web_url (no ``verbose`` key, like a hand-written ini: the client then runs verbose, printing
  progress) and sets ``QAIHUB_CLIENT_INI`` to it, so ``qai_hub.Client()`` and the module-level
  ``qai_hub.*`` functions talk to the fake (``server.ini_path``);
- forgets any config the module-level ``qai_hub`` client cached in an earlier test (it reads
  client.ini once per process otherwise);
- makes 127.0.0.1 bypass any HTTP(S) proxy of the environment;
- makes the client's polling and retry backoff instant (`make_client_fast`; the would-be
  sleeps are in ``server.sleeps``);
- stops the server afterwards.
"""

from __future__ import annotations

import os

import pytest

from .server import FakeHubServer
from .speed import make_client_fast

__all__ = ["fake_hub", "point_global_client_at_ini"]


def _bypass_proxies(monkeypatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(var, "")
        hosts = [h for h in current.split(",") if h]
        for host in ("127.0.0.1", "localhost"):
            if host not in hosts:
                hosts.append(host)
        monkeypatch.setenv(var, ",".join(hosts))


def point_global_client_at_ini(monkeypatch, ini_path) -> None:
    """Make ``qai_hub.Client()`` and ``qai_hub.get_devices()`` & co read ``ini_path``."""
    import qai_hub.hub

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini_path))
    # qai_hub.hub._global_client caches the first config it loads for the whole process.
    monkeypatch.setattr(qai_hub.hub._global_client, "_config", None)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A started `FakeHubServer` (``.url``, ``.token``, ``.ini_path``, ``.sleeps``)."""
    server = FakeHubServer().start()
    try:
        ini = server.write_client_ini(tmp_path / "qai_hub" / "client.ini")
        point_global_client_at_ini(monkeypatch, ini)
        _bypass_proxies(monkeypatch)
        server.sleeps = make_client_fast(monkeypatch)
        yield server
    finally:
        server.stop()

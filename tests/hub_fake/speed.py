"""Make the real ``qai_hub`` client's waiting instant in tests.

Where qai-hub 0.56 sleeps:

- ``Job.wait()`` (``qai_hub.client``): polls ``get_status()`` every ``Job._polling_interval``
  = 10 s (``time.sleep(10)`` between polls); in verbose mode it sleeps 1 s at a time and still
  polls every 10 s. ``wait(timeout=T)`` counts the seconds it slept, not wall time.
- ``Client._api_call_with_retry`` (``qai_hub.client``): after a ``RateLimitedError`` (HTTP
  429 on job creation) it sleeps 20, 40, 60, 60 ... s and retries for up to 10 minutes.
- ``qai_hub.util.session``: every API GET/PUT/DELETE goes through a urllib3 ``Retry`` (6
  retries on 429/500/502/503/504 and connection errors, exponential backoff with factor
  ``BACKOFF_FACTOR`` = 0.75 s); POST/PATCH calls wrapped in ``retry_call_with_backoff`` and
  the upload/download helpers use the ``backoff`` package (7 tries, factor 0.75 s, full
  jitter, max 10 s per wait).

`make_client_fast` replaces the ``time`` module seen by ``qai_hub.client``, ``backoff`` and
``urllib3.util.retry`` with one whose ``sleep`` returns at once (recording the request), and
sets ``BACKOFF_FACTOR`` to 0. Retry *counts* and the client's own timeout arithmetic are
unchanged; only the waiting goes. Everything is undone by ``monkeypatch`` at teardown.
"""

from __future__ import annotations

import time as _time
from typing import Any

__all__ = ["SleepLog", "make_client_fast"]


class SleepLog(list):
    """``(source, seconds)`` for every sleep the client asked for; ``source`` is
    "qai_hub.client" (job polling, rate-limit retry), "backoff" or "urllib3"."""

    def seconds(self, source: str | None = None) -> list[float]:
        return [s for src, s in self if source is None or src == source]

    def polling(self) -> list[float]:
        """Sleeps of ``Job.wait`` / rate-limit retries (the ``qai_hub.client`` ones)."""
        return self.seconds("qai_hub.client")


class _InstantTime:
    """Stands in for the ``time`` module: ``sleep`` is recorded and skipped, the rest is real."""

    def __init__(self, log: SleepLog, source: str):
        self._log = log
        self._source = source

    def sleep(self, seconds: float) -> None:
        self._log.append((self._source, float(seconds)))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def make_client_fast(monkeypatch) -> SleepLog:
    """Remove every sleep of the qai_hub client (polling, retry backoff) for the duration of a
    test; returns the `SleepLog` of what it would have slept."""
    import backoff._sync
    import qai_hub.client
    import qai_hub.util.session
    import urllib3.util.retry

    log = SleepLog()
    monkeypatch.setattr(qai_hub.client, "time", _InstantTime(log, "qai_hub.client"))
    monkeypatch.setattr(backoff._sync, "time", _InstantTime(log, "backoff"))
    monkeypatch.setattr(urllib3.util.retry, "time", _InstantTime(log, "urllib3"))
    # read when each session's urllib3 Retry and each retry_call_with_backoff is built
    monkeypatch.setattr(qai_hub.util.session, "BACKOFF_FACTOR", 0)
    return log

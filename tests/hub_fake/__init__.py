"""A fake Qualcomm AI Hub (REST API test double for the real qai-hub 0.56 client).

See `server` (the fake), `fixture` (the ``fake_hub`` pytest fixture) and `speed` (instant
client polling / retry backoff).
"""

from .server import (
    DEFAULT_DEVICES,
    QNN_CONTEXT_BINARY_MARKER,
    FakeDataset,
    FakeDevice,
    FakeHubServer,
    FakeJob,
    FakeLayer,
    FakeModel,
    ProfileConfig,
    RecordedRequest,
    default_outputs,
    fake_context_binary,
)
from .speed import SleepLog, make_client_fast

__all__ = [
    "DEFAULT_DEVICES",
    "QNN_CONTEXT_BINARY_MARKER",
    "FakeDataset",
    "FakeDevice",
    "FakeHubServer",
    "FakeJob",
    "FakeLayer",
    "FakeModel",
    "ProfileConfig",
    "RecordedRequest",
    "SleepLog",
    "default_outputs",
    "fake_context_binary",
    "make_client_fast",
]

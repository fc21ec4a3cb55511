"""The bundle stage: a folder of everything a mobile team needs to wire a model into an app,
and proof that the files are the ones that were validated.

:mod:`.manifest` describes a folder of built artifacts in ``manifest.json`` (the float ONNX, the
QDQ ONNX, the ``.aimet`` folder, the EPContext ONNX + QNN context binary per device,
``labels.txt`` for ImageNet heads); :mod:`.verify` checks a bundle. Building the artifacts from a
checkpoint is :func:`skipat_deploy.pipeline.bundle`.
"""

from .manifest import MANIFEST, SCHEMA_VERSION, BundleError, manifest_schema, write_manifest
from .verify import VerifyResult, verify

__all__ = ["MANIFEST", "SCHEMA_VERSION", "BundleError", "VerifyResult", "manifest_schema", "verify",
           "write_manifest"]

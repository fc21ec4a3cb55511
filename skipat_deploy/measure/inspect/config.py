"""What ``inspect`` is asked: its one config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError
from ...core.options import check_declared, option
from ...devices import DEFAULT_DEVICE, DeviceProfile, resolve_device
from ...export.artifact import ModelArtifact, read_model


@dataclass(frozen=True)
class InspectConfig:
    # None: the device the model was quantized for, else DEFAULT_DEVICE
    device: str | None = option(None, "Target phone whose HTP runs the NPU side (default: the device the model was quantized for).")
    # None: the one the QDQ model's metadata names, beside it
    float_model: Path | None = option(None, "The float ONNX it was quantized from (default: the one its metadata names, beside it, checked by sha256).", flag="--float")
    # None: the held-out photos compile's NPU gate uses
    images: Path | None = option(None, "Folder of images (seeded draw; default: the held-out photos compile's NPU gate uses).")
    # the HTP simulator takes seconds per image
    num_samples: int = option(4, "Samples run through all three (the x86-64 HTP simulator takes seconds each).", minimum=1)
    # run the HTP side where onnxruntime-qnn is installed
    npu: bool = option(True, "Run the NPU side on the HTP simulator (needs onnxruntime-qnn).", flag="--npu/--no-npu")

    def check(self, model: ModelArtifact) -> DeviceProfile:
        check_declared(self)
        if self.float_model is not None:
            if not Path(self.float_model).is_file():
                raise UserError(f"--float model not found: {self.float_model}")
            if read_model(self.float_model).int8:
                raise UserError(f"--float {Path(self.float_model).name} is a quantized model: give "
                                "the float .onnx the QDQ model was made from")
        if self.images is not None and not Path(self.images).is_dir():
            raise UserError(f"--images folder not found: {self.images}")
        made_for = model.quantization.device if model.quantization else None
        return resolve_device(self.device or made_for or DEFAULT_DEVICE)

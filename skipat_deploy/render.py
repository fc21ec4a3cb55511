"""What the commands print: result tables and charts on stdout, notices and progress on stderr,
or with --json one document listing every artifact written and every figure measured. The CLI
(:mod:`skipat_deploy.cli`) parses and calls the API; this module shows what came back."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .devices import CpuHost

err = Console(stderr=True)


class Run:
    """One command's output: notices and progress go to stderr, results to stdout (a table,
    or with --json one document listing every artifact and every measured figure)."""

    def __init__(self, command: str, as_json: bool, debug: bool):
        self.command, self.as_json, self.debug = command, as_json, debug
        self.artifacts: list[dict] = []
        self.measurements: list[dict] = []
        self.notices: list[str] = []
        self.results: list[dict] = []
        self.extra: dict = {}  # command-specific top-level fields of the --json document
        self.gate: list[str] = []  # quality gate failures: exit 4 after the document

    def notice(self, text: str) -> None:
        self.notices.append(text)
        err.print(f"[yellow]note:[/] {text}", highlight=False)

    def measure(self, name: str, value: float, unit: str, source: str, subject: str) -> None:
        self.measurements.append(
            dict(name=name, value=value, unit=unit, source=source, subject=subject)
        )

    def figures(self, figures) -> None:
        """A result's figures (its ``figures()``), under the names every output uses."""
        for f in figures:
            self.measure(f.name, f.value, f.unit, f.source, f.subject)

    @contextmanager
    def progress(self, total: int):
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,  # logs and pipes get results, not spinner frames
        ) as bar:
            task = bar.add_task("starting", total=total)

            def step(desc: str) -> None:
                bar.update(task, description=desc, advance=1)

            yield step

    def emit(self) -> None:
        if self.as_json:
            doc = dict(
                command=self.command,
                ok=True,
                artifacts=self.artifacts,
                measurements=self.measurements,
                results=self.results,
                notices=self.notices,
            )
            doc.update(self.extra)
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")

    def fail(self, message: str, code: int) -> None:
        err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        if self.as_json:
            sys.stdout.write(json.dumps(dict(command=self.command, ok=False, error=message)) + "\n")
        raise typer.Exit(code)


def notice_fresh(run: Run, load, doing: str) -> None:
    """Random weights said so: fine for latency, meaningless for predictions."""
    if load.ckpt is None:
        from .api import DEFAULT_ARCH

        run.notice(
            f"no --ckpt given: {doing} a freshly initialised {load.arch or DEFAULT_ARCH} (random "
            "weights, not trained; fine for latency, meaningless for predictions)"
        )


def table(*columns: str, title: str | None = None) -> Table:
    """A results table that folds long cells instead of cutting them (logs are 80 wide)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def fitted_table(columns: list[tuple[str, bool]], rows: list[list[str]]) -> tuple[Table, list[str]]:
    """A table whose words are never broken: ``columns`` are (header, essential); optional
    columns are dropped, last first, until the table fits the terminal. Returns the table and
    the headers left out (``--json`` has them all)."""
    width = Console().width
    keep = list(range(len(columns)))
    while True:
        tbl = Table(box=box.SIMPLE_HEAD)  # no vertical rules: six more columns for the words
        for i in keep:
            tbl.add_column(columns[i][0], no_wrap=True)
        for row in rows:
            tbl.add_row(*(row[i] for i in keep))
        optional = [i for i in keep if not columns[i][1]]
        if Console(width=10_000).measure(tbl).maximum <= width or not optional:
            return tbl, [columns[i][0] for i in range(len(columns)) if i not in keep]
        keep.remove(optional[-1])


def _print_fitted(columns: list[tuple[str, bool]], rows: list[list[str]]) -> None:
    tbl, left_out = fitted_table(columns, rows)
    Console().print(tbl)
    if left_out:
        Console().print(f"(a wider terminal or --json shows {', '.join(left_out)})", highlight=False)


def artifact(kind: str, path: Path) -> dict:
    from .core.files import sha256_file

    path = Path(path)
    if path.is_file():
        return dict(kind=kind, path=str(path), sha256=sha256_file(path), size_bytes=path.stat().st_size)
    return dict(kind=kind, path=str(path))


def show_compiled(run: Run, r) -> None:
    q = r.quantized
    for n in (q.notices if q else []) + r.notices:
        run.notice(n)
    if q is not None:
        run.artifacts += [artifact(kind, path) for kind, path in q.files().items()]
        run.figures(f for f in q.figures() if f.name != "quantize_seconds")
    for kind, path in r.files().items():  # the artifacts, then the record
        run.artifacts.append(artifact(kind, path))
    run.figures(r.figures())
    run.results.append(r.to_json())
    if run.as_json:
        return
    t = table("measure", "value", title=f"{r.model.name} -> {r.device} ({r.soc}, Hexagon {r.hexagon}), {r.backend}")
    for kind, path in r.artifacts.items():
        t.add_row(kind, str(path))
    for job in r.jobs:
        t.add_row(f"AI Hub {job['kind']} job", f"{job['id']} {job['status']} {job['url']}")
    if r.check is not None:
        c = r.check
        t.add_row("NPU vs the same model on the CPU, SQNR", f"{c.sqnr_db:.2f} dB ({c.runs_on}; {c.inputs})")
        if c.top1_agreement is not None:
            t.add_row("NPU vs CPU top-1 agreement", f"{c.top1_agreement:.0%}")
        if c.npu_vs_float_sqnr_db is not None:
            t.add_row(f"SQNR vs float ({c.float_model})", f"NPU {c.npu_vs_float_sqnr_db:.2f} dB, "
                      f"CPU QDQ {c.qdq_vs_float_sqnr_db:.2f} dB")
        t.add_row("NPU gate", c.gate)
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items()))
    t.add_row("time", f"{r.seconds:.1f} s")
    Console().print(t)


def show_export(run: Run, results) -> None:
    for n in dict.fromkeys(n for r in results for n in r.notices):  # one per command, not per file
        run.notice(n)
    tbl = table("file", "model", "grid", "max |onnx-torch|", "export s", title="exported")
    for r in results:
        run.artifacts.append(
            dict(kind="onnx", path=str(r.path), sha256=r.sha256, size_bytes=r.size_bytes,
                 resolution=r.resolution, model=r.model_name)
        )
        run.measure("export_seconds", r.seconds, "s", "cpu", str(r.path))
        run.measure("max_abs_diff_vs_torch", r.max_abs_diff, "abs", "cpu", str(r.path))
        run.results.append(r.to_json())
        tbl.add_row(r.path.name, r.model_name, f"{r.grid}x{r.grid}",
                      f"{r.max_abs_diff:.2e}", f"{r.seconds:.1f}")
    if not run.as_json:
        Console().print(tbl)


def show_cpu_int8(run: Run, c) -> None:
    for n in c.notices:
        run.notice(n)
    run.artifacts += [artifact(kind, path) for kind, path in c.files().items()]
    host = CpuHost.from_json(c.host) if c.host else None
    where = "cpu (onnxruntime integer kernels" + (f", {host.describe()})" if host else ")")
    run.figures(c.figures())
    run.results.append(c.to_json())
    if not run.as_json:
        t = table("measure", "value", title=f"{c.path.name}: the CPU INT8 model (ONNX Runtime)")
        t.add_row("output SQNR vs float", f"{c.quality.sqnr_db:.2f} dB")
        if c.quality.top1_agreement is not None:
            t.add_row("top-1 agreement", f"{c.quality.top1_agreement:.1%}")
        t.add_row("8-bit ops", ", ".join(f"{k} {v}" for k, v in c.quantized_ops.items()))
        t.add_row("float on purpose", ", ".join(f"{k} {v}" for k, v in c.float_ops.items()) or "-")
        if c.encoding:
            e = c.encoding
            t.add_row("made for", f"--cpu-isa {c.cpu_isa}: {e['activation']} x {e['weight']}, "
                      f"{e['weight_bits']}-bit weights; holds on {', '.join(e['holds_on'])}")
        t.add_row("evaluated on", f"{c.quality.num_images} samples from {c.eval_source}")
        if host:
            t.add_row("measured on", host.describe())
        t.add_row("time", f"{c.seconds:.0f} s")
        Console().print(t)


def show_quantized(run: Run, r) -> None:
    for n in r.notices:
        run.notice(n)
    for kind, path in r.files().items():
        run.artifacts.append(artifact(kind, path))
    q = r.quality
    run.figures(r.figures())
    run.results.append(r.to_json())
    if run.as_json:
        return
    t = table("measure", "value", title=f"{r.qdq_onnx.name}: {r.precision} ({r.backend}) for {r.device} / {r.hexagon}")
    t.add_row("output SQNR vs float (QDQ ONNX, CPU)", f"{q.sqnr_db:.2f} dB")
    if r.npu is not None:
        n = r.npu
        t.add_row("output SQNR vs float (NPU, HTP simulator)",
                  f"{n.npu_sqnr_db:.2f} dB on {n.num_samples} of the samples (CPU QDQ on those: "
                  f"{n.qdq_sqnr_db:.2f} dB; NPU vs CPU QDQ {n.npu_vs_qdq_sqnr_db:.2f} dB)")
    t.add_row("cosine vs float (mean / min)", f"{q.cosine_mean:.5f} / {q.cosine_min:.5f}")
    if q.top1_agreement is not None:
        t.add_row("top-1 agreement", f"{q.top1_agreement:.1%}")
    if r.sim_quality is not None:
        t.add_row("AIMET simulation SQNR vs float", f"{r.sim_quality.sqnr_db:.2f} dB")
        t.add_row("QDQ ONNX vs simulation SQNR", f"{r.qdq_vs_sim_sqnr_db:.2f} dB")
        t.add_row("simulation, weights quantized only", f"{r.weights_only_sqnr_db:.2f} dB")
    if r.bias_correction_db is not None:
        t.add_row("bias correction (calibration samples)",
                  f"{r.bias_correction_db:+.2f} dB, " + ("kept" if r.bias_correction_db > 0 else "left out"))
    t.add_row("residual stream rotated", "yes" if r.rotated else "no")
    t.add_row("evaluated on", f"{q.num_images} samples from {r.eval_source}")
    t.add_row("calibrated on", f"{r.num_calib} samples from {r.calib_source}")
    t.add_row("16-bit activation layers", f"{len(r.promoted)} of {r.num_activation_quantizers}"
              + (": " + ", ".join(r.promoted) if r.promoted else ""))
    t.add_row("sizes", ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r.sizes_bytes.items()))
    t.add_row("most sensitive layers (share of activation noise)", ", ".join(f"{s.layer} {s.noise_share:.0%}" for s in r.sensitivity[:5]) or "-")
    if r.cost_estimate is not None:
        t.add_row("NPU cost (estimate from the graph, not timed)", f"{r.cost_estimate:.2f}x w8a8")
    t.add_row("time", f"{r.seconds:.0f} s")
    Console().print(t)
    if r.search is not None:
        _show_search(r.search)


def _show_search(s: dict) -> None:
    top1 = s["goal"].startswith("max_top1_drop")
    where = s.get("measured_on")
    t = table("candidate", "cost (est.)", *((f"ms, measured on {where}",) if where else ()),
              "held-out SQNR", "95 % lower", *(("top-1 drop", "95 % upper") if top1 else ()), "goal",
              title=f"--precision auto, goal {s['goal']} ({s['judged_on']})")
    for i, c in enumerate(s["candidates"]):
        tried = c["sqnr_db"] is not None
        cells = [f"{c['sqnr_db']:.2f} dB", f"{c['sqnr_low_db']:.2f} dB"] if tried else ["-", "-"]
        if top1:
            cells += [f"{c['top1_drop']:.2f}", f"{c['top1_drop_high']:.2f}"] if tried else ["-", "-"]
        ms = c.get("latency_ms")
        timed = (("-" if ms is None else f"{ms:.2f}"),) if where else ()
        t.add_row(("* " if i == s["chosen"] else "") + c["name"], f"{c['cost']:.2f}", *timed, *cells,
                  "met" if c["meets"] else "missed" if tried else "not tried")
    Console().print(t)


def show_profile(run: Run, r) -> None:
    for n in r.notices:
        run.notice(n)
    run.results.append(r.to_json())
    for kind, path in r.files():  # models made from --ckpt; hub: compiled model, record, raw profile
        run.artifacts.append(artifact(kind, path))
    t = table("model", "where", "median ms", "p90 ms", "details",
               title=f"latency: {r.device}, {r.backend}")
    for c in r.cpu:
        where = f"CPU, ONNX Runtime {c.onnxruntime}, {c.threads} threads"
        run.measure("cpu_latency_median", c.median_ms, "ms", where, c.model)
        run.measure("cpu_latency_p90", c.p90_ms, "ms", where, c.model)
        t.add_row(Path(c.model).name, where, f"{c.median_ms:.2f}", f"{c.p90_ms:.2f}", f"{c.runs} runs")
    if r.cpu_ratio is not None:
        q = r.cpu_ratio
        names = " / ".join(Path(c.model).name for c in reversed(r.cpu))
        run.measure("cpu_latency_ratio", q.value, "", f"CPU, {q.pairs} paired runs", names)
        t.add_row(names, "paired runs, median ratio", f"{q.value:.3f}", "-",
                  f"95 % interval {q.low:.3f}-{q.high:.3f} ({q.pairs} pairs)")
    if r.hub is not None:
        h = r.hub
        where = f"{h.hub_device} NPU (AI Hub profile)"
        run.measure("estimated_inference_time", h.estimated_inference_ms, "ms", where, str(h.model))
        if h.first_load_ms is not None:
            run.measure("first_load_time", h.first_load_ms, "ms", where, str(h.model))
        if h.device_check is not None:
            run.measure("device_vs_cpu_sqnr", h.device_check.sqnr_db, "dB", where, str(h.model))
        units = ", ".join(f"{u} {n}" for u, n in sorted(h.compute_units.items()))
        mem = "-" if h.peak_memory_mb is None else f"{h.peak_memory_mb[0]:.1f}-{h.peak_memory_mb[1]:.1f} MB"
        check = "-" if h.device_check is None else f"{h.device_check.sqnr_db:.1f} dB vs CPU"
        t.add_row(h.model.name, where, f"{h.estimated_inference_ms:.2f}", "-",
                  f"layers {units}; peak memory {mem}; first load {h.first_load_ms} ms; outputs {check}")
    if r.phone is not None:
        ph = r.phone
        for m in ph.models.values():
            where = f"{ph.where}, {ph.perf_profile}"
            model = str(r.compiled.artifacts["context_binary"]) if r.compiled else m.binary
            run.measure("phone_latency_median", m.median_ms, "ms", where, model)
            run.measure("phone_latency_min", m.min_ms, "ms", where, model)
            run.measure("first_load_time", m.first_load_ms, "ms", where, model)
            shares = "" if m.cycles is None else "; cycles " + ", ".join(
                f"{part} {100 * v:.0f} %" for part, v in m.cycles.shares.items())
            for part, v in ({} if m.cycles is None else m.cycles.shares).items():
                run.measure(f"cycle_share_{part}", v, "", f"{where}, detailed profiling run", model)
            t.add_row(Path(model).name, where, f"{m.median_ms:.2f}", "-",
                      f"IQR {m.iqr_ms[0]:.2f}-{m.iqr_ms[1]:.2f} ms, min {m.min_ms:.2f} ms over "
                      f"{ph.rounds} rounds of {ph.inferences}; first load {m.first_load_ms:.0f} ms; "
                      f"QAIRT {ph.sdk['version']}{shares}")
    if not run.as_json:
        Console().print(t)


def show_compare(run: Run, r) -> None:
    from .measure.compare import INT8_MODEL

    for n in r.notices:
        run.notice(n)
    for kind, path in r.files.items():
        run.artifacts.append(dict(kind=f"compare_{kind}", path=str(path)))
    for kind, path in r.made:  # hub: the QDQ models sent and AI Hub's artifacts
        run.artifacts.append(artifact(kind, path))
    for row in r.rows:
        subject = f"{row.arch}@{row.resolution}"
        name = {"cpu": "latency_median", "adb": "phone_latency_median"}.get(r.backend, "estimated_inference_time")
        run.measure(name, row.latency_ms, "ms", row.measured_on, subject)
        if row.min_ms is not None:  # adb
            run.measure("phone_latency_min", row.min_ms, "ms", row.measured_on, subject)
            run.measure("first_load_time", row.first_load_ms, "ms", row.measured_on, subject)
        for part, v in (row.cycle_shares or {}).items():
            run.measure(f"cycle_share_{part}", v, "", f"{row.measured_on}, detailed profiling run", subject)
        if row.model == "skipat":
            run.measure("skipat_vit_ratio", row.ratio_vs_vit, "", row.measured_on, subject)
        if row.top1_float is not None:
            run.measure("top1_float", row.top1_float, "", "cpu", subject)
            run.measure("top1_int8", row.top1_int8, "", f"cpu (onnxruntime, {INT8_MODEL[r.backend]})", subject)
    run.results.append(r.to_json())
    if not run.as_json:
        from .measure.compare import markdown

        table = [ln for ln in markdown(r).splitlines() if not ln.startswith("Note: ")]
        Console().print("\n".join(table), highlight=False, soft_wrap=True)


def show_evaluate(run: Run, r) -> None:
    for n in r.notices:
        run.notice(n)
    for kind, path in r.files.items():
        run.artifacts.append(dict(kind=f"evaluate_{kind}", path=str(path)))
    for t in r.targets:
        subject = f"{t.name}: {t.model or r.model}"
        run.measure("top1", t.top1, "", t.runs_on, subject)
        run.measure("top5", t.top5, "", t.runs_on, subject)
    doc = r.to_json()
    run.results.append(doc)
    run.extra.update(targets=doc["targets"], gate_failures=r.gate_failures)
    if r.gate_failures:
        run.extra["ok"] = False
    run.gate.extend(r.gate_failures)
    if run.as_json:
        return
    from .measure.evaluate import markdown

    Console().print(markdown(r), highlight=False, soft_wrap=True)


def show_bundle(run: Run, r) -> None:
    for n in r.notices:
        run.notice(n)
    for folder, manifest in zip(r.folders, r.manifests):
        run.artifacts.append(dict(kind="bundle", path=str(folder)))
        run.artifacts.append(artifact("manifest", manifest))
    for z in r.zips:
        run.artifacts.append(artifact("bundle_zip", z))
    run.results.append(dict(folders=[str(f) for f in r.folders], seconds=r.seconds))
    if not run.as_json:
        for folder in r.folders:
            Console().print(f"bundle: {folder}", highlight=False)


def show_verify(run: Run, r) -> None:
    run.results.append(dict(folder=str(r.folder), files_checked=r.files_checked, smoke=r.smoke,
                            runtimes=r.runtimes))
    if not run.as_json:
        Console().print(f"{r.folder}: OK ({r.files_checked} files match the manifest; "
                        f"{len(r.smoke)} CPU models ran)", highlight=False)
        for binary, needs in r.runtimes.items():
            Console().print(f"  {binary}: needs {needs}", highlight=False)


def show_inspect(run: Run, r) -> None:
    for n in r.notices:
        run.notice(n)
    for kind, path in r.files.items():
        run.artifacts.append(artifact(kind, path))
    o = r.output
    for name, key, where in (("qdq_vs_float_sqnr", "qdq_vs_float_db", "cpu (onnxruntime, QDQ)"),
                             ("npu_vs_float_sqnr", "npu_vs_float_db", r.npu),
                             ("npu_vs_qdq_sqnr", "npu_vs_qdq_db", r.npu)):
        if o[key] is not None:
            run.measure(name, o[key], "dB", where, f"{r.model}: {o['tensor']}")
    doc = r.to_json()
    run.results.append(doc)
    run.extra.update(largest_qdq_drop=doc["largest_qdq_drop"],
                     first_npu_divergence=doc["first_npu_divergence"],
                     largest_npu_drop=doc["largest_npu_drop"])
    if run.as_json:
        return

    def db(v):
        return "-" if v is None else "inf" if v == float("inf") else f"{v:.1f}"

    t = table("measure", "value", title=f"{r.model.name} on {r.device} ({r.soc}, Hexagon {r.hexagon})")
    t.add_row("samples", r.inputs)
    t.add_row("float reference per tensor", r.float_reference)
    t.add_row("NPU side", r.npu + ("" if r.npu_partitions is None else f"; {r.npu_partitions} QNN partition(s)"))
    t.add_row(f"output {o['tensor']}: SQNR vs float", f"CPU QDQ {db(o['qdq_vs_float_db'])} dB, "
              f"NPU {db(o['npu_vs_float_db'])} dB; NPU vs CPU QDQ {db(o['npu_vs_qdq_db'])} dB")
    if (d := r.largest_qdq_drop) is not None:
        t.add_row("largest QDQ drop", f"#{d['index']} {d['tensor']} ({d['op']}, {d['layer']}, "
                  f"{d['bits']}-bit): {db(d['qdq_drop_db'])} dB down to {db(d['qdq_vs_float_db'])} dB")
    if (d := r.first_npu_divergence) is not None:
        t.add_row("first NPU divergence", f"#{d['index']} {d['tensor']} ({d['op']}, {d['layer']}, "
                  f"{d['bits']}-bit): NPU vs CPU QDQ {db(d['npu_vs_qdq_db'])} dB, one rounding "
                  f"{db(d['rounding_sqnr_db'])} dB")
    if (d := r.largest_npu_drop) is not None:
        t.add_row("largest NPU drop", f"#{d['index']} {d['tensor']} ({d['op']}, {d['layer']}, "
                  f"{d['bits']}-bit): vs float NPU {db(d['npu_vs_float_db'])} dB, CPU QDQ "
                  f"{db(d['qdq_vs_float_db'])} dB ({db(d['npu_drop_db'])} dB further behind "
                  "than at its inputs)")
    t.add_row("tensors", f"{len(r.layers)} quantized activations: {', '.join(str(p) for p in r.files.values())}")
    t.add_row("time", f"{r.seconds:.0f} s")
    Console().print(t)


def show_predictions(run: Run, preds) -> None:
    out = Console()
    for p in preds:
        run.results.append(p.to_json())
        if run.as_json:
            continue
        if p.top:
            tops = ", ".join(f"{c.label} ({c.probability:.1%})" for c in p.top)
            out.print(f"{p.image}: {tops}", highlight=False)
        else:
            out.print(f"{p.image}: {p.feature_dim}-d features, L2 norm {p.feature_norm:.3f}")


def show_models(run: Run, specs) -> None:
    columns = [("name", True), ("dim", True), ("depth", True), ("heads", True), ("Φ skips", True),
               ("classes", False), ("patch", False), ("family", False)]
    rows = []
    for s in specs:
        a = s.arch
        run.results.append(dict(name=s.name, family=a.family, embed_dim=a.embed_dim,
                                depth=a.depth, num_heads=a.num_heads, patch_size=a.patch_size,
                                num_classes=a.num_classes, skip_indices=list(a.skip_indices)))
        rows.append([s.name, str(a.embed_dim), str(a.depth), str(a.num_heads),
                     ",".join(map(str, a.skip_indices)) or "-", str(a.num_classes),
                     str(a.patch_size), a.family])
    if not run.as_json:
        _print_fitted(columns, rows)


def show_devices(run: Run, profiles, hub: tuple[list[dict], list[str]] | None) -> None:
    """The local table; with ``hub`` (AI Hub's live devices, those missing), both."""
    from dataclasses import asdict

    columns = [("device", True), ("SoC", True), ("Hexagon", True), ("fp16", True),
               ("weight\nsharing", True), ("soc_model", False), ("chipset", False), ("OS", False),
               ("AI Hub name", False), ("also typed as", False)]
    rows = []
    for p in profiles:
        run.results.append(asdict(p))
        rows.append([p.name, p.soc, p.hexagon, "yes" if p.fp16 else "no",
                     "yes" if p.weight_sharing else "no", str(p.qnn_soc_model), p.chipset, p.os,
                     p.hub_devices[0] if p.hub_devices else "(not on AI Hub)",
                     ", ".join(p.aliases[:3])])
    live = None
    if hub is not None:
        live, missing = hub
        run.extra.update(hub_devices=live, not_on_hub=missing)
        lacking = [d for d in live if d["profile"] is None]
        for d in lacking:
            run.notice(f"AI Hub offers {d['name']} ({d['chipset']}, {d['hexagon']}, soc-model "
                       f"{d['soc_model']}), which the local table lacks")
    if run.as_json:
        return
    _print_fitted(columns, rows)
    if live is not None:
        t = table("AI Hub device", "chipset", "Hexagon", "soc-model", "OS", "local target",
                   title="live on AI Hub")
        for d in live:
            t.add_row(d["name"], str(d["chipset"]), str(d["hexagon"]), str(d["soc_model"]),
                      str(d["os"]), d["profile"] or "[yellow]not in the local table[/]")
        Console().print(t)

"""Qualcomm AI Hub backend (``qai-hub``): compile in the cloud, for a real phone's SoC.

Every submitted job goes into a run record beside the artifacts (``<stem>.hub.json``) the
moment it is created, so running the same command again resumes the job instead of
submitting a new one. Transient service failures are retried with backoff; permanent ones
(authentication, a job that FAILED) end in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..devices import DeviceProfile
from ..core.errors import UserError
from ..core.files import atomic_path, compiled_stem, sha256_path
from ..core.staging import staged
from .compile import check_target, npu_check, write_record
from .config import CompileConfig, CompileError, CompileResult

POLL_SECONDS = 15.0  # how often a running job's state is read
RETRY_DELAYS = (5.0, 20.0, 60.0)  # backoff between attempts after a transient failure
CALL_BUDGET_S = 600.0  # no new attempt of one call starts after this long
_sleep = time.sleep
_clock = time.monotonic

CONFIGURE_HINT = ("run `qai-hub configure --api_token <TOKEN>` (token: Account page of "
                  "https://workbench.aihub.qualcomm.com), or set QAIHUB_CLIENT_INI to a client.ini")


class HubNotConfigured(UserError):
    """No AI Hub credentials on this machine."""


class HubError(UserError):
    """AI Hub refused a request, or stayed unavailable through every retry."""

    exit_code = 3


def client_config():
    """The AI Hub client configuration, or one line saying how to create it. Read the way
    ``qai_hub`` reads it (``QAIHUB_CLIENT_INI``, else ``~/.qai_hub/client.ini``); always
    quiet, since stdout belongs to ``--json``."""
    from qai_hub import api_utils

    path = api_utils.get_config_path()
    if not os.path.isfile(path):
        raise HubNotConfigured(f"AI Hub is not configured ({path} not found): {CONFIGURE_HINT}")
    try:
        config = api_utils.load_api_config_from_file(path)
    except Exception:
        raise HubNotConfigured(f"AI Hub is not configured ({path} lacks api_token / api_url / "
                               f"web_url in [api]): {CONFIGURE_HINT}") from None
    if not config.api_token.strip():
        raise HubNotConfigured(f"AI Hub is not configured ({path} has an empty api_token): {CONFIGURE_HINT}")
    config.verbose = False
    return config


def client():
    import qai_hub

    return qai_hub.Client(config=client_config())


# --------------------------------------------------------------------------------------------
# Preflight: reach AI Hub before any heavy work. The client's own calls wait up to ~4 minutes
# each on a silent endpoint (7 tries of a 3 s connect and a 28 s read timeout, with backoff);
# this one request has short timeouts, so a typo in api_url, a VPN down, a bad token or an
# unknown device is one line within seconds.

PREFLIGHT_CONNECT_S = 5.0
PREFLIGHT_READ_S = 15.0  # AI Hub answers a device query in well under a second


class HubUnreachable(HubError):
    """AI Hub refused the connection, or did not answer within the preflight's timeouts."""


@dataclass(frozen=True)
class HubTarget:
    """What the preflight found: the device AI Hub will run on and its attributes."""

    api_url: str
    hub_device: str
    attributes: tuple[str, ...]
    seconds: float


def _device_query(params: dict):
    """AI Hub's device list for ``params`` with the preflight's short timeouts (one retry of a
    5xx / 429); every failure is one line."""
    import requests
    from qai_hub import api_utils
    from qai_hub import public_api_pb2 as pb

    config = client_config()
    where = f"AI Hub at {config.api_url} ({api_utils.get_config_path()})"
    response = None
    for attempt in range(2):
        try:
            response = requests.get(api_utils.api_url(config, "devices"),
                                    headers=api_utils.auth_header(config), params=params,
                                    timeout=(PREFLIGHT_CONNECT_S, PREFLIGHT_READ_S))
        except requests.exceptions.Timeout:
            raise HubUnreachable(f"{where} did not answer within {PREFLIGHT_READ_S:.0f} s: check "
                                 "api_url and the network (VPN, proxy), or use --backend cpu / "
                                 "local") from None
        except requests.exceptions.RequestException as e:
            reason = "refused the connection" if "refused" in str(e).lower() else "cannot be reached"
            raise HubUnreachable(f"{where} {reason}: check api_url and the network (VPN, proxy), "
                                 "or use --backend cpu / local") from None
        if response.status_code not in (429, 500, 502, 503, 504) or attempt == 1:
            break
        _sleep(3.0)
    code = response.status_code
    if code in (401, 403):
        raise HubError(f"{where} rejected the API token (HTTP {code}): {CONFIGURE_HINT}")
    if code >= 400:
        raise HubError(f"{where} answered HTTP {code} to a device query: the service may be "
                       "down; try again later, or use --backend cpu / local")
    found = pb.DeviceList()
    try:
        found.ParseFromString(response.content)
    except Exception:
        raise HubUnreachable(f"{where} did not answer like AI Hub (is api_url right?)") from None
    return config, found


def preflight(device: DeviceProfile) -> HubTarget:
    """One authenticated device query with short timeouts: AI Hub is reachable, the token is
    accepted and the device exists there; otherwise :class:`HubError` in one line."""
    if not device.hub_devices:
        raise HubError(f"{device.name} ({device.soc}) is not offered on AI Hub: compile locally "
                       "(--backend local) or pick a device `skipat-deploy devices` marks as on AI Hub")
    t0 = time.monotonic()
    name = device.hub_devices[0]
    config, found = _device_query({"name": name, "select": "true"})
    if not found.devices:
        raise HubError(f"AI Hub has no device named {name!r} (for --device {device.name}): "
                       "`skipat-deploy devices --hub` lists what it offers")
    d = found.devices[0]
    return HubTarget(config.api_url, d.name, tuple(d.attributes), time.monotonic() - t0)


def hub_catalog() -> list[dict]:
    """AI Hub's live device list: name, OS and the chipset / hexagon / soc-model attributes."""
    rows = []
    for d in _device_query({})[1].devices:
        attrs = {a.split(":", 1)[0]: a.split(":", 1)[1] for a in d.attributes if ":" in a}
        rows.append(dict(name=d.name, os=d.os, chipset=attrs.get("chipset"),
                         hexagon=attrs.get("hexagon"), soc_model=attrs.get("soc-model")))
    return rows


def call(fn: Callable, *args, what: str, **kwargs):
    """``fn(*args, **kwargs)`` with retries on transient failures (the client's own retries
    included, a 5xx or a dropped connection that persists); permanent failures become one
    line."""
    import qai_hub
    from qai_hub.client import RateLimitedError

    t0 = _clock()
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            # The client prints ("Downloaded model to ...") even when not verbose; stdout
            # belongs to --json.
            with contextlib.redirect_stdout(sys.stderr):
                return fn(*args, **kwargs)
        except (qai_hub.InternalError, RateLimitedError) as e:
            if "Timeout occurred" in str(e):  # the client already waited through 7 timeouts
                raise HubError(f"AI Hub did not answer while {what} (timed out after the "
                               "client's own retries): check api_url in the client.ini "
                               "and the network") from None
            if attempt == len(RETRY_DELAYS) or _clock() - t0 + RETRY_DELAYS[attempt] > CALL_BUDGET_S:
                raise HubError(f"AI Hub stayed unavailable while {what} ({attempt + 1} attempts "
                               f"in {_clock() - t0:.0f} s): {_first_line(e)}") from None
            _sleep(RETRY_DELAYS[attempt])
        except qai_hub.UserError as e:
            text = _first_line(e)
            if "authenticat" in text.lower():
                raise HubError(f"AI Hub rejected the API token while {what}: {CONFIGURE_HINT}") from None
            raise HubError(f"AI Hub refused {what}: {text}") from None


def _first_line(e: Exception) -> str:
    lines = [ln.strip(" │|-─") for ln in str(e).splitlines()]
    return next((ln for ln in lines if ln), type(e).__name__)


# --------------------------------------------------------------------------------------------
# The run record: which jobs this output folder has submitted.

@dataclass
class RunRecord:
    path: Path

    def load(self) -> dict:
        if not self.path.is_file():
            return {"schema_version": 1, "jobs": {}}
        try:
            return json.loads(self.path.read_text())
        except ValueError:
            raise UserError(f"{self.path} is not a readable run record: move it away to start over") from None

    def job(self, key: str) -> dict | None:
        return self.load()["jobs"].get(key)

    def put(self, key: str, entry: dict) -> None:
        doc = self.load()
        doc["jobs"][key] = entry
        # Written at once, outside any stage: it must outlive a failed run so a re-run resumes.
        with atomic_path(self.path) as part:
            part.write_text(json.dumps(doc, indent=2) + "\n")


def job_entry(job, kind: str, identity: dict) -> dict:
    return dict(kind=kind, id=job.job_id, url=job.url, status="SUBMITTED", **identity)


def wait(job, entry: dict, record: RunRecord, key: str, step: Callable[[str], None],
         timeout_s: float) -> dict:
    """Poll ``job`` until it ends; the record follows its state. A FAILED job, or one still
    running after ``timeout_s``, is one line (a re-run resumes the recorded job)."""
    seen = None
    deadline = _clock() + timeout_s
    while True:
        status = call(job.get_status, what=f"reading job {job.job_id}")
        if status.code != seen:
            seen = status.code
            entry["status"] = status.code
            record.put(key, entry)
            step(f"AI Hub {entry['kind']} job {job.job_id}: {status.code}")
        if status.finished:
            break
        if _clock() >= deadline:
            raise HubError(f"AI Hub {entry['kind']} job {job.job_id} is still {status.code} after "
                           f"{timeout_s:.0f} s (--hub-timeout); run the same command again to keep "
                           f"waiting for it ({job.url})")
        _sleep(POLL_SECONDS)
    if status.failure:
        entry["failure"] = status.message
        record.put(key, entry)
        raise CompileError(f"AI Hub {entry['kind']} job {job.job_id} FAILED: "
                           f"{status.message or 'no reason given'} ({job.url})")
    return entry


def input_specs(model: Path) -> dict:
    onnx_file = next(model.glob("*.onnx")) if model.is_dir() else model
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    specs = {}
    for inp in graph.input:
        if inp.name in init:
            continue
        t = inp.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs[inp.name] = (tuple(d.dim_value or 1 for d in t.shape.dim), dtype)
    return specs


def hub_device(device: DeviceProfile):
    import qai_hub

    return qai_hub.Device(name=device.hub_devices[0])


# --------------------------------------------------------------------------------------------
# Jobs as resumable stages: submit (or find in the record), then finish. Callers with several
# models submit everything first and finish afterwards, so the jobs run at the same time.

@dataclass
class Submitted:
    job: object
    entry: dict
    key: str
    record: RunRecord
    notices: list


def _submit_or_resume(hub, record: RunRecord, key: str, identity: dict, submit: Callable,
                      step: Callable[[str], None]) -> Submitted:
    entry = record.job(key)
    notices: list[str] = []
    if entry and {k: entry.get(k) for k in identity} == identity and entry.get("status") != "FAILED":
        step(f"resuming AI Hub {entry['kind']} job {entry['id']}")
        job = call(hub.get_job, entry["id"], what=f"looking up job {entry['id']}")
        notices.append(f"resumed AI Hub {entry['kind']} job {entry['id']} from {record.path.name}")
        return Submitted(job, entry, key, record, notices)
    if entry and entry.get("status") == "FAILED":
        notices.append(f"AI Hub {entry['kind']} job {entry['id']} had FAILED; submitted a new one")
    job, kind = submit()
    entry = job_entry(job, kind, identity)
    record.put(key, entry)
    return Submitted(job, entry, key, record, notices)


def submit_compile(hub, model: Path, out_dir: Path, cfg: CompileConfig, device: DeviceProfile,
                   step: Callable[[str], None] = lambda msg: None, record: RunRecord | None = None,
                   key: str | None = None) -> Submitted:
    """Upload ``model`` and submit its compile job, or resume the one ``record`` (default: the
    model's own, ``<stem>.hub.json`` in ``out_dir``) holds under ``key``."""
    target_notice = check_target(model, device)
    stem = compiled_stem(model, device.soc)
    options = f"--target_runtime {cfg.target_runtime}"
    if cfg.qairt_version:
        options += f" --qairt_version {cfg.qairt_version}"
    identity = dict(model_sha256=sha256_path(model), hub_device=device.hub_devices[0], options=options)

    def submit():
        step(f"uploading {model.name} to AI Hub")
        uploaded = call(hub.upload_model, str(model), what=f"uploading {model.name}")
        step(f"submitting the compile job ({options}) for {device.hub_devices[0]}")
        job = call(hub.submit_compile_job, uploaded, device=hub_device(device),
                   name=f"skipat-deploy {stem}", input_specs=input_specs(model), options=options,
                   what="submitting the compile job")
        return job, "compile"

    sub = _submit_or_resume(hub, record or RunRecord(out_dir / f"{stem}.hub.json"),
                            key or f"compile {cfg.target_runtime}", identity, submit, step)
    if target_notice:
        sub.notices.insert(0, target_notice)
    return sub


def finish_compile(sub: Submitted, model: Path, out_dir: Path, cfg: CompileConfig,
                   device: DeviceProfile, step: Callable[[str], None] = lambda msg: None,
                   t0: float | None = None) -> CompileResult:
    """Wait for the compile job and download its target model into ``out_dir``."""
    import qai_hub

    t0 = time.perf_counter() if t0 is None else t0
    entry = wait(sub.job, sub.entry, sub.record, sub.key, step, cfg.hub_timeout_s)
    stem = compiled_stem(model, device.soc)
    with staged(out_dir) as stage:  # the downloaded model and its record move in together
        step("downloading the compiled model")
        written = Path(call(sub.job.download_target_model, str(stage.scratch / f"{stem}.hub"),
                            what=f"downloading the result of job {sub.job.job_id}"))
        staged_target = stage.path(written.name)
        shutil.move(str(written), staged_target)
        target = stage.final(staged_target)
        entry["artifact"] = target.name
        sub.record.put(sub.key, entry)
        result = CompileResult(
            model=model, model_sha256=entry["model_sha256"], backend="hub",
            device=device.name, soc=device.soc, hexagon=device.hexagon,
            artifacts={"target_model": target, "run_record": sub.record.path},
            record=out_dir / f"{stem}.compile.json", check=None,
            versions={"qai_hub": qai_hub.__version__,
                      "qairt": cfg.qairt_version or "AI Hub default"},
            seconds=time.perf_counter() - t0, jobs=[entry], notices=list(sub.notices),
            sha256={"target_model": sha256_path(staged_target)},
        )
        write_record(result, stage.dir)
    return result


def compile_hub(model: str | Path, out_dir: str | Path, cfg: CompileConfig = CompileConfig(),
                step: Callable[[str], None] = lambda msg: None, hub=None) -> CompileResult:
    """Compile ``model`` (QDQ ONNX or ``.aimet`` folder) on AI Hub for ``cfg.device`` and
    download the result into ``out_dir``; resumes a job this folder's run record names."""
    t0 = time.perf_counter()
    device = cfg.check()
    hub = hub or client()
    model, out_dir = Path(model), Path(out_dir)
    sub = submit_compile(hub, model, out_dir, cfg, device, step)
    return finish_compile(sub, model, out_dir, cfg, device, step, t0)


# --------------------------------------------------------------------------------------------
# Profiling on the phone: an inference job with profile=True on the compiled model.

@dataclass
class HubProfile:
    model: Path
    device: str
    hub_device: str
    estimated_inference_ms: float
    first_load_ms: float | None
    peak_memory_mb: tuple[float, float] | None
    compute_units: dict[str, int]  # layers that ran on NPU / GPU / CPU
    raw_profile: Path
    device_check: object | None  # NpuCheck: the phone's outputs vs the CPU QDQ model
    jobs: list[dict]
    notices: list[str]

    def to_json(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["model"], d["raw_profile"] = str(self.model), str(self.raw_profile)
        return d


def parse_profile(doc: dict) -> dict:
    """The figures of an AI Hub profile document (times in µs, memory in bytes)."""
    summary = doc.get("execution_summary") or {}
    if "estimated_inference_time" not in summary:
        raise HubError("AI Hub's profile has no execution_summary.estimated_inference_time")
    peak = summary.get("inference_memory_peak_range")
    units: dict[str, int] = {}
    for layer in doc.get("execution_detail") or []:
        unit = str(layer.get("compute_unit", "?")).upper()
        units[unit] = units.get(unit, 0) + 1
    first = summary.get("first_load_time")
    return dict(
        estimated_inference_ms=summary["estimated_inference_time"] / 1000,
        first_load_ms=None if first is None else first / 1000,
        peak_memory_mb=None if not peak else (peak[0] / 2**20, peak[1] / 2**20),
        compute_units=units,
    )


def submit_profile(hub, compiled: Submitted, model: Path, out_dir: Path, device: DeviceProfile,
                   inputs: dict, step: Callable[[str], None] = lambda msg: None) -> Submitted:
    stem = compiled_stem(model, device.soc)
    identity = dict(compile_job=compiled.job.job_id, hub_device=device.hub_devices[0])

    def submit():
        target = call(compiled.job.get_target_model, what="reading the compiled model")
        step(f"submitting the profiling inference job on {device.hub_devices[0]}")
        job = call(hub.submit_inference_job, target, device=hub_device(device),
                   inputs={k: [v] for k, v in inputs.items()}, profile=True,
                   name=f"skipat-deploy {stem}", what="submitting the inference job")
        return job, "inference"

    return _submit_or_resume(hub, RunRecord(out_dir / f"{stem}.hub.json"), "inference profile",
                             identity, submit, step)


def finish_profile(sub: Submitted, model: Path, out_dir: Path, device: DeviceProfile,
                   reference: dict | None, step: Callable[[str], None] = lambda msg: None,
                   classifier: bool = True, timeout_s: float = 3600.0) -> HubProfile:
    """Wait for the profiling job; keep its raw profile; compare the phone's outputs with
    ``reference`` (output name -> the local model's output on the same input)."""
    entry = wait(sub.job, sub.entry, sub.record, sub.key, step, timeout_s)
    doc = call(sub.job.download_profile, what=f"downloading the profile of job {sub.job.job_id}")
    figures = parse_profile(doc)
    raw = out_dir / f"{compiled_stem(model, device.soc)}.profile.json"
    with staged(out_dir) as stage:
        stage.path(raw.name).write_text(json.dumps(doc, indent=2, default=list) + "\n")
    check = None
    if reference:
        outputs = call(sub.job.download_output_data, what=f"downloading the outputs of job {sub.job.job_id}")
        name = next(iter(reference))
        got = (outputs or {}).get(name)
        if got is None and outputs and len(outputs) == 1:  # the runtime renamed the output
            got = next(iter(outputs.values()))
        if got:
            check = npu_check([reference[name]], [got[0]], "1 sample of a real photo",
                            f"{device.hub_devices[0]} (AI Hub)", classifier)
    entry["estimated_inference_ms"] = figures["estimated_inference_ms"]
    sub.record.put(sub.key, entry)
    return HubProfile(model=model, device=device.name, hub_device=device.hub_devices[0],
                      raw_profile=raw, device_check=check, jobs=[entry], notices=list(sub.notices),
                      **figures)


# --------------------------------------------------------------------------------------------
# Timing several models on the phone (--precision auto's candidates): every compile job is
# submitted before any is waited on, each profile job as soon as its compile is done; one run
# record for the set, so an interrupted search resumes its jobs instead of submitting new ones.

def time_models(models: dict[str, Path], record_path: Path, cfg: CompileConfig,
                step: Callable[[str], None] = lambda msg: None,
                hub=None) -> dict[str, tuple[float, dict]]:
    """``{name: QDQ model}`` -> ``{name: (median inference ms on the phone, how)}``: each
    compiled for ``cfg.device`` and profiled there (AI Hub's own profile job: its inference
    runs, median; AI Hub's estimate where it gives no runs)."""
    device = cfg.check()
    hub = hub or client()
    record = RunRecord(Path(record_path))
    compiles = {name: submit_compile(hub, path, record.path.parent, cfg, device, step, record,
                                     f"compile {name}") for name, path in models.items()}
    profiles: dict[str, Submitted] = {}
    for name, sub in compiles.items():
        wait(sub.job, sub.entry, record, sub.key, step, cfg.hub_timeout_s)

        def submit(sub=sub, name=name):
            target = call(sub.job.get_target_model, what="reading the compiled model")
            step(f"submitting the profile job of {name} on {device.hub_devices[0]}")
            job = call(hub.submit_inference_job, target, device=hub_device(device), profile=True,
                       name=f"skipat-deploy auto: {name}", what="submitting a profile job")
            return job, "profile"

        identity = dict(compile_job=sub.job.job_id, hub_device=device.hub_devices[0])
        profiles[name] = _submit_or_resume(hub, record, f"profile {name}", identity, submit, step)
    times = {}
    for name, sub in profiles.items():
        entry = wait(sub.job, sub.entry, record, sub.key, step, cfg.hub_timeout_s)
        doc = call(sub.job.download_profile, what=f"downloading the profile of job {sub.job.job_id}")
        figures = parse_profile(doc)
        runs = [t / 1000 for t in (doc.get("execution_summary") or {}).get("all_inference_times") or []]
        ms = float(np.median(runs)) if runs else figures["estimated_inference_ms"]
        entry["inference_ms"] = ms
        record.put(sub.key, entry)
        times[name] = (ms, dict(
            runs=len(runs), estimated_inference_ms=figures["estimated_inference_ms"],
            compute_units=figures["compute_units"], model_sha256=compiles[name].entry["model_sha256"],
            compile_job=compiles[name].job.job_id, profile_job=sub.job.job_id, url=sub.job.url,
            resumed=any(n.startswith("resumed") for n in compiles[name].notices + sub.notices)))
    return times


# --------------------------------------------------------------------------------------------
# Batched inference on the phone (accuracy runs): the images in datasets of ``chunk`` samples,
# each uploaded once (the run record keeps its id, so a re-run reuses it), one inference job per
# dataset, every job submitted before any is waited on.

def _dataset(hub, record: RunRecord, input_name: str, x: np.ndarray, step: Callable[[str], None]):
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    key = f"dataset {digest[:16]}"
    entry = record.job(key)
    if entry:
        return call(hub.get_dataset, entry["id"], what=f"looking up dataset {entry['id']}"), digest
    step(f"uploading a dataset of {len(x)} images to AI Hub")
    ds = call(hub.upload_dataset, {input_name: [xi[None] for xi in x]},
              name=f"skipat-deploy eval {digest[:8]}", what="uploading the dataset")
    record.put(key, dict(kind="dataset", id=ds.dataset_id, samples=len(x), sha256=digest))
    return ds, digest


def infer_on_device(compile_job_id: str, model: Path, out_dir: Path, device: DeviceProfile,
                    input_name: str, x: np.ndarray, samples_per_job: int,
                    step: Callable[[str], None] = lambda msg: None, timeout_s: float = 3600.0,
                    hub=None) -> tuple[np.ndarray, list[dict], list[str]]:
    """Run the compiled model of AI Hub compile job ``compile_job_id`` on ``device`` for every
    sample of ``x`` (N, ...): returns the first output (N, ...), the job entries and notices.
    Resumable: a re-run with the same images finds its datasets and jobs in the run record."""
    hub = hub or client()
    record = RunRecord(out_dir / f"{compiled_stem(model, device.soc)}.hub.json")
    compiled = call(hub.get_job, compile_job_id, what=f"looking up compile job {compile_job_id}")
    target = None
    subs: list[Submitted] = []
    for start in range(0, len(x), samples_per_job):
        chunk = x[start : start + samples_per_job]
        ds, digest = _dataset(hub, record, input_name, chunk, step)
        identity = dict(compile_job=compile_job_id, dataset_sha256=digest,
                        hub_device=device.hub_devices[0])

        def submit(ds=ds, start=start, n=len(chunk)):
            nonlocal target
            target = target or call(compiled.get_target_model, what="reading the compiled model")
            step(f"submitting inference on images {start + 1}-{start + n} ({device.hub_devices[0]})")
            job = call(hub.submit_inference_job, target, device=hub_device(device), inputs=ds,
                       profile=False, name=f"skipat-deploy eval {start + 1}-{start + n}",
                       what="submitting an inference job")
            return job, "inference"

        subs.append(_submit_or_resume(hub, record, f"inference eval {digest[:16]}", identity,
                                      submit, step))
    outputs, entries, notices = [], [], []
    for sub in subs:
        entry = wait(sub.job, sub.entry, sub.record, sub.key, step, timeout_s)
        data = call(sub.job.download_output_data, what=f"downloading the outputs of job {sub.job.job_id}")
        if not data:
            raise HubError(f"AI Hub inference job {sub.job.job_id} returned no outputs ({sub.job.url})")
        arrays = next(iter(data.values()))  # one output: the logits
        outputs.append(np.concatenate([np.asarray(a).reshape(1, -1) if np.asarray(a).ndim == 1
                                       else np.asarray(a) for a in arrays]))
        entries.append(entry)
        notices.extend(sub.notices)
    y = np.concatenate(outputs)
    if len(y) != len(x):
        raise HubError(f"AI Hub returned {len(y)} outputs for {len(x)} images")
    return y, entries, notices

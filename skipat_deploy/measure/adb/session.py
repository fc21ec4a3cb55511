"""Time context binaries on the phone with ``qnn-net-run``, and leave the phone as it was found.

One private workspace, ``/data/local/tmp/skipat-deploy-<random>``, holds the runner, the QNN
libraries, the binaries and their inputs; it is removed at the end, after a failure and on
Ctrl-C / SIGTERM (the runner still going is killed first: its pid is kept in the workspace).

Each model is run once to warm up, then in ``rounds``; in each round every model runs
``inferences`` inferences at the ``burst`` performance profile with basic profiling, the models
in turn, forward in even rounds and backward in odd ones, so thermal drift falls on all of them
alike and a ratio of two models is a ratio of back-to-back runs. Where the SDK's viewer writes
the log's events as CSV, every inference's execute time is read (:func:`.viewer.execute_times`)
and a model's figures are the median, quartiles and minimum over all its inferences; otherwise
the viewer's text gives each run's mean, min and max, and they are the median and quartiles of
the round means and the minimum inference. First load is the median context load ("Init")
time. A paired ratio (SkipAt / ViT) is the median of the per-round ratios with its
95 % interval (:func:`skipat_deploy.measure.latency.ratio_interval`). Last, one run per model
at ``--profiling_level detailed`` gives its cycles per op (:mod:`.ops`): shares of cycles, kept
apart from the timing (detailed profiling slows a run down).
"""

from __future__ import annotations

import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..latency import Ratio, ratio_interval
from .phone import Phone, PhoneError, PhoneTimeout
from .sdk import QairtSdk
from .ops import CycleShares, cycle_shares
from .viewer import RunStats, decode, execute_times, parse, parse_ops

WORKSPACE_ROOT = "/data/local/tmp"
# A run that does not finish is a hung DSP or a phone gone quiet, not a slow model: the first run
# of a model (context load and inferences) may take up to WARMUP_TIMEOUT_S; a timed run, which
# does the same work again, RUN_TIMEOUT_FACTOR times what its warm-up took, at least
# RUN_TIMEOUT_FLOOR_S (thermal throttling slows a phone by a few times, not by twenty).
WARMUP_TIMEOUT_S = 600.0
RUN_TIMEOUT_FACTOR = 20.0
RUN_TIMEOUT_FLOOR_S = 60.0
PERF_PROFILE = "burst"
PROFILING_LEVEL = "basic"

# What the phone says when it fails, and what to tell the user: (pattern, message); the first
# match names the failure (texts from QNN's logs as users report them).
PHONE_ERRORS = (
    (r"can't execute: Permission denied|Permission denied",
     "the phone would not execute qnn-net-run from {ws} (Permission denied): this phone does not "
     "allow running binaries from /data/local/tmp"),
    (r"Failed to load skel|Unable to load Skel|Error in verify skel|remote_handle64_open failed"
     r"|DspTransport\.openSession|Transport layer setup failed",
     "the phone's DSP would not load the HTP skel ({skel}) from the QAIRT SDK {version}: the SDK's "
     "Hexagon libraries and this phone's firmware do not agree (try the QAIRT release AI Hub "
     "lists for this phone)"),
    (r"Could not create context from binary.*?err (\d+)|Create From Binary FAILED|Failed to create context from binary",
     "the phone would not load the context binary {binary}: the QAIRT runtime pushed ({version}) "
     "must be at least as new as the QNN that built it ({built}), and the binary must be for this "
     "phone's SoC"),
    (r"CANNOT LINK EXECUTABLE|library \"[^\"]+\" not found",
     "the phone could not start qnn-net-run: a library it needs is missing (QAIRT SDK {version})"),
    (r"graph requires estimated allocation of \d+ KB, limit is \d+ KB",
     "the model needs more HTP memory than this phone allows"),
    (r"SSR detected|NPU crashed", "the phone's NPU crashed running {binary} (subsystem restart)"),
)


@dataclass
class ModelTiming:
    """One model's runs on the phone: ``rounds[i]`` is round ``i``'s viewer figures."""

    name: str
    binary: str
    inferences: int  # per round
    rounds: list[RunStats] = field(default_factory=list)
    # per round: each inference's execute time (us), where the viewer's CSV gives them
    inference_us: list[list[float] | None] = field(default_factory=list)
    cycles: CycleShares | None = None  # the detailed run's cycles per part

    @property
    def per_inference(self) -> bool:
        """Every round's inferences are known one by one."""
        return bool(self.inference_us) and all(
            t is not None and len(t) == self.inferences for t in self.inference_us)

    def means_ms(self) -> np.ndarray:
        """Each round's mean per inference."""
        if self.per_inference:
            return np.array([np.mean(t) for t in self.inference_us]) / 1e3
        return np.array([r.mean_us for r in self.rounds]) / 1e3

    def samples_ms(self) -> np.ndarray:
        """What the median and quartiles are of: every inference, or else every round's mean."""
        if self.per_inference:
            return np.concatenate(self.inference_us) / 1e3
        return self.means_ms()

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms()))

    @property
    def iqr_ms(self) -> tuple[float, float]:
        q1, q3 = np.percentile(self.samples_ms(), [25, 75])
        return float(q1), float(q3)

    @property
    def min_ms(self) -> float:
        if self.per_inference:
            return float(self.samples_ms().min())
        return min(r.min_us for r in self.rounds) / 1e3

    @property
    def first_load_ms(self) -> float:
        return float(np.median([r.init_us for r in self.rounds])) / 1e3

    def to_json(self) -> dict:
        return dict(name=self.name, binary=self.binary, inferences_per_round=self.inferences,
                    per_inference=self.per_inference, inference_us=self.inference_us,
                    median_ms=self.median_ms, iqr_ms=self.iqr_ms, min_ms=self.min_ms,
                    first_load_ms=self.first_load_ms, rounds=[asdict(r) for r in self.rounds],
                    cycles=None if self.cycles is None else self.cycles.to_json())


@dataclass
class PhoneTiming:
    """What the phone measured, and on what: the phone, the SDK, the QNN that built the
    binaries, the performance profile."""

    phone: dict
    sdk: dict
    qnn_built_with: str
    models: dict[str, ModelTiming]
    rounds: int
    inferences: int
    perf_profile: str = PERF_PROFILE
    notices: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.phone['model']} ({self.phone['soc']}) over adb"

    @property
    def per_inference(self) -> bool:
        return all(m.per_inference for m in self.models.values())

    @property
    def statistic(self) -> str:
        """What the medians and quartiles are of."""
        if self.per_inference:
            return (f"all {self.rounds * self.inferences} inferences per model (each one's "
                    "\"QNN (execute) time\" event in the profiling log)")
        return (f"the {self.rounds} rounds' means (qnn-net-run's NetRun; the viewer gave each "
                "run's mean, min and max, not every inference)")

    def ratio(self, numerator: str, denominator: str) -> Ratio:
        """``numerator`` / ``denominator`` from the same rounds: median and 95 % interval."""
        times = np.stack([self.models[denominator].means_ms(), self.models[numerator].means_ms()], 1)
        return ratio_interval(times, 1, 0)

    def to_json(self) -> dict:
        return dict(measured_on=self.where, statistic=self.statistic, phone=self.phone, sdk=self.sdk,
                    qnn_built_with=self.qnn_built_with, perf_profile=self.perf_profile,
                    profiling_level=PROFILING_LEVEL, rounds=self.rounds,
                    inferences_per_round=self.inferences,
                    models={k: m.to_json() for k, m in self.models.items()}, notices=self.notices)


def time_on_phone(phone: Phone, sdk: QairtSdk, binaries: dict[str, Path], inputs: dict[str, Path],
                  logs_dir: Path, built_with: str, rounds: int = 10, inferences: int = 20,
                  step: Callable[[str], None] = lambda msg: None) -> PhoneTiming:
    """Time each context binary (``binaries``: name -> ``.bin``, each fed ``inputs[name]``, a
    float32 raw file) on ``phone``; the viewer's text of every timed run is written into
    ``logs_dir``. ``built_with``: the QNN version that built the binaries (named when one will
    not load)."""
    if rounds < 1 or inferences < 1:
        raise ValueError("rounds and inferences must be at least 1")
    ws = f"{WORKSPACE_ROOT}/skipat-deploy-{secrets.token_hex(4)}"
    facts = dict(ws=ws, version=sdk.version, built=built_with, skel=sdk.skel.name, binary="")
    timing = PhoneTiming(dict(model=phone.model, soc=phone.soc, android=phone.android,
                              build=phone.build, serial=phone.serial, device=phone.device.name),
                         sdk.to_json(), built_with,
                         {n: ModelTiming(n, Path(b).name, inferences) for n, b in binaries.items()},
                         rounds, inferences)
    logs_dir.mkdir(parents=True, exist_ok=True)
    created = False
    with tempfile.TemporaryDirectory(prefix="skipat-adb-") as tmp:
        try:
            rc, out = phone.shell(f"mkdir {ws}", timeout=30.0)
            if rc != 0:
                raise PhoneError(f"could not make the workspace {ws} on the phone: {_last(out)}")
            created = True
            step(f"pushing qnn-net-run and the QNN {sdk.hexagon} libraries (QAIRT {sdk.version}) "
                 f"to {phone.describe()}")
            for lib in sdk.pushed():
                phone.push(lib, f"{ws}/{lib.name}")
            for name, binary in binaries.items():
                listing = Path(tmp) / f"{name}.list"
                listing.write_text(f"{name}.raw\n")
                for local, remote in ((binary, f"{name}.bin"), (inputs[name], f"{name}.raw"),
                                      (listing, listing.name)):
                    phone.push(Path(local), f"{ws}/{remote}")
            rc, out = phone.shell(f"chmod 755 {ws}/qnn-net-run", timeout=30.0)
            if rc != 0:
                raise PhoneError(f"could not make {ws}/qnn-net-run executable: {_last(out)}")
            names = list(binaries)
            step(f"warming up: each model once, {inferences} inferences ({PERF_PROFILE})")
            limit = {}  # per model: how long a timed run may take
            for name in names:
                took = _run(phone, sdk, ws, name, "warmup", inferences, Path(tmp), facts,
                            WARMUP_TIMEOUT_S, "the bound for a first run, context load included")[1]
                limit[name] = (max(RUN_TIMEOUT_FLOOR_S, RUN_TIMEOUT_FACTOR * took),
                               f"{RUN_TIMEOUT_FACTOR:.0f}x its warm-up run's {took:.1f} s")
            events = True  # asked of the viewer until it writes none: then the text is all there is
            for r in range(rounds):
                order = names if r % 2 == 0 else names[::-1]
                step(f"round {r + 1}/{rounds} on {phone.model}: {', '.join(order)}")
                for name in order:
                    text = logs_dir / f"{name}.round{r + 1}.txt"
                    log = _run(phone, sdk, ws, name, f"r{r + 1}", inferences, Path(tmp), facts,
                               *limit[name])[0]
                    timing.models[name].rounds.append(parse(decode(sdk.viewer, log, text)))
                    times = execute_times(sdk.viewer, log, text.with_suffix(".csv")) if events else None
                    timing.models[name].inference_us.append(times)
                    events = times is not None
            step("one detailed profiling run per model: its cycles per op")
            for name in names:
                text = logs_dir / f"{name}.detailed.txt"
                log = _run(phone, sdk, ws, name, "detailed", inferences, Path(tmp), facts,
                           *limit[name], level="detailed")[0]
                ops = parse_ops(decode(sdk.viewer, log, text))
                if ops is None:
                    timing.notices.append(f"{name}: the detailed profiling run printed no per-op "
                                          f"cycles ({text.name}): no breakdown by part")
                else:
                    timing.models[name].cycles = cycle_shares(ops)
        finally:
            if created:
                try:  # the runner may still be going (Ctrl-C): stop it, then remove everything
                    phone.shell(f"kill $(cat {ws}/pid 2>/dev/null) 2>/dev/null; rm -rf {ws}", timeout=60.0)
                except PhoneError:
                    timing.notices.append(f"could not remove {ws} from the phone (it went away): "
                                          f"`adb shell rm -rf {ws}` when it is back")
    return timing


def _run(phone: Phone, sdk: QairtSdk, ws: str, name: str, tag: str, inferences: int, tmp: Path,
         facts: dict, timeout: float, bound: str, level: str = PROFILING_LEVEL) -> tuple[Path, float]:
    """One qnn-net-run of ``name``: its profiling log, pulled into ``tmp``, and how long the run
    took here, wall clock; one that takes more than ``timeout`` seconds (``bound`` says why
    that many) is a failure."""
    out_dir = f"out-{name}-{tag}"
    runner = (f"./qnn-net-run --backend libQnnHtp.so --retrieve_context {name}.bin "
              f"--input_list {name}.list --output_dir {out_dir} --profiling_level {level} "
              f"--perf_profile {PERF_PROFILE} --num_inferences {inferences}")
    command = (f"cd {ws} && export LD_LIBRARY_PATH={ws} && export ADSP_LIBRARY_PATH={ws} && "
               f"sh -c 'echo $$ > pid && exec {runner}' 2>&1")
    t0 = time.monotonic()
    try:
        rc, out = phone.shell(command, timeout=timeout)
    except PhoneTimeout:
        raise PhoneError(f"qnn-net-run did not finish {name}.bin on the phone within {timeout:.0f} s "
                         f"({bound}): the DSP hung or the phone stopped answering; unplug and "
                         "replug it (or reboot it) and run again") from None
    took = time.monotonic() - t0
    facts = dict(facts, binary=f"{name}.bin")
    for pattern, message in PHONE_ERRORS:
        m = re.search(pattern, out)
        if m:
            raise PhoneError(message.format(**facts) + f" (the phone said: {_line_of(out, m)})")
    if rc != 0:
        raise PhoneError(f"qnn-net-run failed on the phone with exit {rc} running {name}.bin: "
                         f"{_last(out) or 'no output'}")
    rc, listing = phone.shell(f"ls {ws}/{out_dir}", timeout=30.0)
    logs = sorted(ln.strip() for ln in listing.splitlines() if re.match(r"qnn-profiling-data.*\.log$", ln.strip()))
    if rc != 0 or not logs:
        raise PhoneError(f"qnn-net-run wrote no profiling log for {name}.bin on the phone "
                         f"({ws}/{out_dir}): {_last(out) or 'no output'}")
    local = tmp / f"{name}-{tag}.log"
    phone.pull(f"{ws}/{out_dir}/{logs[0]}", local)
    phone.shell(f"rm -rf {ws}/{out_dir}", timeout=30.0)
    return local, took


def _last(out: str) -> str:
    return next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "")


def _line_of(out: str, m: re.Match) -> str:
    start = out.rfind("\n", 0, m.start()) + 1
    end = out.find("\n", m.end())
    return out[start: end if end >= 0 else None].strip()


def write_input(model: Path, raw: Path) -> Path:
    """One input of ``model`` (a real photo, pre-processed as its metadata says; seeded noise
    without metadata) as the float32 raw file qnn-net-run reads: latency does not depend on
    it, but the runner needs the tensor the graph takes."""
    from ...export import one_sample

    np.ascontiguousarray(one_sample(model).x, dtype=np.float32).tofile(raw)
    return raw

"""``profile`` / ``compare --backend adb`` against a fake ``adb`` and a fake QAIRT SDK
(tests/adb_fake): the phone is a folder, qnn-net-run and qnn-profile-viewer are scripts that
write and print fixture figures in the viewer's text format. What runs for real: the commands,
the local compile (onnxruntime-qnn, HTP simulator gate), every adb call as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skipat_deploy.cli import app

from .adb_fake.fixture import fake_sdk, phone  # noqa: F401  (the fixture)
from .conftest import default_signals
from .test_json_artifacts import listed

runner = CliRunner()
# the per-round means (us) the fake phone gives each binary; entry 0 is the warm-up
VIT = [9000, 5000, 5100, 4950, 5300, 5050, 5200, 4900, 5150, 5000, 6000]
SKIPAT = [8000, 4200, 4300, 4100, 4400, 4250, 4150, 4350, 4200, 4000, 4800]


def _runs(means, init=250000):
    return [[init + 1000 * i, m, m - 100 - i, m + 300] for i, m in enumerate(means)]


def _compare(phone, out, *extra):
    return runner.invoke(app, [
        "compare", "--backend", "adb", "--vit", str(phone.nano["vit_nano_patch16"]),
        "--skipat", str(phone.nano["skipat_nano_patch16"]), "--resolution", "112",
        "--quant-backend", "ort", "--qairt-sdk", str(phone.sdk), "--rounds", "10",
        "--inferences", "3", "--out", str(out), *extra])


# One execution's per-op events of the nano models at 112 px, written by the real QNN 2.51 HTP
# libraries (onnxruntime-qnn's x86-64 simulator, profiling_level detailed): the real node
# names and event identifiers; the simulator's cycles stand in for a phone's (shares only).
OPS = {name: Path(__file__).parent / "data" / "adb" / f"{name.replace('_', '_nano_')}.htp_sim_ops.csv"
       for name in ("vit_112", "skipat_112")}


@pytest.fixture
def s22(phone, nano_ckpts):  # noqa: F811
    phone.nano = nano_ckpts
    phone.set(runs={"vit_112": _runs(VIT), "skipat_112": _runs(SKIPAT)},
              ops={k: str(v) for k, v in OPS.items()})
    return phone


def test_compare_over_adb_reports_the_median_and_the_ratio_interval_computed_by_hand(tmp_path, s22):
    res = _compare(s22, tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    # by hand, from the fixture: the 10 timed rounds (the warm-up dropped)
    vit, skipat = sorted(VIT[1:]), sorted(SKIPAT[1:])
    assert rows["vit"]["latency_ms"] == pytest.approx((vit[4] + vit[5]) / 2 / 1e3)  # 5.075
    assert rows["skipat"]["latency_ms"] == pytest.approx((skipat[4] + skipat[5]) / 2 / 1e3)  # 4.225
    ratios = sorted(s / v for s, v in zip(SKIPAT[1:], VIT[1:]))
    # 95 % interval of the median of 10 paired ratios: ranks 1 and 9 of the sorted ratios
    assert rows["skipat"]["ratio_vs_vit"] == pytest.approx((ratios[4] + ratios[5]) / 2)
    assert rows["skipat"]["ratio_ci"] == pytest.approx([ratios[0], ratios[8]])
    assert rows["vit"]["iqr_ms"] == pytest.approx([5.0, 5.1875])  # numpy's linear quartiles
    assert rows["skipat"]["min_ms"] == pytest.approx(min(m - 100 - i for i, m in enumerate(SKIPAT) if i) / 1e3)
    assert rows["vit"]["first_load_ms"] == pytest.approx(250 + 5.5)  # median init of rounds 1-10
    # what it says it measured on, and with what
    assert all("SM-S901U (SM8450) over adb" in r["measured_on"] for r in report["rows"])
    assert report["phone"]["sdk"]["version"] == "2.51.0.251020"
    assert report["phone"]["perf_profile"] == "burst" and report["phone"]["qnn_built_with"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "over adb" in md and "Android 14" in md and "paper, S22 NPU INT8 ms" not in md  # 112 px
    assert {m["name"] for m in doc["measurements"]} >= {"phone_latency_median", "skipat_vit_ratio"}
    assert all("over adb" in m["source"] for m in doc["measurements"] if "latency" in m["name"])
    # the models alternated, forward then backward, after one warm-up each
    order = [Path(a[a.index("--retrieve_context") + 1]).stem for a in s22.net_runs()]
    assert order[:4] == ["vit_112", "skipat_112", "vit_112", "skipat_112"]
    assert order[4:6] == ["skipat_112", "vit_112"] and len(order) == 24
    levels = [a[a.index("--profiling_level") + 1] for a in s22.net_runs()]
    assert levels == ["basic"] * 22 + ["detailed"] * 2  # the detailed runs kept out of the timing
    # the cycles by part: Φ's ops are SkipAt's /param_* and /phi_* nodes, and only those
    for fam, key in (("vit", "vit_112"), ("skipat", "skipat_112")):
        events = [ln.rsplit(",", 1) for ln in OPS[key].read_text().splitlines()[2:]]
        cycles = {name: int(n) for name, n in events}
        phi = sum(n for name, n in cycles.items() if "/param_" in name or "/phi_" in name)
        shares = rows[fam]["cycle_shares"]
        assert shares["phi"] == pytest.approx(phi / sum(cycles.values()))
        assert sum(shares.values()) == pytest.approx(1.0)
        assert (shares["phi"] > 0) == (fam == "skipat") and shares["attention"] > 0.05
    assert "Where the NPU's cycles go" in md
    run = s22.net_runs()[0]
    assert run[run.index("--perf_profile") + 1] == "burst" and run[run.index("--num_inferences") + 1] == "3"
    # what was pushed, from where; and the phone left as it was found
    pushed = {Path(a[2]).name for a in s22.adb_calls("push")}
    assert {"qnn-net-run", "libQnnHtp.so", "libQnnSystem.so", "libQnnHtpV69Stub.so",
            "libQnnHtpV69Skel.so", "vit_112.bin", "skipat_112.bin"} <= pushed
    assert all(a[1].endswith(".ctx_qnn.bin") for a in s22.adb_calls("push") if a[2].endswith(".bin"))
    assert all(a[2].startswith("/data/local/tmp/skipat-deploy-") for a in s22.adb_calls("push"))
    assert s22.workspaces() == []
    logs = sorted((tmp_path / "out" / "compare.adb").iterdir())
    assert len(logs) == 22 and "NetRun" in logs[0].read_text()
    assert sum(1 for a in doc["artifacts"] if a["kind"] == "context_binary") == 2
    # --json lists every file that appeared in --out, and only those
    out = (tmp_path / "out").resolve()
    assert {f.resolve() for f in out.rglob("*") if f.is_file()} == listed(doc)


def _lines(res) -> list[str]:
    """The error lines (a notice may wrap over several lines; an error is one)."""
    return [ln for ln in res.output.splitlines() if ln.startswith("error")]


def _nothing_started(phone, out):
    assert not phone.adb_calls("push") and not phone.net_runs()
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


PREFLIGHT = {
    # scenario: (what to change, the error's words)
    "adb missing": ("no-adb", "adb not found: install Android SDK platform-tools"),
    "no phone": (dict(devices=[]), "no phone attached"),
    "two phones": (dict(devices=[["A1", "device"], ["B2", "device"]]), "2 phones attached (A1, B2): choose one with --serial"),
    "unauthorized": (dict(devices=[["A1", "unauthorized"]]), "unauthorized: unlock it and accept"),
    "offline": (dict(devices=[["A1", "offline"]]), "is offline: reconnect"),
    "serial not attached": ("--serial=ZZZ", "no phone with serial ZZZ is attached (adb sees: R5CT21ABCDE)"),
    "another SoC": ({"ro.soc.model": "SM8550"}, "not --device Galaxy S22 (SM8450): give --device \"Galaxy S23\""),
    "no SoC (Android 11)": ({"ro.soc.model": ""}, "ro.soc.model is empty"),
    "an Exynos S22": ({"ro.soc.model": "s5e9925"}, "reports SoC s5e9925, which no target has: --backend adb needs a Snapdragon phone"),
    "no SDK": ("no-sdk", "needs Qualcomm's QAIRT SDK: give --qairt-sdk"),
    "no runner": ("bin/aarch64-android/qnn-net-run", "lacks the phone's runner (bin/aarch64-android/qnn-net-run)"),
    "no v69 skel": ("v73", "lacks the Hexagon v69 stub"),
    "no viewer": ("bin/x86_64-linux-clang/qnn-profile-viewer", "lacks the profile viewer"),
    "SDK too old": ("2.40.0.250101", "is 2.40.0.250101, older than QNN"),
}


@pytest.mark.parametrize("scenario", list(PREFLIGHT))
def test_a_preflight_failure_is_one_line_before_anything_is_made_or_pushed(tmp_path, s22, monkeypatch, scenario):
    change, words = PREFLIGHT[scenario]
    extra, sdk = [], s22.sdk
    if change == "no-adb":
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
    elif change == "no-sdk":
        sdk = None
    elif isinstance(change, str) and change.startswith("--"):
        extra = [change]
    elif change == "v73":
        sdk = fake_sdk(tmp_path / "sdk73", hexagon="v73")
    elif isinstance(change, str) and change.startswith("2."):
        sdk = fake_sdk(tmp_path / "old", version=change)
    elif isinstance(change, str):
        sdk = fake_sdk(tmp_path / "partial", leave_out=(change,))
    elif "devices" in change:
        s22.set(**change)
    else:
        for name, value in change.items():
            (s22.props / name).write_text(value + "\n")
    out = tmp_path / "out"
    args = ["compare", "--backend", "adb", "--resolution", "112", "--out", str(out), *extra]
    if sdk is not None:
        args += ["--qairt-sdk", str(sdk)]
    t0 = time.monotonic()
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    (line,) = _lines(res)
    assert res.output.rstrip().endswith(line), res.output
    assert line.startswith("error: ") and words in line, line
    assert time.monotonic() - t0 < 20  # before loading, quantizing or compiling anything
    _nothing_started(s22, out)


def _session(s22, tmp_path, **scenario):
    """time_on_phone on the fake phone with two stand-in binaries (nothing compiled)."""
    from skipat_deploy.devices import resolve_device
    from skipat_deploy.measure import adb

    s22.set(**scenario)
    target = adb.AdbTarget(adb.find_phone(None, resolve_device("s22")),
                           adb.find_sdk(s22.sdk, "v69", "2.51.0"), "2.51.0")
    binaries, inputs = {}, {}
    for name in ("vit_112", "skipat_112"):
        binaries[name] = tmp_path / f"{name}.ctx_qnn.bin"
        inputs[name] = tmp_path / f"{name}.raw"
        binaries[name].write_bytes(b"ctx")
        inputs[name].write_bytes(b"\0" * 12)
    return lambda: adb.time_on_phone(target.phone, target.sdk, binaries, inputs, tmp_path / "logs",
                                     target.built_with, rounds=2, inferences=2)


SKEL = """QnnDsp <E> DspTransport.openSession qnn_open failed, 0xffffffff, prio 100
QnnDsp <E> IDspTransport: Unknown rpc status 0x000003ff
QnnDsp <E> Failed to load skel, error: 4000"""
RUNTIME = {
    # scenario: (fake phone's behaviour, the error's words)
    "skel": (dict(fail={"text": SKEL, "rc": 1, "run": 1}), "the phone's DSP would not load the HTP skel (libQnnHtpV69Skel.so)"),
    "context": (dict(fail={"text": '[ERROR] "Could not create context from binary for context index = 0 : err 5000"',
                           "rc": 1, "run": 3}), "would not load the context binary vit_112.bin"),
    "hidden exit": (dict(fail={"text": "something else went wrong", "rc": 3, "run": 2}),
                    "qnn-net-run failed on the phone with exit 3 running skipat_112.bin: something else went wrong"),
    "no exec": (dict(fail={"text": "/system/bin/sh: ./qnn-net-run: can't execute: Permission denied", "rc": 126, "run": 1}),
                "would not execute qnn-net-run"),
    "lost": (dict(lose_on="--retrieve_context"), "lost the phone R5CT21ABCDE while running a command: adb: device offline"),
    "full": (dict(push_error="No space left on device"), "could not push qnn-net-run to the phone R5CT21ABCDE"),
    "missing library": (dict(fail={"text": 'CANNOT LINK EXECUTABLE "./qnn-net-run": library "libc++_shared.so" not found',
                                   "rc": 1, "run": 1}), "a library it needs is missing (QAIRT SDK 2.51.0.251020)"),
}


@pytest.mark.parametrize("scenario", list(RUNTIME))
def test_a_failure_on_the_phone_is_named_in_one_line_and_the_workspace_is_removed(tmp_path, s22, scenario):
    from skipat_deploy.measure.adb import PhoneError

    change, words = RUNTIME[scenario]
    run = _session(s22, tmp_path, **change)
    with pytest.raises(PhoneError) as e:
        run()
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert e.value.exit_code == 5
    assert s22.workspaces() == []  # removed, the runner stopped first
    assert any("rm -rf /data/local/tmp/skipat-deploy-" in " ".join(a) for a in s22.adb_calls("shell"))


def test_a_failure_on_the_phone_leaves_out_as_it_was(tmp_path, s22):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.md").write_text("the last run's report\n")
    s22.set(fail={"text": '[ERROR] "Could not create context from binary for context index = 0 : err 5005"',
                  "rc": 1, "run": 4})
    res = _compare(s22, out)
    assert res.exit_code == 5, res.output
    (line,) = _lines(res)
    assert "would not load the context binary" in line and "err 5005" in line
    assert sorted(p.name for p in out.iterdir()) == ["compare.md"]
    assert (out / "compare.md").read_text() == "the last run's report\n"
    assert s22.workspaces() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_on_the_phone_stops_the_runner_and_removes_the_workspace(tmp_path, s22, qdq_s22, sig):
    """The real clock and a real process: Ctrl-C / SIGTERM while qnn-net-run runs on the (fake)
    phone (one model: the session is the same for one or four)."""
    s22.set(hang=2)  # run 1: the warm-up; 2: the first timed run
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from skipat_deploy.cli import main; main()", "profile",
           "--backend", "adb", "--model", str(qdq_s22), "--qairt-sdk", str(s22.sdk),
           "--rounds", "2", "--inferences", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals, env=dict(os.environ))
    hanging = s22.dir / "phone" / "hanging"
    t0 = time.monotonic()
    while not hanging.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 240
        time.sleep(0.05)
    runner_pid = int(hanging.read_text())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert [ln for ln in err.splitlines() if ln.startswith("error")] == [
        f"error: {word} by {sig.name}: {out} left as it was"], err
    assert s22.workspaces() == []
    with pytest.raises(ProcessLookupError):
        os.kill(runner_pid, 0)  # the runner on the phone was stopped, not left going
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def qdq_s22(tmp_path_factory, nano_ckpts):
    from skipat_deploy import api

    return api.quantize(nano_ckpts["vit_nano_patch16"], tmp_path_factory.mktemp("qdq"), precision="w8a8",
                        backend="ort", num_calib=4, num_eval=2, npu_samples=0, resolution=112).qdq_onnx


def test_profile_over_adb_compiles_here_and_times_on_the_phone(tmp_path, phone, qdq_s22):  # noqa: F811
    phone.set(default_runs=_runs(VIT))
    res = runner.invoke(app, ["profile", "--backend", "adb", "--model", str(qdq_s22), "--qairt-sdk",
                              str(phone.sdk), "--rounds", "10", "--inferences", "3",
                              "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    figures = {m["name"]: m for m in doc["measurements"]}
    assert figures["phone_latency_median"]["value"] == pytest.approx(5.075)
    assert figures["phone_latency_min"]["value"] == pytest.approx(4.793)  # round 7: 4900 - 100 - 7 us
    assert "SM-S901U (SM8450) over adb" in figures["phone_latency_median"]["source"]
    kinds = {a["kind"] for a in doc["artifacts"]}
    assert {"context_binary", "compile_record", "phone_logs"} <= kinds
    out = (tmp_path / "out").resolve()
    assert {f.resolve() for f in out.rglob("*") if f.is_file()} == listed(doc)
    assert phone.workspaces() == []


def test_auto_takes_the_phone_only_when_one_is_attached_and_an_sdk_is_set(phone, monkeypatch):  # noqa: F811
    from skipat_deploy.measure.compare import resolve_backend

    notices = []
    assert resolve_backend("auto", notices) == "cpu"  # no SDK set: AI Hub, else the CPU
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(phone.sdk))
    notices = []
    assert resolve_backend("auto", notices) == "adb"
    assert notices == [f"--backend auto: timing on the phone R5CT21ABCDE over adb with the QAIRT SDK at {phone.sdk}"]
    phone.set(devices=[["A1", "device"], ["B2", "device"]])
    assert resolve_backend("auto", []) == "cpu"
    assert resolve_backend("auto", [], serial="B2") == "adb"
    phone.set(devices=[["A1", "unauthorized"]])
    assert resolve_backend("auto", []) == "cpu"


def test_a_run_that_hangs_on_the_phone_ends_at_a_bound_set_by_its_warm_up(tmp_path, s22, monkeypatch):
    """The real clock and real processes: the first timed run never finishes on the phone; it
    is given up after RUN_TIMEOUT_FACTOR times its warm-up (the floor lowered from 60 s so the
    test takes seconds), the runner is killed and the workspace removed."""
    from skipat_deploy.measure.adb import PhoneError, session

    monkeypatch.setattr(session, "RUN_TIMEOUT_FLOOR_S", 1.0)
    monkeypatch.setattr(session, "RUN_TIMEOUT_FACTOR", 4.0)
    run = _session(s22, tmp_path, hang=3)  # runs 1-2: the warm-ups; 3: vit_112's first timed run
    t0 = time.monotonic()
    with pytest.raises(PhoneError) as e:
        run()
    took = time.monotonic() - t0
    assert "qnn-net-run did not finish vit_112.bin on the phone within" in str(e.value)
    assert "4x its warm-up run's" in str(e.value)
    assert took < 30  # the fake would sleep 600 s
    assert s22.workspaces() == []
    with pytest.raises(ProcessLookupError):
        os.kill(int((s22.dir / "phone" / "hanging").read_text()), 0)


def test_each_op_is_given_the_part_of_the_network_it_ran_in():
    from skipat_deploy.measure.adb.ops import part_of_each

    names = ["Input OpId_2", "/patch_embed/proj/Conv_token_49", "/norm1/LayerNormalization",
             "MatMul_0", "/attn/softmax/Softmax", "Gemm_3", "/attn_residual/Add",
             "/norm2/LayerNormalization", "Gemm_6", "/mlp/act/Gelu", "/mlp_residual/Add",
             "/param_1/linear1/linear1.0/Conv_token_55", "/phi_out.5/Conv_token_199", "/Reshape_6",
             "/phi_concats.5/Concat", "/attn_residual_2/Add", "/norm2_2/LayerNormalization",
             "Gemm_24", "/mlp_residual_2/Add", "/norm/LayerNormalization", "/head/Gemm"]
    assert part_of_each(names) == [
        "other", "other", "attention", "attention", "attention", "attention", "attention",
        "mlp", "mlp", "mlp", "mlp", "phi", "phi", "other", "phi", "other", "mlp", "mlp", "mlp",
        "other", "other"]


def test_every_inference_is_timed_where_the_viewer_writes_the_events(tmp_path, phone, qdq_s22):  # noqa: F811
    """A viewer that writes the log's events as CSV gives each inference's execute time: the
    median, quartiles and minimum are then over all of them, computed here by hand."""
    per_run = [[9000, 9000, 9000],  # the warm-up, not counted
               [5000, 5100, 5200], [4900, 5050, 5300], [5000, 5000, 5100], [5400, 4950, 5050]]
    phone.set(default_runs=_runs(VIT), per_inference={"model": per_run})
    res = runner.invoke(app, ["profile", "--backend", "adb", "--model", str(qdq_s22), "--qairt-sdk",
                              str(phone.sdk), "--rounds", "4", "--inferences", "3",
                              "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    figures = {m["name"]: m["value"] for m in doc["measurements"]}
    # the 12 timed inferences sorted: 4900 4950 5000 5000 5000 5050 5050 5100 5100 5200 5300 5400
    assert figures["phone_latency_median"] == pytest.approx(5.05)
    assert figures["phone_latency_min"] == pytest.approx(4.9)
    (result,) = doc["results"]
    model = result["phone"]["models"]["model"]
    assert model["per_inference"] and model["iqr_ms"] == pytest.approx([5.0, 5.125])
    assert "all 12 inferences per model" in result["phone"]["statistic"]


def test_auto_says_in_one_line_which_it_took(phone, fake_hub, monkeypatch):  # noqa: F811
    """adb first, AI Hub next, the CPU last: each choice named in one notice."""
    from skipat_deploy.measure.compare import resolve_backend

    notices = []
    assert resolve_backend("auto", notices) == "hub"  # AI Hub configured, no SDK set
    assert notices == ["--backend auto: timing on the phone through AI Hub (configured); no phone "
                       "over adb with a QAIRT SDK set"]
    monkeypatch.setenv("QAIRT_SDK_ROOT", str(phone.sdk))
    notices = []
    assert resolve_backend("auto", notices) == "adb" and len(notices) == 1


def test_the_sdk_pushes_its_optional_libraries_only_where_it_has_them(tmp_path):
    from skipat_deploy.measure.adb import find_sdk

    root = fake_sdk(tmp_path / "qairt")
    bare = {p.name for p in find_sdk(root, "v69", "2.51.0").pushed()}
    assert bare == {"qnn-net-run", "libQnnHtp.so", "libQnnSystem.so", "libQnnHtpV69Stub.so", "libQnnHtpV69Skel.so"}
    (root / "lib" / "aarch64-android" / "libc++_shared.so").write_text("")
    sdk = find_sdk(root, "v69", "2.51.0")
    assert {p.name for p in sdk.pushed()} == bare | {"libc++_shared.so"}
    assert sdk.skel.name == "libQnnHtpV69Skel.so"

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


@pytest.fixture
def s22(phone, nano_ckpts):  # noqa: F811
    phone.nano = nano_ckpts
    phone.set(runs={"vit_112": _runs(VIT), "skipat_112": _runs(SKIPAT)})
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
    assert all("SM-S901B (SM8450) over adb" in r["measured_on"] for r in report["rows"])
    assert report["phone"]["sdk"]["version"] == "2.51.0.251020"
    assert report["phone"]["perf_profile"] == "burst" and report["phone"]["qnn_built_with"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "over adb" in md and "Android 14" in md and "paper, S22 NPU INT8 ms" not in md  # 112 px
    assert {m["name"] for m in doc["measurements"]} >= {"phone_latency_median", "skipat_vit_ratio"}
    assert all("over adb" in m["source"] for m in doc["measurements"] if "latency" in m["name"])
    # the models alternated, forward then backward, after one warm-up each
    order = [Path(a[a.index("--retrieve_context") + 1]).stem for a in s22.net_runs()]
    assert order[:4] == ["vit_112", "skipat_112", "vit_112", "skipat_112"]
    assert order[4:6] == ["skipat_112", "vit_112"] and len(order) == 22
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
    assert len(logs) == 20 and "NetRun" in logs[0].read_text()
    assert sum(1 for a in doc["artifacts"] if a["kind"] == "context_binary") == 2

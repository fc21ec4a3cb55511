"""The AI Hub path under faults, through the real qai_hub client against the loopback fake:
transient faults are retried, permanent ones end in one line, nothing downloaded is lost or
replaced by a partial file, and interrupted runs resume their recorded jobs."""

from __future__ import annotations

import json
import socket
import time

import pytest
from typer.testing import CliRunner

from skipat_deploy import api
from skipat_deploy.cli import app
from skipat_deploy.npu.hub import HubError

from .hub_fake.speed import make_client_fast

pytest.importorskip("qai_hub")


@pytest.fixture(scope="module")
def qdq(tmp_path_factory, nano_ckpts):
    d = tmp_path_factory.mktemp("qdq")
    return api.quantize(nano_ckpts["vit_nano_patch16"], d, precision="w8a8", backend="ort",
                        num_calib=4, num_eval=2, npu_samples=0).qdq_onnx


class Clock:
    """Our module's clock and sleep: sleeping advances time, instantly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def hub(fake_hub, monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    clock = Clock()
    monkeypatch.setattr(hub_mod, "_clock", clock)
    monkeypatch.setattr(hub_mod, "_sleep", clock.sleep)
    fake_hub.clock = clock
    return fake_hub


def _compile(qdq, out, **kw):
    return api.compile(qdq, out, backend="hub", **kw)


def test_429_then_success(tmp_path, qdq, hub):
    hub.fail_next("/jobs/", 429, count=3, method="POST")
    r = _compile(qdq, tmp_path)
    assert r.artifacts["target_model"].is_file() and len(hub.jobs) == 1


def test_5xx_then_success_is_retried_with_backoff(tmp_path, qdq, hub):
    hub.fail_next("/jobs/", 503, count=9, method="GET")  # beyond the client's own 7 tries
    r = _compile(qdq, tmp_path)
    assert r.artifacts["target_model"].is_file()
    assert hub.clock.now >= 5  # our backoff waited (instantly, on the fake clock)


def test_a_job_that_never_finishes_hits_the_timeout_and_a_rerun_resumes(tmp_path, qdq, hub):
    hub.polls_until_done = 10**6
    with pytest.raises(HubError, match=r"still .* after 120 s \(--hub-timeout\); run the same command again"):
        _compile(qdq, tmp_path, hub_timeout_s=120)
    assert not list(tmp_path.glob("*.bin"))
    (job,) = hub.jobs.values()
    hub.polls_until_done = 0
    job.polls_until_done = 0
    r = _compile(qdq, tmp_path)
    assert len(hub.jobs) == 1 and r.jobs[0]["id"] == job.job_id


def test_connection_refused_mid_run_is_one_line_and_keeps_the_record(tmp_path, qdq, hub, monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    hub.polls_until_done = 3

    def server_goes_away(seconds):
        hub.stop()

    monkeypatch.setattr(hub_mod, "_sleep", server_goes_away)
    with pytest.raises(HubError, match="AI Hub stayed unavailable while reading job"):
        _compile(qdq, tmp_path)
    record = json.loads(next(tmp_path.glob("*.hub.json")).read_text())
    (entry,) = record["jobs"].values()
    assert entry["id"] in hub.jobs and not list(tmp_path.glob("*.bin"))


def test_truncated_download_is_retried_and_never_lands_partial(tmp_path, qdq, hub):
    hub.truncate_next("/_storage/", count=2)
    r = _compile(qdq, tmp_path)
    data = r.artifacts["target_model"].read_bytes()
    assert data.startswith(b"FAKE-QNN-CONTEXT-BINARY") and len(data) > 40


def test_a_download_that_keeps_failing_leaves_the_earlier_artifact_alone(tmp_path, qdq, hub):
    first = _compile(qdq, tmp_path).artifacts["target_model"]
    before = first.read_bytes()
    hub.truncate_next("/_storage/", count=None)
    (tmp_path / next(tmp_path.glob("*.hub.json")).name).unlink()  # force a fresh job
    with pytest.raises(HubError):
        _compile(qdq, tmp_path)
    assert first.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_job_is_one_line_naming_the_reason(tmp_path, qdq, hub):
    hub.job_outcome = ("FAILED", "Tensor image has unsupported rank")
    res = CliRunner().invoke(app, ["compile", "--model", str(qdq), "--backend", "hub",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert "FAILED: Tensor image has unsupported rank" in line


def test_compare_killed_after_submitting_resumes_without_duplicates(tmp_path, nano_ckpts, hub,
                                                                     monkeypatch):
    from skipat_deploy.npu import hub as hub_mod

    hub.polls_until_done = 2
    real_sleep = hub.clock.sleep

    def killed(seconds):
        if len(hub.jobs) >= 2:  # both compile jobs are in flight
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(hub_mod, "_sleep", killed)
    args = dict(vit=nano_ckpts["vit_nano_patch16"], skipat=nano_ckpts["skipat_nano_patch16"],
                out_dir=tmp_path, resolutions=(112,), backend="hub", quant_backend="ort")
    with pytest.raises(KeyboardInterrupt):
        api.compare(**args)
    assert len(hub.jobs) == 2 and not (tmp_path / "compare.md").exists()
    monkeypatch.setattr(hub_mod, "_sleep", real_sleep)
    r = api.compare(**args)
    assert [j.kind for j in hub.jobs.values()].count("compile") == 2  # no duplicates
    assert len(hub.jobs) == 4 and hub.count_requests("POST", "/jobs/") == 4
    assert {(row.model, row.resolution) for row in r.rows} == {("vit", 112), ("skipat", 112)}
    assert sorted(p.name for p in r.files.values()) == ["compare.csv", "compare.json", "compare.md", "compare.png"]


def test_a_hub_that_does_not_answer_ends_in_one_line_in_bounded_time(tmp_path, qdq, monkeypatch):
    """Configured, but the server accepts connections and never replies."""
    import qai_hub.util.session as session

    from .hub_fake.fixture import point_global_client_at_ini

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    ini = tmp_path / "client.ini"
    ini.write_text(f"[api]\napi_token = t\napi_url = {url}\nweb_url = {url}\n")
    point_global_client_at_ini(monkeypatch, ini)
    make_client_fast(monkeypatch)
    # the client's 28 s read timeout (a default argument), shortened to keep the test quick;
    # with the real one the same run ends in about 7 x 28 s
    monkeypatch.setattr(session.create_session, "__defaults__", (True, 0.2, "library"))
    # the preflight's device query answers first; its real 15 s bound is test_hub_preflight's
    from skipat_deploy.npu import hub as hub_mod

    monkeypatch.setattr(hub_mod, "PREFLIGHT_READ_S", 0.5)
    try:
        t = time.perf_counter()
        res = CliRunner().invoke(app, ["profile", "--model", str(qdq), "--backend", "hub",
                                       "--out", str(tmp_path / "out")])
        took = time.perf_counter() - t
    finally:
        silent.close()
    assert res.exit_code == 3, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: AI Hub") and "did not answer" in line
    assert took < 60


def test_cli_compare_on_hub_writes_what_the_cpu_path_writes(tmp_path, nano_ckpts, hub):
    res = CliRunner().invoke(app, [
        "compare", "--backend", "hub", "--device", "Galaxy S22", "--vit",
        str(nano_ckpts["vit_nano_patch16"]), "--skipat", str(nano_ckpts["skipat_nano_patch16"]),
        "--resolution", "112", "--resolution", "224", "--quant-backend", "ort", "--out", str(tmp_path),
        "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert sorted(a["kind"] for a in doc["artifacts"] if a["kind"].startswith("compare_")) == [
        "compare_csv", "compare_json", "compare_markdown", "compare_png"]
    assert [a["kind"] for a in doc["artifacts"]].count("qdq_onnx") == 4  # and the models it sent
    assert len(hub.jobs_of_kind("compile")) == 4 and len(hub.jobs_of_kind("inference")) == 4
    names = {m["name"] for m in doc["measurements"]}
    assert "estimated_inference_time" in names and "latency_median" not in names
    assert all("AI Hub" in m["source"] for m in doc["measurements"])

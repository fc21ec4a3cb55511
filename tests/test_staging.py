"""The staged-output transaction (skipat_deploy.core.staging): all files or none, older ones kept on
failure, joined stages undone with the outermost, one writer per folder, signals during the
move."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skipat_deploy.core.errors import Terminated, UserError
from skipat_deploy.core.files import sha256_file
from skipat_deploy.core.staging import (STAGE_PREFIX, OutputBusyError, _Transaction, hold_interrupts,
                                   interrupts_as_exceptions, staged)


def snapshot(folder: Path) -> dict[str, str | None]:
    """Every entry under ``folder`` (hidden ones included): file -> sha256, folder -> None."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) if p.is_file() else None
            for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture(autouse=True)
def python_default_handlers():
    """As in a process started normally (a background job of a script ignores SIGINT)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    (d / "model.onnx").write_text("old model")
    (d / "model.json").write_text("old report")
    (d / "other.txt").write_text("unrelated")
    return d


def test_success_moves_the_set_in_and_replaces_older_files(out):
    with staged(out) as stage:
        stage.path("model.onnx").write_text("new model")
        stage.path("model.json").write_text("new report")
        stage.path("sub/extra.bin").write_text("x")
        (stage.scratch / "tmp.onnx").write_text("scratch")
        assert stage.final(stage.path("model.onnx")) == out / "model.onnx"
        assert (out / "model.onnx").read_text() == "old model"  # nothing before the end
    assert (out / "model.onnx").read_text() == "new model"
    assert (out / "model.json").read_text() == "new report"
    assert sorted(snapshot(out)) == ["model.json", "model.onnx", "other.txt", "sub", "sub/extra.bin"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, Terminated, UserError])
def test_any_failure_leaves_the_folder_as_it_was(out, error):
    before = snapshot(out)
    with pytest.raises(error):
        with staged(out) as stage:
            stage.path("model.onnx").write_text("new model")
            stage.path("new.txt").write_text("new")
            raise error()
    assert snapshot(out) == before


def test_a_folder_it_created_goes_again(tmp_path):
    with pytest.raises(ValueError):
        with staged(tmp_path / "a" / "b") as stage:
            stage.path("x").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with staged(tmp_path / "c"):
        pass  # wrote nothing: leaves no empty folder either
    assert list(tmp_path.iterdir()) == []


def test_joined_stages_move_in_at_once_and_leave_with_the_outermost(out):
    before = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        with staged(out):
            with staged(out) as first:  # e.g. quantize, inside compile --ckpt
                first.path("model.onnx").write_text("new model")
                first.path("q.onnx").write_text("new")
            assert (out / "model.onnx").read_text() == "new model"  # the next stage reads it
            with staged(out / "sub") as second:  # a folder inside joins too
                second.path("y").write_text("y")
            assert (out / "sub" / "y").is_file()
            with staged(out) as third:  # writes a file an earlier stage wrote
                third.path("model.onnx").write_text("newer model")
            raise KeyboardInterrupt
    assert snapshot(out) == before


def test_a_folder_inside_a_stage_is_its_own_transaction(out):
    with staged(out) as stage:
        folder = stage.path("bundle")
        with staged(folder) as inner:
            inner.path("a.onnx").write_text("a")
        assert (folder / "a.onnx").is_file()  # moved into the stage, not into out
        assert not (out / "bundle").exists()
    assert (out / "bundle" / "a.onnx").read_text() == "a"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_a_second_writer_is_refused_in_one_line_and_a_stale_stage_is_swept(out):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from skipat_deploy.core.staging import staged\n"
         "with staged(sys.argv[1]):\n    print('in', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        with pytest.raises(OutputBusyError, match=rf"being written by another skipat-deploy run "
                                                  rf"\(pid {holder.pid}\)"):
            with staged(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, its stage folder stays
        holder.wait()
    assert [p.name for p in out.iterdir() if p.name.startswith(STAGE_PREFIX)]
    with staged(out) as stage:
        stage.path("model.onnx").write_text("new model")
    assert sorted(snapshot(out)) == ["model.json", "model.onnx", "other.txt"]


def test_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        with staged(tmp_path / "f"):
            pass


def test_sigterm_becomes_terminated_and_undoes_everything(out):
    before = snapshot(out)
    with pytest.raises(Terminated):
        with interrupts_as_exceptions():
            with staged(out) as stage:
                stage.path("model.onnx").write_text("new model")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted long before
                pytest.fail("SIGTERM did not interrupt")
    assert snapshot(out) == before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers come back


def test_a_signal_the_process_ignores_stays_ignored(out):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with interrupts_as_exceptions():
        with staged(out) as stage:
            stage.path("model.onnx").write_text("new model")
            os.kill(os.getpid(), signal.SIGTERM)
    assert (out / "model.onnx").read_text() == "new model"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.parametrize("held", [False, True])
def test_a_signal_during_the_move_undoes_the_move(out, monkeypatch, held):
    """The signal arrives between two renames: the move is finished under blocked signals,
    seen pending, undone, and then raised. ``held``: the CLI's way, signals already held by
    the caller (hold_interrupts) when the move starts."""
    before = snapshot(out)
    real_commit = _Transaction.commit

    def commit(self, stage):
        os.kill(os.getpid(), signal.SIGINT)
        real_commit(self, stage)

    monkeypatch.setattr(_Transaction, "commit", commit)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_as_exceptions():
            with staged(out) as stage:
                stage.path("model.onnx").write_text("new model")
                stage.path("model.json").write_text("new report")
                if held:
                    hold_interrupts()
    assert snapshot(out) == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}


def test_a_signal_after_the_move_is_dropped(out):
    with interrupts_as_exceptions():
        with staged(out) as stage:
            stage.path("model.onnx").write_text("new model")
            hold_interrupts()
        os.kill(os.getpid(), signal.SIGTERM)  # the outcome is decided: printed, not undone
    assert (out / "model.onnx").read_text() == "new model"

"""Staged output: a command's files appear in ``--out`` together, or not at all.

Every stage writes through one transaction::

    with staged(out_dir) as stage:
        onnx.save(model, stage.path("x.qdq.onnx"))   # under its final name, in a hidden folder
        work_in(stage.scratch)                       # intermediate files, never moved
        report(model_sha256=sha256_file(stage.path("x.qdq.onnx")))
    # here out_dir/x.qdq.onnx and its report are in place, older ones replaced

* The stage's folder is hidden inside ``out_dir`` (``.skipat-deploy-stage-<pid>-<random>``), so
  moving in is a rename. Its top-level entries move into ``out_dir`` as a set when the block
  succeeds, replacing what stood there (JSON reports last).
* On any exception, Ctrl-C (``KeyboardInterrupt``) or SIGTERM (turned into
  :class:`~skipat_deploy.core.errors.Terminated` by :func:`interrupts_as_exceptions`), nothing new
  stays in ``out_dir``: the stage's folder is removed, files it displaced are put back, an
  ``out_dir`` the transaction created is removed again. SIGINT and SIGTERM are held off while
  files move or are put back; one that arrives during the move undoes it.
* ``staged`` on a folder already in a transaction of this process (the same folder or one
  inside it) joins it: its files move in when its block ends (so the next stage can read them)
  and leave again if the outermost block fails. A chain of stages (export -> quantize ->
  compile), or a whole CLI command, is thus one transaction.
* Two processes never write one ``out_dir`` at once: the outermost transaction holds an
  exclusive ``flock`` on the folder itself (nothing is left behind) and a second one is refused
  in one line (:class:`OutputBusyError`). A stage folder left by a killed run (SIGKILL) is
  removed by the next transaction on that folder.

Files written directly into ``out_dir`` outside any stage (the AI Hub run record, which must
survive a failure so a re-run resumes the recorded jobs) are not part of the transaction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import Terminated, UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; transactions still stage and undo
    fcntl = None

STAGE_PREFIX = ".skipat-deploy-stage-"
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class OutputBusyError(UserError):
    """Another run is writing into the same output folder."""


class Stage:
    """Where one stage writes: ``dir`` (moved into ``out_dir`` on success, entry by entry under
    the same names) and ``scratch`` (discarded)."""

    def __init__(self, out_dir: Path, root: Path):
        self.out_dir = out_dir
        self.dir = root / "out"
        self.scratch = root / "scratch"
        self.dir.mkdir(parents=True)
        self.scratch.mkdir()

    def path(self, name: str | Path) -> Path:
        """Where to write the output that will be ``out_dir / name``."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def final(self, staged_path: str | Path) -> Path:
        """Where a file written under ``dir`` will be once the stage succeeds."""
        return self.out_dir / Path(staged_path).relative_to(self.dir)


@contextlib.contextmanager
def staged(out_dir: str | Path) -> Iterator[Stage]:
    """A :class:`Stage` for ``out_dir``: its files move in as a set when the block succeeds;
    on failure or interruption ``out_dir`` is left as it was. See the module docstring."""
    out_dir = Path(out_dir)
    tx = _owner(out_dir.resolve())
    outermost = tx is None
    with _held():
        if outermost:
            tx = _Transaction(out_dir)
        stage = tx.new_stage(out_dir)
    try:
        yield stage
    except BaseException:
        with _held():
            if outermost:
                tx.rollback()
            else:
                shutil.rmtree(stage.dir.parent, ignore_errors=True)
        raise
    undone = False
    with _held():
        try:
            tx.commit(stage)
        except BaseException:
            if outermost:
                tx.rollback()
            raise
        if outermost:
            if _pending():  # interrupted while the files moved: undo, then raise it
                tx.rollback()
                undone = True
            else:
                tx.finish()
    if undone:  # the caller holds the signals itself (hold_interrupts): raise as the handler would
        _raise_pending(undone=True)


# --------------------------------------------------------------------------------------------
# Signals. Held off by handler, not by signal mask: a process-directed signal goes to any thread
# that does not block it (ONNX Runtime's and torch's pools), and Python runs its handler in the
# main thread whichever thread took it. While held, the handlers only note what came.

_hold: dict = {"depth": 0, "saved": {}, "pending": []}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _note(signum, frame) -> None:
    _hold["pending"].append(signum)


def _hold_on() -> None:
    if _hold["depth"] == 0:
        _hold["saved"] = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:
            signal.signal(s, _note)
    _hold["depth"] += 1


def _hold_off() -> None:
    """One level of holding less; at the last, the handlers come back and a signal that came
    meanwhile is raised as its handler would."""
    _hold["depth"] -= 1
    if _hold["depth"] == 0:
        for s, h in _hold["saved"].items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _raise_pending()


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """SIGINT and SIGTERM held off for the block (raised, if they came, when it ends)."""
    if not _main_thread():
        yield
        return
    _hold_on()
    try:
        yield
    finally:
        _hold_off()


def _pending() -> list[int]:
    """SIGINT / SIGTERM noted while held, that their handlers would not ignore."""
    return [s for s in _hold["pending"] if _hold["saved"].get(s) != signal.SIG_IGN]


def _raise_pending(undone: bool = False) -> None:
    """Take the noted signals and act on the first as its handler would: raise (ours and
    Python's SIGINT handler), call it, or for the default action re-send it. ``undone``: a
    move into place was undone for it, so the caller must not go on as if it succeeded."""
    pending, _hold["pending"] = _pending(), []
    for sig in pending[:1]:
        handler = _hold["saved"].get(sig)
        if callable(handler):
            handler(sig, None)
        elif _hold["depth"] == 0:  # the default action (end the process), with our cleanup done
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        if undone:
            raise KeyboardInterrupt


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def interrupts_as_exceptions(then_ignore: bool = False) -> Iterator[None]:
    """For a whole command: SIGINT raises ``KeyboardInterrupt`` and SIGTERM
    :class:`~skipat_deploy.core.errors.Terminated`, so every ``staged`` block undoes itself. On the
    way out the previous handlers come back; a signal held since :func:`hold_interrupts` is
    dropped (the command's outcome was already decided). A signal the process was started
    ignoring (``nohup``, a background job's SIGINT) stays ignored. ``then_ignore`` (a process
    that exits once the command has ended): on the way out both are ignored instead, so a
    signal that comes after the outcome was decided cannot turn it into a killed process."""
    if not _main_thread():
        yield
        return
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    for s, ours in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_terminated)):
        if handlers[s] != signal.SIG_IGN:
            signal.signal(s, ours)
    try:
        yield
    finally:
        _hold.update(depth=0, saved={}, pending=[])
        for s, h in handlers.items():
            signal.signal(s, signal.SIG_IGN if then_ignore else h if h is not None else signal.SIG_DFL)


def hold_interrupts() -> None:
    """Hold SIGINT and SIGTERM off until :func:`interrupts_as_exceptions` ends: called as the
    last statement of a command's ``staged`` block, the move into place then decides the
    outcome (a signal during it undoes it; one after it is dropped), and the one-line result
    is never cut short."""
    if _main_thread():
        _hold_on()


# --------------------------------------------------------------------------------------------
# Transactions

_open: list[_Transaction] = []  # outermost transactions of this process, innermost last


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _owner(out_dir: Path) -> _Transaction | None:
    """The open transaction ``out_dir`` belongs to: one on it or on a folder above it, unless
    ``out_dir`` lies in that transaction's own hidden folder (a stage's private space)."""
    for tx in reversed(_open):
        if _inside(out_dir, tx.out_dir) and not _inside(out_dir, tx.root):
            return tx
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _move(src: Path, dest: Path) -> None:
    try:
        os.rename(src, dest)
    except OSError as e:  # a folder inside out_dir on another file system
        if e.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dest))


def _makedirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns the ones created, outermost first."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
    return list(reversed(missing))


class _Transaction:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir.resolve()
        self.root = self.out_dir / f"{STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.stages = 0
        self.placed: list[Path] = []  # what this transaction moved in (to remove on failure)
        self.replaced: list[tuple[Path, Path]] = []  # (where, kept copy) of what it displaced
        self.fd = None
        self.created: list[Path] = []
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"--out {out_dir} is a file, not a folder")
        try:
            self.created = _makedirs(self.out_dir)
            if fcntl is not None:
                self.fd = os.open(self.out_dir, os.O_RDONLY)
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise OutputBusyError(
                        f"{out_dir} is being written by another skipat-deploy run"
                        f"{_holder(self.out_dir)}: wait for it to end, or give another --out") from None
                for stale in self.out_dir.glob(f"{STAGE_PREFIX}*"):  # left by a killed run
                    shutil.rmtree(stale, ignore_errors=True)
            self.root.mkdir()
        except BaseException:
            self._close(remove_created=True)
            raise
        _open.append(self)

    def new_stage(self, out_dir: Path) -> Stage:
        self.stages += 1
        return Stage(out_dir, self.root / str(self.stages))

    def commit(self, stage: Stage) -> None:
        target = stage.out_dir.resolve()
        self.created += _makedirs(target)
        # big artifacts first, reports last: a reader that sees the report sees its models
        for src in sorted(stage.dir.iterdir(), key=lambda p: (p.suffix == ".json", p.name)):
            dest = target / src.name
            if dest in self.placed:  # an earlier stage of this transaction wrote it
                _remove(dest)
            elif os.path.lexists(dest):
                kept = self.root / "replaced" / str(len(self.replaced))
                kept.parent.mkdir(exist_ok=True)
                _move(dest, kept)
                self.replaced.append((dest, kept))
            _move(src, dest)
            self.placed.append(dest)
        shutil.rmtree(stage.dir.parent, ignore_errors=True)

    def rollback(self) -> None:
        for dest in reversed(self.placed):
            _remove(dest)
        for dest, kept in reversed(self.replaced):
            if os.path.lexists(kept):
                _remove(dest)
                _move(kept, dest)
        self.placed, self.replaced = [], []
        self._close(remove_created=True)

    def finish(self) -> None:
        self._close(remove_created=not self.placed)

    def _close(self, remove_created: bool) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self in _open:
            _open.remove(self)
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
        if remove_created:
            for d in reversed(self.created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty


def _holder(out_dir: Path) -> str:
    """`` (pid N)`` of the run whose stage folder is in ``out_dir``, when one is."""
    for p in out_dir.glob(f"{STAGE_PREFIX}*"):
        pid = p.name.removeprefix(STAGE_PREFIX).split("-")[0]
        if pid.isdigit():
            return f" (pid {pid})"
    return ""

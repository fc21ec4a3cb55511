"""How a command runs as a process: its exit codes (user error 2, AI Hub 3, a quality gate 4,
a bug 1, SIGINT 130, SIGTERM 143), its signals and the staged transaction around its output
folder. What it prints is :mod:`skipat_deploy.render`'s."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from pathlib import Path

import typer

from .core.errors import UserError
from .render import Run, err


# Set by the console entry point: the process ends with the command (not so under CliRunner).
EXITS_AFTER_COMMAND = {"yes": False}


def guarded(run: Run, body: Callable[[], None], out: Path | None = None) -> None:
    """User errors: one line, exit 2. Bugs: one line (traceback with --debug), exit 1. Ctrl-C
    and SIGTERM: one line, exit 130 / 143. With ``out`` (the folder the command writes), the
    whole command is one staged transaction (:mod:`skipat_deploy.core.staging`): its files appear
    there together when it succeeds, and on any failure or interruption ``out`` is left as it
    was."""
    from .core.errors import Terminated
    from .core.staging import hold_interrupts, interrupts_as_exceptions, staged

    with interrupts_as_exceptions(then_ignore=EXITS_AFTER_COMMAND["yes"]):
        try:
            with staged(out) if out is not None else contextlib.nullcontext():
                body()
                hold_interrupts()  # from here the move into place decides the outcome
        except UserError as e:
            hold_interrupts()
            if run.debug:
                traceback.print_exc()
            run.fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:
            hold_interrupts()
            signal = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
            left = f": {out} left as it was" if out is not None else ""
            said = f"{e} ({signal})" if str(e) else None  # what the stage kept, e.g. evaluate's scores
            run.fail(said or f"{'terminated' if signal == 'SIGTERM' else 'interrupted'} by {signal}{left}",
                     143 if signal == "SIGTERM" else 130)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            hold_interrupts()
            if run.debug:
                traceback.print_exc()
            hint = "" if run.debug else " (rerun with --debug for the traceback)"
            run.fail(f"{type(e).__name__}: {e}".splitlines()[0] + hint, 1)
        run.emit()

def run_command(command: str, as_json: bool, debug: bool, body: Callable[[Run], None],
                out: Path | None = None) -> None:
    """One command: ``body(run)`` guarded (:func:`guarded`), then a failed quality gate's exit."""
    run = Run(command, as_json, debug)
    guarded(run, lambda: body(run), out)
    if run.gate:
        from .measure.evaluate import GATE_EXIT_CODE

        err.print(f"[red]accuracy gate failed:[/] {'; '.join(run.gate)}", highlight=False, soft_wrap=True)
        raise typer.Exit(GATE_EXIT_CODE)

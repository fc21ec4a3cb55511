"""``qnn-profile-viewer --input_log``'s text: what one ``qnn-net-run`` run measured.

The viewer prints sections ("Init Stats:", "Compose Graphs Stats:", "Finalize Stats:",
"De-Init Stats:", "Execute Stats (Overall):", "Execute Stats (Average):", "(Min):", "(Max):"),
each underlined with dashes, whose lines read ``NetRun:  2952 us`` (the runner's wall time) or
``Backend (QNN accelerator (execute) time): 2600 us``. The text has no per-inference rows: one
run gives the average, minimum and maximum of its inferences, so a timing is built from many
short runs (:mod:`.session`).

A run with ``--profiling_level detailed`` adds, under "Execute Stats (Average)", one line per
op between ``Backend (Accelerator (execute) time (cycles)): N cycles`` and ``Backend
(Accelerator (execute) time): N us``: ``<node name>:OpId_<n> (cycles): <N> cycles`` (the lines
Qualcomm's own parser in AIMET, ``convert_ops_reduction.load_profiling_cost``, reads; the node
names are the QNN graph's, which onnxruntime-qnn takes from the ONNX nodes). Cycles, not time.

Per-inference times are not in the text. ``--output X.csv`` writes the log's events, one row
each (header ``Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,Event Level,Event
Identifier``, the format onnxruntime-qnn writes and says is the viewer's), so each inference's
root ``EXECUTE`` event, "QNN (execute) time" in microseconds, is read from there where the
viewer writes it (:func:`execute_times`).
"""

from __future__ import annotations

import csv
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import UserError

SECTIONS = {"init stats": "init", "execute stats (average)": "avg", "execute stats (min)": "min",
            "execute stats (max)": "max"}
_HEAD = re.compile(r"^\s*(?:-+\s*)?([A-Za-z][A-Za-z /()-]*?(?:Stats(?: \([A-Za-z]+\))?|Inference Time)):\s*$")
_NETRUN = re.compile(r"^\s*NetRun:\s+([\d.]+)\s*us\s*$", re.I)
_ACCEL = re.compile(r"accelerator \(execute\) time\):\s+([\d.]+)\s*us", re.I)


@dataclass(frozen=True)
class RunStats:
    """One ``qnn-net-run`` run, microseconds: context load, and its inferences' mean / min / max
    (the runner's wall time per inference), and the accelerator's mean where the log has it."""

    init_us: float
    mean_us: float
    min_us: float
    max_us: float
    accelerator_mean_us: float | None = None


def parse(text: str) -> RunStats:
    """The figures of one viewer text; one line naming what is missing when it is not one."""
    found: dict[str, float] = {}
    section = None
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m and m.group(1).lower() != "total inference time":
            section = SECTIONS.get(m.group(1).strip().lower(), "other")
            continue
        if section in (None, "other"):
            continue
        m = _NETRUN.match(line)
        if m and section not in found:
            found[section] = float(m.group(1))
        m = _ACCEL.search(line)
        if m and section == "avg" and "accel" not in found:
            found["accel"] = float(m.group(1))
    missing = [s for s in ("init", "avg", "min", "max") if s not in found]
    if missing:
        names = {v: k for k, v in SECTIONS.items()}
        raise UserError("qnn-profile-viewer printed no NetRun time under "
                        + ", ".join(f'"{names[s].title()}"' for s in missing)
                        + ": not a basic-level profile of a qnn-net-run run (is the viewer from "
                        "the same SDK?)")
    return RunStats(found["init"], found["avg"], found["min"], found["max"], found.get("accel"))


@dataclass(frozen=True)
class OpCycles:
    """A detailed run's average cycles per op, in the order the graph ran them."""

    total: int | None  # "Accelerator (execute) time (cycles)", where printed
    ops: tuple[tuple[str, int], ...]  # (node name, cycles)


_OPS_START = re.compile(r"Backend \(Accelerator \(execute\) time \(cycles\)\):\s*(\d+)\s*cycles", re.I)
_OPS_END = re.compile(r"Backend \(Accelerator \(execute\) time\)", re.I)
_OP = re.compile(r"^\s*(.+?) \(cycles\)\s*:\s*(\d+)\s*cycles\s*$")


def parse_ops(text: str) -> OpCycles | None:
    """The per-op cycles of a detailed run's text (the average section); None when it has none."""
    section, total, ops, reading = None, None, [], False
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m and m.group(1).lower() != "total inference time":
            if reading:
                break
            section = SECTIONS.get(m.group(1).strip().lower(), "other")
            continue
        if section != "avg":
            continue
        if not reading:
            m = _OPS_START.search(line)
            if m:
                total, reading = int(m.group(1)), True
            continue
        if _OPS_END.search(line):
            break
        m = _OP.match(line)
        if m:  # "/blocks/attn/MatMul:OpId_61" -> the node name; "Input OpId_2" as it is
            ops.append((re.sub(r":OpId_\d+$", "", m.group(1)), int(m.group(2))))
    return OpCycles(total, tuple(ops)) if ops else None


def decode(viewer: Path, log: Path, text_out: Path) -> str:
    """The text of the binary profiling ``log``, decoded by the SDK's ``viewer``; also kept in
    ``text_out``."""
    try:
        p = subprocess.run([str(viewer), "--input_log", str(log)], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"{viewer.name} did not finish within 120 s on {log.name}") from None
    text_out.write_text(p.stdout)
    if p.returncode != 0:
        last = next((ln.strip() for ln in reversed((p.stdout + p.stderr).splitlines()) if ln.strip()), "")
        raise UserError(f"{viewer} could not read {log.name} (exit {p.returncode}): {last}")
    return p.stdout


CSV_COLUMNS = ("Message", "Time", "Unit of Measurement", "Event Level")


def execute_times(viewer: Path, log: Path, csv_out: Path) -> list[float] | None:
    """Each inference's execute time (us) in the profiling ``log``: its root EXECUTE events, from
    the CSV the ``viewer`` writes into ``csv_out``; None where it writes none or no such event
    (the text's mean, min and max are then all there is)."""
    try:
        p = subprocess.run([str(viewer), "--input_log", str(log), "--output", str(csv_out)],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0 or not csv_out.is_file():
        return None
    with open(csv_out, newline="", errors="replace") as f:
        rows = csv.DictReader(f)
        if not set(CSV_COLUMNS) <= {c.strip() for c in rows.fieldnames or ()}:
            return None
        times = []
        for row in rows:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if (row["Message"] == "EXECUTE" and row["Event Level"] == "ROOT"
                    and row["Unit of Measurement"].upper() == "US"):
                try:
                    times.append(float(row["Time"]))
                except ValueError:
                    return None
    return times or None

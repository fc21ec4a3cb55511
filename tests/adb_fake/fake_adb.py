"""A fake ``adb`` for tests: the phone is a folder, driven by a scenario file.

Run as ``adb [-s SERIAL] devices|shell CMD|push LOCAL REMOTE|pull REMOTE LOCAL``. The phone's
``/data/local/tmp`` is ``<phone>/data/local/tmp`` here; ``shell`` runs the command with this
machine's ``sh`` (paths rewritten, a ``getprop`` that answers from the scenario), and, like an
adbd without shell protocol v2, always exits 0 when the command ran. Every call is appended to
the scenario's record (JSON lines), so tests can see what was pushed and what was removed.

Scenario keys: ``devices`` ([serial, state] rows), ``props`` (getprop answers), ``phone`` (the
folder), ``record`` (the log), ``lose_on`` (a substring: the first shell command containing it
fails as a lost device does, once), ``push_error`` (a push fails with this text).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = "/data/local/tmp"


def main(argv: list[str]) -> int:
    sc_path = Path(os.environ["FAKE_ADB_SCENARIO"])
    sc = json.loads(sc_path.read_text())
    serial = None
    if argv[:1] == ["-s"]:
        serial, argv = argv[1], argv[2:]
    with open(sc["record"], "a") as rec:
        rec.write(json.dumps({"serial": serial, "argv": argv}) + "\n")
    if argv == ["devices"]:
        print("List of devices attached")
        for s, state in sc["devices"]:
            print(f"{s}\t{state}")
        print()
        return 0
    rows = dict(map(tuple, sc["devices"]))
    if serial is None:
        if not rows:
            print("adb: no devices/emulators found", file=sys.stderr)
            return 1
        serial = next(iter(rows))
    if serial not in rows:
        print(f"adb: device '{serial}' not found", file=sys.stderr)
        return 1
    if rows[serial] != "device":
        print(f"adb: device {rows[serial]}", file=sys.stderr)
        return 1
    phone = Path(sc["phone"])

    def here(remote: str) -> Path:
        return Path(str(phone) + remote)

    cmd, args = argv[0], argv[1:]
    if cmd == "push":
        if sc.get("push_error"):
            print(f"adb: error: failed to copy '{args[0]}' to '{args[1]}': {sc['push_error']}", file=sys.stderr)
            return 1
        dest = here(args[1])
        if not dest.parent.is_dir():
            print(f"adb: error: failed to copy '{args[0]}' to '{args[1]}': remote secure_mkdirs() failed", file=sys.stderr)
            return 1
        shutil.copy(args[0], dest)
        print(f"{args[0]}: 1 file pushed, 0 skipped.")
        return 0
    if cmd == "pull":
        src = here(args[0])
        if not src.exists():
            print(f"adb: error: failed to stat remote object '{args[0]}': No such file or directory", file=sys.stderr)
            return 1
        shutil.copy(src, args[1])
        print(f"{args[0]}: 1 file pulled, 0 skipped.")
        return 0
    if cmd == "shell":
        line = " ".join(args)
        lose = sc.get("lose_on")
        if lose and lose in line:
            sc["lose_on"] = None
            sc_path.write_text(json.dumps(sc))
            print("adb: device offline", file=sys.stderr)
            return 1
        bin_dir = Path(sc["phone_bin"])
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
        p = subprocess.run(["sh", "-c", line.replace(ROOT, str(phone) + ROOT)], env=env,
                           capture_output=True, text=True)
        # the phone's paths, as the phone would print them
        sys.stdout.write((p.stdout + p.stderr).replace(str(phone), ""))
        return 0  # no shell protocol v2: the remote exit status is not passed back
    print(f"fake adb: unsupported command {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A fake QAIRT SDK's two programs, for tests: ``qnn-net-run`` (run on the fake phone) and
``qnn-profile-viewer`` (run here), chosen by the first argument.

The runner reads ``FAKE_ADB_SCENARIO``'s ``runs``: for binary ``<name>.bin``, its k-th run (k = 0
is the warm-up) takes ``runs[name][k]`` = [init_us, mean_us, min_us, max_us] (the last entry
again past the end) and writes them as its "profiling log"; with ``--profiling_level detailed``
the log also names ``ops[name]``, a CSV of (event identifier, cycles) of one execution. The
viewer writes ``--output X.csv`` (the log's events, one row each) only where the scenario has
``per_inference[name][k]``, run k's times (us); otherwise it refuses the option, as a viewer that
writes no CSV would. ``fail`` = {"text", "rc", "run"}
makes the run numbered ``run`` (counting every binary's runs) print ``text`` and exit ``rc``;
``hang`` = that run sleeps (a real process, for Ctrl-C). The viewer prints the log in
``qnn-profile-viewer``'s text format (sections underlined with dashes, ``NetRun:  N us``).
"""

import json
import os
import sys
import time
from pathlib import Path

MAGIC = b"QNNPROF-FAKE\n"


def net_run(args: list[str]) -> int:
    sc = json.loads(Path(os.environ["FAKE_ADB_SCENARIO"]).read_text())
    opts = dict(zip(args[::2], args[1::2]))
    name = Path(opts["--retrieve_context"]).name.removesuffix(".bin")
    counter = Path("runs.json")
    counts = json.loads(counter.read_text()) if counter.exists() else {"all": 0}
    k = counts.get(name, 0)
    counts[name], counts["all"] = k + 1, counts["all"] + 1
    counter.write_text(json.dumps(counts))
    with open(sc["record"], "a") as rec:
        rec.write(json.dumps({"qnn-net-run": args, "cwd": os.getcwd(),
                              "ADSP_LIBRARY_PATH": os.environ.get("ADSP_LIBRARY_PATH")}) + "\n")
    if sc.get("hang") == counts["all"]:
        Path(sc["phone"], "hanging").write_text(str(os.getpid()))
        time.sleep(600)
    fail = sc.get("fail")
    if fail and fail.get("run", 1) == counts["all"]:
        print(fail["text"], file=sys.stderr)
        return fail.get("rc", 1)
    for need in ("libQnnHtp.so", "libQnnSystem.so", Path(opts["--input_list"]).name):
        if not Path(need).is_file():
            print(f"qnn-net-run: cannot open {need}", file=sys.stderr)
            return 1
    runs = sc["runs"].get(name) or sc["default_runs"]
    init, mean, lo, hi = runs[min(k, len(runs) - 1)]
    out = Path(opts["--output_dir"])
    (out / "Result_0").mkdir(parents=True)
    (out / "Result_0" / "output.raw").write_bytes(b"\0" * 16)
    ops = sc.get("ops", {}).get(name) if opts.get("--profiling_level") == "detailed" else None
    times = sc.get("per_inference", {}).get(name)
    times = times[min(k, len(times) - 1)] if times else None
    (out / "qnn-profiling-data_0.log").write_bytes(
        MAGIC + json.dumps([init, mean, lo, hi, ops, times]).encode())
    return 0


def viewer(args: list[str]) -> int:
    log = Path(args[args.index("--input_log") + 1])
    data = log.read_bytes()
    if not data.startswith(MAGIC):
        print("ERROR: failed to read profiling log", file=sys.stderr)
        return 1
    init, mean, lo, hi, ops, times = json.loads(data[len(MAGIC):])
    if "--output" in args:
        if times is None:
            print("qnn-profile-viewer: unrecognized option --output", file=sys.stderr)
            return 1
        with open(args[args.index("--output") + 1], "w") as f:  # onnxruntime-qnn's layout
            f.write("Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,Event Level,Event Identifier\n")
            f.write(f"0,INIT,{init},US,BACKEND,ROOT,QNN (init) time\n")
            for t in times:
                f.write("0,BACKEND,4,COUNT,BACKEND,ROOT,Number of HVX threads used\n")
                f.write(f"0,BACKEND,{int(t * 0.9)},US,BACKEND,ROOT,Accelerator (execute) time\n")
                f.write(f"0,EXECUTE,{t},US,BACKEND,ROOT,QNN (execute) time\n")
        return 0
    dash = "-" * 24
    cycles = ""
    if ops:  # the detailed level: per-op lines after the total cycles (the Average section)
        import csv

        rows = list(csv.reader(open(ops)))[1:]
        cycles = f"    Backend ({rows[0][0]}): {rows[0][1]} cycles\n" + "".join(
            f"    {ident}: {n} cycles\n" for ident, n in rows[1:])

    def execute(kind, us):
        return (f"Execute Stats ({kind}):\n{dash}\nTotal Inference Time:\n{dash}\n"
                f"Graph 0 (model):\n    NetRun:  {us} us\n"
                f"    Backend (Number of HVX threads used): 4 count\n"
                f"    Backend (QNN accelerator (execute) time): {int(us * 0.9)} us\n"
                + (cycles if kind == "Average" else "")
                + f"    Backend (Accelerator (execute) time): {int(us * 0.85)} us\n"
                f"    Backend (QNN (execute) time): {us - 3} us\n\n")

    print(f"Qnn Init/Prepare/Finalize/De-Init/Execute/Lib-Load Statistics:\n{'-' * 60}\n"
          f"Init Stats:\n{dash}\n    NetRun:  {init} us\n\n"
          f"Compose Graphs Stats:\n{dash}\n    NetRun:  74748 us\n\n"
          f"Finalize Stats:\n{dash}\nGraph 0 (model):\n    NetRun:  256372 us\n"
          f"    Backend (RPC (finalize) time): 4922 us\n\n"
          f"De-Init Stats:\n{dash}\n    NetRun:  15810 us\n\n"
          + execute("Average", mean) + execute("Min", lo) + execute("Max", hi)
          + f"Execute Stats (Overall):\n{dash}\n    NetRun IPS:  {1e6 / mean:.4f} inf/sec\n")
    return 0


if __name__ == "__main__":
    tool, rest = sys.argv[1], sys.argv[2:]
    sys.exit(net_run(rest) if tool == "qnn-net-run" else viewer(rest))

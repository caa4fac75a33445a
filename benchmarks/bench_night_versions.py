"""A night on the same store with several code versions, interleaved, each run on a fresh copy of the store.

``python benchmarks/bench_night_versions.py --store S --night DIR --code NAME=PYTHON [--code NAME=PYTHON ...]
[--repeats 3] [--work DIR] [--out FILE]``

``PYTHON``: the interpreter of a checkout's virtual environment (each checkout installed editable in its own venv),
so each version runs its own code in a fresh process. For each repeat, the versions run in a rotated order (so a
slow spell of a shared machine does not fall on one version); before each run the store ``S`` (and its link folder
``S.links``) is copied to ``--work``, then ``Engine.update([night])`` runs there. Recorded per run: CPU seconds and
peak RSS of the process (``os.wait4``), wall seconds, the load average before and after, and the night's own log
(stage seconds, counts). Reports; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

CHILD = r'''
import json, sys
from raretarget import Engine
log = Engine.open(sys.argv[1]).update([sys.argv[2]])
print("LOG " + json.dumps({"published": log.get("published"), "seconds": log.get("seconds"), "counts": log.get("counts")}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--night", required=True, help="the night's input folder")
    ap.add_argument("--code", action="append", required=True, help="NAME=PYTHON (repeat for each version)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=None, help="where the copies go (default: a temp dir, removed)")
    ap.add_argument("--out", default=None, help="write every run (JSON)")
    a = ap.parse_args()
    codes = dict(c.split("=", 1) for c in a.code)
    names = list(codes)
    work = Path(a.work) if a.work else Path(__import__("tempfile").mkdtemp(prefix="bench_night-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for rep in range(a.repeats):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                for sfx in ("", ".links"):
                    shutil.rmtree(work / f"s{sfx}", ignore_errors=True)
                    shutil.copytree(f"{a.store}{sfx}", work / f"s{sfx}")
                t, load0 = time.perf_counter(), os.getloadavg()[0]
                p = subprocess.Popen([codes[name], "-c", CHILD, str(work / "s"), str(a.night)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
                text = p.stdout.read()
                _, status, ru = os.wait4(p.pid, 0)
                logs = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("LOG ")]
                r = {"rep": rep, "code": name, "rc": os.waitstatus_to_exitcode(status),
                     "wall": round(time.perf_counter() - t, 2), "cpu": round(ru.ru_utime + ru.ru_stime, 2),
                     "peak_mb": round(ru.ru_maxrss / 1024), "load_before": round(load0, 2),
                     "load_after": round(os.getloadavg()[0], 2), **(logs[0] if logs else {})}
                print(json.dumps(r), flush=True)
                rows.append(r)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    for name in names:
        cpu = [r["cpu"] for r in rows if r["code"] == name and not r["rc"]]
        if cpu:
            print(f"{name}: median CPU {statistics.median(cpu):.1f} s over {len(cpu)} runs")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""A 1 % night in a fresh process against the same night in a long-lived worker, and both against a full rebuild
measured in the same run.

``python benchmarks/bench_night_worker.py --store S --night N --warmup W --cohort C [--repeats 2] [--no-rebuild]
[--out FILE]``

* ``S``: a store with a trained model and a published index (``S.links`` beside it), e.g. ``bench_scale.py``'s;
  it is never changed: every run works on a fresh copy.
* ``N``: the night measured (1 % new patients, e.g. ``bench_scale.py``'s night); ``W``: another night, run first by
  the worker so that its start-up (imports, reference tables, the writer's identifier sets, the model) is paid
  before ``N``, as in a worker that has been up since the previous night.
* ``C``: the cohort ``S`` was ingested from (the rebuild's ingest).

Per repeat, in a rotated order, each a fresh process on a fresh copy of ``S``:

* ``cold``: ``Engine.open(S).update([N])`` — a night as a cron job runs it; the figure is the whole process's CPU
  (Python start, imports, model load, the night);
* ``warm``: one ``Engine`` runs ``update([W])`` then ``update([N])`` (``Engine.watch``'s loop, without the
  sleep); the figure is the CPU of the second call alone (``getrusage`` before and after, all threads).

Then, once, the full rebuild the night replaces, as ``bench_scale.py`` counts it: ``ingest`` of ``C`` into a new
store (one fresh process) + ``embed`` + ``build_index`` on a copy of ``S`` (another). Recorded: CPU seconds (user
+ system, all threads), wall seconds, peak RSS, load average before/after, each night's log (stage seconds,
counts). Reports ratios against the rebuild; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
from raretarget import Engine

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

kind, store = sys.argv[1], sys.argv[2]
out = {}
if kind == "ingest":
    c0, t0 = cpu(), time.time()
    rep = Engine.open(store, create=True).ingest(sys.argv[3:])
    out = {"cpu": cpu() - c0, "wall": time.time() - t0, "records": rep.records}
elif kind == "embed_index":
    eng = Engine.open(store)
    c0, t0 = cpu(), time.time()
    n = eng.embed()
    c1 = cpu()
    eng.build_index()
    out = {"cpu": cpu() - c0, "wall": time.time() - t0, "embed_cpu": c1 - c0, "index_cpu": cpu() - c1,
           "vectors": sum(n.values())}
else:                                   # cold: the night alone; warm: the warm-up night, then the night
    eng = Engine.open(store)
    for i, night in enumerate(sys.argv[3:]):
        c0, t0 = cpu(), time.time()
        log = eng.update([night])
        out[f"night{i}"] = {"cpu": cpu() - c0, "wall": time.time() - t0, "published": log.get("published"),
                            "seconds": log.get("seconds"), "counts": log.get("counts")}
print("OUT " + json.dumps(out))
'''


def run_child(python: str, args: list[str]) -> dict:
    t, load0 = time.perf_counter(), os.getloadavg()[0]
    p = subprocess.Popen([python, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    text = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    outs = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("OUT ")]
    return {"rc": os.waitstatus_to_exitcode(status), "process_wall": round(time.perf_counter() - t, 2),
            "process_cpu": round(ru.ru_utime + ru.ru_stime, 2), "peak_mb": round(ru.ru_maxrss / 1024),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2), **(outs[0] if outs else {})}


def fresh_copy(src: str, dst: Path) -> Path:
    for sfx in ("", ".links"):
        shutil.rmtree(f"{dst}{sfx}", ignore_errors=True)
        shutil.copytree(f"{src}{sfx}", f"{dst}{sfx}")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--night", required=True, help="the night measured")
    ap.add_argument("--warmup", required=True, help="the worker's previous night (other patients)")
    ap.add_argument("--cohort", default=None, help="the cohort the store was ingested from (for the rebuild)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-rebuild", action="store_true", help="skip the rebuild (ratios then need --rebuild-cpu)")
    ap.add_argument("--rebuild-cpu", type=float, default=None, help="a rebuild's CPU s measured elsewhere")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_worker-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for rep in range(a.repeats):
            kinds = ["cold", "warm"] if rep % 2 == 0 else ["warm", "cold"]
            for kind in kinds:
                s = fresh_copy(a.store, work / "s")
                nights = [a.night] if kind == "cold" else [a.warmup, a.night]
                r = {"kind": kind, "rep": rep, **run_child(a.python, [kind, str(s), *nights])}
                # cold: what the cron job's process costs in all (start, imports, the night); warm: the second
                # night's own CPU inside the worker
                r["night_cpu"] = None if r.get("rc") else (r["process_cpu"] if kind == "cold" else
                                                           round(r[f"night{len(nights) - 1}"]["cpu"], 2))
                print(json.dumps(r), flush=True)
                rows.append(r)
        rebuild = None
        if not a.no_rebuild:
            if not a.cohort:
                ap.error("--cohort is needed for the rebuild (or --no-rebuild)")
            shutil.rmtree(work / "fresh", ignore_errors=True)
            shutil.rmtree(work / "fresh.links", ignore_errors=True)
            c = Path(a.cohort)
            ing = run_child(a.python, ["ingest", str(work / "fresh"), str(c / "fhir"), str(c / "dicom"), str(c / "vcf")])
            emb = run_child(a.python, ["embed_index", str(fresh_copy(a.store, work / "s"))])
            rebuild = {"ingest": ing, "embed_index": emb, "cpu": round(ing.get("cpu", 0) + emb.get("cpu", 0), 2)}
            print(json.dumps({"rebuild": rebuild}), flush=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    full = rebuild["cpu"] if rebuild else a.rebuild_cpu
    summary = {}
    for kind in ("cold", "warm"):
        cpu = [r["night_cpu"] for r in rows if r["kind"] == kind and r["night_cpu"] is not None]
        if cpu:
            med = statistics.median(cpu)
            summary[kind] = {"night_cpu": cpu, "median": med, "percent_of_rebuild": 100 * med / full if full else None}
            print(f"{kind}: night CPU {cpu} median {med:.2f} s" + (f" = {100 * med / full:.1f} % of a rebuild of "
                                                                    f"{full:.1f} CPU s" if full else ""))
    if a.out:
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                           "machine": f"{os.cpu_count()} cores", "argv": sys.argv[1:], "runs": rows,
                                           "rebuild": rebuild, "rebuild_cpu": full, "summary": summary},
                                          indent=1) + "\n")


if __name__ == "__main__":
    main()

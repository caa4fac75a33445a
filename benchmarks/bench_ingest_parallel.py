"""Parallel ingest on one machine (issue 19): ``eng.ingest(paths, workers=n)`` against ``workers=1``.

    .venv/bin/python benchmarks/bench_ingest_parallel.py --patients 1500 --workers 1 2 --repeats 2

One generated cohort (``raretarget.synth.cohort.generate``: FHIR Bundles, DICOM, one multi-sample VCF), then
same-run A/B: each ``workers`` value ingests it into a fresh store, in its own fresh process, the
values interleaved ``repeats`` times (so a noisy neighbour hits both sides alike). Reported per run:
wall seconds of the ``ingest`` call, CPU seconds of the parent and of its workers, records/s; the best
run per value and the speed-up against ``workers=1``. Finally the stores are compared table by table
(rows, record ids, pseudonyms, quarantine) and the link folders' ids: the benchmark fails if they differ.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from raretarget import Engine
root, key, cohort, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
eng = Engine.open(root, create=True)
(eng.store.links / "secret.key").write_bytes(bytes.fromhex(key))   # same key: same pseudonyms to compare
eng = Engine.open(root)
t = time.perf_counter()
rep = eng.ingest([cohort + "/fhir", cohort + "/dicom", cohort + "/vcf"], workers=workers)
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"workers": workers, "wall_s": round(wall, 2), "records": rep.records, "files": rep.files,
                  "quarantined": rep.quarantined, "cpu_parent_s": round(me.ru_utime + me.ru_stime, 2),
                  "cpu_workers_s": round(kids.ru_utime + kids.ru_stime, 2),
                  "peak_rss_parent_mb": me.ru_maxrss // 1024}))
"""

COMPARE = r"""
import json, sys
from raretarget import Engine
from raretarget.store import schema as S
a, b = Engine.open(sys.argv[1]), Engine.open(sys.argv[2])
out = {}
for name in list(S.DATA_TABLES) + ["quarantine", "ingested", "deleted"]:
    ta, tb = a.store.read(name), b.store.read(name)
    out[name] = [ta.num_rows, tb.num_rows, ta.equals(tb)]
for name in ("ids", "files", "phi", "quarantine"):
    la, lb = a.store.read_links(name).to_pylist(), b.store.read_links(name).to_pylist()
    out["links." + name] = [len(la), len(lb), la == lb]
print(json.dumps(out))
"""


def machine() -> str:
    from raretarget.machine import describe

    return describe()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1500)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cohort", help="an existing generated cohort folder (else one is generated)")
    a = ap.parse_args()
    key = os.urandom(32).hex()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cohort = Path(a.cohort) if a.cohort else tmp / "cohort"
        if not a.cohort:
            from raretarget.synth.cohort import generate

            t = time.perf_counter()
            generate(cohort, n_patients=a.patients, seed=7)
            print(f"generated {a.patients} patients in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        runs = []
        for r in range(a.repeats):
            for w in a.workers:
                root = tmp / f"S{w}_{r}"
                out = subprocess.run([sys.executable, "-c", CHILD, str(root), key, str(cohort), str(w)],
                                     capture_output=True, text=True, check=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), file=sys.stderr)
                if r < a.repeats - 1 or w not in (a.workers[0], a.workers[-1]):
                    keep = {f"S{a.workers[0]}_{a.repeats - 1}", f"S{a.workers[-1]}_{a.repeats - 1}"}
                    if root.name not in keep:
                        shutil.rmtree(root)
                        shutil.rmtree(root.with_name(root.name + ".links"))
        last = a.repeats - 1
        cmp = json.loads(subprocess.run([sys.executable, "-c", COMPARE, str(tmp / f"S{a.workers[0]}_{last}"),
                                         str(tmp / f"S{a.workers[-1]}_{last}")],
                                        capture_output=True, text=True, check=True).stdout)
    best = {w: min(x["wall_s"] for x in runs if x["workers"] == w) for w in a.workers}
    print(f"### Parallel ingest ({dt.date.today()}, {machine()}, load average at the end "
          f"{os.getloadavg()[0]:.1f})\n")
    print(f"command: `python {' '.join(sys.argv)}`\n")
    print("| workers | run | wall s | records/s | CPU parent s | CPU workers s | speed-up vs 1 (best) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k, x in enumerate(runs):
        w = x["workers"]
        print(f"| {w} | {k // len(a.workers) + 1} | {x['wall_s']} | {x['records'] / x['wall_s']:,.0f} | "
              f"{x['cpu_parent_s']} | {x['cpu_workers_s']} | {best[a.workers[0]] / best[w]:.2f}x |")
    same = all(v[2] for v in cmp.values())
    print(f"\nstore workers={a.workers[0]} vs workers={a.workers[-1]}: "
          f"{'identical' if same else 'DIFFERENT'} ({', '.join(f'{k} {v[0]}' for k, v in cmp.items() if v[0])})")
    if not same:
        print(json.dumps(cmp))
        sys.exit(1)


if __name__ == "__main__":
    main()

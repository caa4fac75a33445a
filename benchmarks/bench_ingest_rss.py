"""Peak RSS of ingesting one NDJSON file against its size (issue 17, item 8; issue 20).

    .venv/bin/python benchmarks/bench_ingest_rss.py --observations 50000 200000 --junk-mb 50 \
        [--baseline-pythonpath DIR]
Each measurement runs in a fresh process (ru_maxrss of that process). ``--baseline-pythonpath``: also run
each file with an older raretarget importable from DIR (a folder holding a ``raretarget`` package, e.g.
``git archive`` of an older commit with its ingest/ etc. linked under it), so the A/B is in the same run."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from raretarget import Engine
t = time.perf_counter()
eng = Engine.open(sys.argv[1], create=True)
rep = eng.ingest([sys.argv[2]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, round(time.perf_counter() - t, 1), rep.records,
      rep.quarantined)
"""


def observations(path: Path, n: int) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"resourceType": "Patient", "id": "p0", "gender": "female"}) + "\n")
        for i in range(n):
            f.write(json.dumps({"resourceType": "Observation", "id": f"o{i}", "status": "final",
                                "subject": {"reference": "Patient/p0"}, "effectiveDateTime": "2020-01-01",
                                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                                "valueQuantity": {"value": 90 + i % 50, "unit": "mg/dL", "code": "mg/dL"},
                                "note": [{"text": "x" * 600}]}) + "\n")


def bundle(path: Path, n: int) -> None:
    """The same records as :func:`observations`, as one collection Bundle (streamed entry by entry)."""
    with open(path, "w") as f:
        f.write('{"resourceType": "Bundle", "type": "collection", "entry": [')
        f.write(json.dumps({"fullUrl": "urn:uuid:p0", "resource": {"resourceType": "Patient", "id": "p0",
                                                                    "gender": "female"}}))
        for i in range(n):
            f.write(",\n" + json.dumps({"resource": {
                "resourceType": "Observation", "id": f"o{i}", "status": "final",
                "subject": {"reference": "urn:uuid:p0"}, "effectiveDateTime": "2020-01-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "valueQuantity": {"value": 90 + i % 50, "unit": "mg/dL", "code": "mg/dL"}, "note": [{"text": "x" * 600}]}}))
        f.write("]}\n")


def junk(path: Path, mb: int) -> None:
    rnd = random.Random(0)
    with open(path, "w") as f:
        for _ in range(mb * 1024):
            f.write("{" + "".join(rnd.choice("abcdef{}[]:,\"") for _ in range(1000)) + "\n")


def measure(path: Path, tmp: Path, pythonpath: str | None = None) -> dict:
    store = tmp / f"S{path.stem}{'_base' if pythonpath else ''}"
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", CHILD, str(store), str(path)], capture_output=True, text=True,
                         check=True, env=env, cwd=tmp).stdout.split()
    links = sum(f.stat().st_size for f in store.with_name(store.name + ".links").rglob("*") if f.is_file())
    shutil.rmtree(store)
    shutil.rmtree(store.with_name(store.name + ".links"))
    return {"code": "baseline" if pythonpath else "current", "file": path.name,
            "mb": round(path.stat().st_size / 2**20, 1), "peak_rss_mb": int(out[0]),
            "seconds": float(out[1]), "records": int(out[2]), "quarantined": int(out[3]),
            "link_folder_mb": round(links / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--observations", type=int, nargs="+", default=[20000, 60000])
    ap.add_argument("--junk-mb", type=int, nargs="+", default=[50])
    ap.add_argument("--bundle-observations", type=int, nargs="*", default=[])
    ap.add_argument("--baseline-pythonpath", help="also measure the raretarget importable from this folder")
    a = ap.parse_args()
    codes = [None] + ([a.baseline_pythonpath] if a.baseline_pythonpath else [])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in a.observations:
            p = tmp / f"obs{n}.ndjson"
            observations(p, n)
            for code in codes:
                print(json.dumps(measure(p, tmp, code)), flush=True)
            p.unlink()
        for n in a.bundle_observations:
            p = tmp / f"bundle{n}.json"
            bundle(p, n)
            for code in codes:
                print(json.dumps(measure(p, tmp, code)), flush=True)
            p.unlink()
        for mb in a.junk_mb:
            p = tmp / f"junk{mb}.ndjson"
            junk(p, mb)
            for code in codes:
                print(json.dumps(measure(p, tmp, code)), flush=True)
            p.unlink()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()

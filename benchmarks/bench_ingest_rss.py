"""Peak RSS of ingesting one NDJSON file against its size (issue 17, item 8).

    .venv/bin/python benchmarks/bench_ingest_rss.py --observations 50000 --junk-mb 50
Each measurement runs in a fresh process (ru_maxrss of that process)."""

from __future__ import annotations

import argparse
import json
import os
import random
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


def junk(path: Path, mb: int) -> None:
    rnd = random.Random(0)
    with open(path, "w") as f:
        for _ in range(mb * 1024):
            f.write("{" + "".join(rnd.choice("abcdef{}[]:,\"") for _ in range(1000)) + "\n")


def measure(path: Path, tmp: Path) -> dict:
    store = tmp / f"S{path.stem}"
    out = subprocess.run([sys.executable, "-c", CHILD, str(store), str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    links = sum(f.stat().st_size for f in (tmp / f"S{path.stem}.links").rglob("*") if f.is_file())
    return {"file": path.name, "mb": round(path.stat().st_size / 2**20, 1), "peak_rss_mb": int(out[0]),
            "seconds": float(out[1]), "records": int(out[2]), "quarantined": int(out[3]),
            "link_folder_mb": round(links / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--observations", type=int, nargs="+", default=[20000, 60000])
    ap.add_argument("--junk-mb", type=int, nargs="+", default=[50])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in a.observations:
            p = tmp / f"obs{n}.ndjson"
            observations(p, n)
            print(json.dumps(measure(p, tmp)))
            p.unlink()
        for mb in a.junk_mb:
            p = tmp / f"junk{mb}.ndjson"
            junk(p, mb)
            print(json.dumps(measure(p, tmp)))
            p.unlink()


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()

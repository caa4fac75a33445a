"""Outcome prediction benchmark: per-modality embeddings vs their fusion (``raretarget.apps.outcome``).

    python scripts/bench_outcome.py                         # 300 patients, seed 0, 5 epochs
    python scripts/bench_outcome.py --patients 150 --epochs 2 --out bench_outcome.json

Steps: ``raretarget.synth.cohort.generate`` → ``Engine.ingest`` (fhir, dicom, vcf) → ``Engine.train`` →
``Engine.embed`` → ``Engine``-level :func:`raretarget.apps.outcome.predict_outcome` for

* the 3 most frequent diseases of the cohort (labels from the answer key: a patient with that
  ``disease_id`` = 1, every other patient, controls included = 0; ids mapped with ``eng.pseudo``);
* comorbidities from the store's conditions: hypertension (``HP:0000822``, via the HPO mapping of the
  ingested SNOMED codes, descendants included) and type 2 diabetes (``SNOMED:44054006``).

Prints one markdown table (AUROC on held-out patients; per modality: only test patients having it,
coverage shown) with machine, date and command; ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import collections
import datetime as _dt
import hashlib
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("note", "image", "labs", "variants", "fused", "patient")


def _machine() -> str:
    from raretarget.machine import describe

    return f"{platform.node()} ({describe()})"


def _cell(r: dict | None) -> str:
    if not r or r.get("auroc") is None:
        return "–"
    cov = r.get("coverage")
    cov = "" if cov is None or cov >= 0.999 else f" ({cov:.0%})"
    return f"{r['auroc']:.3f}{cov}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Engine.train overrides (dotted keys; values parsed as JSON when possible)")
    a = ap.parse_args(argv)

    from raretarget import Engine
    from raretarget.synth.cohort import generate, read_truth

    work = a.work or Path(tempfile.mkdtemp(prefix="bench_outcome_"))
    work.mkdir(parents=True, exist_ok=True)
    out, store = work / "cohort", work / "store"
    for p in (out, store, Path(str(store) + ".links")):
        shutil.rmtree(p, ignore_errors=True)
    # fixed pseudonymisation key (the store keeps an existing one): same pseudonyms, same split every run
    links = Path(str(store) + ".links")
    links.mkdir(parents=True)
    (links / "secret.key").write_bytes(hashlib.sha256(f"bench_outcome|{a.seed}".encode()).digest())
    times = {}
    t0 = time.time()
    truth = generate(out, n_patients=a.patients, seed=a.seed)
    if not isinstance(truth, dict) or "patients" not in truth:
        truth = read_truth(out)
    times["generate_s"] = time.time() - t0
    t0 = time.time()
    eng = Engine.open(store, create=True)
    rep = eng.ingest([out / "fhir", out / "dicom", out / "vcf"])
    if rep.quarantined:
        print(f"warning: {rep.quarantined} record(s) quarantined at ingest", file=sys.stderr)
    times["ingest_s"] = time.time() - t0
    overrides = {"max_epochs": a.epochs}
    for kv in a.train:
        k, v = kv.split("=", 1)
        try:
            v = json.loads(v)
        except ValueError:
            pass
        overrides[k] = v
    t0 = time.time()
    eng.train(**overrides)
    times["train_s"] = time.time() - t0
    t0 = time.time()
    counts = eng.embed()
    times["embed_s"] = time.time() - t0

    from raretarget.apps.outcome import predict_outcome

    disease_of = {eng.pseudo.patient(p["patient"]): p.get("disease_id") for p in truth["patients"]}
    names = {d["disease_id"]: d.get("name") or d.get("label") or d["disease_id"] for d in truth.get("diseases", [])}
    freq = collections.Counter(d for d in disease_of.values() if d)
    tasks = []
    for did, _ in freq.most_common(3):
        tasks.append((f"disease {did}", did, {p: int(d == did) for p, d in disease_of.items()}))
    tasks.append(("hypertension", "HP:0000822", None))
    tasks.append(("type 2 diabetes", "SNOMED:44054006", None))

    rows = []
    t0 = time.time()
    for label, target, labels in tasks:
        try:
            r = predict_outcome(eng, target, labels=labels, seed=a.seed)
        except ValueError as e:
            rows.append({"task": label, "target": target, "error": str(e)})
            continue
        r["task"] = label
        if target in names:
            r["disease_name"] = names[target]
        rows.append(r)
    times["predict_s"] = time.time() - t0

    cmd = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"## Outcome prediction from embeddings ({a.patients} patients, seed {a.seed}, {a.epochs} epochs)\n")
    print(f"- machine: {_machine()}")
    print(f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"- command: `{cmd}`")
    print(f"- embeddings: {counts}")
    print(f"- timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    splits = sorted({r['split'] for r in rows if 'split' in r})
    print("- split(s): " + "; ".join(splits))
    print("- cells: held-out AUROC (Mann–Whitney); per modality only test patients having it, "
          "(coverage) when < 100 %\n")
    print("| task | target | n train/test | positives (test) | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for r in rows:
        if "error" in r:
            print(f"| {r['task']} | `{r['target']}` | – | – | " + " | ".join("–" for _ in COLUMNS) +
                  f" |  <!-- {r['error']} -->")
            continue
        name = f" ({r['disease_name']})" if r.get("disease_name") and r["disease_name"] != r["target"] else ""
        print(f"| {r['task']}{name} | `{r['target']}` | {r['n_train']}/{r['n_test']} | "
              f"{r['positives']} ({r['positives_test']}) | " +
              " | ".join(_cell(r["results"].get(c)) for c in COLUMNS) + " |")
    errs = [r for r in rows if "error" in r]
    for r in errs:
        print(f"\n{r['task']}: {r['error']}")
    report = {"patients": a.patients, "seed": a.seed, "epochs": a.epochs, "machine": _machine(),
              "command": cmd, "times": times, "embeddings": counts, "results": rows}
    if a.out:
        a.out.write_text(json.dumps(report, indent=1, default=float))
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()

"""Batch candidate ranking: a file of hypotheses in, one ranked table per hypothesis out.

Hypotheses file (YAML list, JSONL, or CSV with a header), each item with an ``id`` and one query form:
``text``, ``phenotypes`` (HPO ids; CSV: separated by ``;`` or ``|``), ``excluded``, ``phenopacket``
(path, relative to the hypotheses file), optional ``patients`` (cohort filter: a SQL predicate over
``patients``, e.g. ``sex = 'female'``) and ``k``. Output per hypothesis: ``<id>.parquet`` and ``<id>.csv``;
plus ``summary.json`` with status, top genes and the reason for every skipped hypothesis.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Iterable

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def load_hypotheses(path: str | Path) -> list[dict]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            items = yaml.safe_load(text) or []
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{p.name}: malformed YAML{where}") from None
        items = items.get("hypotheses", items) if isinstance(items, dict) else items
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    items.append({"id": f"line{n}", "_error": f"malformed JSON: {e.msg}"})
    elif p.suffix.lower() == ".csv":
        items = [dict(r) for r in csv.DictReader(text.splitlines())]
        for it in items:
            for key in ("phenotypes", "excluded"):
                if isinstance(it.get(key), str):
                    it[key] = [x.strip() for x in re.split(r"[;|,]", it[key]) if x.strip()]
            for key in list(it):
                if it[key] in ("", None):
                    it.pop(key)
    else:
        raise ValueError(f"{p.name}: hypotheses must be .yaml/.yml, .jsonl or .csv")
    if not isinstance(items, list):
        raise ValueError(f"{p.name}: expected a list of hypotheses")
    out = []
    for i, it in enumerate(items):
        it = dict(it) if isinstance(it, dict) else {"_error": "hypothesis is not a mapping"}
        it.setdefault("id", f"h{i + 1}")
        if isinstance(it.get("phenopacket"), str) and it["phenopacket"] and not Path(it["phenopacket"]).is_absolute():
            it["phenopacket"] = str(p.parent / it["phenopacket"])
        out.append(it)
    return out


def output_name(hid, used: set[str]) -> str:
    """A safe, unique file stem for hypothesis id ``hid``: only ``[A-Za-z0-9._-]``, never hidden or a path
    (``../../etc/evil`` → ``etc_evil-<hash>``); an id that had to change gets a short hash of itself, so two
    ids never share a file."""
    raw = str(hid)
    stem = _SAFE.sub("_", raw).strip("._-")[:80] or "hypothesis"
    if stem != raw or stem in used:
        stem = f"{stem}-{hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()}"
    used.add(stem)
    return stem


def _check_hypothesis(h: dict, k_default) -> int:
    """Validate one hypothesis; its k. Raises ValueError with a clear reason."""
    for key in ("phenotypes", "excluded"):
        v = h.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(t, str) for t in v)):
            raise ValueError(f"{key} must be a list of HPO ids (got a {type(v).__name__})")
    for key in ("text", "phenopacket", "patients"):
        v = h.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{key} must be a string (got a {type(v).__name__})")
    k = h.get("k", k_default)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, str)) or not str(k).strip().isdigit() or int(k) <= 0:
            raise ValueError("k must be a positive integer")
        k = int(k)
    return k


def run_batch(engine, hypotheses: Iterable[dict], out_dir: str | Path, k: int = 50, weights: Any = None,
              progress: bool = True) -> dict:
    """Rank each hypothesis; a bad one is recorded in the summary and skipped, never fatal."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hyps = list(hypotheses)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
        raise ValueError("k must be a positive integer")
    used: set[str] = set()
    summary = {"n": len(hyps), "ok": 0, "skipped": 0, "hypotheses": []}
    it = hyps
    if progress:
        from tqdm import tqdm

        it = tqdm(hyps, desc="hypotheses", unit="hyp")
    for h in it:
        hid = output_name(h["id"], used)
        rec = {"id": h["id"], "file": None}
        t0 = time.perf_counter()
        try:
            if "_error" in h:
                raise ValueError(h["_error"])
            hk = _check_hypothesis(h, k)
            forms = [f for f in ("text", "phenotypes", "phenopacket") if h.get(f)]
            if not forms:
                raise ValueError("no query: give text, phenotypes or phenopacket")
            patients = None
            if h.get("patients"):
                from raretarget.query.filters import allowed_patients

                patients = sorted(allowed_patients(engine.sql, where=h["patients"]) or [])
            table = engine.rank_targets(h.get("text"), phenotypes=h.get("phenotypes"),
                                        excluded=h.get("excluded") or (), phenopacket=h.get("phenopacket"),
                                        patients=patients, k=hk, weights=weights)
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq

            pq.write_table(table, out / f"{hid}.parquet")
            pacsv.write_csv(table, out / f"{hid}.csv")
            rec.update(status="ok", file=f"{hid}.parquet", top=table.column("gene").to_pylist()[:10])
            summary["ok"] += 1
        except Exception as e:  # noqa: BLE001  (one bad hypothesis never stops the batch)
            rec.update(status="skipped", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            summary["skipped"] += 1
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        summary["hypotheses"].append(rec)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

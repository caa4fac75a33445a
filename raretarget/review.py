"""Expert review loop: verdicts on candidate genes of a hypothesis, stored in the store, fed back into ranking.

* ``hypothesis_id(...)``: a deterministic id of a query (``H`` + 12 hex digits): the sorted, upper-cased HPO
  ids, the sorted excluded ids, the normalised free text (case-folded, whitespace collapsed) and the index
  case (pseudonymous patient id, or the VCF's content digest: never its path). The same query typed again,
  in any term order, gets the same id; a ranking writes its hypothesis (terms, scrubbed text) once under
  ``<store>/reviews/hypotheses/<id>.json`` so a verdict can be turned into a (profile, gene) training pair.
* ``review(engine, hid, gene, verdict, note, reviewer)``: one append-only, timestamped row written atomically
  as its own Parquet file under ``<store>/reviews/verdicts/<date>/`` (never rewritten; the latest verdict per
  (hypothesis, gene) counts, the history stays). Notes go through the store's de-identification (the
  patients' own identifiers from the link folder when it is at hand, plus PHI-like patterns) before they are
  written; a validation error names the field, never the value.
* ``rank(...)``: the ranking with verdicts applied: each row gets ``verdict`` (confirmed / rejected / unsure or
  null); rejected genes move below every other gene of the hypothesis (ranks renumbered; their scores are
  kept, so the reader still sees how strong the evidence was), the top ``k`` are filled with unrejected genes.

Reviewer names: stored as given by default; a site that wants pseudonymous reviewers sets
``RARETARGET_REVIEWERS=pseudonymous`` (a keyed hash with the store's key, ``rv-...``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import uuid

import pyarrow as pa

from .store.reviews import VERDICTS_SCHEMA, latest_verdicts, reviews_root, training_pairs, verdicts  # noqa: F401

__all__ = ["VERDICTS", "hypothesis_id", "scrub", "review", "verdicts", "latest_verdicts", "rank", "hypothesis",
           "ReviewError"]

VERDICTS = ("confirmed", "rejected", "unsure")
_HID = re.compile(r"^H[0-9a-f]{12}$")
_GENE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_REVIEWER = re.compile(r"^[\w.@ -]{1,64}$")
MAX_NOTE = 4000

SCHEMA = VERDICTS_SCHEMA          # the stored verdict row (raretarget.store.reviews)


class ReviewError(ValueError):
    """Bad review input: the message names the field and the reason, never the value typed."""


# ---- hypothesis ids -------------------------------------------------------------------------------------
def _terms(xs) -> list[str]:
    return sorted({str(x).strip().upper() for x in (xs or []) if str(x).strip()})


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def query_key(query=None, phenotypes=None, excluded=(), phenopacket=None, patient=None, vcf=None) -> dict:
    """The normalised content a hypothesis id is a hash of."""
    if phenopacket is not None:
        from raretarget.prioritize import parse_phenopacket

        pp = parse_phenopacket(phenopacket)
        phenotypes = list(phenotypes or []) + list(pp.observed)
        excluded = list(excluded or []) + list(pp.excluded)
    text = " ".join(str(query).casefold().split()) if query else ""
    case = f"patient:{patient}" if patient else (f"vcf:{_digest(vcf)}" if vcf is not None else "")
    return {"hpo": _terms(phenotypes), "not": _terms(excluded), "text": text, "case": case}


def hypothesis_id(query=None, *, phenotypes=None, excluded=(), phenopacket=None, patient=None, vcf=None) -> str:
    """Deterministic id of a query (see the module docstring)."""
    return _hid(query_key(query, phenotypes, excluded, phenopacket, patient, vcf))


def _hid(key: dict) -> str:
    return "H" + hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()


# ---- PHI scrubbing --------------------------------------------------------------------------------------
def scrub(engine, text: str) -> str:
    """``text`` with the store's patients' own identifiers (when the link folder is readable) and PHI-like
    patterns (dates, phones, e-mails, MRNs, addresses …) replaced by placeholders — the ingest's
    de-identification (:func:`raretarget.ingest.deid.scrub_text`)."""
    from raretarget.ingest.deid import compile_terms, scrub_text

    pat = None
    try:
        phi = engine.store.read_links("phi")
        n = phi.num_rows
        ctx = getattr(engine, "ctx", None)          # an Engine's Context keeps the compiled patterns
        cached = getattr(ctx, "review_phi", None)
        if cached is not None and cached[0] == n:
            pat = cached[1]
        else:
            terms = [t for ts in phi.column("terms").to_pylist() for t in (ts or [])]
            pat = compile_terms(terms)
            if ctx is not None:
                ctx.review_phi = (n, pat)
    except OSError:
        pat = None                 # a reader without the link folder: the patterns still apply
    return scrub_text(text, pat)


# ---- storage --------------------------------------------------------------------------------------------
_root = reviews_root               # <store>/reviews of an Engine, a Store or a store path


def register_hypothesis(engine, hid: str, key: dict) -> None:
    """Write the hypothesis (HPO ids, scrubbed text) once; later rankings of the same query find it."""
    from .store.io import atomic_write_bytes

    p = _root(engine) / "hypotheses" / f"{hid}.json"
    if p.exists():
        return
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        rec = {"hypothesis_id": hid, "phenotypes": key["hpo"], "excluded": key["not"],
               "text": scrub(engine, key["text"]) if key["text"] else "", "case": key["case"],
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_bytes(p, json.dumps(rec, sort_keys=True).encode())
    except OSError:
        pass                       # read-only store: ranking still works, reviews will be refused


def hypothesis(engine, hid: str) -> dict | None:
    p = _root(engine) / "hypotheses" / f"{hid}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _pseudonymous_reviewer(engine, name: str) -> str:
    key = engine.store.key()
    return "rv-" + hmac.new(key, ("reviewer|" + name).encode(), hashlib.sha256).hexdigest()[:12]


def review(engine, hypothesis_id: str, gene: str, verdict: str, note: str = "", reviewer: str | None = None) -> dict:
    """Store one verdict; returns the stored row (note as stored, i.e. scrubbed)."""
    from .audit import current_user
    from .store.io import atomic_write_parquet

    if not isinstance(hypothesis_id, str) or not _HID.match(hypothesis_id):
        raise ReviewError("hypothesis_id: not a hypothesis id (H + 12 hex digits, shown by `raretarget rank`)")
    hyp = hypothesis(engine, hypothesis_id)
    if hyp is None:
        raise ReviewError("hypothesis_id: unknown in this store (rank the hypothesis first)")
    if not isinstance(gene, str) or not _GENE.match(gene):
        raise ReviewError("gene: not a gene symbol")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict: must be one of {', '.join(VERDICTS)}")
    note = "" if note is None else note
    if not isinstance(note, str):
        raise ReviewError("note: must be text")
    if len(note) > MAX_NOTE:
        raise ReviewError(f"note: longer than {MAX_NOTE} characters")
    reviewer = current_user() if not reviewer else reviewer
    if not isinstance(reviewer, str) or not _REVIEWER.match(reviewer):
        raise ReviewError("reviewer: 1-64 letters, digits, spaces or . @ - _")
    if os.environ.get("RARETARGET_REVIEWERS", "named") == "pseudonymous":
        reviewer = _pseudonymous_reviewer(engine, reviewer)
    now = dt.datetime.now(dt.timezone.utc)
    row = {"review_id": uuid.uuid4().hex, "time": now, "hypothesis_id": hypothesis_id, "gene": gene.upper(),
           "verdict": verdict, "note": scrub(engine, note) if note else "", "reviewer": reviewer,
           "phenotypes": hyp.get("phenotypes", []), "excluded": hyp.get("excluded", [])}
    path = _root(engine) / "verdicts" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H%M%S%f')}-{row['review_id'][:8]}.parquet"
    atomic_write_parquet(path, pa.Table.from_pylist([row], schema=SCHEMA))
    return row


# ---- ranking with verdicts ------------------------------------------------------------------------------
def apply_verdicts(table: pa.Table, latest: dict[str, dict], k: int | None, hid: str) -> pa.Table:
    """Add ``verdict``; rejected genes below all others (ranks renumbered), top ``k`` unrejected kept."""
    if not latest:                      # no verdict yet (the common case): same rows, an empty verdict column
        out = table.slice(0, k) if k is not None else table
        out = out.append_column("verdict", pa.nulls(out.num_rows, pa.string()))
        meta = dict(out.schema.metadata or {})
        meta[b"hypothesis_id"] = hid.encode()
        return out.replace_schema_metadata(meta)
    genes = table.column("gene").to_pylist()
    v = [latest[g]["verdict"] if g in latest else None for g in genes]
    keep = [i for i, x in enumerate(v) if x != "rejected"]
    if k is not None:
        keep = keep[:k]
    order = keep + [i for i, x in enumerate(v) if x == "rejected"]
    out = table.take(pa.array(order, pa.int64())) if order != list(range(len(genes))) else table
    out = out.append_column("verdict", pa.array([v[i] for i in order], pa.string()))
    if "rank" in out.column_names:
        out = out.set_column(out.column_names.index("rank"), "rank",
                             pa.array(range(1, out.num_rows + 1), out.schema.field("rank").type))
    meta = dict(out.schema.metadata or {})
    meta[b"hypothesis_id"] = hid.encode()
    return out.replace_schema_metadata(meta)


def rank(engine, rank_fn, query=None, *, k: int | None = 50, **kw) -> pa.Table:
    """``rank_fn(query, k=..., **kw)`` with the hypothesis' verdicts applied (module docstring)."""
    key = query_key(query, kw.get("phenotypes"), kw.get("excluded", ()), kw.get("phenopacket"),
                    kw.get("patient"), kw.get("vcf"))
    hid = _hid(key)
    register_hypothesis(engine, hid, key)
    latest = latest_verdicts(engine, hid)
    n_rej = sum(r["verdict"] == "rejected" for r in latest.values())
    table = rank_fn(query, k=None if k is None else k + n_rej, **kw)
    return apply_verdicts(table, latest, k, hid)


def table_hypothesis_id(table: pa.Table) -> str | None:
    meta = table.schema.metadata or {}
    v = meta.get(b"hypothesis_id")
    return v.decode() if v else None

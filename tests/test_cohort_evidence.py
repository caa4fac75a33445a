"""Cohort evidence (prioritize/enrichment.py): burden of rare damaging variants in a case group vs the rest.

A hand-made DuckDB store checks the 2x2 counts, Haldane–Anscombe odds ratio, one-sided Fisher p and BH q
against scipy; the generated cohort checks that each disease's causal gene comes out on top, that counts
match a direct Python count over the store, and that phenotype matching recovers the affected patients.
"""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import false_discovery_control, fisher_exact

from raretarget.prioritize import KnowledgeBase, rank_genes
from raretarget.prioritize.enrichment import (COHORT_SCHEMA, benjamini_hochberg, cohort_evidence, cohort_for_phenotypes,
                                          cohort_scores, matching_patients, phenotype_coverage)


# ------------------------------------------------------------------------------------------ hand-made store
def _variants(rows: list[tuple]) -> pa.Table:
    cols = ["patient_id", "gene", "consequence", "impact", "clinvar", "af", "zygosity", "source_ref"]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    return pa.table({**{c: pa.array(v, pa.string()) for c, v in data.items() if c != "af"},
                     "af": pa.array(data["af"], pa.float32())})


CASES = ["c1", "c2", "c3", "c4"]
CONTROLS = [f"k{i}" for i in range(1, 9)]
MIS, STOP = "missense_variant", "stop_gained"
ROWS = [
    # G1: 3/4 cases, 1/8 controls carry; c1 and k1 have two G1 alleles each (counted once)
    ("c1", "G1", MIS, "MODERATE", None, 1e-5, "het", "v:c1/a"),
    ("c1", "G1", STOP, "HIGH", None, None, "het", "v:c1/b"),          # unknown AF counts as rare
    ("c2", "G1", MIS, "MODERATE", "uncertain_significance", 2e-4, "het", "v:c2/a"),
    ("c3", "G1", STOP, None, None, 1e-6, "hom_alt", "v:c3/a"),         # impact from consequence
    ("k1", "G1", MIS, "MODERATE", None, 1e-4, "het", "v:k1/a"),
    ("k1", "G1", STOP, "HIGH", None, 1e-6, "het", "v:k1/b"),             # control with two alleles: one carrier
    # G2: common (af > max_af) → not qualifying
    ("c1", "G2", MIS, "MODERATE", None, 0.2, "het", "v:c1/c"),
    ("c2", "G2", MIS, "MODERATE", None, 0.2, "het", "v:c2/c"),
    # G3: ClinVar benign overrides a MODERATE impact (exclude_benign)
    ("c1", "G3", MIS, "MODERATE", "likely_benign", 1e-4, "het", "v:c1/d"),
    ("c4", "G3", MIS, "MODERATE", "benign", 1e-4, "het", "v:c4/d"),
    # G4: ClinVar P/LP with a LOW impact qualifies; conflicting does not
    ("c4", "G4", "synonymous_variant", "LOW", "pathogenic/likely_pathogenic", 1e-5, "het", "v:c4/e"),
    ("c3", "G4", "synonymous_variant", "LOW", "conflicting_interpretations_of_pathogenicity", 1e-5, "het", "v:c3/e"),
    ("k2", "G4", "synonymous_variant", "LOW", "likely_pathogenic", 1e-5, "het", "v:k2/e"),
    ("k3", "G4", "synonymous_variant", "LOW", "likely_pathogenic", 1e-5, "het", "v:k3/e"),
    # G5: only controls carry → no row, but it is a tested gene for BH
    ("k4", "G5", STOP, "HIGH", None, 1e-5, "het", "v:k4/f"),
    # background rows so every patient is "sequenced"
    *[(p, "BG", "intron_variant", "MODIFIER", "benign", 0.3, "het", f"v:{p}/z") for p in CASES + CONTROLS],
]
PHENO = {  # tiny ontology: root ─ A ─ A1 ─ A11 ; root ─ B ; root ─ C
    "HP:0000001": [], "HP:1000000": ["HP:0000001"], "HP:1000010": ["HP:1000000"], "HP:1000011": ["HP:1000010"],
    "HP:2000000": ["HP:0000001"], "HP:3000000": ["HP:0000001"],
}
CONDITIONS = [("c1", "HP:1000011"), ("c1", "HP:2000000"), ("c2", "HP:1000000"), ("c3", "HP:3000000"),
              ("k1", "HP:2000000"), ("k2", None)]


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.register("variants", _variants(ROWS))
    c.register("patients", pa.table({"patient_id": CASES + CONTROLS + ["u1"]}))   # u1: no genotypes
    c.register("conditions", pa.table({"patient_id": [r[0] for r in CONDITIONS],
                                       "hpo_id": pa.array([r[1] for r in CONDITIONS], pa.string())}))
    yield c
    c.close()


def _fake_sql(c):
    return lambda q, params=None: c.sql(q, params=params).to_arrow_table()


def test_handmade_counts_odds_ratio_fisher_and_bh(con):
    t = cohort_evidence(_fake_sql(con), CASES)
    assert t.schema == COHORT_SCHEMA
    rows = {r["gene"]: r for r in t.to_pylist()}
    assert set(rows) == {"G1", "G4"}                      # G2 common, G3 benign, G5 controls only, BG common
    assert [r["gene"] for r in t.to_pylist()] == ["G1", "G4"]
    g1, g4 = rows["G1"], rows["G4"]
    assert (g1["n_case_carriers"], g1["n_cases"], g1["n_control_carriers"], g1["n_controls"]) == (3, 4, 1, 8)
    assert (g4["n_case_carriers"], g4["n_control_carriers"]) == (1, 2)
    assert g1["case_carriers"] == ["c1", "c2", "c3"] and g4["case_carriers"] == ["c4"]
    assert g1["source_refs"] == ["v:c1/a", "v:c1/b", "v:c2/a", "v:c3/a"] and g4["source_refs"] == ["v:c4/e"]
    assert g1["prevalence"] == pytest.approx(0.75) and g1["control_prevalence"] == pytest.approx(1 / 8)
    # tested genes: G1, G4, G5 (any carrier); BH over their one-sided Fisher p values
    ps = {}
    for g, (a, c) in {"G1": (3, 1), "G4": (1, 2), "G5": (0, 1)}.items():
        table = [[a, 4 - a], [c, 8 - c]]
        ps[g] = fisher_exact(table, alternative="greater")[1]
        if g in rows:
            assert rows[g]["p_value"] == pytest.approx(ps[g], rel=1e-9)
            b, d = 4 - a, 8 - c
            assert rows[g]["odds_ratio"] == pytest.approx((a + .5) * (d + .5) / ((b + .5) * (c + .5)))
            assert rows[g]["score"] == pytest.approx(min(1.0, -math.log10(ps[g]) / 5.0))
    q = dict(zip(ps, false_discovery_control(list(ps.values()), method="bh")))
    for g in rows:
        assert rows[g]["q_value"] == pytest.approx(q[g], rel=1e-9)
    assert json.loads(t.schema.metadata[b"cohort"])["n_genes_tested"] == 3
    # the same through a raw duckdb connection; score scale is a parameter
    t2 = cohort_evidence(con, CASES, score_cap=2.0)
    assert t2.column("p_value").to_pylist() == t.column("p_value").to_pylist()
    assert t2.column("score")[0].as_py() == pytest.approx(min(1.0, -math.log10(ps["G1"]) / 2.0))


def test_handmade_filters_and_options(con):
    sql = _fake_sql(con)
    # pathogenic=False: the LOW-impact ClinVar P/LP allele no longer qualifies
    assert "G4" not in cohort_evidence(sql, CASES, pathogenic=False).column("gene").to_pylist()
    # exclude_benign=False: the benign MODERATE alleles of G3 count again
    g3 = {r["gene"]: r for r in cohort_evidence(sql, CASES, exclude_benign=False).to_pylist()}["G3"]
    assert g3["n_case_carriers"] == 2
    # max_af: raising it past 0.2 brings G2 in; lowering it below 1e-5 drops the 1e-4/2e-4 alleles of G1
    assert "G2" in cohort_evidence(sql, CASES, max_af=0.25).column("gene").to_pylist()
    g1 = {r["gene"]: r for r in cohort_evidence(sql, CASES, max_af=1e-5).to_pylist()}["G1"]
    assert (g1["n_case_carriers"], g1["n_control_carriers"]) == (2, 1)      # c1 (null AF / 1e-5), c3; k1 (1e-6)
    assert g1["source_refs"] == ["v:c1/a", "v:c1/b", "v:c3/a"]
    # damaging=("HIGH",): missense carriers drop out
    g1 = {r["gene"]: r for r in cohort_evidence(sql, CASES, damaging=("HIGH",)).to_pylist()}["G1"]
    assert g1["case_carriers"] == ["c1", "c3"] and g1["source_refs"] == ["v:c1/b", "v:c3/a"]
    # population="all" adds the un-genotyped patient u1 to the controls
    assert cohort_evidence(sql, CASES, population="all").column("n_controls")[0].as_py() == 9
    # unknown and empty case lists
    t = cohort_evidence(sql, ["nobody"])
    assert t.num_rows == 0 and t.schema == COHORT_SCHEMA
    assert json.loads(t.schema.metadata[b"cohort"])["cases_not_found"] == ["nobody"]
    assert cohort_evidence(sql, []).num_rows == 0
    assert cohort_scores(cohort_evidence(sql, [])) == {}


def test_handmade_phenotype_matching_uses_descendants(con):
    sql = _fake_sql(con)
    A, A1, B, C = "HP:1000000", "HP:1000010", "HP:2000000", "HP:3000000"
    # c1 has A11 (a descendant of A and A1) and B; c2 has A only; k1 has B
    assert matching_patients(sql, [A, B], 1.0, ontology=PHENO) == ["c1"]
    assert matching_patients(sql, [A, B], 0.5, ontology=PHENO) == ["c1", "c2", "k1"]
    assert matching_patients(sql, [A1], 0.5, ontology=PHENO) == ["c1"]              # c2's A is broader: no
    assert matching_patients(sql, [C, A1, B], 0.6, ontology=PHENO) == ["c1"]
    assert phenotype_coverage(sql, [A, B, C], ontology=PHENO)["c3"] == pytest.approx(1 / 3)
    assert matching_patients(sql, [], 0.5, ontology=PHENO) == []
    t = cohort_for_phenotypes(sql, [A], min_fraction=1.0, ontology=PHENO)
    assert json.loads(t.schema.metadata[b"cohort"])["n_cases"] == 2              # c1, c2


def test_handmade_scores_feed_rank_genes(con):
    t = cohort_evidence(_fake_sql(con), CASES)
    scores = cohort_scores(t)
    assert set(scores) == {"G1", "G4"} and 0 < scores["G4"] < scores["G1"] <= 1
    terms = {"HP:0000001": [], "HP:0000118": ["HP:0000001"], "HP:0100001": ["HP:0000118"]}
    kb = KnowledgeBase(terms, {"G1": ["HP:0100001"], "G9": ["HP:0100001"]}, phenotype_root="HP:0000118")
    ranked = rank_genes(["HP:0100001"], kb=kb, extra_components={"cohort": scores})
    assert ranked.column("gene")[0].as_py() == "G1"
    assert ranked.column("cohort")[0].as_py() == pytest.approx(scores["G1"])


def test_benjamini_hochberg_matches_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.005, 1.0, 0.04])
    assert np.allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    assert benjamini_hochberg(np.array([])).size == 0


# ------------------------------------------------------------------------------------------ generated cohort
@pytest.fixture(scope="module")
def cohort(cohort_store):
    _tmp, eng, truth = cohort_store(60, 2)
    affected = {}
    for p in truth["patients"]:
        if p["disease_id"]:
            affected.setdefault(p["disease_id"], []).append(eng.pseudo.patient(p["patient"]))
    return eng, truth, affected


def _qualifies(r: dict, max_af: float = 0.01) -> bool:
    """Direct Python statement of the documented rule (not a copy of the SQL)."""
    if not r["gene"] or (r["af"] is not None and r["af"] > max_af):
        return False
    cv = (r["clinvar"] or "").lower()
    plp = cv in ("pathogenic", "likely_pathogenic", "pathogenic/likely_pathogenic")
    benign = cv in ("benign", "likely_benign", "benign/likely_benign")
    return plp or (r["impact"] in ("HIGH", "MODERATE") and not benign)


def test_causal_gene_stands_out(cohort):
    eng, truth, affected = cohort
    assert len(affected) == len(truth["diseases"]) >= 5
    for d in truth["diseases"]:
        cases = affected[d["disease_id"]]
        t = cohort_evidence(eng.sql, cases)
        rows = t.to_pylist()
        genes = [r["gene"] for r in rows]
        gene = d["genes"][0]
        assert gene in genes[:3], (d["disease_id"], gene, genes[:5])
        r = rows[genes.index(gene)]
        assert r["n_case_carriers"] == len(cases) == r["n_cases"]
        assert r["p_value"] < 1e-3 and r["q_value"] < 0.1 and r["score"] > 0.5
        assert r["odds_ratio"] > 10
        assert cohort_scores(t)[gene] == max(cohort_scores(t).values())
        assert set(r["case_carriers"]) == set(cases)
        assert all(s.startswith("vcf:") for s in r["source_refs"])


def test_counts_match_direct_count(cohort):
    eng, truth, affected = cohort
    d = truth["diseases"][0]
    cases = set(affected[d["disease_id"]])
    rows = eng.sql("SELECT patient_id, gene, impact, clinvar, af, source_ref FROM variants").to_pylist()
    universe = {r["patient_id"] for r in rows}
    carriers: dict[str, set] = {}
    refs: dict[str, set] = {}
    for r in rows:
        if r["af"] is not None:
            r["af"] = float(r["af"])
        if _qualifies(r):
            carriers.setdefault(r["gene"], set()).add(r["patient_id"])
            if r["patient_id"] in cases:
                refs.setdefault(r["gene"], set()).add(r["source_ref"])
    t = cohort_evidence(eng.sql, sorted(cases))
    got = {r["gene"]: r for r in t.to_pylist()}
    expect = {g for g, ps in carriers.items() if ps & cases}
    assert set(got) == expect and len(expect) > 3
    n_cases, n_controls = len(cases & universe), len(universe - cases)
    p_all = []
    for g, ps in carriers.items():
        a, c = len(ps & cases), len(ps - cases)
        p = fisher_exact([[a, n_cases - a], [c, n_controls - c]], alternative="greater")[1]
        p_all.append((g, p))
        if g in got:
            r = got[g]
            assert (r["n_case_carriers"], r["n_cases"], r["n_control_carriers"], r["n_controls"]) == \
                (a, n_cases, c, n_controls), g
            assert set(r["case_carriers"]) == ps & cases and set(r["source_refs"]) == refs[g]
            assert r["p_value"] == pytest.approx(p, rel=1e-6)
    q = dict(zip([g for g, _ in p_all], false_discovery_control([p for _, p in p_all], method="bh")))
    for g, r in got.items():
        assert r["q_value"] == pytest.approx(q[g], rel=1e-6)
    # ordering: best p first
    ps = t.column("p_value").to_pylist()
    assert ps == sorted(ps)


def test_matching_patients_recovers_affected(cohort):
    from raretarget.ingest.phenotypes import PhenotypeMapper

    eng, truth, affected = cohort
    hpo = PhenotypeMapper()
    hit = total = returned = 0
    for d in truth["diseases"]:
        aff = set(affected[d["disease_id"]])
        m = matching_patients(eng.sql, d["hpo"], min_fraction=0.35, ontology=hpo)
        hit += len(aff & set(m))
        total += len(aff)
        returned += len(m)
    assert hit >= 0.8 * total                    # recall
    assert hit >= 0.8 * returned                 # precision
    # the case group found by phenotype alone puts the causal gene on top
    d = truth["diseases"][1]
    t = cohort_for_phenotypes(eng.sql, d["hpo"], min_fraction=0.35, ontology=hpo)
    assert t.column("gene")[0].as_py() == d["genes"][0]


def test_empty_case_list(cohort):
    eng, _, _ = cohort
    t = cohort_evidence(eng.sql, [])
    assert t.num_rows == 0 and t.schema == COHORT_SCHEMA
    assert cohort_scores(t) == {}


def test_a_stored_term_newer_than_the_packaged_obo_has_its_ancestors():
    """HP:0020301 (Abnormal elbow physiology) is not in the packaged hp.obo (2025-01-16) but in hpo3's release: a
    patient who has it is covered by a query for its parent HP:0009811 (Abnormality of the elbow); before, the term
    had no parents and matched only itself."""
    from raretarget.ingest.phenotypes import PhenotypeMapper

    mapper = PhenotypeMapper()
    assert "HP:0020301" not in mapper.terms
    con = duckdb.connect()
    con.execute("CREATE TABLE conditions AS SELECT * FROM (VALUES ('P1', 'HP:0020301'), ('P2', 'HP:0001250')) "
                "t(patient_id, hpo_id)")
    assert phenotype_coverage(con, ["HP:0009811"], mapper) == {"P1": 1.0, "P2": 0.0}

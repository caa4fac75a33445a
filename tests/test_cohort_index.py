"""The cohort index (prioritize/cohort_index.py): phenotype_coverage / matching_patients / cohort_evidence read from
it give exactly what the SQL path gives (same tables, same order, same metadata), on a hand-made store with the
corner cases (null source refs, un-genotyped patients, unknown ids) and on a generated cohort; the Context builds it
once per store version and again after an ingest.
"""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from raretarget import Engine
from raretarget.ingest.phenotypes import PhenotypeMapper
from raretarget.prioritize.cohort_index import CohortIndex, _gather
from raretarget.prioritize.enrichment import (cohort_evidence, cohort_for_phenotypes, matching_patients,
                                              phenotype_coverage)


def _rows(t: pa.Table) -> list[dict]:
    # NaN (control_prevalence when every patient is a case) compared as a value: both paths give it
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in t.to_pylist()]


def same_table(a: pa.Table, b: pa.Table) -> None:
    """Equal values (floats bit for bit), types, order and schema metadata (the cohort JSON as text: key order
    too)."""
    assert a.schema == b.schema
    assert a.schema.metadata == b.schema.metadata
    assert _rows(a) == _rows(b)


# ------------------------------------------------------------------------------------------ hand-made store
PHENO = {  # root ─ A ─ A1 ─ A11 ; root ─ B ; root ─ C ; "HP:7000000" obsolete → B
    "HP:0000001": [], "HP:1000000": ["HP:0000001"], "HP:1000010": ["HP:1000000"], "HP:1000011": ["HP:1000010"],
    "HP:2000000": ["HP:0000001"], "HP:3000000": ["HP:0000001"],
}
A, A1, A11, B, C, ROOT = "HP:1000000", "HP:1000010", "HP:1000011", "HP:2000000", "HP:3000000", "HP:0000001"
MIS, STOP = "missense_variant", "stop_gained"
ROWS = [  # patient, gene, consequence, impact, clinvar, af, source_ref
    ("c1", "G1", MIS, "MODERATE", None, 1e-5, "v:c1/a"),
    ("c1", "G1", STOP, "HIGH", None, None, "v:c1/b"),
    ("c1", "G1", STOP, "HIGH", None, None, "v:c1/b"),               # the same ref twice: listed once
    ("c2", "G1", MIS, "MODERATE", "uncertain_significance", 2e-4, "v:c2/a"),
    ("c3", "G1", STOP, None, None, 1e-6, "v:c3/a"),
    ("k1", "G1", MIS, "MODERATE", None, 1e-4, "v:k1/a"),
    ("c1", "G2", MIS, "MODERATE", None, 0.2, "v:c1/c"),
    ("c4", "G3", MIS, "MODERATE", "benign", 1e-4, "v:c4/d"),
    ("c4", "G4", "synonymous_variant", "LOW", "pathogenic", 1e-5, None),   # case carrier without a source ref
    ("k2", "G4", "synonymous_variant", "LOW", "likely_pathogenic", 1e-5, "v:k2/e"),
    ("c2", "G6", STOP, "HIGH", None, 1e-5, None),                          # refs: one null, one not
    ("c3", "G6", STOP, "HIGH", None, 1e-5, "v:c3/g"),
    ("k4", "G5", STOP, "HIGH", None, 1e-5, "v:k4/f"),
    ("k5", "", STOP, "HIGH", None, 1e-5, "v:k5/x"),                        # empty gene: never qualifies
    *[(p, "BG", "intron_variant", "MODIFIER", "benign", 0.3, f"v:{p}/z") for p in
      ["c1", "c2", "c3", "c4", "k1", "k2", "k3", "k4", "k5"]],
]
CONDITIONS = [("c1", A11), ("c1", B), ("c2", A), ("c3", C), ("k1", B), ("k2", None), ("u1", A1),
              ("k3", "HP:7000000"), ("k4", "HP:5555555")]          # u1: phenotypes, no genotypes; unknown terms


@pytest.fixture()
def con():
    c = duckdb.connect()
    cols = ["patient_id", "gene", "consequence", "impact", "clinvar", "af", "source_ref"]
    data = {k: [r[i] for r in ROWS] for i, k in enumerate(cols)}
    c.register("variants", pa.table({**{k: pa.array(v, pa.string()) for k, v in data.items() if k != "af"},
                                     "af": pa.array(data["af"], pa.float32())}))
    c.register("patients", pa.table({"patient_id": ["c1", "c2", "c3", "c4", "k1", "k2", "k3", "k4", "k5", "u1",
                                                    "u2", None]}))       # a row without an id: no patient
    c.register("conditions", pa.table({"patient_id": [r[0] for r in CONDITIONS],
                                       "hpo_id": pa.array([r[1] for r in CONDITIONS], pa.string())}))
    yield c
    c.close()


class Obo(dict):
    """A mapping ontology with an obsolete term (``.terms[id]`` objects, like PhenotypeMapper)."""

    class T:
        def __init__(self, parents, obsolete=False, replaced_by=None):
            self.parents, self.obsolete, self.replaced_by = parents, obsolete, replaced_by

    def __init__(self):
        super().__init__()
        self.terms = {k: self.T(v) for k, v in PHENO.items()}
        self.terms["HP:7000000"] = self.T([ROOT], obsolete=True, replaced_by=B)


QUERIES = [[A], [A, B], [A1], [C, A1, B], [ROOT], [B, "HP:7000000"], ["HP:7000000"], ["HP:5555555", A],
           ["HP:9999999"], [A, A, B], []]


@pytest.mark.parametrize("ontology", [PHENO, Obo()], ids=["mapping", "terms"])
def test_handmade_phenotypes_same_as_sql(con, ontology):
    idx = CohortIndex.build(con, ontology)
    for q in QUERIES:
        assert phenotype_coverage(con, q, ontology, index=idx) == phenotype_coverage(con, q, ontology), q
        for f in (0.0, 0.3, 0.5, 2 / 3, 1.0):
            assert matching_patients(con, q, f, ontology, index=idx) == matching_patients(con, q, f, ontology), (q, f)
    assert matching_patients(con, [A, B], 0.5, ontology, index=idx) == \
        ["c1", "c2", "k1", "u1"]
    # another ontology object than the index's: the SQL path answers (the index would be wrong for it)
    other = {**PHENO, A11: [B]}
    assert matching_patients(con, [B], 1.0, other, index=idx) == matching_patients(con, [B], 1.0, other) == \
        ["c1", "k1"]


def test_handmade_evidence_same_as_sql(con):
    idx = CohortIndex.build(con, PHENO)
    assert idx.n_patient_rows == 12 and int(idx.listed.sum()) == 11 and int(idx.sequenced.sum()) == 9
    case_lists = [["c1", "c2", "c3", "c4"], ["c4"], ["c2", "c3"], ["c1", "c1", "", None, "nobody"], ["u1", "c1"],
                  ["u1"], ["u2", "nobody"], [], ["k1", "k2", "k3", "k4", "k5", "c1", "c2", "c3", "c4"]]
    for cases in case_lists:
        for kw in ({}, {"population": "all"}, {"score_cap": 2.0}, {"population": "all", "score_cap": 0.5}):
            same_table(cohort_evidence(con, cases, index=idx, **kw), cohort_evidence(con, cases, **kw))
    t = cohort_evidence(con, ["c2", "c3", "c4"], index=idx)
    refs = {r["gene"]: r["source_refs"] for r in t.to_pylist()}
    assert refs == {"G1": ["v:c2/a", "v:c3/a"], "G4": None, "G6": ["v:c3/g"]}       # null as DuckDB gives it
    # other qualifying rules: the SQL path, same answer as without an index
    for kw in ({"max_af": 0.25}, {"damaging": ("HIGH",)}, {"pathogenic": False}, {"exclude_benign": False}):
        same_table(cohort_evidence(con, ["c1", "c4"], index=idx, **kw), cohort_evidence(con, ["c1", "c4"], **kw))
    same_table(cohort_for_phenotypes(con, [A], min_fraction=1.0, ontology=PHENO, index=idx),
               cohort_for_phenotypes(con, [A], min_fraction=1.0, ontology=PHENO))


def test_empty_store_index(con):
    c = duckdb.connect()
    for name, cols in (("variants", ["patient_id", "gene", "consequence", "impact", "clinvar", "source_ref"]),
                       ("patients", ["patient_id"]), ("conditions", ["patient_id", "hpo_id"])):
        t = pa.table({k: pa.array([], pa.string()) for k in cols})
        if name == "variants":
            t = t.append_column("af", pa.array([], pa.float32()))
        c.register(name, t)
    idx = CohortIndex.build(c, PHENO)
    assert matching_patients(c, [A], 0.5, PHENO, index=idx) == [] and phenotype_coverage(c, [A], PHENO, index=idx) == {}
    for cases in (["x"], []):
        same_table(cohort_evidence(c, cases, index=idx), cohort_evidence(c, cases))
    c.close()


def test_gather():
    ptr = np.array([0, 2, 2, 5, 6])
    assert _gather(ptr, np.array([2, 0, 1, 3])).tolist() == [2, 3, 4, 0, 1, 5]
    assert _gather(ptr, np.array([], np.int64)).tolist() == []


# ------------------------------------------------------------------------------------------ generated cohort
@pytest.fixture(scope="module")
def cohort(cohort_store):
    _tmp, eng, truth = cohort_store(60, 2)           # shared with test_cohort_evidence.py (read only here)
    hpo = PhenotypeMapper()
    con = eng.store.duckdb()
    idx = CohortIndex.build(con, hpo)
    yield eng, truth, hpo, idx, con
    con.close()


def test_generated_cohort_same_as_sql(cohort):
    eng, truth, hpo, idx, con = cohort
    old = next(t for t in hpo.terms.values() if t.obsolete and t.replaced_by in idx.terms)
    gone = next(t for t in hpo.terms.values() if t.obsolete and not t.replaced_by)
    queries = [d["hpo"] for d in truth["diseases"]] + [
        [truth["diseases"][0]["hpo"][0], old.id], [old.id], ["HP:9999999"], [gone.id, "HP:9999999"],
        truth["diseases"][1]["hpo"] + ["HP:9999999"], ["HP:0000118"], [], sorted(idx.terms)[:40]]
    for q in queries:
        assert phenotype_coverage(con, q, hpo, index=idx) == phenotype_coverage(con, q, hpo)
        for f in (0.35, 0.5, 1.0):
            cases = matching_patients(con, q, f, hpo, index=idx)
            assert cases == matching_patients(con, q, f, hpo), (q, f)
            for kw in ({}, {"population": "all"}):
                same_table(cohort_evidence(con, cases, index=idx, **kw), cohort_evidence(con, cases, **kw))
    assert idx.n_patient_rows == eng.store.count("patients") > 0
    pids = idx.patients.to_pylist()
    for cases in ([], ["nobody"], pids[:1], pids[::3] + ["nobody"], pids):
        for kw in ({}, {"population": "all"}, {"score_cap": 3.0}):
            same_table(cohort_evidence(con, cases, index=idx, **kw), cohort_evidence(con, cases, **kw))
    # a patient-level evidence table with something in it, through the Engine's own SQL (a callable) too
    d = truth["diseases"][0]
    cases = matching_patients(con, d["hpo"], 0.35, hpo, index=idx)
    t = cohort_evidence(eng.sql, cases, index=idx)
    assert t.num_rows > 3 and t.column("gene")[0].as_py() == d["genes"][0]
    same_table(t, cohort_evidence(eng.sql, cases))


def test_index_rebuilt_when_the_store_changes(tmp_path):
    """The Context's index follows the manifest: phenotypes first (no genotypes: no cohort evidence), then the
    VCFs (carriers appear and the ranking's cohort evidence with them), same as the SQL path at each step."""
    from raretarget.synth.cohort import generate, read_truth

    generate(tmp_path / "c", n_patients=24, seed=5)
    truth = read_truth(tmp_path / "c")
    eng = Engine.open(tmp_path / "s", create=True)
    ctx = eng.ctx
    eng.ingest([tmp_path / "c" / "fhir"])
    counts: dict[str, int] = {}
    for p in truth["patients"]:
        if p["disease_id"]:
            counts[p["disease_id"]] = counts.get(p["disease_id"], 0) + 1
    dis = next(d for d in truth["diseases"] if d["disease_id"] == max(counts, key=counts.get))
    hpo = ctx.resources.phenotypes

    first = ctx.cohort_index()
    assert ctx.cohort_index() is first                               # cached while the store is unchanged
    cases = matching_patients(eng.sql, dis["hpo"], 0.35, hpo, index=first)
    assert cases and cases == matching_patients(eng.sql, dis["hpo"], 0.35, hpo)
    before = cohort_evidence(eng.sql, cases, index=first)
    same_table(before, cohort_evidence(eng.sql, cases))
    assert before.num_rows == 0 and json.loads(before.schema.metadata[b"cohort"])["n_controls"] == 0
    ranked = eng.rank_targets(phenotypes=dis["hpo"], k=None)
    assert np.isnan(ranked.column("cohort").to_numpy()).all()

    eng.ingest([tmp_path / "c" / "vcf"])
    second = ctx.cohort_index()
    assert second is not first and second.key != first.key
    after = cohort_evidence(eng.sql, cases, index=second)
    same_table(after, cohort_evidence(eng.sql, cases))
    assert after.num_rows > 0 and after.column("gene")[0].as_py() == dis["genes"][0]
    ranked = eng.rank_targets(phenotypes=dis["hpo"], k=None)
    row = ranked.filter(pa.compute.equal(ranked.column("gene"), dis["genes"][0])).to_pylist()[0]
    assert row["cohort"] > 0
    assert json.loads(row["evidence"])["cohort"] == after.to_pylist()[0]

"""One vocabulary (issue 18): every caller uses the same objects from raretarget.vocab, so a copy that drifts
(e.g. a scorer table without feature_elongation) makes these tests fail."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from raretarget.vocab import labs as VL
from raretarget.vocab import modalities as VM
from raretarget.vocab import refs as VR
from raretarget.vocab import variants as VV

#: every consequence name the reader may store or a caller may pass: Ensembl terms and other tools' aliases
ALL_TERMS = sorted(set(VV.TERM_IMPACT) | set(VV.TERM_ALIASES))

CLINVAR_EXAMPLES = {
    "pathogenic": True, "Pathogenic": True, "likely_pathogenic": True, "Likely pathogenic": True,
    "pathogenic/likely_pathogenic": True, "Pathogenic,_low_penetrance": True, "pathogenic|risk_factor": True,
    "conflicting_interpretations_of_pathogenicity": False, "conflicting_classifications_of_pathogenicity": False,
    "pathogenic|likely_benign": False, "benign": False, "likely_benign": False, "benign/likely_benign": False,
    "uncertain_significance": False, "risk_factor": False, "": False, None: False,
}


def test_readers_scorers_encoders_share_the_one_table():
    from raretarget.encoders import variants as EV
    from raretarget.ingest import vcf
    from raretarget.prioritize import enrichment as cohort, scorers

    assert vcf.TERM_IMPACT is VV.TERM_IMPACT and vcf.CONSEQUENCE_ORDER is VV.CONSEQUENCE_ORDER
    assert vcf.SEVERITY is VV.SEVERITY and vcf.TERM_ALIASES is VV.TERM_ALIASES
    assert EV.CONSEQUENCES == list(VV.ENCODER_CONSEQUENCES) and EV.CLINVAR == list(VV.CLINVAR_CLASSES)
    assert EV.IMPACTS == list(VV.IMPACTS)
    assert cohort.impact_sql is VV.impact_sql and cohort.plp_sql is VV.plp_sql
    assert scorers.impact_of is VV.impact_of and scorers.HIGH_CSQ is VV.IMPACT_TERMS["HIGH"]
    assert scorers._norm_clinvar is VV.normalize_clinvar


def test_every_term_has_one_impact_in_python_and_sql():
    """The reader's MC/CSQ impact, impact_of (scorers) and the cohort SQL agree on every term and alias."""
    from raretarget.ingest.vcf import _most_severe_mc

    assert VV.impact_of(None, "feature_elongation") == "HIGH" == VV.impact_of(None, "feature_truncation")
    assert VV.impact_of(None, "regulatory_region_ablation") == "MODERATE"
    con = duckdb.connect()
    con.register("t", pa.table({"impact": [None] * len(ALL_TERMS), "consequence": ALL_TERMS}))
    sql = con.execute(f"select consequence, {VV.impact_sql()} from t").fetchall()
    for term, got_sql in sql:
        want = VV.TERM_IMPACT[VV.canonical_term(term)]
        assert VV.impact_of(None, term) == want == got_sql, term
        assert _most_severe_mc(f"SO:0000000|{term}")[1] == want, term
    # '&'-joined: the most severe part; an explicit VEP impact wins; nothing at all is UNKNOWN
    cases = [(None, "intron_variant&missense_variant"), ("LOW", "stop_gained"), (None, None), ("", ""),
             (None, "not_a_term"), ("bogus", "synonymous_variant"), (" high ", None)]
    con.register("c", pa.table({"impact": [c[0] for c in cases], "consequence": [c[1] for c in cases]}))
    got = [r[0] for r in con.execute(f"select {VV.impact_sql()} from c").fetchall()]
    assert got == [VV.impact_of(i, c) for i, c in cases] == ["MODERATE", "LOW", "UNKNOWN", "UNKNOWN", "MODIFIER",
                                                             "LOW", "HIGH"]


def test_encoder_rows_are_known_terms_and_keep_checkpoint_order():
    from raretarget.encoders.variants import CONSEQUENCES

    known = {t.lower() for t in VV.TERM_IMPACT}
    assert set(CONSEQUENCES) <= known
    # checkpoint layout: the embedding row of a term never moves
    assert CONSEQUENCES[:3] == ["transcript_ablation", "splice_acceptor_variant", "splice_donor_variant"]
    assert CONSEQUENCES.index("feature_elongation") == 35 and len(CONSEQUENCES) == 39


def test_cohort_generator_writes_the_tables_impacts():
    from raretarget.cohort import _CLASS_SPEC

    for spec, _sig, _af in _CLASS_SPEC.values():
        for term, impact, _w in spec:
            assert VV.TERM_IMPACT[term] == impact, term


def test_one_plp_predicate_python_and_sql():
    vals = list(CLINVAR_EXAMPLES)
    assert [VV.is_plp(v) for v in vals] == list(CLINVAR_EXAMPLES.values())
    con = duckdb.connect()
    con.register("t", pa.table({"clinvar": pa.array(vals, pa.string())}))
    got = [r[0] for r in con.execute(f"select {VV.plp_sql('clinvar')} from t").fetchall()]
    assert got == list(CLINVAR_EXAMPLES.values())
    ben = [r[0] for r in con.execute(f"select {VV.benign_sql('clinvar')} from t").fetchall()]
    assert ben == [VV.is_benign(v) for v in vals]


def test_query_filter_and_cohort_enrichment_use_the_plp_predicate():
    """pathogenic_only (query filters) and the qualifying-allele rule (cohort) keep exactly the P/LP rows."""
    from raretarget.prioritize.enrichment import _qualify_sql
    from raretarget.query.filters import allowed_patients

    vals = [v for v in CLINVAR_EXAMPLES if v]
    pids = [f"p{i}" for i in range(len(vals))]
    con = duckdb.connect()
    con.register("variants", pa.table({"patient_id": pids, "gene": ["FBN1"] * len(vals), "clinvar": vals,
                                       "impact": ["MODIFIER"] * len(vals), "consequence": ["intron_variant"] * len(vals),
                                       "af": pa.array([None] * len(vals), pa.float64())}))

    def sql(q, params=None):
        return con.sql(q, params=params).to_arrow_table()

    want = {p for p, v in zip(pids, vals) if CLINVAR_EXAMPLES[v]}
    assert allowed_patients(sql, genes=["FBN1"], pathogenic_only=True) == want
    where = _qualify_sql(0.01, ("HIGH", "MODERATE"), pathogenic=True, exclude_benign=True)
    got = {r[0] for r in con.execute(f"select patient_id from variants v where {where}").fetchall()}
    assert got == want


def test_gene_and_patient_refs():
    from raretarget import schema

    assert VR.gene_ref("FBN1") == "gene:FBN1" and VR.gene_of_ref("gene:FBN1") == "FBN1"
    assert VR.gene_of_ref("patient:x") is None and VR.gene_of_ref(None) is None and VR.gene_of_ref("gene:") is None
    assert schema.gene_record_id("FBN1") == int(schema.record_ids("genes", ["gene:FBN1"])[0])
    from raretarget.encoders import data

    assert data.patient_record_id is schema.patient_record_id


def test_modality_names_are_one_set():
    from raretarget import outcome
    from raretarget.query import search

    assert outcome.MODALITIES is VM.RECORD_MODALITIES
    assert search.MODALITY_NAMES is VM.ENCODER_TO_MODALITY
    assert VM.modality_of("text") == "note" and set(VM.ENCODER_TO_MODALITY.values()) <= set(VM.RESULT_MODALITIES)


def test_lab_table_parsed_once_for_every_caller():
    from raretarget.cohort import load_lab_units
    from raretarget.encoders.labs import panel_loincs, reference_stats
    from raretarget.ingest.units import load_lab_table

    VL._packaged.cache_clear()
    load_lab_units.cache_clear()
    table = load_lab_table()
    gen = load_lab_units()
    loincs = panel_loincs()
    mean, _sd = reference_stats(loincs)
    assert VL._packaged.cache_info().misses == 1
    assert loincs == list(table) == list(gen)
    for code, u in table.items():
        assert (gen[code]["unit"], gen[code]["mm"], gen[code]["low"]) == (u.unit, u.molar_mass, u.ref_low)
    i = next(i for i, c in enumerate(loincs) if table[c].ref_low is not None and table[c].ref_high is not None)
    assert mean[i] == pytest.approx((table[loincs[i]].ref_low + table[loincs[i]].ref_high) / 2)


def test_importing_vocab_reads_no_file():
    import subprocess
    import sys

    code = ("import builtins, io, raretarget.vocab.labs, raretarget.vocab.variants, raretarget.vocab.refs, "
            "raretarget.vocab.modalities as m; from raretarget.vocab import labs; "
            "assert labs._packaged.cache_info().currsize == 0")
    subprocess.run([sys.executable, "-c", code], check=True)

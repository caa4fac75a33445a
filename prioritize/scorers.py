"""Per-gene component scorers. Each scorer returns, for every gene of the query's universe, a score in
``[0, 1]`` (1 = strongest evidence for the gene) and can explain a gene's score with an evidence dict.

Scorers register by name with :func:`register_scorer` and are built from a config dict
(:func:`build_scorers`): ``{"phenotype_ic": {"weight": 1.0, "penalty": 0.5}, "knowledge": 0.1, ...}``
(a bare number is the weight). Registered components:

* ``phenotype`` (relevance) – the fitted phenotype model (:mod:`raretarget.prioritize.phenomodel`): a logit per
  gene, shown as the phenotype-only posterior;
* ``phenotype_ic`` (display) – HPO semantic similarity of the query to the gene's annotations (Resnik,
  IC-normalised), minus a penalty for excluded terms the gene carries;
* ``variant`` (relevance) – the index patient's variants in the gene: pathogenicity × rarity × genotype fit to the
  gene's inheritance mode, ClinVar P/LP;
* ``cohort``, ``embedding`` (relevance) – precomputed ``{gene: score in [0, 1]}`` dicts passed as
  ``extra_components`` by :func:`raretarget.prioritize.targets.rank_targets` (cohort enrichment, embedding cosine);
* ``knowledge`` (tractability) – how many known diseases (OMIM/Orphanet) the gene has;
* ``druggability`` (tractability) – Finan tier, Pharos TDL and the highest clinical phase of drugs on the gene.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raretarget.vocab.variants import (IMPACT_TERMS, consequence_impact, consequence_term, impact_of,  # noqa: F401
                                       is_plp, normalize_clinvar)
from raretarget.vocab.variants import COMMON_AF, RARE_AF

from .knowledge import KnowledgeBase

log = logging.getLogger(__name__)

SCORERS: dict[str, type["Scorer"]] = {}


def register_scorer(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Scorer` subclass available under ``name`` in configs."""

    def deco(cls: type) -> type:
        if name in SCORERS and SCORERS[name] is not cls:
            raise ValueError(f"scorer {name!r} already registered")
        cls.name = name
        SCORERS[name] = cls
        return cls

    return deco


@dataclass
class Query:
    """One ranking request. ``genes`` is the universe being ranked (index = position)."""

    genes: list[str]
    observed: list[int]                       # KB term indices (in scope, resolved)
    excluded: list[int]
    variants: pa.Table | None = None
    extra: dict[str, dict[str, float]] = field(default_factory=dict)
    kb_rows: np.ndarray | None = None         # for each universe gene its KB gene row or -1
    # values derived from this query that several scorers need (e.g. a gene's matched terms): computed once
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.gene_pos = {g: i for i, g in enumerate(self.genes)}

    def gene_array(self) -> pa.Array:
        """``genes`` as an Arrow string array (for vectorised lookups; built once)."""
        a = self.memo.get("gene_array")
        if a is None:
            a = self.memo["gene_array"] = pa.array(self.genes, pa.string())
        return a


@dataclass
class Component:
    """Result of one scorer: ``scores[i]`` in [0, 1] for ``query.genes[i]``; ``evidence(i)`` → dict."""

    name: str
    scores: np.ndarray
    evidence: Callable[[int], dict]
    present: bool = True                      # False: no input for this component (excluded from the mix)
    role: str = "relevance"                   # relevance | tractability | display (see raretarget.prioritize.rank)
    logit: np.ndarray | None = None           # a relevance component's own log-odds contribution, when it has one
    features: dict[str, np.ndarray] | None = None   # named per-gene inputs of the logit (for fitting and evidence)


class Scorer:
    """Base class. Subclasses set ``name`` via :func:`register_scorer` and implement :meth:`score`."""

    name = "?"
    #: how :class:`~raretarget.prioritize.rank.Prioritizer` uses the component: ``relevance`` (evidence that the
    #: gene explains the query), ``tractability`` (druggability, knowledge: re-orders genes of similar relevance
    #: only) or ``display`` (a column and its evidence, not part of either)
    role = "relevance"

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, **params: Any):
        self.kb = kb
        self.weight = float(weight)
        self.params = params

    def score(self, q: Query) -> Component:  # pragma: no cover - interface
        raise NotImplementedError

    def _kb_scores(self, q: Query, per_kb_gene: np.ndarray, default: float = 0.0) -> np.ndarray:
        out = np.full(len(q.genes), default, dtype=np.float64)
        m = q.kb_rows >= 0
        out[m] = per_kb_gene[q.kb_rows[m]]
        return out


# ---------------------------------------------------------------------------------------------- phenotype
def query_to_genes(kb: KnowledgeBase, observed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Resnik similarity of each query term to each KB gene, vectorised.

    ``best[k, g] = max_{t ∈ gene g} IC(MICA(q_k, t)) = max IC(a)`` over the ancestors-or-self ``a`` of
    ``q_k`` that the gene carries (closure). Returns (best ``[Q, G]`` float, mica ``[Q, G]`` term index of
    the best common ancestor, ``-1`` if none)."""
    G = len(kb.genes)
    best = np.zeros((len(observed), G))
    mica = np.full((len(observed), G), -1, dtype=np.int64)
    C = kb.closure
    for k, qi in enumerate(observed):
        anc = kb.anc_list[qi]
        anc = anc[np.argsort(kb.ic[anc])]             # ascending IC: later (more specific) overwrite
        for a in anc:
            rows = C.indices[C.indptr[a]:C.indptr[a + 1]]
            best[k, rows] = kb.ic[a]
            mica[k, rows] = a
    return best, mica


def query_to_diseases(kb: KnowledgeBase, observed: list[int]) -> np.ndarray:
    """Resnik similarity of each query term to each KB disease: ``best[k, d]`` ``[Q, D]`` (as
    :func:`query_to_genes`, over the disease annotations)."""
    C = kb.dis_closure
    best = np.zeros((len(observed), C.shape[0]))
    for k, qi in enumerate(observed):
        anc = kb.anc_list[qi]
        anc = anc[np.argsort(kb.ic[anc])]
        for a in anc:
            best[k, C.indices[C.indptr[a]:C.indptr[a + 1]]] = kb.ic[a]
    return best


def diseases_to_query(kb: KnowledgeBase, observed: list[int]) -> np.ndarray:
    """Sum over each disease's direct phenotype terms of their best Resnik match among the query terms ``[D]``
    (divide by ``kb.n_dis_terms`` for the mean)."""
    return kb.dis_annot @ _query_closure_ic(kb, observed)


def gene_max(kb: KnowledgeBase, per_disease: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over each gene's diseases of ``per_disease`` ``[D]`` → (scores ``[G]``, argmax disease index or -1);
    genes without diseases get 0 and -1."""
    M = kb.gene_dis_member
    out = np.zeros(M.shape[0])
    arg = np.full(M.shape[0], -1, dtype=np.int64)
    counts = np.diff(M.indptr)
    nonempty = counts > 0
    if not nonempty.any():
        return out, arg
    vals = per_disease[M.indices]
    row = np.repeat(np.arange(M.shape[0]), counts)
    order = np.lexsort((-vals, row))            # per row (CSR order kept), best value first
    top = order[M.indptr[:-1][nonempty]]
    out[nonempty] = vals[top]
    arg[nonempty] = M.indices[top]
    return out, arg


def _query_closure_ic(kb: KnowledgeBase, observed: list[int]) -> np.ndarray:
    """``v[t]`` = IC of the most informative common ancestor of term ``t`` with any query term ``[T]``."""
    qclos = np.zeros(len(kb.term_ids), bool)
    for qi in observed:
        qclos[kb.anc_list[qi]] = True
    w = np.where(qclos, kb.ic, 0.0)
    A = kb.anc
    vals = w[A.indices]
    return np.maximum.reduceat(vals, A.indptr[:-1]) if len(vals) else np.zeros(len(kb.term_ids))


def genes_to_query(kb: KnowledgeBase, observed: list[int]) -> np.ndarray:
    """Mean over each gene's terms of the best Resnik match among the query terms (gene → query)."""
    if not observed:
        return np.zeros(len(kb.genes))
    return kb.annot_norm @ _query_closure_ic(kb, observed)


def excluded_strength(kb: KnowledgeBase, e: int) -> np.ndarray:
    """How strongly each KB gene carries term ``e`` (or a descendant), in [0, 1]: the fraction of the gene's
    known diseases annotated with it; for genes without mapped diseases 1 when the gene is annotated."""
    C = kb.closure
    has = np.zeros(len(kb.genes))
    has[C.indices[C.indptr[e]:C.indptr[e + 1]]] = 1.0
    if kb.dis_closure.shape[0]:
        Dc = kb.dis_closure
        dcol = np.zeros(Dc.shape[0])
        dcol[Dc.indices[Dc.indptr[e]:Dc.indptr[e + 1]]] = 1.0
        frac = kb.gene_dis @ dcol
        has = np.where(kb.n_gene_diseases > 0, np.minimum(frac, has), has)
    return has


@register_scorer("phenotype_ic")
class PhenotypeIC(Scorer):
    """Phenotype match of the query HPO terms to each gene's HPO annotations.

    ``positive = Σ_q best(q, gene) / Σ_q IC(q)`` in [0, 1], where ``best(q, gene)`` is the Resnik similarity
    (IC of the most informative common ancestor) of query term ``q`` to its best-matching gene term
    (query → gene best-match average, IC-weighted). With ``method="funSimAvg"`` the gene → query direction
    (mean over the gene's terms of their best match, divided by the mean query IC, capped at 1) is averaged in.
    With ``method="disease"`` the same query → annotation score is computed per *disease* and a gene gets the
    best of its diseases (as LIRICAL/Exomiser score diseases: the union of a pleiotropic gene's diseases
    matches almost any query); genes without a mapped disease keep the gene-level score. ``method="blend"``
    averages the gene-level and the disease-level scores.
    ``unannotated``: with a variant table (a patient's genes), the score of genes without HPO phenotype
    annotations (unknown, not "no match"; default 0). Most genes of an exome have none, so this decides whether
    a strong variant in an uncharacterised gene can outrank a weak one in a known disease gene. Without a
    variant table such genes score 0 (no phenotype support for a knowledge or cohort query).
    ``penalty`` (λ, default 0 = off; the packaged config uses the value chosen on a tune split): each excluded term ``e`` the gene carries (or a descendant of it), weighted by
    how strongly (fraction of its diseases with it), removes ``λ·IC(e)/Σ_q IC(q)``. Final score
    ``max(0, positive − penalty)`` ∈ [0, 1]; absent (not in the mix) when the query has no observed terms.

    Role ``display``: the column and its term-by-term evidence are shown; its two scores enter the relevance
    through the fitted ``phenotype`` component (features ``res_gene`` / ``res_dis``).
    """

    role = "display"

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, method: str = "query", penalty: float = 0.0,
                 unannotated: float = 0.0, **params: Any):
        super().__init__(kb, weight, **params)
        self.unannotated = float(unannotated)
        if method not in ("query", "funSimAvg", "disease", "blend"):
            raise ValueError("method must be 'query', 'funSimAvg', 'disease' or 'blend'")
        self.method = method
        self.penalty = float(penalty)

    def parts(self, observed: list[int], excluded: list[int], methods: Sequence[str] | None = None,
              with_penalty: bool | None = None, memo: dict | None = None) -> dict[str, Any]:
        """The pieces every method is made of, per KB gene ``[G]``: ``query`` (gene-level), ``disease`` (best
        disease; gene-level where the gene has none), ``funSimAvg``, ``blend``; ``pen`` (the excluded-term
        penalty per unit λ), ``strengths`` ``[E, G]``, ``best``/``mica`` ``[Q, G]``, ``best_disease`` ``[G]``
        (-1 = none). ``methods``: which scores to compute (default: this scorer's); ``with_penalty``: compute
        ``pen`` (default: when λ > 0). Lets a benchmark score several settings from one pass. ``memo``: a query's
        :attr:`Query.memo`; the phenotype columns of one query then share one pass (read-only results)."""
        kb = self.kb
        methods = list(methods or [self.method])
        if {"disease", "blend"} & set(methods):
            methods += ["disease", "blend"]           # one costs what both cost: compute (and share) both
        wp = self.penalty > 0 if with_penalty is None else bool(with_penalty)
        key = ("parts", "funSimAvg" in methods, "disease" in methods, wp, tuple(observed), tuple(excluded))
        if memo is not None and key in memo:
            return memo[key]
        best, mica = query_to_genes(kb, observed)
        qic = kb.ic[observed]
        denom = max(float(qic.sum()), 1e-12)
        q = best.sum(axis=0) / denom
        out: dict[str, Any] = {"query": q, "best": best, "mica": mica, "best_disease": None}
        if "funSimAvg" in methods:
            back = genes_to_query(kb, observed) / max(float(qic.mean()), 1e-12)
            out["funSimAvg"] = 0.5 * (q + np.minimum(back, 1.0))
        if {"disease", "blend"} & set(methods):
            if kb.dis_closure.shape[0]:
                g, arg = gene_max(kb, query_to_diseases(kb, observed).sum(axis=0) / denom)
                out["disease"], out["best_disease"] = np.where(arg >= 0, g, q), arg
            else:
                out["disease"] = q
            out["blend"] = 0.5 * (q + out["disease"])
        strengths = []
        pen = np.zeros(len(kb.genes))
        if wp:
            for e in excluded:
                strengths.append(excluded_strength(kb, e))
                pen += kb.ic[e] * strengths[-1] / denom
        out["pen"] = pen
        out["strengths"] = np.array(strengths) if strengths else np.zeros((0, len(kb.genes)))
        if memo is not None:
            memo[key] = out
        return out

    def raw(self, observed: list[int], excluded: list[int], memo: dict | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(score ``[G]``, best ``[Q, G]``, mica ``[Q, G]``, excluded strengths ``[E, G]``, best disease index
        per gene ``[G]`` (-1 = none) or None when not scoring diseases)."""
        p = self.parts(observed, excluded, memo=memo)
        score = np.clip(p[self.method] - self.penalty * p["pen"], 0.0, 1.0)
        return score, p["best"], p["mica"], p["strengths"], p["best_disease"]

    def matches(self, observed: list[int], mica: np.ndarray, r: int) -> list[dict]:
        """The matched query terms of KB gene ``r``, most informative first: query term, the gene's most specific
        annotation under the common ancestor, that ancestor and its IC; ``exact`` when the query term itself is
        the common ancestor (the gene carries it or a descendant). ``mica``: ``[Q, G]`` from :func:`query_to_genes`."""
        kb = self.kb
        common = mica[:, r].astype(np.int64)
        keep = (common >= 0)
        keep[keep] = kb.ic[common[keep]] > 0
        if not keep.any():
            return []
        best_term = kb.best_term_under(r)
        pairs = []
        ids = kb.term_ids
        ks = np.flatnonzero(keep)
        for k, a, ic in zip(ks.tolist(), common[ks].tolist(), kb.ic[common[ks]].tolist()):
            qi = observed[k]
            t = best_term.get(a, a)
            pairs.append({"query": ids[qi], "gene_term": ids[t], "common": ids[a],
                          "common_name": kb.name(a), "ic": round(ic, 3), "exact": a == qi})
        pairs.sort(key=lambda p: -p["ic"])
        return pairs

    def matches_memo(self, q: Query, mica: np.ndarray, r: int) -> list[dict]:
        """:meth:`matches` once a query and gene (``mica`` depends only on the KB and ``q.observed``, so the
        phenotype columns that show the same matches share them)."""
        key = ("matches", r)
        hit = q.memo.get(key)
        if hit is None:
            hit = q.memo[key] = self.matches(q.observed, mica, r)
        return [dict(m) for m in hit]       # callers may edit their copy

    def score(self, q: Query) -> Component:
        kb = self.kb
        if not q.observed:
            return Component(self.name, np.zeros(len(q.genes)), lambda i: {}, present=False, role=self.role)
        s, best, mica, strengths, best_dis = self.raw(q.observed, q.excluded, q.memo)

        def evidence(i: int) -> dict:
            r = int(q.kb_rows[i])
            if r < 0 or not len(kb.gene_terms[r]):
                return {"note": "gene has no HPO phenotype annotations",
                        "score_used": self.unannotated if q.variants is not None else 0.0}
            ev: dict = {"matches": self.matches_memo(q, mica, r)}
            if best_dis is not None and best_dis[r] >= 0:
                d = kb.disease_list[int(best_dis[r])]
                ev["best_disease"] = {"id": d.id, "name": d.name}
            neg = [{"excluded": kb.term_ids[e], "strength": round(float(strengths[j, r]), 3)}
                   for j, e in enumerate(q.excluded) if len(strengths) and strengths[j, r] > 0]
            if neg:
                ev["excluded_present"] = neg
            return ev

        # unknown phenotype only matters among a patient's variant genes; for a knowledge/cohort query a gene
        # without annotations simply has no phenotype support
        u = self.unannotated if q.variants is not None else 0.0
        out = self._kb_scores(q, s, default=u)
        if u:
            r = q.kb_rows
            no_terms = (r >= 0) & (kb.n_gene_terms[np.maximum(r, 0)] == 0)
            out[no_terms] = u
        return Component(self.name, out, evidence, role=self.role)


@register_scorer("phenotype")
class Phenotype(PhenotypeIC):
    """Phenotype relevance from the fitted log-linear model of :mod:`raretarget.prioritize.phenomodel`.

    ``logit[g] = Σ_k coef_k · feature_k[g] + residual(features[g])`` over the features of :class:`PhenotypeModel`
    (disease-level likelihood ratios with annotation frequencies, exact-match coverage, hypergeometric enrichment,
    Resnik; ``residual``: the fitted :class:`~raretarget.prioritize.phenomodel.Residual` network, "default" the
    packaged one, used only next to the coefficients it was fitted with);
    genes the KB does not annotate (e.g. genes only seen in a VCF) get the features of a gene without
    annotations plus ``unannotated`` (a logit offset, fitted; applied only when a variant table is given). The column shows the phenotype-only posterior
    ``softmax(logit)`` over the ranked genes (sums to 1), the evidence the matched terms (as ``phenotype_ic``),
    the best-matching disease and the feature values.
    """

    role = "relevance"

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, coef: Mapping[str, float] | None = None,
                 unannotated: float = 0.0, residual: str | None = None, **params: Any):
        super().__init__(kb, weight, method="blend", **params)
        from .phenomodel import FEATURES, Residual

        self.coef = {k: float(v) for k, v in (coef or {"res_gene": 1.0}).items()}
        unknown = set(self.coef) - set(FEATURES)
        if unknown:
            raise KeyError(f"unknown phenotype features {sorted(unknown)}; known: {list(FEATURES)}")
        self.unannotated_offset = float(unannotated)
        # "default": the packaged network fitted with the shipped coefficients; a path: that file; None: linear only
        self.residual = (residual if isinstance(residual, Residual) or residual is None
                         else Residual.load(None if residual == "default" else residual))
        fitted_with = (self.residual.meta.get("coef") if self.residual is not None else None)
        if fitted_with is not None and {k: float(v) for k, v in fitted_with.items()} != self.coef:
            # the network was fitted jointly with its linear part: next to other coefficients it would be noise
            log.warning("phenotype: coefficients differ from those the residual network was fitted with; "
                        "the network is not used (set phenotype.residual: null to silence this)")
            self.residual = None

    def features(self, observed: list[int], excluded: list[int], memo: dict | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
        """(features ``{name: [G]}`` over KB genes, best disease per gene ``[G]`` (−1 none), Resnik parts)."""
        p = self.parts(observed, excluded, methods=["query", "disease"], with_penalty=False, memo=memo)
        feats, best = self.kb.phenotype_model().features(observed, excluded, p)
        return feats, best, p

    def kb_logit(self, feats: Mapping[str, np.ndarray], offset: float | None = None) -> tuple[np.ndarray, float]:
        """(logit ``[G]`` per KB gene, the logit of a gene without annotations, which gets ``offset``; default:
        ``unannotated``)."""
        from .phenomodel import PhenotypeModel

        z = PhenotypeModel.logit(feats, self.coef, self.residual)
        blank = {k: np.array([0.0]) for k in feats}
        blank["lrf_obs"] = blank["lrf_all"] = blank["lrb_obs"] = blank["lrb_all"] = blank["pseudo"] = np.array(
            [feats["pseudo"].min() if len(feats["pseudo"]) else 0.0])
        blank["background"] = np.array([float(np.median(feats["background"]))])   # what an unlisted gene takes
        z0 = float(PhenotypeModel.logit(blank, self.coef, self.residual)[0]) + (
            self.unannotated_offset if offset is None else offset)
        none = self.kb.n_gene_terms == 0
        z = np.where(none, z0, z)
        return z, z0

    def score(self, q: Query) -> Component:
        kb = self.kb
        if not q.observed:
            return Component(self.name, np.zeros(len(q.genes)), lambda i: {}, present=False, role=self.role)
        feats, best_dis, parts = self.features(q.observed, q.excluded, q.memo)
        # an unknown phenotype is a prior only among a patient's variant genes; for a phenotype-only (or cohort)
        # question a gene without annotations has no phenotype support
        z_kb, z0 = self.kb_logit(feats, None if q.variants is not None else 0.0)
        z = self._kb_scores(q, z_kb, default=z0)
        post = np.exp(z - z.max())
        post /= post.sum()
        model = kb.phenotype_model()
        mica = parts["mica"]

        def evidence(i: int) -> dict:
            r = int(q.kb_rows[i])
            if r < 0 or not len(kb.gene_terms[r]):
                return {"note": "gene has no HPO phenotype annotations", "logit": round(float(z[i]), 3)}
            ev: dict = {"matches": self.matches_memo(q, mica, r), "logit": round(float(z[i]), 3)}
            if best_dis[r] >= 0:
                d = model.diseases[int(best_dis[r])]
                ev["best_disease"] = {"id": d.id, "name": d.name}
            ev["features"] = {k: round(float(v[r]), 3) for k, v in feats.items() if k in self.coef}
            return ev

        return Component(self.name, post, evidence, role=self.role, logit=self.weight * z)


# ---------------------------------------------------------------------------------------------- knowledge
@register_scorer("knowledge")
class Knowledge(Scorer):
    """Known disease associations: ``1 − exp(−a / scale)`` with ``a = n_OMIM + 0.5·n_Orphanet`` (a gene with
    HPO annotations but no mapped disease counts as ``a = 0.5``); 0 for genes with no known disease.
    Range [0, 1); ``scale`` default 2 (1 OMIM disease → 0.39, 3 → 0.78). Role ``tractability``."""

    role = "tractability"

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, scale: float = 2.0, **params: Any):
        super().__init__(kb, weight, **params)
        self.scale = float(scale)
        a = np.zeros(len(kb.genes))
        for i, g in enumerate(kb.genes):
            ds = kb.diseases.get(g, [])
            n_o = sum(d.id.startswith("OMIM") for d in ds)
            n_r = len(ds) - n_o
            a[i] = n_o + 0.5 * n_r
            if a[i] == 0 and len(kb.gene_terms[i]):
                a[i] = 0.5
        self._s = 1.0 - np.exp(-a / self.scale)

    def score(self, q: Query) -> Component:
        kb = self.kb

        def evidence(i: int) -> dict:
            ds = kb.diseases.get(q.genes[i], [])
            return {"n_omim": sum(d.id.startswith("OMIM") for d in ds),
                    "n_orphanet": sum(d.id.startswith("ORPHA") for d in ds),
                    "diseases": [f"{d.id} {d.name}" for d in ds[:5]],
                    "inheritance": sorted(kb.inheritance.get(q.genes[i], ()))}

        return Component(self.name, self._kb_scores(q, self._s), evidence, role=self.role)


# ---------------------------------------------------------------------------------------------- druggability
TIER_SCORE = {"1": 1.0, "2": 0.7, "3A": 0.5, "3B": 0.4}
TDL_SCORE = {"Tclin": 1.0, "Tchem": 0.7, "Tbio": 0.3, "Tdark": 0.1}
PHASE_SCORE = {4: 1.0, 3: 0.8, 2: 0.6, 1: 0.4, 0: 0.2}


def druggability_score(row: Mapping | None) -> float:
    """``0.4·phase + 0.35·TDL + 0.25·tier`` in [0, 1]: phase 4 (approved) 1, 3 0.8, 2 0.6, 1 0.4, none 0;
    Tclin 1, Tchem 0.7, Tbio 0.3, Tdark 0.1; Finan tier 1 1, 2 0.7, 3A 0.5, 3B 0.4, none 0."""
    if not row:
        return 0.0
    ph = PHASE_SCORE.get(row.get("max_phase"), 0.0) if row.get("n_drugs") else 0.0
    return 0.4 * ph + 0.35 * TDL_SCORE.get(row.get("pharos_tdl") or "", 0.0) + \
        0.25 * TIER_SCORE.get(row.get("finan_tier") or "", 0.0)


@register_scorer("druggability")
class Druggability(Scorer):
    """Druggability of the gene product (see :func:`druggability_score`), [0, 1]; 0 for unknown genes.
    Role ``tractability``."""

    role = "tractability"

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, **params: Any):
        super().__init__(kb, weight, **params)
        self._by_gene = {g: druggability_score(r) for g, r in kb.druggability.items()}
        self._kb = np.array([self._by_gene.get(g, 0.0) for g in kb.genes])     # the KB genes lead every universe

    def score(self, q: Query) -> Component:
        kb = self.kb
        n = len(self._kb)
        if q.genes[:n] == list(kb.genes):
            s = np.concatenate([self._kb, [self._by_gene.get(g, 0.0) for g in q.genes[n:]]])
        else:
            s = np.array([self._by_gene.get(g, 0.0) for g in q.genes])

        def evidence(i: int) -> dict:
            r = kb.druggability.get(q.genes[i])
            if not r:
                return {}
            return {k: r.get(k) for k in ("finan_tier", "pharos_tdl", "n_drugs", "max_phase", "mechanisms",
                                          "example_drugs") if r.get(k) not in (None, "")}

        return Component(self.name, s, evidence, role=self.role)


# ---------------------------------------------------------------------------------------------- variant
CLINVAR_SCORE = {"pathogenic": 1.0, "pathogenic/likely_pathogenic": 0.95, "likely_pathogenic": 0.9,
                 "conflicting_interpretations_of_pathogenicity": 0.5, "conflicting_classifications_of_pathogenicity": 0.5,
                 "uncertain_significance": None, "likely_benign": 0.05, "benign/likely_benign": 0.03,
                 "benign": 0.0}
#: per allele before ClinVar; ``UNKNOWN``: no consequence at all (a VCF without CSQ/ANN, genes by position), scored
#: between LOW and MODERATE so such a variant neither vanishes nor passes for a protein-altering one
IMPACT_SCORE = {"HIGH": 0.9, "MODERATE": 0.6, "UNKNOWN": 0.3, "LOW": 0.15, "MODIFIER": 0.05}
#: consequences whose default departs from their impact class's, as Exomiser scores them without a prediction
#: (``VariantEffectPathogenicityScore``: frameshift / nonsense / splice donor-acceptor 1.0, in-frame indel 0.85,
#: splice region 0.8, missense 0.6, synonymous 0.1). Exomiser's 1.0 for a loss of function is this module's HIGH
#: 0.9 (the scale the variant weights were fitted on); the in-frame and splice-region values are taken as Exomiser
#: ships them, so they rank between a missense and a loss of function as there. VEP ≥ 105 splits the splice region
#: into donor 5th-base / donor-region terms (the same positions Exomiser's splice region covers); the
#: polypyrimidine-tract term reaches 17 bases into the intron and keeps its class default (Exomiser: intronic).
CONSEQUENCE_SCORE = {"inframe_insertion": 0.85, "inframe_deletion": 0.85, "splice_region_variant": 0.8,
                     "splice_donor_5th_base_variant": 0.8, "splice_donor_region_variant": 0.8,
                     "synonymous_variant": 0.1}
#: the splice-region terms: a SpliceAI score, when the VCF carries one, replaces their default (a prediction
#: beats a positional guess, as REVEL replaces a missense's default)
_SPLICE_REGION = frozenset({"splice_region_variant", "splice_donor_5th_base_variant", "splice_donor_region_variant"})
# SO consequence → impact and ClinVar spelling: the one vocabulary (raretarget.vocab.variants); these names stay
# importable from here
HIGH_CSQ = IMPACT_TERMS["HIGH"]
MODERATE_CSQ = IMPACT_TERMS["MODERATE"]
LOW_CSQ = IMPACT_TERMS["LOW"]
_norm_clinvar = normalize_clinvar


def clinvar_score(clinvar: str | None) -> float | None:
    """A ClinVar significance (any spelling: ``Pathogenic/Likely_pathogenic``, ``likely pathogenic``, ``|``-joined)
    → its :data:`CLINVAR_SCORE` (the highest of its parts), ``None`` for VUS / absent / unknown."""
    cv = _norm_clinvar(clinvar)
    if not cv:
        return None
    c = CLINVAR_SCORE.get(cv)
    if c is None:
        vals = [CLINVAR_SCORE.get(p) for p in cv.replace("|", "/").split("/") if p and CLINVAR_SCORE.get(p) is not None]
        c = max(vals) if vals else None
    return c


def predicted_pathogenicity(revel: float | None = None, cadd_phred: float | None = None) -> float | None:
    """An in-silico missense prediction in [0, 1], or None without one: REVEL as is (it is calibrated on
    pathogenic vs rare neutral missense), else CADD's PHRED score scaled as Exomiser scales it,
    ``1 − 10^(−phred/10)`` (PHRED 10 → 0.9, 20 → 0.99)."""
    if revel is not None and revel == revel:
        return min(max(float(revel), 0.0), 1.0)
    if cadd_phred is not None and cadd_phred == cadd_phred:
        return float(1.0 - 10.0 ** (-max(float(cadd_phred), 0.0) / 10.0))
    return None


def variant_pathogenicity(clinvar: str | None, impact: str | None, consequence: str | None,
                          revel: float | None = None, cadd_phred: float | None = None,
                          spliceai: float | None = None) -> float:
    """Pathogenicity of one allele in [0, 1]: ClinVar P/LP → max(ClinVar, impact); benign/likely benign →
    the ClinVar value (≤ 0.05); otherwise (VUS, conflicting, absent) the consequence impact
    (HIGH 0.9, MODERATE 0.6, UNKNOWN 0.3 when neither impact nor consequence is given, LOW 0.15, MODIFIER 0.05;
    the most severe consequence term's :data:`CONSEQUENCE_SCORE` where Exomiser departs from its class: in-frame
    indel 0.85, splice region 0.8, synonymous 0.1) × 0.8, or 0.5 for conflicting when higher.

    In-silico predictions, when the VCF's CSQ carries them (Exomiser's rule): for a MODERATE (missense-class)
    allele :func:`predicted_pathogenicity` (REVEL, else scaled CADD) replaces the impact's 0.6, so a variant
    predicted benign scores low and one predicted damaging as high as a loss of function; a SpliceAI delta score
    raises any allele that is not HIGH to at least that score (a cryptic splice variant looks LOW or MODIFIER
    by consequence); for a splice-region allele it replaces the 0.8 default (SpliceAI 0.02 → the LOW class's
    0.15)."""
    imp_class = impact_of(impact, consequence)
    imp = IMPACT_SCORE[imp_class]
    top = consequence_term(consequence)
    if top is not None and consequence_impact(top) == imp_class:    # an explicit IMPACT that disagrees wins
        imp = CONSEQUENCE_SCORE.get(top, imp)
    if imp_class == "MODERATE":
        pred = predicted_pathogenicity(revel, cadd_phred)
        if pred is not None:
            imp = pred
    if spliceai is not None and spliceai == spliceai and imp_class != "HIGH":
        if top in _SPLICE_REGION:
            imp = IMPACT_SCORE[imp_class]
        imp = max(imp, min(float(spliceai), 1.0))
    c = clinvar_score(clinvar)
    if c is not None and c >= 0.9:
        return max(c, imp)
    if c is not None and c <= 0.05:
        return c
    s = 0.8 * imp
    return max(s, c) if c is not None else s


def rarity(af, rare: float = RARE_AF, common: float = COMMON_AF):
    """1 for AF ≤ ``rare`` (or unknown AF: None / NaN), 0 for AF ≥ ``common``, log-linear in between (defaults:
    :data:`raretarget.vocab.variants.RARE_AF` / ``COMMON_AF``). ``af``: a
    number or None → float; or an array ``[n]`` (NaN = unknown) → ``[n]``."""
    if af is None or np.isscalar(af):
        return float(rarity(np.array([np.nan if af is None else af], dtype=float), rare, common)[0])
    a = np.asarray(af, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = (np.log10(common) - np.log10(a)) / (np.log10(common) - np.log10(rare))
    return np.where(np.isnan(a) | (a <= rare), 1.0, np.where(a >= common, 0.0, mid))


#: the genotype groups of :meth:`Variant.gene_fit` (codes of ``knowledge.INHERITANCE_TERMS``; zygosity spellings)
_HOMOZYGOUS = frozenset({"hom_alt", "hom", "hemi"})
_X_RECESSIVE = frozenset({"XLR", "XL"})
_DOMINANT_LIKE = frozenset({"AD", "XLD", "SOMATIC", "MT", "YL", "DIGENIC"})


@register_scorer("variant")
class Variant(Scorer):
    """The index patient's variants in the gene, in [0, 1].

    Each allele: ``v = pathogenicity × rarity`` (:func:`variant_pathogenicity`, :func:`rarity`). Per gene the
    genotype is fitted to each inheritance mode of the gene's diseases (HPO HP:0000007 AR, HP:0000006 AD,
    HP:0001417/19/23 X-linked, HP:0032113 semidominant):

    * AR: a homozygous/hemizygous allele → ``v``; two het alleles (compound het; phase unknown) → the
      second-best ``v``; one het allele only → ``carrier × v`` (default 0.2);
    * AD / XLD / somatic: best allele ``v``;
    * XLR / XL: hemi or hom ``v``; het (female carrier) → ``0.5·v``;
    * unknown mode: ``unknown_mode × v`` (default 0.7); unknown zygosity counts as het.

    Frequency per mode (Exomiser's default maximum allele frequencies): an allele whose population AF is above
    ``dominant_max_af`` (0.1 %) does not fit a dominant mode nor a homozygous / hemizygous recessive genotype
    (a dominant or recessive-homozygous disease allele that common would make the disease common); one above
    ``recessive_max_af`` (2 %) does not count as a compound-heterozygous or carrier allele. Unknown AF fits
    every mode; the unknown-mode rule is not capped; ``None`` turns a cap off.

    The gene's score is the best fit over its modes. Absent from the mix when no variant table is given.
    Relevance logit: ``weight · s + log_weight · log(s + floor) + clinvar_weight · known``: the log term makes a
    gene without any qualifying variant (s = 0) pay ``log_weight · log(floor)`` (−4.6 · log_weight at the default
    floor), so phenotype evidence alone rarely lifts a gene the VCF gives no reason for; ``known`` is 1 when the
    gene carries a ClinVar pathogenic / likely pathogenic allele and its genotype fits the inheritance
    (fit score ≥ ``known_fit``; a lone carrier allele in a recessive gene does not; a compound het that pairs a
    P/LP allele with one that is not counts 0.5); plus
    ``unannotated_weight · s`` for genes without HPO annotations (where the variant is all the evidence there is).
    """

    def __init__(self, kb: KnowledgeBase, weight: float = 1.0, carrier: float = 0.2, unknown_mode: float = 0.7,
                 log_weight: float = 0.0, floor: float = 0.01, clinvar_weight: float = 0.0,
                 known_fit: float = 0.4, unannotated_weight: float = 0.0,
                 dominant_max_af: float | None = None, recessive_max_af: float | None = None, **params: Any):
        super().__init__(kb, weight, **params)
        self.dominant_max_af = None if dominant_max_af is None else float(dominant_max_af)
        self.recessive_max_af = None if recessive_max_af is None else float(recessive_max_af)
        self.carrier = float(carrier)
        self.unknown_mode = float(unknown_mode)
        self.log_weight = float(log_weight)
        self.floor = float(floor)
        self.clinvar_weight = float(clinvar_weight)
        self.known_fit = float(known_fit)
        self.unannotated_weight = float(unannotated_weight)
        self._bits_genes = pa.array(list(kb.inheritance), pa.string())
        self._bits_val = np.array([self._mode_bits(m) for m in kb.inheritance.values()] + [0], np.int64)

    def gene_fit(self, gene: str, alleles: list[tuple]) -> tuple[float, str]:
        """Best (score, mode) for the gene given ``[(v, zygosity)]`` or ``[(v, zygosity, af)]`` (af: population
        allele frequency, None / NaN unknown)."""
        if not alleles:
            return 0.0, ""

        def capped(cap):        # each allele's v where its AF fits under ``cap``, else 0
            return [(0.0 if cap is not None and len(a) > 2 and a[2] is not None and a[2] == a[2] and a[2] > cap
                     else a[0], a[1]) for a in alleles]

        v1 = max(v for v, *_ in alleles)
        strict = sorted(capped(self.dominant_max_af), key=lambda a: -a[0])
        loose = sorted(capped(self.recessive_max_af), key=lambda a: -a[0])
        homs = [v for v, z in strict if z in _HOMOZYGOUS]
        hets = [v for v, z in loose if z not in _HOMOZYGOUS]
        modes = self.kb.inheritance.get(gene, set())
        fits: list[tuple[float, str]] = []
        for m in modes:
            if m == "AR":
                cands = [homs[0] if homs else 0.0, loose[1][0] if len(loose) >= 2 else 0.0,
                         self.carrier * loose[0][0]]
                fits.append((max(cands), "AR"))
            elif m in _X_RECESSIVE:
                fits.append((max(homs[0] if homs else 0.0, 0.5 * (hets[0] if hets else 0.0)), m))
            elif m in _DOMINANT_LIKE:
                fits.append((strict[0][0], m))
        if not fits:
            fits.append((self.unknown_mode * v1, "unknown"))
        return max(fits)

    @staticmethod
    def _mode_bits(modes) -> int:
        """Which of :meth:`gene_fit`'s rules apply to a gene with inheritance ``modes``: 1 AR, 2 X-linked
        recessive, 4 dominant-like (AD, XLD, somatic, MT, Y-linked, digenic); 0 none (unknown mode)."""
        bits = 0
        for m in modes:
            bits |= 1 if m == "AR" else 2 if m in _X_RECESSIVE else 4 if m in _DOMINANT_LIKE else 0
        return bits

    def allele_scores(self, t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.Array,
                                                   np.ndarray]:
        """Per row of a variant table: allele score ``v = pathogenicity × rarity`` ``[n]``, homozygous /
        hemizygous ``[n]`` bool, ClinVar P/LP ``[n]`` bool, gene code ``[n]`` (−1: no gene), the genes the
        codes name (an Arrow string array) and the population AF ``[n]`` (NaN: unknown). Each distinct
        annotation (ClinVar, impact, consequence, REVEL, CADD,
        SpliceAI) is scored once by the scalar rule (:func:`variant_pathogenicity`): an exome has ~22k rows but a
        few hundred distinct annotations; AF by :func:`rarity` over the array."""
        n = t.num_rows
        cols = set(t.column_names)

        def codes(name: str) -> tuple[np.ndarray, pa.Array]:
            if name not in cols or n == 0:
                return np.full(n, -1, np.int64), pa.array([], pa.string())
            d = t.column(name).combine_chunks().dictionary_encode()
            return pc.fill_null(d.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64), d.dictionary

        ann = [codes(c) for c in ("clinvar", "impact", "consequence", "revel", "cadd_phred", "spliceai")]
        key, bound = np.zeros(n, np.int64), 1
        for idx, vals in ann:                  # one id per distinct annotation tuple (mixed radix, kept < 2^62)
            if bound * (len(vals) + 1) >= 1 << 62:
                key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
                bound = int(key.max()) + 1 if n else 1
            key, bound = key * (len(vals) + 1) + (idx + 1), bound * (len(vals) + 1)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        values = [vals.to_pylist() for _, vals in ann]
        path = np.array([variant_pathogenicity(*[(vl[idx[k]] if idx[k] >= 0 else None)
                                                 for (idx, _), vl in zip(ann, values)]) for k in first.tolist()],
                        dtype=float)
        v = path[inv.reshape(-1)] if n else np.zeros(0)
        af = np.full(n, np.nan)
        if "af" in cols and n:
            af = pc.fill_null(t.column("af").combine_chunks().cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            v = v * rarity(af)
        z_idx, z_vals = codes("zygosity")
        hom = np.array([z in _HOMOZYGOUS for z in z_vals.to_pylist()] + [False], bool)[z_idx]
        cv_idx = ann[0][0]
        plp = np.array([bool(c) and is_plp(c) for c in values[0]] + [False], bool)[cv_idx]
        g_idx, g_vals = codes("gene")
        g_vals = g_vals.cast(pa.string())      # a store query may hand large_string / string_view: one type to look up
        g_ok = np.append(pc.fill_null(pc.not_equal(g_vals, ""), False).to_numpy(zero_copy_only=False), False)
        g_idx = np.where(g_ok[g_idx], g_idx, -1)
        return v, hom, plp, g_idx, g_vals, af

    def score(self, q: Query) -> Component:
        t = q.variants
        if t is None:
            return Component(self.name, np.zeros(len(q.genes)), lambda i: {}, present=False, role=self.role)
        v, hom, plp_row, g_idx, g_vals, af = self.allele_scores(t)
        # v where the allele's AF fits the dominant / homozygous-recessive cap and the compound-het / carrier one
        with np.errstate(invalid="ignore"):
            v_dom = v if self.dominant_max_af is None else np.where(af > self.dominant_max_af, 0.0, v)
            v_rec = v if self.recessive_max_af is None else np.where(af > self.recessive_max_af, 0.0, v)
        rows = np.flatnonzero(g_idx >= 0)
        # rows grouped by gene, best allele first (ties: file order, as a stable sort by score would give)
        order = rows[np.lexsort((rows, -v[rows], g_idx[rows]))]
        gcode = g_idx[order]
        starts = np.flatnonzero(np.r_[True, gcode[1:] != gcode[:-1]]) if len(order) else np.zeros(0, np.int64)
        ends = np.r_[starts[1:], len(order)].astype(np.int64)
        vs = v[order]
        s = np.zeros(len(q.genes))
        known = np.zeros(len(q.genes))
        span: dict[int, tuple[int, int]] = {}           # universe position → its rows in ``order``
        if len(starts):
            v1 = vs[starts]
            # the same gene groups (same primary key) ordered by the capped score, for the second-best allele
            order_rec = rows[np.lexsort((rows, -v_rec[rows], g_idx[rows]))]
            vr = v_rec[order_rec]
            v2 = np.where(ends - starts >= 2, vr[np.minimum(starts + 1, len(vr) - 1)], 0.0)
            v1_rec = vr[starts]
            v1_dom = np.maximum.reduceat(v_dom[order], starts)
            hom1 = np.maximum.reduceat(np.where(hom[order], v_dom[order], 0.0), starts)
            het1 = np.maximum.reduceat(np.where(hom[order], 0.0, v_rec[order]), starts)
            anyplp = np.maximum.reduceat(plp_row[order].astype(np.int8), starts) > 0
            genes = g_vals.take(pa.array(gcode[starts]))
            # inheritance rules and universe position by Arrow lookups (an exome names ~11k genes)
            bi = pc.index_in(genes, value_set=self._bits_genes)
            bits = np.where(pc.is_valid(bi).to_numpy(zero_copy_only=False),
                            self._bits_val[pc.fill_null(bi, 0).to_numpy(zero_copy_only=False)], 0)
            # gene_fit, per gene at once: the best fit over the gene's inheritance modes
            fit = np.full(len(genes), -np.inf)
            fit = np.where(bits & 1, np.maximum(fit, np.maximum.reduce([hom1, v2, self.carrier * v1_rec])), fit)
            fit = np.where(bits & 2, np.maximum(fit, np.maximum(hom1, 0.5 * het1)), fit)
            fit = np.where(bits & 4, np.maximum(fit, v1_dom), fit)
            fit = np.where(bits == 0, self.unknown_mode * v1, fit)
            pos = pc.fill_null(pc.index_in(genes, value_set=q.gene_array()), -1).to_numpy(
                zero_copy_only=False).astype(np.int64)
            # a gene whose fit is the compound-het rule counts as known by the share of ClinVar P/LP among the two
            # alleles it pairs: P/LP + a rare VUS is half known (a carrier's P/LP allele and an unrelated rare
            # missense in the same gene are common in an exome; the VUS is uncertain), both P/LP fully
            plp_r = plp_row[order_rec]
            plp2 = plp_r[starts].astype(float) + np.where(ends - starts >= 2,
                                                           plp_r[np.minimum(starts + 1, len(plp_r) - 1)], False)
            comp = ((bits & 1) > 0) & (v2 > hom1) & (v2 >= fit)
            share = np.where(comp, plp2 / 2.0, 1.0)
            m = pos >= 0
            s[pos[m]] = fit[m]
            known[pos[m]] = (anyplp[m] & (fit[m] >= self.known_fit)) * share[m]
            span = dict(zip(pos[m].tolist(), zip(starts[m].tolist(), ends[m].tolist())))
        shown = t.select([c for c in _EVIDENCE_FIELDS if c in t.column_names])

        def evidence(i: int) -> dict:
            se = span.get(i)
            if se is None:
                return {}
            al = order[se[0]:se[1]]
            _, mode = self.gene_fit(q.genes[i], list(zip(v[al].tolist(), np.where(hom[al], "hom_alt", "het").tolist(),
                                                         af[al].tolist())))
            vs = []
            for r, x in zip(shown.take(pa.array(al[:5])).to_pylist(), v[al[:5]].tolist()):
                r["zygosity"] = r.get("zygosity") or "het"
                r["allele_score"] = round(x, 3)
                vs.append({c: r.get(c) for c in (*_EVIDENCE_FIELDS, "allele_score") if r.get(c) is not None})
            return {"variants": vs, "fit": mode, "inheritance": sorted(self.kb.inheritance.get(q.genes[i], ()))}

        unann = np.ones(len(q.genes))
        m = q.kb_rows >= 0
        unann[m] = self.kb.n_gene_terms[q.kb_rows[m]] == 0
        logit = self.weight * s + (self.log_weight * np.log(s + self.floor) if self.log_weight else 0.0) \
            + self.clinvar_weight * known + self.unannotated_weight * unann * s
        return Component(self.name, s, evidence, role=self.role, logit=logit, features={"known": known, "unannotated": unann})


_EVIDENCE_FIELDS = ("hgvsc", "hgvsp", "consequence", "impact", "clinvar", "revel", "cadd_phred", "spliceai",
                    "zygosity", "af")


# ---------------------------------------------------------------------------------------------- placeholders
class _Precomputed(Scorer):
    """Placeholder for a component computed elsewhere: ``extra_components[name] = {gene: score}`` with
    scores already in [0, 1] (clipped). Absent from the mix when not supplied."""

    def score(self, q: Query) -> Component:
        d = q.extra.get(self.name)
        if d is None:
            return Component(self.name, np.zeros(len(q.genes)), lambda i: {}, present=False, role=self.role)
        s = np.zeros(len(q.genes))
        for g, v in d.items():
            i = q.gene_pos.get(g)
            if i is not None:
                s[i] = min(max(float(v), 0.0), 1.0)
        return Component(self.name, s, lambda i: {"score": float(s[i])} if s[i] else {})


@register_scorer("cohort")
class Cohort(_Precomputed):
    """Cohort enrichment, relevance logit ``weight · s``: ``s`` in [0, 1] per gene from
    :func:`raretarget.prioritize.enrichment.cohort_scores` (carriers of qualifying variants among the store's patients
    that match the query vs the rest, one-sided Fisher test, FDR). It needs the store, which scorers do not see
    (they work over the knowledge base and one query), so :func:`raretarget.prioritize.targets.rank_targets`
    computes it and hands it in as ``extra["cohort"]``; absent without patients."""


@register_scorer("embedding")
class Embedding(_Precomputed):
    """Embedding similarity of the query to each gene's vector in the current model, relevance logit
    ``weight · s``: ``s`` = cosine min-max scaled to [0, 1] over the genes, computed by
    :func:`raretarget.prioritize.targets.rank_targets` from the store's gene embeddings (needs a trained model)
    and handed in as ``extra["embedding"]``; absent without a model. Its weight is not fitted: the phenopacket
    benchmark has no trained store."""


def build_scorers(config: Mapping[str, Any], kb: KnowledgeBase) -> list[Scorer]:
    """``{name: weight}`` or ``{name: {"weight": w, **params}}`` → scorers (weight 0 entries are dropped).
    Unknown names raise ``KeyError``."""
    out = []
    for name, spec in config.items():
        if name.startswith("_"):
            continue
        if name not in SCORERS:
            raise KeyError(f"unknown scorer {name!r}; registered: {sorted(SCORERS)}")
        params = dict(spec) if isinstance(spec, Mapping) else {"weight": spec}
        params.pop("_target_", None)
        if float(params.get("weight", 1.0)) <= 0:
            continue
        out.append(SCORERS[name](kb, **params))
    return out

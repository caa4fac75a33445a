"""Phenotype relevance of every gene for one HPO query: disease-level likelihood ratios, exact-match coverage,
hypergeometric enrichment and Resnik similarity, combined by a log-linear model fitted on solved cases.

What the field does and what is taken from it:

* **LIRICAL** (Robinson et al., AJHG 2020) scores each *disease* by a product of per-term likelihood ratios
  ``LR(q, d) = P(q | d) / P(q | ¬d)`` with the annotation frequencies of ``phenotype.hpoa``; a gene scores as its
  best disease. Here ``P(q | d)`` is read at the most informative ancestor-or-self ``a`` of ``q`` that ``d``
  carries: ``log LR(q, d) = max_a log(f(a | d) / bg(a))`` with ``f(a | d)`` the highest frequency of a ``d`` term
  under ``a`` and ``bg(a)`` the mean of ``f(a | ·)`` over all diseases (a term no disease term falls under gives the
  floor ``log ε``). Excluded terms add ``log((1 − f(q | d)) / (1 − bg(q)))`` (LIRICAL's negated LR).
  ``lrf_*`` use the frequencies, ``lrb_*`` the same with every annotation at frequency 1.
* **Exomiser's / hpo3's hypergeometric enrichment** (``hyper``: ``−log10 p`` of the query terms' overlap with
  the gene's annotations, computed as hpo3's ``gene_enrichment``: population = gene-term pairs of the
  ontology) and its **coverage** ``hyper_frac`` (fraction of the query terms the gene carries, i.e. a query term
  that is the gene's annotation or an ancestor of one). ``exact_frac`` is that coverage at the disease level
  (best disease).
* **Phenomizer's Resnik** best-match (``res_gene``: query → gene annotations; ``res_dis``: query → best disease),
  from :class:`raretarget.prioritize.scorers.PhenotypeIC`.
* ``log_nterms`` (log(1 + number of the gene's annotations), a specificity correction) and ``has_dis`` (the
  gene has a linked OMIM disease).
* **Phenomizer's correction for the query-independent part of a score** (Köhler et al., AJHG 2009, ranked
  diseases by the p-value of their score against random queries): ``background`` is the gene's mean phenotype
  logit over realistic random queries (terms drawn from other OMIM diseases' annotations), a per-gene constant.
  Genes with large, generic annotation sets (KDM6B, PIGA, ...) score well against almost any developmental
  query; with this feature the fit can discount that. Precomputed by ``scripts/build_gene_background.py``
  (:func:`compute_background`, ~45 s) into the packaged ``gene_background.tsv.gz``; a gene the file does not list
  takes the median.

Genes are linked to OMIM diseases through NCBI gene2omim (the KB's ``diseases``) and, because that table is from
2022, also where all of a disease's phenotype annotations are among the gene's (hpo3's gene annotations are the
union of the gene's diseases') and at most ``max_subset_genes`` genes qualify.

The relevance logit is ``z = Σ_k coef_k · feature_k + r(features)`` (coefficients in
``conf/prioritize/default.yaml``; ``r`` a small fitted network, :class:`Residual`, packaged as
``phenotype_residual.json``), fitted by ``scripts/bench_phenopackets.py --fit`` on one half of the dev cohorts
and reported on the other.
All arrays are per KB gene ``[G]`` unless stated.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

#: HPO frequency terms (HP:0040279 subtree) → the midpoint of the range HPO defines for each
FREQUENCY_TERMS: dict[str, float] = {
    "HP:0040280": 1.0,      # obligate (100%)
    "HP:0040281": 0.9,      # very frequent (80-99%)
    "HP:0040282": 0.55,     # frequent (30-79%)
    "HP:0040283": 0.17,     # occasional (5-29%)
    "HP:0040284": 0.025,    # very rare (1-4%)
    "HP:0040285": 0.0,      # excluded (0%)
}

#: the feature names, in the order of :meth:`PhenotypeModel.features`
FEATURES: tuple[str, ...] = ("res_gene", "res_dis", "lrf_obs", "lrf_all", "lrb_obs", "lrb_all", "exact_frac",
                             "pseudo", "hyper", "hyper_frac", "log_nterms", "has_dis", "background")


def default_annotations() -> Path:
    """The packaged ``phenotype.hpoa.gz`` (HPO annotations release 2025-01-16, unmodified)."""
    return Path(str(resources.files("raretarget") / "data" / "phenotype.hpoa.gz"))


def default_background() -> Path:
    """The packaged ``gene_background.tsv.gz`` (``scripts/build_gene_background.py``)."""
    return Path(str(resources.files("raretarget") / "data" / "gene_background.tsv.gz"))


def default_residual() -> Path:
    """The packaged ``phenotype_residual.json`` (fitted by ``scripts/bench_phenopackets.py --fit``)."""
    return Path(str(resources.files("raretarget") / "data" / "phenotype_residual.json"))


class Residual:
    """The non-linear part of the phenotype logit: a one-hidden-layer network over the standardised features,
    ``r[g] = w2 · tanh(W1 · (f[g] − μ) / σ + b1) + b2``, added to the linear ``Σ coef_k · f_k``.

    It carries the non-linear effects of the features and their interactions, which a weighted sum cannot
    express (on an inner split of the fit half: +2 points top-1, +1.4 MRR over the linear model alone, see
    benchmarks/RESULTS.md). It is fitted jointly with the linear
    coefficients (listwise: softmax over all genes of a case, the causal gene the target), starting from the
    linear solution with the output layer near zero, on the fit half of the dev cohorts only.
    ``features`` ``[K]`` names the inputs (a subset of :data:`FEATURES`, in order); ``mu``/``sd`` ``[K]``;
    ``W1`` ``[H, K]``; ``b1``/``w2`` ``[H]``; ``b2`` a scalar. ``meta``: provenance (what it was fitted on)."""

    def __init__(self, features: Sequence[str], mu, sd, W1, b1, w2, b2: float, meta: Mapping | None = None):
        self.features = tuple(features)
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise KeyError(f"residual: unknown phenotype features {sorted(unknown)}; known: {list(FEATURES)}")
        self.mu, self.sd = np.asarray(mu, float), np.asarray(sd, float)
        self.W1, self.b1 = np.asarray(W1, float), np.asarray(b1, float)
        self.w2, self.b2 = np.asarray(w2, float), float(b2)
        K, H = len(self.features), len(self.b1)
        if self.mu.shape != (K,) or self.sd.shape != (K,) or self.W1.shape != (H, K) or self.w2.shape != (H,):
            raise ValueError(f"residual: shapes do not fit {K} features and {H} hidden units")
        self.meta = dict(meta or {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Residual":
        """From a JSON file (default: the packaged one)."""
        import json

        d = json.loads(Path(path if path is not None else default_residual()).read_text())
        return cls(d["features"], d["mu"], d["sd"], d["W1"], d["b1"], d["w2"], d["b2"], d.get("meta"))

    def to_json(self) -> str:
        import json

        r = lambda a: np.round(np.asarray(a, float), 6).tolist()  # noqa: E731 - 6 digits: exact enough, diffable
        return json.dumps({"meta": self.meta, "features": list(self.features), "mu": r(self.mu), "sd": r(self.sd),
                           "W1": r(self.W1), "b1": r(self.b1), "w2": r(self.w2), "b2": round(self.b2, 6)}, indent=1)

    def __call__(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        """``r`` ``[G]`` for features ``{name: [G]}``."""
        x = np.stack([np.asarray(feats[k], float) for k in self.features], 1)
        # einsum, not BLAS: this [G, K] × [K, H] product is small, but a multi-threaded BLAS wakes its pool for it
        # and the pool's spinning threads then slow the rest of the query (70 → 50 ms a query on 2 cores)
        h = np.tanh(np.einsum("gk,hk->gh", (x - self.mu) / self.sd, self.W1) + self.b1)
        return np.einsum("gh,h->g", h, self.w2) + self.b2


def load_background(path: str | Path | None = None) -> dict[str, float]:
    """``{gene symbol: background logit}`` of a ``gene_background.tsv(.gz)`` (``#`` lines are its provenance)."""
    p = Path(path) if path is not None else default_background()
    out: dict[str, float] = {}
    with (gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")) as f:
        for line in f:
            if line.startswith("#") or line.startswith("gene\t"):
                continue
            g, v = line.rstrip("\n").split("\t")[:2]
            out[g] = float(v)
    return out


def compute_background(kb, coef: Mapping[str, float], n_queries: int = 4000, seed: int = 0,
                       mean_size: float = 6.0) -> np.ndarray:
    """The ``background`` feature ``[G]``: each gene's mean phenotype logit ``Σ coef_k · feature_k`` (features
    other than ``background``; shifted so that each query's best gene is 0) over ``n_queries`` random queries.
    A query is ``1 + Poisson(mean_size − 1)`` terms (at most all of them) drawn without replacement from one
    random OMIM disease's annotations (≥ 3 terms); the disease's own genes are left out of its query's mean, so
    a gene's true diseases do not count as background. Genes never averaged get 0."""
    from .scorers import Phenotype

    rng = np.random.default_rng(seed)
    c = {k: float(v) for k, v in coef.items() if k != "background" and float(v) != 0.0}
    ph = Phenotype(kb, coef={k: 0.0 for k in FEATURES if k != "background"})
    dis = {d.id: d for ds in kb.diseases.values() for d in ds if d.id.startswith("OMIM") and len(d.terms) >= 3}
    ids = sorted(dis)
    genes_of: dict[str, list[int]] = {}
    for g, ds in kb.diseases.items():
        for d in ds:
            if g in kb.gene_index:
                genes_of.setdefault(d.id, []).append(kb.gene_index[g])
    G = len(kb.genes)
    total, n = np.zeros(G), np.zeros(G)
    for _ in range(int(n_queries)):
        d = dis[ids[rng.integers(len(ids))]]
        terms = sorted(d.terms)
        q = int(min(1 + rng.poisson(max(mean_size - 1.0, 0.0)), len(terms)))
        obs, _ = kb.resolve_terms(list(rng.choice(terms, q, replace=False)))
        if not obs:
            continue
        f, _, _ = ph.features(obs, [])
        z = PhenotypeModel.logit(f, c)
        z = z - z.max()
        m = np.ones(G, bool)
        m[genes_of.get(d.id, [])] = False
        total[m] += z[m]
        n[m] += 1
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def parse_frequency(s: str | None) -> float | None:
    """A ``phenotype.hpoa`` frequency cell → probability: an HPO frequency term, ``n/m`` or ``p%``; ``None`` when
    empty or unreadable."""
    s = (s or "").strip()
    if not s:
        return None
    if s in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[s]
    try:
        if "/" in s:
            a, b = s.split("/", 1)
            return min(int(a) / max(int(b), 1), 1.0)
        if s.endswith("%"):
            return min(float(s[:-1]) / 100.0, 1.0)
    except ValueError:
        return None
    return None


def load_frequency_table(path: str | Path | None = None):
    """The annotation frequencies of a ``phenotype.hpoa`` (gzip or plain; default: the packaged one) as a
    ``pyarrow.Table`` ``(disease_id: string, hpo_id: string, frequency: float64)``, one row per pair.
    Phenotypic-abnormality rows (aspect ``P``) only; ``NOT`` rows and rows without a readable frequency are left
    out; a pair listed twice keeps the higher frequency. Read by Arrow's CSV reader (~270k rows; a Python
    line loop took ~0.4 s of a first ranking call)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    p = Path(path) if path is not None else default_annotations()
    opener = gzip.open if p.suffix == ".gz" else open
    skip = 0                                           # the '#' header lines above the column row
    with opener(p, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            skip += 1
    cols = ["database_id", "qualifier", "hpo_id", "frequency", "aspect"]
    t = pcsv.read_csv(
        p, read_options=pcsv.ReadOptions(skip_rows=skip),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=lambda row: "skip"),
        convert_options=pcsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in cols},
                                            strings_can_be_null=False))
    keep = pc.and_(pc.starts_with(t["aspect"], "P"), pc.not_equal(t["qualifier"], "NOT"))
    t = t.filter(keep)
    cells = pc.unique(t["frequency"])                  # a few hundred distinct cells
    vals = pa.array([parse_frequency(c) for c in cells.to_pylist()], pa.float64())
    freq = vals.take(pc.index_in(t["frequency"], value_set=cells))
    t = pa.table({"disease_id": t["database_id"], "hpo_id": t["hpo_id"], "frequency": freq})
    t = t.filter(pc.is_valid(t["frequency"]))
    # the highest frequency per pair: highest first, then each pair's first row (Table.group_by would load
    # Arrow's query engine, ~0.2 s on a first call)
    t = t.take(pc.sort_indices(t, sort_keys=[("frequency", "descending")]))
    pair = pc.binary_join_element_wise(t["disease_id"], t["hpo_id"], "\t").combine_chunks()
    _, first = np.unique(pair.dictionary_encode().indices.to_numpy(), return_index=True)
    return t.take(pa.array(np.sort(first)))


def load_frequencies(path: str | Path | None = None) -> dict[tuple[str, str], float]:
    """``{(disease id, HPO id): frequency}`` from a ``phenotype.hpoa``: :func:`load_frequency_table` as a dict."""
    t = load_frequency_table(path)
    return dict(zip(zip(t["disease_id"].to_pylist(), t["hpo_id"].to_pylist()), t["frequency"].to_pylist()))


def _expand_to_ancestors(kb, rows: np.ndarray, terms: np.ndarray, vals: np.ndarray, n_rows: int) -> sp.csc_matrix:
    """``M[r, a] = max vals`` over the ``(r, t, v)`` triples with ``a`` an ancestor-or-self of ``t`` → CSC
    ``[n_rows, T]`` (the frequency-weighted closure)."""
    T = len(kb.term_ids)
    if not len(rows):
        return sp.csc_matrix((n_rows, T))
    sub = kb.anc[terms]                               # one CSR row per triple: its ancestors-or-self
    counts = np.diff(sub.indptr)
    r = np.repeat(rows, counts)
    v = np.repeat(vals, counts)
    a = sub.indices
    key = r.astype(np.int64) * T + a
    order = np.lexsort((-v, key))                     # per (row, ancestor) the highest value first
    key, v = key[order], v[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key, v = key[first], v[first]
    return sp.csc_matrix((v, (key // T, key % T)), shape=(n_rows, T))


def _disease_term_rows(kb, dis: Sequence, frequencies, min_freq: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The in-scope ``(disease row, term index, frequency)`` triples of ``dis`` (each term once per disease, in
    its first order), as int64 / int64 / float64 arrays ``[n]``. ``frequencies``: a mapping ``{(disease id, HPO id):
    f}`` or :func:`load_frequency_table`'s table; a pair without one counts as 1, a stated one is floored at
    ``min_freq``. Vectorised with Arrow (a Python loop over the ~260k pairs took ~0.3 s of a first call)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    D, T = len(dis), len(kb.term_ids)
    lens = np.fromiter((len(d.terms) for d in dis), np.int64, count=D)
    if not lens.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, float)
    row = np.repeat(np.arange(D, dtype=np.int64), lens)
    flat = pa.array([t for d in dis for t in d.terms], pa.string())
    tix = pc.index_in(flat, value_set=pa.array(kb.term_ids, pa.string())).fill_null(-1).to_numpy().astype(np.int64)
    ok = tix >= 0
    ok[ok] = kb.in_scope[tix[ok]]
    # each term once per disease, first occurrence kept (dict.fromkeys order)
    key = row * T + np.where(ok, tix, 0)
    _, first = np.unique(np.where(ok, key, -1), return_index=True)
    sel = np.zeros(len(key), bool)
    sel[first] = True
    sel &= ok
    idx = np.flatnonzero(sel)
    f = np.ones(len(idx))
    if frequencies is not None and len(frequencies):
        if not isinstance(frequencies, pa.Table):
            items = list(frequencies.items())
            frequencies = pa.table({"disease_id": pa.array([k[0] for k, _ in items], pa.string()),
                                    "hpo_id": pa.array([k[1] for k, _ in items], pa.string()),
                                    "frequency": pa.array([v for _, v in items], pa.float64())})
        ids = pa.array([d.id for d in dis], pa.string()).take(pa.array(row[idx]))
        pair = pc.binary_join_element_wise(ids, flat.take(pa.array(idx)), "\t")
        known = pc.binary_join_element_wise(frequencies["disease_id"], frequencies["hpo_id"], "\t")
        hit = frequencies["frequency"].take(pc.index_in(pair, value_set=known))
        stated = pc.is_valid(hit).to_numpy(zero_copy_only=False)
        f[stated] = np.maximum(hit.to_numpy(zero_copy_only=False)[stated], min_freq)
    return row[idx], tix[idx], f


class PhenotypeModel:
    """Disease and gene arrays for the phenotype features of one :class:`KnowledgeBase` (built once, ~1 s).

    kb: the knowledge base; its ``omim_diseases`` (all OMIM diseases with their HPO terms, set by
        ``KnowledgeBase.from_hpo3``) or else its linked ``disease_list`` are the disease universe.
    frequencies: ``{(disease id, HPO id): f}``; missing pairs count as frequency 1 (as LIRICAL does without
        data); ``min_freq`` floors a stated frequency (a very rare feature is still evidence).
    eps: the floor of a term's likelihood ratio when none of a disease's terms falls under any of its ancestors.
    """

    def __init__(self, kb, frequencies: Mapping[tuple[str, str], float] | None = None, *, eps: float = 0.01,
                 min_freq: float = 0.02, max_subset_genes: int = 10,
                 background: Mapping[str, float] | None | bool = None):
        self.kb = kb
        self.eps = float(eps)
        T, G = len(kb.term_ids), len(kb.genes)
        dis = list(getattr(kb, "omim_diseases", None) or [d for d in kb.disease_list if d.id.startswith("OMIM")])
        self.diseases = dis
        self.disease_index = {d.id: i for i, d in enumerate(dis)}
        D = len(dis)
        rows_a, terms_a, fvals = _disease_term_rows(kb, dis, frequencies, min_freq)
        self.freq = _expand_to_ancestors(kb, rows_a, terms_a, fvals, D)      # [D, T] f(a | d)
        self.binary = self.freq.copy()
        self.binary.data[:] = 1.0                                                           # [D, T] 0/1
        self.bg_freq = np.maximum(np.asarray(self.freq.sum(axis=0)).ravel() / max(D, 1), 1e-6)   # [T]
        self.bg_binary = np.maximum(np.asarray(self.binary.sum(axis=0)).ravel() / max(D, 1), 1e-6)
        n_dis_terms = np.bincount(rows_a, minlength=D).astype(float)

        # gene -> disease links: gene2omim (the KB's diseases) + the subset rule
        links: set[tuple[int, int]] = set()
        for g, ds in kb.diseases.items():
            gi = kb.gene_index.get(g)
            for d in ds:
                di = self.disease_index.get(d.id)
                if gi is not None and di is not None:
                    links.add((gi, di))
        if D and G and len(rows_a):
            # a disease all of whose terms a gene carries directly: intersect the genes of its terms, rarest first
            gt = kb.gene_terms
            TG = sp.csc_matrix((np.ones(int(sum(len(x) for x in gt))),
                                (np.repeat(np.arange(G), [len(x) for x in gt]),
                                 np.concatenate(gt).astype(np.int64) if gt else np.zeros(0, np.int64))), shape=(G, T))
            ptr, idx = TG.indptr, TG.indices
            n_genes_of = np.diff(ptr)
            sets: dict[int, set] = {}                   # gene sets of the terms met, built on first use
            order = np.argsort(rows_a, kind="stable")
            starts = np.searchsorted(rows_a[order], np.arange(D + 1))
            for d in range(D):
                ts = terms_a[order[starts[d]:starts[d + 1]]].tolist()
                if not ts:
                    continue
                ts.sort(key=lambda t: n_genes_of[t])
                if n_genes_of[ts[0]] == 0:
                    continue
                cand = set(idx[ptr[ts[0]]:ptr[ts[0] + 1]].tolist())
                for t in ts[1:]:
                    g_t = sets.get(t)
                    if g_t is None:
                        g_t = sets[t] = set(idx[ptr[t]:ptr[t + 1]].tolist())
                    cand &= g_t
                    if not cand:
                        break
                if 0 < len(cand) <= max_subset_genes:
                    links.update((int(g), d) for g in cand)
        lk = np.array(sorted(links), dtype=np.int64).reshape(-1, 2)
        self.gene_dis = sp.csr_matrix((np.ones(len(lk)), (lk[:, 0], lk[:, 1])), shape=(G, D))   # [G, D] 0/1
        self.has_dis = np.diff(self.gene_dis.indptr) > 0                                     # [G]
        # gene level: the annotation closure as one pseudo-disease per gene, and hpo3's enrichment background
        self.gene_closure = kb.closure.tocsc().astype(float)                                 # [G, T]
        self.bg_gene = np.maximum(np.asarray(self.gene_closure.sum(axis=0)).ravel() / max(G, 1), 1e-6)
        self.terms_per_gene = np.asarray(self.gene_closure.sum(axis=1)).ravel()             # K_g
        self.population = float(self.terms_per_gene.sum())                                  # N
        self.log_nterms = np.log1p(kb.n_gene_terms)
        # per-gene background logit (module doc): None = the packaged table, False = zeros (e.g. while computing it)
        bgd = {} if background is False else (load_background() if background in (None, True) else dict(background))
        vals = np.array([bgd[g] for g in kb.genes if g in bgd], float)
        fill = float(np.median(vals)) if len(vals) else 0.0
        self.background = np.array([bgd.get(g, fill) for g in kb.genes], float)            # [G]

    # ------------------------------------------------------------------ per query
    def disease_lr(self, observed: Sequence[int], excluded: Sequence[int], use_freq: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per disease ``[D]``: (Σ over observed terms of log LR, Σ over excluded terms of log LR, number of
        observed terms the disease carries exactly, i.e. the term or a descendant)."""
        M = self.freq if use_freq else self.binary
        bg = self.bg_freq if use_freq else self.bg_binary
        D = M.shape[0]
        obs, exc, n_exact = np.zeros(D), np.zeros(D), np.zeros(D)
        floor = np.log(self.eps)
        for q in observed:
            best = np.full(D, floor)
            for a in self.kb.anc_list[q]:
                s, e = M.indptr[a], M.indptr[a + 1]
                np.maximum.at(best, M.indices[s:e], np.log(M.data[s:e]) - np.log(bg[a]))
            obs += best
            n_exact[M.indices[M.indptr[q]:M.indptr[q + 1]]] += 1
        for q in excluded:
            f = np.zeros(D)
            s, e = M.indptr[q], M.indptr[q + 1]
            f[M.indices[s:e]] = M.data[s:e]
            exc += np.log(np.maximum(1.0 - f, 0.05)) - np.log(max(1.0 - bg[q], 0.05))
        return obs, exc, n_exact

    def gene_best(self, per_disease: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Max over each gene's linked diseases → (``[G]`` value, −inf without a disease; ``[G]`` disease index or −1)."""
        M = self.gene_dis
        G = M.shape[0]
        out, arg = np.full(G, -np.inf), np.full(G, -1, dtype=np.int64)
        if not M.nnz:
            return out, arg
        vals = per_disease[M.indices]
        counts = np.diff(M.indptr)
        ne = counts > 0
        starts = M.indptr[:-1][ne]
        best = np.maximum.reduceat(vals, starts)            # per gene with diseases: its best value
        # the first of the gene's diseases (in M's order) that reaches it: a -inf value never wins over another
        at = np.flatnonzero(vals == np.repeat(best, counts[ne]))
        row = np.searchsorted(M.indptr, at, side="right") - 1
        first = np.ones(len(at), bool)
        first[1:] = row[1:] != row[:-1]
        out[ne], arg[row[first]] = best, M.indices[at[first]]
        return out, arg

    def gene_lr(self, observed: Sequence[int]) -> np.ndarray:
        """Σ log LR of the observed terms against each gene's annotation union (binary), ``[G]``."""
        C, G = self.gene_closure, self.gene_closure.shape[0]
        tot = np.zeros(G)
        for q in observed:
            best = np.full(G, np.log(self.eps))
            for a in self.kb.anc_list[q]:
                s, e = C.indptr[a], C.indptr[a + 1]
                np.maximum.at(best, C.indices[s:e], -np.log(self.bg_gene[a]))
            tot += best
        return tot

    def hypergeom(self, observed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """hpo3's gene enrichment: ``−log10 P(X ≥ k_g)``, X ~ Hypergeom(N gene-term pairs, K_g pairs of gene g,
        n pairs of the query terms); and ``k_g`` (query terms the gene carries), both ``[G]``."""
        from .stats import hypergeom_logsf

        C = self.gene_closure
        k = np.zeros(C.shape[0])
        n = 0
        for q in observed:
            s, e = C.indptr[q], C.indptr[q + 1]
            k[C.indices[s:e]] += 1
            n += e - s
        lp = hypergeom_logsf(k, self.population, self.terms_per_gene, n)
        # hpo3 reports p; its floor (1e-300) keeps −log10 p finite where the tail underflows
        return np.minimum(-lp / np.log(10.0), 300.0), k

    def features(self, observed: Sequence[int], excluded: Sequence[int], resnik: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """All of :data:`FEATURES` for one query (KB term indices, in scope) → ({name: ``[G]``}, best disease
        per gene ``[G]`` by the frequency LR, −1 = none). ``resnik``: ``{"query": [G], "disease": [G]}`` from
        :meth:`PhenotypeIC.parts`. Genes without a linked disease take their gene-level value where a
        disease-level feature is undefined."""
        n_q = max(len(observed), 1)
        lo_f, le_f, n_exact = self.disease_lr(observed, excluded, True)
        lo_b, le_b, _ = self.disease_lr(observed, excluded, False)
        pseudo = self.gene_lr(observed)
        hyper, k = self.hypergeom(observed)
        hyper_frac = k / n_q

        def fill(x: np.ndarray, alt: np.ndarray) -> np.ndarray:
            return np.where(np.isfinite(x), x, alt)

        lrf_obs, best = self.gene_best(lo_f)
        feats = {
            "res_gene": np.asarray(resnik["query"], float),
            "res_dis": np.asarray(resnik["disease"], float),
            "lrf_obs": fill(lrf_obs, pseudo),
            "lrf_all": fill(self.gene_best(lo_f + le_f)[0], pseudo),
            "lrb_obs": fill(self.gene_best(lo_b)[0], pseudo),
            "lrb_all": fill(self.gene_best(lo_b + le_b)[0], pseudo),
            "exact_frac": fill(self.gene_best(n_exact / n_q)[0], hyper_frac),
            "pseudo": pseudo,
            "hyper": hyper,
            "hyper_frac": hyper_frac,
            "log_nterms": self.log_nterms,
            "has_dis": self.has_dis.astype(float),
            "background": self.background,
        }
        return feats, best

    @staticmethod
    def logit(feats: Mapping[str, np.ndarray], coef: Mapping[str, float], residual: Residual | None = None
              ) -> np.ndarray:
        """``z = Σ coef_k · feature_k`` ``[G]``, plus ``residual(feats)`` when given (features a coefficient does
        not name are ignored; a named feature that does not exist raises ``KeyError``)."""
        z = None
        for k, w in coef.items():
            v = float(w) * feats[k]
            z = v if z is None else z + v
        z = z if z is not None else np.zeros(len(next(iter(feats.values()))))
        return z + residual(feats) if residual is not None else z

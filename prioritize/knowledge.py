"""The knowledge base behind gene prioritisation: HPO ontology, gene/disease annotations, inheritance
modes and druggability, held as compact numpy / scipy.sparse arrays.

Nothing is loaded at import time. Build one :class:`KnowledgeBase` (``KnowledgeBase.from_hpo3()``, ~2 s)
and pass it to :func:`raretarget.prioritize.rank_genes` / :class:`raretarget.prioritize.Prioritizer`.
Tests can build a tiny one from plain Python structures with the constructor.

Arrays (``T`` terms, ``G`` genes, ``D`` diseases)
-------------------------------------------------
* ``ic[T]`` – information content of each term (natural log; ``-log p(term)`` over the annotated objects
  of ``ic_kind``: OMIM diseases by default, as in hpo3).
* ``anc`` – ``T×T`` CSR boolean, ``anc[t, a] = 1`` when ``a`` is ``t`` or an ancestor of ``t``.
* ``gene_terms[G]`` – direct HPO annotations of each gene (term indices, phenotypic-abnormality subtree only).
* ``closure`` – ``G×T`` CSC boolean: the gene is annotated with the term or one of its descendants.
* ``dis_closure`` – ``D×T`` CSC boolean, the same for the diseases mapped to genes, and ``gene_dis`` – ``G×D``
  CSR row-normalised gene→disease membership (used for how *strongly* a gene carries a term: the fraction
  of its diseases that have it); ``gene_dis_member`` the same 0/1; ``dis_annot`` – ``D×T`` CSR direct
  in-scope phenotype terms of each disease (``n_dis_terms[D]`` of them).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

#: phenotypic abnormality: query terms and gene annotations outside this subtree (inheritance, onset,
#: clinical modifiers) are not used for phenotype similarity
PHENOTYPE_ROOT = "HP:0000118"

#: HPO mode-of-inheritance terms → short codes used by the variant scorer
INHERITANCE_TERMS: dict[str, tuple[str, ...]] = {
    "HP:0000007": ("AR",),
    "HP:0000006": ("AD",),
    "HP:0032113": ("AD", "AR"),     # semidominant
    "HP:0001417": ("XL",),
    "HP:0001419": ("XLR",),
    "HP:0001423": ("XLD",),
    "HP:0001427": ("MT",),
    "HP:0001450": ("YL",),
    "HP:0010984": ("DIGENIC",),
    "HP:0001428": ("SOMATIC",),
    "HP:0001442": ("SOMATIC",),
}


def default_druggability_table() -> Path:
    return Path(str(resources.files("raretarget") / "data" / "druggability.tsv.gz"))


def load_druggability(path: str | Path | None = None) -> dict[str, dict]:
    """Read ``druggability.tsv.gz`` (see ``scripts/build_druggability_table.py``) → ``{gene: row}``
    with ``n_drugs`` as int and ``max_phase`` as int or None."""
    p = Path(path) if path is not None else default_druggability_table()
    out: dict[str, dict] = {}
    with gzip.open(p, "rt", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            r = {k: (v if v != "" else None) for k, v in r.items()}
            r["n_drugs"] = int(r["n_drugs"] or 0)
            r["max_phase"] = int(r["max_phase"]) if r.get("max_phase") else None
            out[r["gene"]] = r
    return out


@dataclass
class Disease:
    id: str              # OMIM:nnnnnn or ORPHA:nnn
    name: str
    terms: tuple[str, ...]


class _HpIds(dict):
    """``H[i]`` → ``"HP:%07d" % i``, formatted on the first look-up of ``i`` and kept."""

    def __missing__(self, i: int) -> str:
        v = self[i] = f"HP:{i:07d}"
        return v


class _Rows:
    """Read-only view of a CSR matrix's rows as index arrays: ``rows[i]`` → int64 column indices of row ``i``."""

    __slots__ = ("_m",)

    def __init__(self, m: sp.csr_matrix):
        self._m = m

    def __len__(self) -> int:
        return self._m.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        m = self._m
        return m.indices[m.indptr[i]:m.indptr[i + 1]]


class KnowledgeBase:
    """Ontology + annotations for scoring genes.

    Parameters (plain Python, so tests can build a tiny one)
    ----------
    terms: ``{term_id: [parent ids]}`` (obsolete terms left out); the DAG must have a single root.
    gene_annotations: ``{gene: [term ids]}`` direct phenotype annotations.
    names: optional ``{term_id: label}``.
    ic: optional ``{term_id: information content}``; default ``-log(fraction of genes annotated with the
        term or a descendant)``.
    diseases: optional ``{gene: [Disease]}``: the gene's known diseases (OMIM/Orphanet), their terms
        (inheritance terms included) feed the ``knowledge`` score, inheritance modes and the
        "strongly annotated" weight of excluded terms.
    inheritance: optional ``{gene: {"AR", "AD", ...}}``; default derived from the diseases' (or, without
        diseases, the gene's own) annotations with :data:`INHERITANCE_TERMS`.
    druggability: optional ``{gene: row}`` as returned by :func:`load_druggability`.
    replaced_by: ``{obsolete id: replacement id or None}``.
    phenotype_root: only terms under it (inclusive) are used for phenotype similarity; ``None`` = all.
    omim_diseases: optional, every OMIM disease of the release (the phenotype model's disease universe).
    annotations: optional ``phenotype.hpoa`` path for the phenotype model's annotation frequencies.
    """

    def __init__(self, terms: Mapping[str, Sequence[str]], gene_annotations: Mapping[str, Iterable[str]], *,
                 names: Mapping[str, str] | None = None, ic: Mapping[str, float] | None = None,
                 diseases: Mapping[str, Sequence[Disease]] | None = None,
                 inheritance: Mapping[str, Iterable[str]] | None = None,
                 druggability: Mapping[str, dict] | None = None,
                 replaced_by: Mapping[str, str | None] | None = None,
                 phenotype_root: str | None = None, ic_kind: str = "custom",
                 omim_diseases: Sequence[Disease] | None = None, annotations: str | Path | None = None):
        self.term_ids: list[str] = list(terms)
        self.term_index: dict[str, int] = {t: i for i, t in enumerate(self.term_ids)}
        self.names: dict[str, str] = dict(names or {})
        self.replaced_by: dict[str, str | None] = dict(replaced_by or {})
        self.ic_kind = ic_kind
        T = len(self.term_ids)
        parents = [[self.term_index[p] for p in terms[t] if p in self.term_index] for t in self.term_ids]
        self.parents = parents
        # ancestor-or-self closure in topological order (parents before children)
        order, seen = [], np.zeros(T, bool)
        children: list[list[int]] = [[] for _ in range(T)]
        indeg = np.array([len(p) for p in parents])
        for i, ps in enumerate(parents):
            for p in ps:
                children[p].append(i)
        stack = [i for i in range(T) if indeg[i] == 0]
        while stack:
            i = stack.pop()
            order.append(i)
            for c in children[i]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    stack.append(c)
        if len(order) != T:
            raise ValueError("term graph has a cycle")
        # ancestor-or-self closure as a boolean CSR [T, T]: A = I + P + P² + … (P: term → parents), one sparse
        # product per level of the DAG (~15), with the path counts reset to 1 each step (a per-term np.unique
        # over its parents' rows took ~0.4 s of a first call)
        P = sp.csr_matrix((np.ones(sum(len(p) for p in parents)),
                           (np.repeat(np.arange(T), [len(p) for p in parents]),
                            np.fromiter((x for p in parents for x in p), np.int64))), shape=(T, T))
        P.sum_duplicates()
        P.data[:] = 1.0
        A, R = sp.identity(T, format="csr") + P, P
        for _ in range(T):
            R = R @ P
            if R.nnz == 0:
                break
            R.data[:] = 1.0
            A = A + R
        A = A.tocsr()
        A.sum_duplicates()
        A.sort_indices()
        self.anc = sp.csr_matrix((np.ones(A.nnz, bool), A.indices.astype(np.int64), A.indptr.astype(np.int64)),
                                 shape=(T, T))
        #: ``anc_list[i]``: the sorted int64 indices of term ``i``'s ancestors-or-self (rows of ``anc``)
        self.anc_list = _Rows(self.anc)
        self.children = children

        if phenotype_root is not None and phenotype_root in self.term_index:
            r = self.term_index[phenotype_root]
            self.in_scope = np.asarray(self.anc[:, r].todense()).ravel().astype(bool)
        else:
            self.in_scope = np.ones(T, bool)
        self.phenotype_root = phenotype_root

        # genes
        self.genes: list[str] = sorted(gene_annotations)
        self.gene_index: dict[str, int] = {g: i for i, g in enumerate(self.genes)}
        gt = []
        for g in self.genes:
            ix = sorted({self.term_index[t] for t in gene_annotations[g] if t in self.term_index})
            ix = np.array([i for i in ix if self.in_scope[i]], dtype=np.int64)
            gt.append(ix)
        self.gene_terms = gt
        self.closure = self._closure_matrix(gt).tocsc()
        self.n_gene_terms = np.array([len(x) for x in gt], dtype=np.float64)
        A = sp.csr_matrix((np.ones(int(self.n_gene_terms.sum())), np.concatenate(gt) if gt else np.zeros(0, int),
                           np.cumsum([0] + [len(x) for x in gt])), shape=(len(gt), T))
        self.annot_norm = sp.diags(1.0 / np.maximum(self.n_gene_terms, 1)) @ A   # rows: mean over gene terms

        if ic is None:
            n = np.asarray(self.closure.sum(axis=0)).ravel()
            G = max(len(self.genes), 1)
            self.ic = np.where(n > 0, -np.log(np.maximum(n, 1) / G), 0.0)
        else:
            self.ic = np.array([float(ic.get(t, 0.0)) for t in self.term_ids])

        # diseases
        self.diseases: dict[str, list[Disease]] = {g: list(v) for g, v in (diseases or {}).items() if v}
        dlist: list[Disease] = []
        dix: dict[str, int] = {}
        rows, cols = [], []
        for g, ds in self.diseases.items():
            gi = self.gene_index.get(g)
            if gi is None:
                continue
            for d in ds:
                if d.id not in dix:
                    dix[d.id] = len(dlist)
                    dlist.append(d)
                rows.append(gi)
                cols.append(dix[d.id])
        self.disease_list = dlist
        dterms = [np.array(sorted({self.term_index[t] for t in d.terms if t in self.term_index}), dtype=np.int64)
                  for d in dlist]
        self.dis_closure = self._closure_matrix(dterms).tocsc() if dlist else sp.csc_matrix((0, T), dtype=bool)
        M = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(self.genes), len(dlist)))
        M.sum_duplicates()
        M.data[:] = 1.0
        self.gene_dis_member = M                       # G×D 0/1 (CSR): the gene's diseases
        # direct in-scope phenotype terms per disease (D×T, CSR), for disease-level similarity
        dph = [x[self.in_scope[x]] if len(x) else x for x in dterms]
        self.n_dis_terms = np.array([len(x) for x in dph], dtype=np.float64)
        self.dis_annot = sp.csr_matrix((np.ones(int(self.n_dis_terms.sum())),
                                        np.concatenate(dph) if dph else np.zeros(0, np.int64),
                                        np.cumsum([0] + [len(x) for x in dph])), shape=(len(dph), T))
        nd = np.asarray(M.sum(axis=1)).ravel()
        self.n_gene_diseases = nd
        self.gene_dis = sp.diags(1.0 / np.maximum(nd, 1)) @ M

        # inheritance
        inh: dict[str, set[str]] = {}
        if inheritance is not None:
            inh = {g: set(v) for g, v in inheritance.items()}
        else:
            for g in set(self.genes) | set(self.diseases):
                src = [t for d in self.diseases.get(g, []) for t in d.terms] or list(gene_annotations.get(g, []))
                modes = {m for t in src for m in INHERITANCE_TERMS.get(t, ())}
                if modes:
                    inh[g] = modes
        self.inheritance = inh
        self.druggability: dict[str, dict] = dict(druggability or {})
        #: every OMIM disease of the ontology release (linked to a gene or not): the disease universe of the
        #: phenotype model; ``from_hpo3`` fills it, a hand-built KB uses its linked ``disease_list``
        self.omim_diseases: list[Disease] = list(omim_diseases or [])
        #: a ``phenotype.hpoa`` whose annotation frequencies the phenotype model reads (None: frequency 1)
        self.annotations_path: Path | None = Path(annotations) if annotations else None
        self._phenotype_model = None
        self._best_under: dict[int, dict[int, int]] = {}

    def best_term_under(self, r: int) -> dict[int, int]:
        """``{ancestor: gene r's most informative annotation under it}`` (term indices; every ancestor-or-self of
        the gene's terms; ties: the first in the gene's term order): what a matched query term's evidence names.
        Built per gene on first use from the CSR rows of :attr:`anc` as flat arrays (a sparse slice per query
        term cost ~90 % of a phenotype-only ranking) and kept: at most one small map per KB gene."""
        hit = self._best_under.get(r)
        if hit is not None:
            return hit
        gterms = np.asarray(self.gene_terms[r], dtype=np.int64)
        out: dict[int, int] = {}
        if len(gterms):
            ip, ix = self.anc.indptr, self.anc.indices
            starts = ip[gterms]
            lens = ip[gterms + 1] - starts
            anc = ix[np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))]
            row = np.repeat(np.arange(len(gterms)), lens)
            t = gterms[row]
            o = np.lexsort((row, -self.ic[t], anc))          # per ancestor: highest IC first, then term order
            a = anc[o]
            first = np.ones(len(o), bool)
            first[1:] = a[1:] != a[:-1]
            out = dict(zip(a[first].tolist(), t[o][first].tolist()))
        self._best_under[r] = out
        return out

    def phenotype_model(self, background=None):
        """The :class:`~raretarget.prioritize.phenomodel.PhenotypeModel` of this KB, built on first use (~1-2 s)
        and kept on the instance. ``background``: passed to the model when it is built (None: the packaged
        per-gene background; ``False``: none, as ``scripts/build_gene_background.py`` needs)."""
        if self._phenotype_model is None:
            from .phenomodel import PhenotypeModel, load_frequency_table

            freqs = load_frequency_table(self.annotations_path) if self.annotations_path else None
            self._phenotype_model = PhenotypeModel(self, freqs, background=background)
        return self._phenotype_model

    # ------------------------------------------------------------------ builders
    def _closure_matrix(self, term_lists: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Rows of term indices → their ancestor-or-self closure, boolean CSR ``[len(term_lists), T]``."""
        T = len(self.term_ids)
        lens = [len(ts) for ts in term_lists]
        direct = sp.csr_matrix((np.ones(sum(lens)), (np.repeat(np.arange(len(term_lists)), lens),
                                                     np.concatenate(term_lists).astype(np.int64) if sum(lens)
                                                     else np.zeros(0, np.int64))),
                               shape=(len(term_lists), T))
        C = (direct @ self.anc.astype(np.float64)).tocsr()
        C.sort_indices()
        return sp.csr_matrix((np.ones(C.nnz, bool), C.indices, C.indptr), shape=C.shape)

    @classmethod
    def from_hpo3(cls, ic_kind: str = "omim", druggability: str | Path | None | bool = None,
                  gene_table: str | Path | None = None, orpha_min_terms: int = 5,
                  annotations: str | Path | None | bool = None) -> "KnowledgeBase":
        """Build from hpo3's bundled HPO release (``pyhpo.Ontology()``) and the packaged tables.

        * gene annotations: ``Ontology.genes`` (HPO ``genes_to_phenotype``);
        * a gene's OMIM diseases: the gene's OMIM ids in ``raretarget/data/genes.tsv.gz`` (NCBI gene2omim)
          that are hpo3 OMIM diseases (exact); Orphanet diseases: those whose annotations (≥ ``orpha_min_terms``
          phenotype terms) are all among the gene's (hpo3 has no Orphanet gene links: approximate);
        * IC: hpo3's ``information_content.<ic_kind>`` (omim | orpha | gene);
        * druggability: the packaged table (``False`` to skip);
        * annotation frequencies for the phenotype model: the packaged ``phenotype.hpoa.gz`` (HPO 2025-01-16;
          ``False`` to use none). hpo3's own release (2025-11-24) gives the disease terms; a newer disease or
          term missing from the older file counts as frequency 1.
        """
        from raretarget.vocab.hpo import ontology

        Ontology = ontology()
        terms: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        ic: dict[str, float] = {}
        replaced: dict[str, str | None] = {}
        for t in Ontology:
            if t.is_obsolete:
                replaced[t.id] = t.replaced_by
                continue
            terms[t.id] = [p.id for p in t.parents]
            names[t.id] = t.name
            ic[t.id] = float(getattr(t.information_content, ic_kind))
        # integer id → "HP:nnnnnnn", formatted once per term (~600k look-ups below)
        H = _HpIds()

        from raretarget.ingest.genes import hpo_gene_annotations

        ann = hpo_gene_annotations()
        gene_ann = {g: [H[i] for i in sorted(ts)] for g, ts in ann.items()}
        # OMIM diseases per gene through NCBI gene2omim
        omim = {d.id: d for d in Ontology.omim_diseases}
        from raretarget.ingest.genes import default_table

        gpath = Path(gene_table) if gene_table else default_table()
        dis: dict[str, list[Disease]] = {}
        with gzip.open(gpath, "rt", encoding="utf-8") as f:
            head = f.readline().rstrip("\n").split("\t")
            i_sym, i_omim = head.index("symbol"), head.index("omim_ids")
            for line in f:
                p = line.rstrip("\n").split("\t")
                if p[i_sym] not in gene_ann or not p[i_omim]:
                    continue
                ds = []
                for m in p[i_omim].split("|"):
                    if m.isdigit() and int(m) in omim:
                        d = omim[int(m)]
                        ds.append(Disease(f"OMIM:{int(m)}", d.name, tuple(H[i] for i in sorted(d.hpo))))
                if ds:
                    dis[p[i_sym]] = ds
        # Orphanet: subset heuristic (phenotype terms only)
        scope_cache: dict[int, bool] = {}
        root = Ontology.get_hpo_object(PHENOTYPE_ROOT)

        def in_scope(i: int) -> bool:
            v = scope_cache.get(i)
            if v is None:
                t = Ontology.get_hpo_object(i)
                v = scope_cache[i] = (t == root) or t.child_of(root)
            return v

        orpha = []
        # hpo3 hands out its diseases and their terms as sets whose order differs between processes: sorted by
        # id, so that a gene's disease list (and the evidence naming it) is the same in every process
        for d in sorted(Ontology.orpha_diseases, key=lambda d: int(d.id)):
            ph = frozenset(i for i in d.hpo if in_scope(i))
            if len(ph) >= orpha_min_terms:
                orpha.append((d, ph))
        # genes carrying all of a disease's terms: intersect the terms' gene sets, rarest first (an inverted
        # index; testing every gene against every disease took ~2 s). Per gene the diseases keep Orphanet's order.
        genes_of: dict[int, set[str]] = {}
        for g, gs in ann.items():
            for i in gs:
                genes_of.setdefault(i, set()).add(g)
        orpha_hits: dict[str, list[Disease]] = {}
        for d, ph in orpha:
            posting = sorted((genes_of.get(i, set()) for i in ph), key=len)
            carriers = set(posting[0]).intersection(*posting[1:]) if posting else set()
            if carriers:
                dd = Disease(f"ORPHA:{d.id}", d.name, tuple(H[i] for i in sorted(d.hpo)))
                for g in carriers:
                    orpha_hits.setdefault(g, []).append(dd)
        for g in ann:
            if g in orpha_hits:
                dis.setdefault(g, []).extend(orpha_hits[g])
        drug = {} if druggability is False else load_druggability(druggability or None)
        all_omim = [Disease(f"OMIM:{d.id}", d.name, tuple(H[i] for i in sorted(d.hpo)))
                    for d in sorted(Ontology.omim_diseases, key=lambda d: int(d.id))]
        if annotations is None:
            from .phenomodel import default_annotations

            annotations = default_annotations()
        return cls(terms, gene_ann, names=names, ic=ic, diseases=dis, druggability=drug, replaced_by=replaced,
                   phenotype_root=PHENOTYPE_ROOT, ic_kind=ic_kind, omim_diseases=all_omim,
                   annotations=annotations or None)

    # ------------------------------------------------------------------ helpers
    def resolve_terms(self, ids: Iterable[str]) -> tuple[list[int], dict[str, str]]:
        """HPO ids → term indices in scope. Obsolete ids are mapped through ``replaced_by``.

        Returns (indices, problems) where problems maps each skipped or replaced input id to a reason
        (``"replaced_by HP:…"``, ``"obsolete"``, ``"unknown"``, ``"out_of_scope"``)."""
        out: list[int] = []
        notes: dict[str, str] = {}
        for raw in ids:
            t = (raw or "").strip()
            if t in self.replaced_by:
                r = self.replaced_by[t]
                if r and r in self.term_index:
                    notes[t] = f"replaced_by {r}"
                    t = r
                else:
                    notes[t] = "obsolete"
                    continue
            i = self.term_index.get(t)
            if i is None:
                notes[t] = "unknown"
                continue
            if not self.in_scope[i]:
                notes[t] = "out_of_scope"
                continue
            if i not in out:
                out.append(i)
        return out, notes

    def name(self, i: int) -> str:
        t = self.term_ids[i]
        return self.names.get(t, t)

    def term(self, hpo_id: str):
        """The id's :class:`~raretarget.vocab.hpo.HpoTerm` in this knowledge base's release (current, or obsolete
        with its replacement), None when the release does not have it (the query resolver's lookup,
        :func:`raretarget.query.spec.resolve_terms`)."""
        from raretarget.vocab.hpo import HpoTerm

        i = self.term_index.get(hpo_id)
        if i is not None:
            return HpoTerm(hpo_id, self.names.get(hpo_id, hpo_id),
                           parents=tuple(self.term_ids[p] for p in self.parents[i]))
        if hpo_id in self.replaced_by:
            return HpoTerm(hpo_id, self.names.get(hpo_id, hpo_id), True, self.replaced_by[hpo_id])
        return None

    def current(self, hpo_id: str) -> str | None:
        """The id, or its replacement when obsolete (None: unknown, or obsolete without a replacement here)."""
        t = self.term(hpo_id)
        if t is None:
            return None
        r = t.replaced_by if t.obsolete else t.id
        return r if r in self.term_index else None

    def __repr__(self) -> str:
        return (f"KnowledgeBase({len(self.term_ids)} terms, {len(self.genes)} genes, "
                f"{len(self.disease_list)} diseases, {len(self.druggability)} druggability rows)")

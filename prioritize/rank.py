"""Rank genes for one patient (or a phenotype-only question): relevance first, tractability second.

    kb = KnowledgeBase.from_hpo3()                  # once (~3-5 s)
    t = rank_genes(["HP:0001166", "HP:0000098"], excluded=["HP:0001250"], kb=kb, top=20)

Two numbers per gene, kept apart:

* ``relevance`` – how well the gene explains the query: ``softmax(z)`` over the ranked genes (sums to 1; read it
  as the model's probability that the gene is the one), with ``z`` the sum of the relevance components' logits:
  ``phenotype`` (the fitted log-linear phenotype model, :mod:`raretarget.prioritize.phenomodel`), ``variant``
  (``w·s + w_log·log(s + 0.01)``), and ``w·s`` for the precomputed ``cohort`` / ``embedding`` scores in [0, 1].
  A component without input for the query (no observed terms, no VCF, no store) is absent.
* ``tractability`` – the weighted mean of ``druggability`` and ``knowledge`` (each in [0, 1]).

``priority = relevance · (1 + β · tractability)`` (β = ``tractability.weight``, default 0.1) orders the table,
and ``score`` repeats it. The rule: a gene can pass a more relevant one only when its relevance is within a
factor ``1 + β`` of it (≥ 91 % at β = 0.1): tractability re-orders genes of similar relevance and never lifts a
clearly less relevant gene over a more relevant one. ``phenotype_ic`` (Resnik) is a display column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .knowledge import KnowledgeBase
from .scorers import Component, Query, Scorer, build_scorers


def default_config() -> dict[str, Any]:
    """``conf/prioritize/default.yaml`` is the one source of the defaults, read from the packaged ``conf/``
    (``raretarget.conf``, :mod:`raretarget.config`) as the hydra apps read it. Read on each call (no I/O at
    import); returns a fresh dict."""
    from raretarget.config import load_yaml

    cfg = load_yaml("prioritize/default.yaml")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def __getattr__(name: str) -> Any:
    # ``DEFAULT_CONFIG`` stays importable, read lazily from the packaged YAML (no file is read at import)
    if name == "DEFAULT_CONFIG":
        return default_config()
    raise AttributeError(name)

#: keys of a config that are not scorers
SETTINGS = ("tractability",)


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a prioritisation YAML (e.g. ``conf/prioritize/default.yaml``); ``None`` → :data:`DEFAULT_CONFIG`."""
    if path is None:
        return default_config()
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _merge(base: Mapping[str, Any], weights: Mapping[str, Any] | None) -> dict[str, Any]:
    """``weights`` overrides ``base``: a number replaces the weight only; a mapping is merged; components in
    ``base`` that ``weights`` does not name keep their defaults."""
    out = {k: (dict(v) if isinstance(v, Mapping) else {"weight": v}) for k, v in base.items()}
    for k, v in (weights or {}).items():
        if k.startswith("_"):
            continue
        if isinstance(v, Mapping):
            out.setdefault(k, {}).update(v)
        else:
            out.setdefault(k, {})["weight"] = v
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """``exp(z − max z) / Σ`` of a 1-D array ``[n]`` (finite for any finite ``z``)."""
    e = np.exp(z - z.max())
    return e / e.sum()


class Prioritizer:
    """Scorers built once from a config over one :class:`KnowledgeBase`; :meth:`rank` per query.

    ``config``: ``{component: weight | {"weight": w, **params}}`` merged over :data:`DEFAULT_CONFIG`
    (set a weight to 0 to drop a component)."""

    def __init__(self, kb: KnowledgeBase, config: Mapping[str, Any] | None = None, *, defaults: bool = True):
        self.kb = kb
        self.config = _merge(default_config() if defaults else {}, config)
        tr = self.config.get("tractability") or {}
        self.beta = float(tr.get("weight", 0.1))
        self.scorers: list[Scorer] = build_scorers({k: v for k, v in self.config.items() if k not in SETTINGS}, kb)

    def query(self, phenotypes: Sequence[str] = (), excluded: Sequence[str] = (), variants: pa.Table | None = None,
              extra_components: Mapping[str, Mapping[str, float]] | None = None) -> tuple[Query, dict[str, str]]:
        kb = self.kb
        obs, n1 = kb.resolve_terms(phenotypes)
        exc, n2 = kb.resolve_terms(excluded)
        exc = [e for e in exc if e not in obs]
        genes = list(kb.genes)
        seen = set(genes)
        extra_genes: list[str] = []
        if variants is not None and "gene" in variants.column_names:
            # distinct genes in file order (Arrow's unique keeps first occurrences in order): ~11k of ~22k rows
            extra_genes += [g for g in pc.unique(variants.column("gene")).to_pylist() if g]
        for d in (extra_components or {}).values():
            extra_genes += list(d)
        for g in extra_genes:
            if g not in seen:
                seen.add(g)
                genes.append(g)
        rows = np.full(len(genes), -1, dtype=np.int64)
        rows[:len(kb.genes)] = np.arange(len(kb.genes))
        q = Query(genes=genes, observed=obs, excluded=exc, variants=variants,
                  extra={k: dict(v) for k, v in (extra_components or {}).items()}, kb_rows=rows)
        return q, {**n1, **{k: f"excluded: {v}" for k, v in n2.items()}}

    def components(self, q: Query) -> list[Component]:
        return [s.score(q) for s in self.scorers]

    def combine(self, comps: Sequence[Component]) -> dict[str, np.ndarray]:
        """→ ``{"relevance", "tractability", "priority", "logit"}``, each ``[genes]`` (see the module doc)."""
        n = len(comps[0].scores) if comps else 0
        weights = {s.name: s.weight for s in self.scorers}
        z = np.zeros(n)
        for c in comps:
            if c.present and c.role == "relevance":
                z = z + (c.logit if c.logit is not None else weights.get(c.name, 0.0) * c.scores)
        tw = [(weights.get(c.name, 0.0), c.scores) for c in comps if c.present and c.role == "tractability"]
        wsum = sum(w for w, _ in tw)
        tract = sum(w * s for w, s in tw) / wsum if wsum > 0 else np.zeros(n)
        rel = softmax(z) if n else z
        return {"relevance": rel, "tractability": tract, "priority": rel * (1.0 + self.beta * tract), "logit": z}

    def rank(self, phenotypes: Sequence[str] = (), excluded: Sequence[str] = (), variants: pa.Table | None = None,
             extra_components: Mapping[str, Mapping[str, float]] | None = None, top: int | None = None,
             evidence_limit: int | None = 200, evidence_genes: Sequence[str] = ()) -> pa.Table:
        """See :func:`rank_genes`. ``evidence_limit``: evidence is built for the first N rows only (the rest get
        ``{}``; ``None`` = all rows) and for the rows of ``evidence_genes`` wherever they rank (``explain``)."""
        q, notes = self.query(phenotypes, excluded, variants, extra_components)
        comps = self.components(q)
        weights = {s.name: s.weight for s in self.scorers}
        if not any(c.present and c.role == "relevance" for c in comps):
            # never a silent ranking: say that nothing in the query could rank the genes by relevance
            notes = {**notes, "no_evidence": "no usable phenotype term, variant or cohort evidence: every gene "
                                             "is equally relevant; the order is by tractability only"}
        if variants is not None:
            vg = {g for g in (pc.unique(variants.column("gene")).to_pylist() if "gene" in variants.column_names
                              else []) if g}
            if not vg:
                notes = {**notes, "variants": "the variant table names no gene: no variant evidence"}
            else:
                unann = sorted(g for g in vg if g not in self.kb.gene_index)
                if unann:
                    notes = {**notes, "variants_unannotated_genes":
                             f"{len(unann)} of {len(vg)} variant genes have no HPO annotation (phenotype unknown)"}
        mix = self.combine(comps)
        # order: priority, then relevance, then gene name (deterministic ties)
        name_rank = pc.rank(q.gene_array(), sort_keys="ascending").to_numpy(zero_copy_only=False)
        order = np.lexsort((name_rank, -mix["relevance"], -mix["priority"]))
        if top is not None:
            order = order[:max(int(top), 0)]
        cols: dict[str, Any] = {
            "rank": pa.array(np.arange(1, len(order) + 1, dtype=np.int32)),
            "gene": q.gene_array().take(pa.array(order)),
            "score": pa.array(mix["priority"][order], pa.float64()),
            "relevance": pa.array(mix["relevance"][order], pa.float64()),
            "priority": pa.array(mix["priority"][order], pa.float64()),
            "tractability": pa.array(mix["tractability"][order], pa.float64()),
        }
        for c in comps:
            cols[c.name] = pa.array(np.where(c.present, c.scores[order], np.nan), pa.float64())
        ev = []
        for n, i in enumerate(order):
            if evidence_limit is not None and n >= evidence_limit and q.genes[i] not in evidence_genes:
                ev.append("{}")
                continue
            d = {c.name: c.evidence(int(i)) for c in comps if c.present}
            d = {k: v for k, v in d.items() if v}
            if n == 0 and notes:
                d["input_notes"] = notes
            ev.append(_dumps(d))
        cols["evidence"] = pa.array(ev, pa.string())
        t = pa.table(cols)
        meta = {"weights": json.dumps(weights), "present": json.dumps([c.name for c in comps if c.present]),
                "roles": json.dumps({c.name: c.role for c in comps}), "tractability_beta": json.dumps(self.beta),
                "input_notes": json.dumps(notes)}
        return t.replace_schema_metadata(meta)


def _dumps(d: dict) -> str:
    """One row's evidence as JSON (orjson: ~8x faster than json for 200 rows a query; NaN → null; numpy scalars
    as numbers)."""
    import orjson

    return orjson.dumps(d, default=float, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def rank_genes(phenotypes: Sequence[str], excluded: Sequence[str] = (), variants: pa.Table | None = None,
               weights: Mapping[str, Any] | None = None,
               extra_components: Mapping[str, Mapping[str, float]] | None = None, top: int | None = None, *,
               kb: KnowledgeBase, evidence_limit: int | None = 200, evidence_genes: Sequence[str] = ()) -> pa.Table:
    """Rank all genes of ``kb`` (plus genes named in ``variants`` / ``extra_components``) for one query.

    phenotypes / excluded: HPO ids observed / explicitly absent (obsolete ids are mapped via ``replaced_by``;
        unknown ones skipped and listed in the table's ``input_notes`` metadata and the first row's evidence).
    variants: the index patient's variants (the store's ``variants`` columns; at least ``gene``; uses
        ``consequence``, ``impact``, ``clinvar``, ``zygosity``, ``af``, ``hgvsc``, ``hgvsp`` when present).
    weights: ``{component: weight | {"weight": w, **params}}`` over :data:`DEFAULT_CONFIG`.
    extra_components: precomputed ``{component: {gene: score in [0, 1]}}`` (``cohort``, ``embedding``).

    Returns a table sorted by priority: ``rank`` (1 = best), ``gene``, ``score`` (= ``priority``), ``relevance``
    (softmax over the ranked genes, sums to 1), ``priority``, ``tractability`` ∈ [0, 1], one float column per
    component (NaN when the component had no input) and ``evidence`` (JSON: per component what supports the
    gene). See the module doc for the rule. Build a :class:`Prioritizer` to reuse scorers over queries.
    """
    # building the scorers costs ~60 ms (per-gene knowledge and druggability tables): keep one Prioritizer per
    # configuration on the KB instance, as the phenotype model is kept there
    key = json.dumps(weights or {}, sort_keys=True, default=str)
    cache = kb.__dict__.setdefault("_prioritizers", {})
    P = cache.get(key)
    if P is None:
        P = cache[key] = Prioritizer(kb, weights)
    return P.rank(phenotypes, excluded, variants, extra_components, top, evidence_limit, evidence_genes)

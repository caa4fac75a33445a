"""Rank genes for one patient (or a phenotype-only question) by a weighted mix of component scores.

    kb = KnowledgeBase.from_hpo3()                  # once (~2-4 s)
    t = rank_genes(["HP:0001166", "HP:0000098"], excluded=["HP:0001250"], kb=kb, top=20)

``score = Σ_c w_c·s_c / Σ_c w_c`` over the components *present* for the query (a component is present when
it has input: observed HPO terms for ``phenotype_ic``, a variant table for ``variant``, precomputed scores for
``cohort``/``embedding``; ``knowledge`` and ``druggability`` always are). Every ``s_c`` is in [0, 1], so the
score is in [0, 1] too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .knowledge import KnowledgeBase
from .scorers import Component, Query, Scorer, build_scorers

#: default weights (mirrors ``conf/prioritize/default.yaml``)
DEFAULT_CONFIG: dict[str, Any] = {
    "phenotype_ic": {"weight": 1.0, "method": "blend", "penalty": 0.0, "unannotated": 0.6},
    "variant": {"weight": 0.75, "carrier": 0.2, "unknown_mode": 0.7},
    "knowledge": {"weight": 0.1, "scale": 2.0},
    "druggability": 0.1,
    "cohort": 0.5,
    "embedding": 0.5,
}


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a prioritisation YAML (e.g. ``conf/prioritize/default.yaml``); ``None`` → :data:`DEFAULT_CONFIG`."""
    if path is None:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in DEFAULT_CONFIG.items()}
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


RANK_SCHEMA_BASE = [("rank", pa.int32()), ("gene", pa.string()), ("score", pa.float64())]


class Prioritizer:
    """Scorers built once from a config over one :class:`KnowledgeBase`; :meth:`rank` per query.

    ``config``: ``{component: weight | {"weight": w, **params}}`` merged over :data:`DEFAULT_CONFIG`
    (set a weight to 0 to drop a component)."""

    def __init__(self, kb: KnowledgeBase, config: Mapping[str, Any] | None = None, *, defaults: bool = True):
        self.kb = kb
        self.config = _merge(DEFAULT_CONFIG if defaults else {}, config)
        self.scorers: list[Scorer] = build_scorers(self.config, kb)

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
            extra_genes += [g for g in variants.column("gene").to_pylist() if g]
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

    @staticmethod
    def combine(comps: Sequence[Component], weights: Mapping[str, float]) -> np.ndarray:
        present = [c for c in comps if c.present and weights.get(c.name, 0) > 0]
        if not present:
            return np.zeros(len(comps[0].scores)) if comps else np.zeros(0)
        w = np.array([weights[c.name] for c in present])
        return (np.stack([c.scores for c in present]).T @ w) / w.sum()

    def rank(self, phenotypes: Sequence[str] = (), excluded: Sequence[str] = (), variants: pa.Table | None = None,
             extra_components: Mapping[str, Mapping[str, float]] | None = None, top: int | None = None,
             evidence_limit: int | None = 200) -> pa.Table:
        """See :func:`rank_genes`. ``evidence_limit``: evidence is built for the first N rows only (the rest get
        ``{}``; ``None`` = all rows)."""
        q, notes = self.query(phenotypes, excluded, variants, extra_components)
        comps = self.components(q)
        weights = {s.name: s.weight for s in self.scorers}
        score = self.combine(comps, weights)
        # ties: by score, then phenotype component, then gene name (deterministic)
        ph = next((c.scores for c in comps if c.name == "phenotype_ic"), np.zeros(len(score)))
        order = np.lexsort((np.array(q.genes, dtype=object).astype(str), -ph, -score))
        if top is not None:
            order = order[:top]
        cols: dict[str, Any] = {
            "rank": pa.array(np.arange(1, len(order) + 1, dtype=np.int32)),
            "gene": pa.array([q.genes[i] for i in order], pa.string()),
            "score": pa.array(score[order], pa.float64()),
        }
        for c in comps:
            cols[c.name] = pa.array(np.where(c.present, c.scores[order], np.nan), pa.float64())
        ev = []
        for n, i in enumerate(order):
            if evidence_limit is not None and n >= evidence_limit:
                ev.append("{}")
                continue
            d = {c.name: c.evidence(int(i)) for c in comps if c.present}
            d = {k: v for k, v in d.items() if v}
            if n == 0 and notes:
                d["input_notes"] = notes
            ev.append(json.dumps(d, default=float))
        cols["evidence"] = pa.array(ev, pa.string())
        t = pa.table(cols)
        meta = {"weights": json.dumps(weights), "present": json.dumps([c.name for c in comps if c.present]),
                "input_notes": json.dumps(notes)}
        return t.replace_schema_metadata(meta)


def rank_genes(phenotypes: Sequence[str], excluded: Sequence[str] = (), variants: pa.Table | None = None,
               weights: Mapping[str, Any] | None = None,
               extra_components: Mapping[str, Mapping[str, float]] | None = None, top: int | None = None, *,
               kb: KnowledgeBase, evidence_limit: int | None = 200) -> pa.Table:
    """Rank all genes of ``kb`` (plus genes named in ``variants`` / ``extra_components``) for one query.

    phenotypes / excluded: HPO ids observed / explicitly absent (obsolete ids are mapped via ``replaced_by``;
        unknown ones skipped and listed in the table's ``input_notes`` metadata and the first row's evidence).
    variants: the index patient's variants (the store's ``variants`` columns; at least ``gene``; uses
        ``consequence``, ``impact``, ``clinvar``, ``zygosity``, ``af``, ``hgvsc``, ``hgvsp`` when present).
    weights: ``{component: weight | {"weight": w, **params}}`` over :data:`DEFAULT_CONFIG`.
    extra_components: precomputed ``{component: {gene: score in [0, 1]}}`` (``cohort``, ``embedding``).

    Returns a table sorted by score: ``rank`` (1 = best), ``gene``, ``score`` ∈ [0, 1] (weighted mean of the
    present components), one float column per component (NaN when the component had no input) and ``evidence``
    (JSON: per component what supports the gene). Build a :class:`Prioritizer` to reuse scorers over queries.
    """
    return Prioritizer(kb, weights).rank(phenotypes, excluded, variants, extra_components, top, evidence_limit)

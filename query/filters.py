"""Structured filters evaluated through DuckDB on the store, combined with vector search.

A filter resolves to the set of allowed ``patient_id``s (None = no restriction); vector hits of other
patients are dropped (the search over-fetches so that k results remain where possible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from raretarget.vocab.variants import plp_sql

_OPS = {">", ">=", "<", "<=", "=", "!="}
_LOINC = re.compile(r"^\d{1,7}-\d$")


@dataclass(frozen=True)
class LabFilter:
    """``loinc`` value compared in the canonical unit, e.g. LabFilter("2157-6", ">", 1000) for CK > 1000 U/L."""

    loinc: str
    op: str
    value: float


def where_patients(sql, where: str, table: str = "patients"):
    """``patient_id`` of ``table`` rows matching the predicate ``where``; ``sql`` is ``Engine.sql`` (or an
    Engine). Raises ``raretarget.safe_sql.QueryError`` (a ValueError) for anything but one expression."""
    eng = getattr(sql, "__self__", sql)
    if not hasattr(eng, "select_where"):
        raise ValueError("a where= predicate needs Engine.sql (the store's read-only connection)")
    return eng.select_where(table, where, ["patient_id"])


def allowed_patients(sql, where: str | None = None, genes: Sequence[str] | None = None,
                     pathogenic_only: bool = False, labs: Iterable[LabFilter | tuple] | None = None) -> set[str] | None:
    """Patients passing every given filter; ``sql`` is ``Engine.sql``.

    ``where``: a SQL predicate over the ``patients`` table (e.g. ``"sex = 'female' and birth_year > 1990"``),
    parsed as one SQL expression and run on the store's read-only connection
    (:meth:`raretarget.Engine.select_where`, :mod:`raretarget.safe_sql`): anything but an expression is refused.
    ``genes``: patients carrying a variant in any of these genes (``pathogenic_only``: ClinVar P/LP).
    ``labs``: patients with at least one observation satisfying each (loinc, op, value), canonical units.
    """
    sets: list[set[str]] = []
    if where:
        t = where_patients(sql, where)
        sets.append(set(t.column(0).to_pylist()))
    if genes:
        genes = [str(g) for g in genes]
        cond = f" and {plp_sql('clinvar')}" if pathogenic_only else ""
        t = sql(f"select distinct patient_id from variants where gene in (select unnest(?)) {cond}", [genes])
        sets.append(set(t.column(0).to_pylist()))
    for lab in labs or []:
        lab = lab if isinstance(lab, LabFilter) else LabFilter(*lab)
        if lab.op not in _OPS or not _LOINC.match(lab.loinc):
            raise ValueError(f"bad lab filter {lab}")
        t = sql(f"select distinct patient_id from observations where loinc = ? and value {lab.op} ?",
                [lab.loinc, float(lab.value)])
        sets.append(set(t.column(0).to_pylist()))
    if not sets:
        return None
    out = sets[0]
    for s in sets[1:]:
        out &= s
    out.discard(None)
    return out

"""``source_ref`` prefixes: the one place that builds and parses ``gene:<symbol>`` / ``patient:<id>``."""

from __future__ import annotations

GENE_PREFIX = "gene:"
PATIENT_PREFIX = "patient:"


def gene_ref(symbol: str) -> str:
    """Gene symbol → its ``source_ref`` (``gene:FBN1``)."""
    return GENE_PREFIX + symbol


def gene_of_ref(ref: str | None) -> str | None:
    """``gene:FBN1`` → ``FBN1``; ``None`` for anything that is not a gene ref."""
    if ref and ref.startswith(GENE_PREFIX):
        return ref[len(GENE_PREFIX):] or None
    return None


def patient_ref(patient_id: str) -> str:
    """Patient id → the key its record id is derived from (``patient:<id>``)."""
    return PATIENT_PREFIX + patient_id

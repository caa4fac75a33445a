"""Modality names: one set.

The store and every result use ``note`` / ``image`` / ``labs`` / ``variants`` (plus ``patient``, the mean of a
patient's modality vectors, and ``gene``, a gene of the variant tower's vocabulary). Encoder towers keep their
registry names; the text tower is ``text`` and its vectors are ``note`` vectors.
"""

from __future__ import annotations

#: per-record modalities stored in ``embeddings`` and searched, in display order
RECORD_MODALITIES: tuple[str, ...] = ("note", "image", "labs", "variants")
#: every modality a search result can carry
RESULT_MODALITIES: tuple[str, ...] = RECORD_MODALITIES + ("patient", "gene")
#: encoder tower name → modality name in the store / results
ENCODER_TO_MODALITY: dict[str, str] = {"text": "note", "image": "image", "labs": "labs", "variants": "variants",
                                       "gene": "gene"}


def modality_of(encoder: str) -> str:
    """Encoder tower name (``text``) → store / result modality name (``note``); other names unchanged."""
    return ENCODER_TO_MODALITY.get(encoder, encoder)

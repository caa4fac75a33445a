"""hpo3's HPO ontology (``pyhpo.Ontology``), set up in one place.

``pyhpo.Ontology`` is a process-wide object of the hpo3 package; building it (``Ontology()``) parses hpo3's
bundled release (~1 s). :func:`ontology` builds it on the first call in a process and returns it; every module
that needs hpo3's graph, genes or diseases calls this instead of building it itself. Importing this module
imports nothing heavy.

The packaged ``hp.obo`` (labels, synonyms, obsolete → replaced_by, SNOMED cross-references) is read separately by
:class:`raretarget.ingest.phenotypes.PhenotypeMapper`; it is an older release (2025-01-16) than hpo3's, so an id it
does not know is looked up in hpo3's (:func:`release_term`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

_HP_ID = re.compile(r"HP:(\d{7})")


class HpoTerm(NamedTuple):
    """What an id lookup gives (:meth:`raretarget.prioritize.knowledge.KnowledgeBase.term`, :func:`release_term`):
    the id, its label, whether it is obsolete, the id that replaces it (None: none) and its parents' ids."""

    id: str
    name: str
    obsolete: bool = False
    replaced_by: str | None = None
    parents: tuple[str, ...] = ()


def ontology():
    """hpo3's ``Ontology`` (built on first use in this process)."""
    from pyhpo import Ontology

    try:
        len(Ontology.genes)
    except (NameError, RuntimeError):        # not built yet in this process
        Ontology()
    return Ontology


def release_term(hpo_id: str) -> HpoTerm | None:
    """``HP:nnnnnnn`` → its :class:`HpoTerm` in hpo3's release (current or obsolete), None when the release does
    not have it or the id is not of that form. Builds hpo3's ontology on first use (~1 s)."""
    m = _HP_ID.fullmatch(hpo_id or "")
    if m is None:
        return None
    try:
        t = ontology().hpo(int(m.group(1)))
    except (KeyError, IndexError, ValueError):
        return None
    return HpoTerm(t.id, t.name, bool(t.is_obsolete), t.replaced_by or None, tuple(p.id for p in t.parents))

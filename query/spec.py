"""The one query resolver: free text, HPO terms, a GA4GH Phenopacket, a patient or a DICOM image → :class:`QuerySpec`.

``Engine.search``, ``Engine.rank_targets`` / ``explain`` (:mod:`raretarget.prioritize.targets`) and batch ranking
(:mod:`raretarget.prioritize.batch`) all resolve their keywords here, so a query means the same everywhere.

HPO terms (the one rule, for every caller)
------------------------------------------
Each id given (``phenotypes``, ``excluded``, or read from the Phenopacket's ``phenotypicFeatures``) is looked
up in an HPO release (``ontology``): a ranking looks ids up in its knowledge base (hpo3's release, the one whose
annotations it ranks with: :meth:`raretarget.prioritize.knowledge.KnowledgeBase.term`), a search in the packaged
hp.obo with hpo3's release for ids newer than it (:class:`raretarget.ingest.phenotypes.PhenotypeMapper`):

* a current id is kept;
* an obsolete id with a ``replaced_by`` term is replaced by it (note ``"replaced_by HP:..."``);
* an obsolete id without replacement, or an id the release does not know, is dropped (note
  ``"obsolete, no replacement: skipped"`` / ``"unknown HPO id, skipped"``).

``QuerySpec.notes`` (``{id as given: why}``) lists every replaced or dropped id. A search needs a query vector:
when the phenotype form is left with no observed term it raises ``ValueError`` naming the dropped ids
(:meth:`QuerySpec.require_searchable`); otherwise a search result carries the notes in its schema metadata
(``query_notes``, JSON). A ranking always returns its table, with the notes in every row's evidence
(``query_notes``) and ``no_evidence`` when nothing usable is left: never a silent empty ranking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

#: the query forms, in the order they are named in messages
FORMS = ("text", "phenotypes", "phenopacket", "patient", "image")

UNKNOWN = "unknown HPO id, skipped"
OBSOLETE = "obsolete, no replacement: skipped"


@dataclass(frozen=True)
class QuerySpec:
    """A resolved query. ``forms``: the forms given (``text`` ... ``image``); ``observed`` / ``excluded``: current
    HPO ids (phenotypes or Phenopacket form), in the order given; ``notes``: ``{id as given: why replaced or
    dropped}``; ``phenopacket``: the parsed Phenopacket (``ParsedPhenopacket``) or None."""

    forms: tuple[str, ...] = ()
    text: str | None = None
    observed: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    patient: str | None = None
    image: str | os.PathLike | None = None
    phenopacket: Any = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def form(self) -> str | None:
        """The single form given, or None when several (or none) were given."""
        return self.forms[0] if len(self.forms) == 1 else None

    @classmethod
    def resolve(cls, query: str | None = None, *, phenotypes: Sequence[str] | None = None,
                excluded: Sequence[str] | None = (), phenopacket=None, patient: str | None = None, image=None,
                ontology) -> "QuerySpec":
        """Resolve the keywords of ``Engine.search`` / ``rank_targets`` (see module doc for the HPO rule).
        ``ontology``: what the ids are looked up in — anything with ``term(id)`` and ``current(id)`` (a
        :class:`~raretarget.ingest.phenotypes.PhenotypeMapper`, a
        :class:`~raretarget.prioritize.knowledge.KnowledgeBase`), or a callable returning one (called only when
        there are HPO ids)."""
        forms = given_forms(query, phenotypes=phenotypes, phenopacket=phenopacket, patient=patient, image=image)
        notes: dict[str, str] = {}
        pp = None
        obs_in, exc_in = list(phenotypes or ()), list(excluded or ())
        if phenopacket is not None:
            from .phenopacket import parse_phenopacket

            pp = parse_phenopacket(phenopacket)
            obs_in, exc_in = list(pp.observed), list(pp.excluded)       # its terms are the query's terms
        if (obs_in or exc_in) and callable(ontology) and not hasattr(ontology, "term"):
            ontology = ontology()           # built only when a query names terms
        obs = resolve_terms(obs_in, ontology, notes)
        exc = resolve_terms(exc_in, ontology, notes)
        return cls(forms, query, tuple(obs), tuple(exc), patient, image, pp, notes)

    def dropped(self) -> str:
        """``"HP:x (why), ..."`` of the ids dropped by the HPO rule ("" when none), for error messages."""
        return ", ".join(f"{t} ({why})" for t, why in self.notes.items() if "skipped" in why)

    def require_searchable(self) -> None:
        """A phenotype / Phenopacket query with no observed term left has no vector: ValueError naming why."""
        if self.form in ("phenotypes", "phenopacket") and not self.observed:
            dropped = self.dropped()
            what = "the Phenopacket has" if self.form == "phenopacket" else "the query has"
            raise ValueError(f"{what} no known observed HPO term"
                             + (f"; unknown HPO term(s) dropped: {dropped}" if dropped else ""))

    def phenotype_text(self, ontology) -> str:
        """The phenotype profile as the text tower's input (:func:`raretarget.query.search.phenotype_text`)."""
        from .search import phenotype_text

        return phenotype_text(self.observed, self.excluded, ontology)

    def query_text(self, ontology) -> str:
        """What the text tower encodes: the free text when given, else the phenotype profile."""
        return self.text if self.text is not None else self.phenotype_text(ontology)


def given_forms(query=None, *, phenotypes=None, phenopacket=None, patient=None, image=None, **_) -> tuple[str, ...]:
    """The query forms given (not None), in :data:`FORMS` order; nothing is parsed."""
    return tuple(name for name, v in zip(FORMS, (query, phenotypes, phenopacket, patient, image)) if v is not None)


def require_one_form(query=None, **forms) -> str:
    """The form of a search: exactly one must be given (ValueError otherwise); checked before anything is read."""
    given = given_forms(query, **forms)
    if len(given) != 1:
        raise ValueError("give exactly one of: query text, phenotypes, phenopacket, patient, image")
    return given[0]


def resolve_terms(terms: Sequence[str], ontology, notes: dict[str, str] | None = None) -> list[str]:
    """HPO ids → current ids by the module's rule; replaced and dropped ids are written into ``notes``."""
    notes = {} if notes is None else notes
    out = []
    for t in terms:
        term = ontology.term(t)
        if term is None:
            notes[t] = UNKNOWN
        elif term.obsolete:
            if term.replaced_by and ontology.current(t):
                notes[t] = f"replaced_by {term.replaced_by}"
                out.append(term.replaced_by)
            else:
                notes[t] = OBSOLETE
        else:
            out.append(term.id)
    return out

"""Condition codes → HPO terms, from the HPO's own cross-references.

The packaged ``hp.obo.gz`` (HPO 2025-01-16, unmodified) carries ``xref: SNOMEDCT_US:<code>`` and
``xref: UMLS:<cui>`` lines; a SNOMED CT coded Condition maps to the HPO term(s) that cite its code.
Where no xref exists, an exact (case-insensitive) match of the display text, without SNOMED's
semantic tag ("(disorder)", "(finding)"), against HPO labels and exact synonyms is used. HPO-coded
conditions pass through (obsolete ids are replaced by their ``replaced_by`` term); an id newer than the packaged
file is looked up in hpo3's release (:func:`raretarget.vocab.hpo.release_term`), so a current term is never dropped
for being newer than 2025-01-16.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

HPO_SYSTEMS = {"http://human-phenotype-ontology.org", "http://purl.obolibrary.org/obo/hp.owl",
               "https://hpo.jax.org", "http://purl.obolibrary.org/obo/hp.obo", "hpo", "HPO"}
SNOMED = "http://snomed.info/sct"
_TAG = re.compile(r"\s*\((?:disorder|finding|morphologic abnormality|situation|observable entity|procedure)\)\s*$", re.I)
_SYN = re.compile(r'^synonym: "(.*)" (EXACT|RELATED|BROAD|NARROW)')


@dataclass
class Term:
    id: str
    name: str
    synonyms: list[str] = field(default_factory=list)       # EXACT synonyms
    other_synonyms: list[str] = field(default_factory=list)  # RELATED/BROAD/NARROW
    parents: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)
    obsolete: bool = False
    replaced_by: str | None = None


def load_obo(path: str | Path | None = None) -> tuple[dict[str, Term], str]:
    """Parse hp.obo(.gz) → ({id: Term}, data-version). Default: the packaged HPO 2025-01-16."""
    if path is None:
        ref = resources.files("raretarget").joinpath("data/hp.obo.gz")
        raw = ref.read_bytes()
        text = gzip.decompress(raw).decode("utf-8")
    else:
        p = Path(path)
        text = (gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")).read()
    terms: dict[str, Term] = {}
    version = ""
    cur: Term | None = None
    in_term = False
    for line in text.splitlines():
        if line.startswith("["):
            in_term = line.strip() == "[Term]"
            cur = None
            continue
        if not in_term:
            if line.startswith("data-version:"):
                version = line.split(":", 1)[1].strip()
            continue
        if line.startswith("id: "):
            cur = Term(line[4:].strip(), "")
            terms[cur.id] = cur
        elif cur is None:
            continue
        elif line.startswith("name: "):
            cur.name = line[6:].strip()
        elif line.startswith("synonym: "):
            m = _SYN.match(line)
            if m:
                (cur.synonyms if m.group(2) == "EXACT" else cur.other_synonyms).append(m.group(1))
        elif line.startswith("is_a: "):
            cur.parents.append(line[6:].split("!")[0].strip())
        elif line.startswith("xref: "):
            cur.xrefs.append(line[6:].split(" ")[0].strip())
        elif line.startswith("is_obsolete: true"):
            cur.obsolete = True
        elif line.startswith("replaced_by: "):
            cur.replaced_by = line[13:].strip()
    return terms, version


class PhenotypeMapper:
    """(system, code, display) → (HPO id, how) with how in source|xref|label, or (None, None)."""

    def __init__(self, obo_path: str | Path | None = None):
        self.terms, self.version = load_obo(obo_path)
        self.by_snomed: dict[str, list[str]] = {}
        self.by_umls: dict[str, list[str]] = {}
        self.by_label: dict[str, str] = {}
        self._newer: dict[str, object] = {}     # ids the packaged file lacks → hpo3's term (or None), see term()
        for t in self.terms.values():
            if t.obsolete:
                continue
            for x in t.xrefs:
                if x.startswith("SNOMEDCT_US:"):
                    self.by_snomed.setdefault(x[12:], []).append(t.id)
                elif x.startswith("UMLS:"):
                    self.by_umls.setdefault(x[5:], []).append(t.id)
            for label in [t.name, *t.synonyms]:
                self.by_label.setdefault(label.lower(), t.id)

    def term(self, hpo_id: str):
        """The id's term (:class:`Term` of the packaged file, else hpo3's :class:`~raretarget.vocab.hpo.HpoTerm`;
        both have ``id``, ``name``, ``obsolete``, ``replaced_by``), None when neither release has it."""
        t = self.terms.get(hpo_id)
        if t is None:
            if hpo_id not in self._newer:
                from raretarget.vocab.hpo import release_term

                self._newer[hpo_id] = release_term(hpo_id)
            t = self._newer[hpo_id]
        return t

    def current(self, hpo_id: str) -> str | None:
        t = self.term(hpo_id)
        if t is None:
            return None
        if t.obsolete:
            return t.replaced_by
        return t.id

    def map(self, system: str | None, code: str | None, display: str | None) -> tuple[str | None, str | None]:
        if code and (system in HPO_SYSTEMS or code.startswith("HP:")):
            return self.current(code), ("source" if self.current(code) else None)
        if code and system == SNOMED:
            hits = self.by_snomed.get(code)
            if hits:
                return sorted(hits)[0], "xref"
        if code and system and "umls" in system.lower():
            hits = self.by_umls.get(code)
            if hits:
                return sorted(hits)[0], "xref"
        if display:
            hit = self.by_label.get(_TAG.sub("", display).strip().lower())
            if hit:
                return hit, "label"
        return None, None

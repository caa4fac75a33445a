"""De-identification of free text and collection of a patient's own identifiers.

Two layers, both applied before anything is written:

1. the patient's own identifiers (names, maiden name, address parts, phone, e-mail, identifier values
   such as SSN/MRN/driver's licence/passport, birth date in common spellings) collected from the FHIR
   Patient resource by :func:`patient_phi_terms` and removed wherever they occur;
2. patterns that look like PHI whoever they belong to: dates, phone numbers, e-mail addresses, SSNs,
   URLs, street addresses, ZIP codes, MRN-like ``MRN: 123`` runs.

Replacements are placeholders (``[PHI]`` for own identifiers, ``[DATE]``, ``[PHONE]`` ...), so the clinical text keeps its shape.
"""

from __future__ import annotations

import re
from typing import Iterable

_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"

_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    (re.compile(r"\bhttps?://\S+", re.I), "[URL]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[SSN]"),
    (re.compile(r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"), "[PHONE]"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"), "[DATE]"),
    (re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"), "[DATE]"),
    (re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.I), "[DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}\b", re.I), "[DATE]"),
    (re.compile(r"\b(?:MRN|medical record(?: number)?|record no\.?|acct|account)\s*[:#]?\s*[A-Z0-9-]{4,}\b", re.I), "[ID]"),
    (re.compile(r"\b\d{1,6}\s+(?:[A-Z][a-z0-9]*\s){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Suite)\b\.?(?:\s+(?:Unit|Apt|Suite)\s+\w+)?"), "[ADDRESS]"),
    (re.compile(r"\b\d{5}(?:-\d{4})?\b(?=\s*(?:$|[,.;)\n]))"), "[ZIP]"),
]

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'.-]*")


def patient_phi_terms(patient: dict) -> list[str]:
    """Identifying strings of one FHIR Patient resource (as a dict), longest first.

    Names (given, family, prefix/suffix excluded), mother's maiden name, address lines/city/postal
    code, telecom values, every identifier value, and the birth date in ISO/US spellings.
    """
    terms: set[str] = set()

    def add(v):
        if isinstance(v, str) and len(v.strip()) >= 2:
            terms.add(v.strip())

    for name in patient.get("name") or []:
        for g in name.get("given") or []:
            add(g)
        add(name.get("family"))
        add(name.get("text"))
        if name.get("given") and name.get("family"):
            add(" ".join(name["given"]) + " " + name["family"])
    for addr in patient.get("address") or []:
        for line in addr.get("line") or []:
            add(line)
        add(addr.get("city"))
        add(addr.get("postalCode"))
        add(addr.get("text"))
    for t in patient.get("telecom") or []:
        add(t.get("value"))
    for ident in patient.get("identifier") or []:
        add(ident.get("value"))
    add(patient.get("id"))
    for ext in patient.get("extension") or []:
        url = ext.get("url", "")
        if url.endswith("patient-mothersMaidenName"):
            add(ext.get("valueString"))
            for part in (ext.get("valueString") or "").split():
                add(part)
        elif url.endswith("patient-birthPlace"):
            add((ext.get("valueAddress") or {}).get("city"))
    bd = patient.get("birthDate")
    if isinstance(bd, str) and len(bd) == 10:
        y, m, d = bd.split("-")
        add(bd)
        add(f"{int(m)}/{int(d)}/{y}")
        add(f"{m}/{d}/{y}")
    # single-letter or very common short tokens would wreck the text; keep terms of >= 2 chars
    return sorted(terms, key=lambda t: (-len(t), t))      # ties by text: the same list in every process


def compile_terms(terms: Iterable[str]) -> re.Pattern | None:
    """One alternation regex for a patient's identifiers (word-bounded, case-insensitive)."""
    terms = sorted({t for t in terms if t and len(t) >= 2}, key=lambda t: (-len(t), t))
    if not terms:
        return None
    return re.compile(r"(?<![\w])(?:" + "|".join(re.escape(t) for t in terms) + r")(?![\w])", re.I)


def scrub_text(text: str, own: re.Pattern | None = None) -> str:
    """Remove the patient's own identifiers (``own`` from :func:`compile_terms`) and PHI-like patterns."""
    if own is not None:
        text = own.sub("[PHI]", text)
    for pat, repl in _PATTERNS:
        text = pat.sub(repl, text)
    return text

"""Deterministic synthetic multimodal rare-disease cohort with known answers.

``generate(out, n_patients=50, seed=0, ...)`` writes::

    out/fhir/<patient-id>.json      FHIR R4 transaction Bundles (or, with fmt="ndjson", Bulk NDJSON
                                    files Patient.ndjson, Condition.ndjson, Observation.ndjson,
                                    DocumentReference.ndjson, ImagingStudy.ndjson)
    out/dicom/<patient-id>/<SOPInstanceUID>.dcm
                                    DICOM (Explicit VR Little Endian, MONOCHROME2, 16-bit unsigned
                                    stored values; real value = stored * RescaleSlope + RescaleIntercept)
    out/vcf/cohort.vcf.gz           one multi-sample VCF 4.2, BGZF-compressed (a valid gzip file); above
                                    ``vcf_samples_per_file`` people, one such file per block of that many
                                    samples (cohort.00000.vcf.gz, ...: a joint VCF of everybody is sites ×
                                    samples, and its text alone was 3 GB at 30k people);
                                    sample names = FHIR Patient.id; POS is 1-based (VCF convention)
    out/vcf/cohort.vcf.gz.tbi       its tabix index (written in pure Python)
    out/.answer_key/truth.json      the answers (diseases, each patient's disease/gene/variants/HPO), in a
                                    hidden folder: ingesting the whole cohort folder skips it (listed as a
                                    hidden file) instead of quarantining it as a bad FHIR record.
                                    :func:`truth_path` / :func:`read_truth` find it (and the former
                                    ``out/truth.json`` of cohorts written before).

Sources of the biology
----------------------
* Diseases, their phenotype terms and their gene come from the HPO annotations bundled with ``hpo3``
  (import name ``pyhpo``; HPO release 2025-11-24). ``hpo3`` does not expose disease→gene links, so a
  gene counts as associated with a disease when the gene's HPO annotation set contains every term
  annotated to the disease (the HPO gene annotations are the union of the annotations of the gene's
  diseases). Eligible diseases: exactly one such gene, exactly one clear inheritance mode
  (HP:0000007 AR, HP:0000006 AD, HP:0001417/HP:0001419/HP:0001423 X-linked) consistent with the gene's
  chromosome (X-linked ↔ chrX, AR/AD ↔ autosome), and ≥ 8 terms under *Phenotypic abnormality*.
* ``hpo3`` does not expose annotation frequencies, so each (disease, term) pair gets a deterministic
  inclusion probability drawn once per cohort: ``p = 0.35 + 0.6 * Beta(2, 1.5)`` (range 0.35–0.95);
  every affected patient still shows at least ``min(5, n_terms)`` disease terms.
* Labels, synonyms and SNOMED CT cross-references (``xref: SNOMEDCT_US:…``) come from the packaged
  ``raretarget/data/hp.obo.gz`` (HPO 2025-01-16). Terms newer than that file keep their ``pyhpo`` label
  and have no synonyms / SNOMED coding.
* Lab LOINC codes, canonical units, reference ranges and molar masses come from
  ``raretarget/data/lab_units.csv``; disease-linked lab abnormalities follow :data:`LAB_TERMS`
  (a term or any descendant of it in the patient's phenotype pushes that lab out of range).
* Gene chromosomes come from ``raretarget/data/genes.tsv.gz`` when present (else a stable hash of the
  symbol picks an autosome). Gene positions are fake but stable (hash of the symbol), GRCh38 contig
  lengths bound them.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, ...])`` streams keyed by
fixed integers; identifiers and UIDs come from BLAKE2b of (seed, parts); dates are derived from the
seed; nothing reads the wall clock, so two runs with the same arguments give byte-identical files.

All people, names, identifiers (MRN, SSN 999-xx-xxxx, phone numbers, addresses) are fake.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import gzip
import hashlib
import json
import struct
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["generate", "LAB_TERMS", "COMORBIDITIES", "PATTERNS"]

HPO_SYSTEM = "http://human-phenotype-ontology.org"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"

INHERITANCE = {7: "AR", 6: "AD", 1417: "XL", 1419: "XLR", 1423: "XLD"}
PHENOTYPIC_ABNORMALITY = 118

#: HPO term → [(LOINC, direction)] for lab phenotypes; applies to the term and all its descendants.
LAB_TERMS: dict[str, list[tuple[str, str]]] = {
    "HP:0003236": [("2157-6", "high")],     # elevated creatine kinase
    "HP:0003128": [("2524-7", "high")],     # lactic acidosis
    "HP:0001987": [("16362-6", "high")],    # hyperammonemia
    "HP:0004923": [("29573-3", "high")],    # hyperphenylalaninemia
    "HP:0002155": [("2571-8", "high")],     # hypertriglyceridemia
    "HP:0003124": [("2093-3", "high")],     # hypercholesterolemia
    "HP:0001943": [("2339-0", "low")],      # hypoglycemia
    "HP:0003074": [("2339-0", "high")],     # hyperglycemia
    "HP:0002149": [("3084-1", "high")],     # hyperuricemia
    "HP:0001903": [("718-7", "low")],       # anemia
    "HP:0001873": [("777-3", "low")],       # thrombocytopenia
    "HP:0002910": [("1742-6", "high"), ("1920-8", "high")],  # elevated transaminases
    "HP:0003259": [("2160-0", "high")],     # elevated creatinine
    "HP:0002904": [("1975-2", "high")],     # hyperbilirubinemia
    "HP:0001882": [("6690-2", "low")],      # leukopenia
    "HP:0002902": [("2951-2", "low")],      # hyponatremia
    "HP:0002900": [("2823-3", "low")],      # hypokalemia
    "HP:0002901": [("17861-6", "low")],     # hypocalcemia
    "HP:0003072": [("17861-6", "high")],    # hypercalcemia
}

#: the lab panel every patient gets (one draw each at the lab encounter)
LAB_PANEL = ["2339-0", "2160-0", "3094-0", "2093-3", "2571-8", "17861-6", "2951-2", "2823-3", "1975-2",
             "3084-1", "2157-6", "1742-6", "1920-8", "2524-7", "16362-6", "29573-3", "718-7", "777-3",
             "6690-2", "4548-4"]
VITALS = ["8302-2", "29463-7", "39156-5", "8480-6", "8462-4", "8867-4"]

#: Synthea-like comorbidities: SNOMED code, display, words for notes, lab/vital effects
COMORBIDITIES = [
    ("38341003", "Hypertensive disorder, systemic arterial (disorder)", "hypertension",
     [("8480-6", "high"), ("8462-4", "high")]),
    ("44054006", "Diabetes mellitus type 2 (disorder)", "type 2 diabetes mellitus",
     [("2339-0", "high"), ("4548-4", "high")]),
    ("195967001", "Asthma (disorder)", "asthma", []),
    ("162864005", "Body mass index 30+ - obesity (finding)", "obesity", [("39156-5", "high")]),
    ("55822004", "Hyperlipidemia (disorder)", "hyperlipidemia", [("2093-3", "high"), ("2571-8", "high")]),
    ("40055000", "Chronic sinusitis (disorder)", "chronic sinusitis", []),
    ("35489007", "Depressive disorder (disorder)", "depression", []),
]

_PEDIATRIC_COMORB = {"195967001", "162864005", "40055000"}

#: per-disease imaging patterns; controls get "none"
PATTERNS = ["blob", "ring", "streaks", "texture"]
#: (body site SNOMED code, display, DICOM BodyPartExamined, modality)
BODY_SITES = [("12738006", "Brain structure", "BRAIN", "MR"), ("51185008", "Thoracic structure", "CHEST", "CT"),
              ("818983003", "Abdomen", "ABDOMEN", "CT"), ("68367000", "Thigh structure", "THIGH", "MR")]
SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}

CONTIGS = [("1", 248956422), ("2", 242193529), ("3", 198295559), ("4", 190214555), ("5", 181538259),
           ("6", 170805979), ("7", 159345973), ("8", 145138636), ("9", 138394717), ("10", 133797422),
           ("11", 135086622), ("12", 133275309), ("13", 114364328), ("14", 107043718), ("15", 101991189),
           ("16", 90338345), ("17", 83257441), ("18", 80373285), ("19", 58617616), ("20", 64444167),
           ("21", 46709983), ("22", 50818468), ("X", 156040895), ("Y", 57227415), ("MT", 16569)]
CSQ_FORMAT = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|HGVSc|HGVSp|CANONICAL|gnomADe_AF|CLIN_SIG"

_GIVEN_M = ["Al", "Ben", "Car", "Dan", "Ed", "Fer", "Gus", "Hal", "Ivo", "Jon", "Ken", "Leo", "Mar", "Nil", "Os"]
_GIVEN_F = ["Ada", "Bea", "Cla", "Dor", "Ela", "Fio", "Gre", "Han", "Ine", "Jul", "Kat", "Lia", "Mia", "Nora", "Ola"]
_GIVEN_END_M = ["bert", "ric", "vin", "mon", "ton", "rik", "do", "las"]
_GIVEN_END_F = ["na", "ra", "lia", "bel", "nette", "rie", "dys", "mina"]
_FAM_A = ["Ash", "Bran", "Cor", "Dal", "Els", "Fen", "Gar", "Hol", "Kin", "Lan", "Mor", "Nor", "Pem", "Rad", "Stan",
          "Tor", "Wex", "Yar"]
_FAM_B = ["ford", "well", "by", "ton", "wick", "more", "ley", "stead", "bridge", "field", "worth", "gate"]
_CITY_A = ["Oak", "Maple", "River", "Stone", "Cedar", "Lake", "Pine", "Elm", "Silver", "Fair"]
_CITY_B = ["dale", "ton", " Falls", "ville", "port", " Springs", "field", "view"]
_STREETS = ["Main St", "Oak Ave", "Hill Rd", "Park Blvd", "Elm St", "Lakeview Dr", "Mill Ln", "Church St"]
_STATES = ["MA", "NY", "CA", "TX", "OH", "WA", "IL", "GA", "MN", "CO"]

_SOCIAL = [
    "Lives with family and attends school regularly.", "Never smoker; no alcohol or recreational drug use.",
    "Works part time in retail.", "Social history is otherwise unremarkable.",
    "Immunizations are up to date per caregiver report.", "No recent travel or sick contacts.",
    "Diet is varied; sleeps about eight hours a night.", "Exercises twice a week.",
]
_FAMILY = ["Family history is notable for hypertension in a grandparent.", "Parents are non-consanguineous.",
           "No known family history of similar problems.", "A maternal aunt has asthma.",
           "Family history is otherwise noncontributory."]
_NEG_TEMPLATES = ["No {x}.", "Denies {x}.", "Negative for {x}.", "There is no evidence of {x}.",
                  "{X} was ruled out.", "Without {x}."]


# ---- small helpers --------------------------------------------------------------------------------

def _digest(seed: int, *parts) -> bytes:
    return hashlib.blake2b(repr((int(seed),) + tuple(parts)).encode(), digest_size=16).digest()


def _uuid(seed: int, *parts) -> str:
    return str(uuid.UUID(bytes=_digest(seed, *parts), version=4))


def _dicom_uid(seed: int, *parts) -> str:
    """A 2.25.<128-bit integer> UID (ISO/IEC 9834-8 form), stable for (seed, parts)."""
    return "2.25." + str(int.from_bytes(_digest(seed, "uid", *parts), "big") >> 1)


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


def _hp(i: int) -> str:
    return f"HP:{int(i):07d}"


def _sig(v: float, n: int = 4) -> float:
    return float(f"{v:.{n}g}")


def _date(d: _dt.date) -> str:
    return d.isoformat()


# ---- ontology / tables ----------------------------------------------------------------------------

@dataclass
class _OboTerm:
    name: str
    exact: list = field(default_factory=list)        # EXACT synonyms
    other: list = field(default_factory=list)        # RELATED / BROAD / NARROW synonyms
    snomed: list = field(default_factory=list)

    @property
    def synonyms(self) -> list:
        return self.exact + self.other


@functools.lru_cache(maxsize=4)
def load_obo_terms(path: str | None = None) -> tuple[dict[str, _OboTerm], str]:
    """Labels, synonyms (EXACT first) and SNOMEDCT_US xrefs from hp.obo(.gz) → ({HP id: term}, version).

    Parsed by :func:`raretarget.ingest.phenotypes.load_obo` (the packaged HPO 2025-01-16 by default);
    cached per path.
    """
    from raretarget.ingest.phenotypes import load_obo

    parsed, version = load_obo(path)
    terms = {tid: _OboTerm(t.name, list(t.synonyms), list(t.other_synonyms),
                           [x[len("SNOMEDCT_US:"):] for x in t.xrefs if x.startswith("SNOMEDCT_US:")])
             for tid, t in parsed.items()}
    return terms, version


@functools.lru_cache(maxsize=2)
def load_lab_units(path: str | None = None) -> dict[str, dict]:
    """``lab_units.csv`` (the packaged one, :mod:`raretarget.vocab.labs`, or ``path``) → {loinc: row} with floats
    for molar mass (g/mol) and reference range."""
    from raretarget.vocab.labs import lab_units, parse_lab_units

    table = lab_units() if path is None else parse_lab_units(Path(path).read_text(encoding="utf-8"))
    return {k: {"loinc": u.loinc, "name": u.name, "unit": u.unit, "mm": u.molar_mass, "low": u.ref_low,
                "high": u.ref_high} for k, u in table.items()}


@functools.lru_cache(maxsize=2)
def load_gene_chromosomes(path: str | None = None) -> dict[str, tuple[str, str]]:
    """{symbol: (chromosome, first Ensembl gene id)} from ``genes.tsv.gz`` (empty dict if absent)."""
    try:
        p = Path(path) if path else Path(str(resources.files("raretarget") / "data" / "genes.tsv.gz"))
        if not p.exists():
            return {}
        out = {}
        with gzip.open(p, "rt", encoding="utf-8") as f:
            head = f.readline().rstrip("\n").split("\t")
            iS, iC, iT = head.index("symbol"), head.index("chromosome"), head.index("gene_type")
            iE = head.index("ensembl_gene_ids") if "ensembl_gene_ids" in head else None
            for line in f:
                r = line.rstrip("\n").split("\t")
                if r[iT] != "protein-coding":
                    continue
                chrom = r[iC].split("|")[0]
                ens = r[iE].split("|")[0] if iE is not None and r[iE] else ""
                out[r[iS]] = (chrom, ens)
        return out
    except (OSError, ValueError):
        return {}


def _ontology():
    from raretarget.vocab.hpo import ontology

    return ontology()


class _Hpo:
    """Graph and label helpers over pyhpo (graph) + the packaged obo (labels, synonyms, SNOMED)."""

    def __init__(self, obo_path: str | None = None):
        self.O = _ontology()
        self.obo, self.obo_version = load_obo_terms(obo_path)
        self.pa = self._descendants(PHENOTYPIC_ABNORMALITY)
        self._anc: dict[int, frozenset] = {}

    def _descendants(self, root: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for t in self.O:
            for p in t.parent_ids():
                children.setdefault(int(p), []).append(int(t))
        out, stack = set(), [root]
        while stack:
            x = stack.pop()
            for c in children.get(x, []):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def ancestors(self, i: int) -> frozenset:
        a = self._anc.get(i)
        if a is None:
            a = self._anc[i] = frozenset(int(p) for p in self.O[i].all_parents)
        return a

    def parents(self, i: int) -> list[int]:
        return sorted(int(p) for p in self.O[i].parent_ids())

    def label(self, i: int) -> str:
        t = self.obo.get(_hp(i))
        return t.name if t is not None and t.name else self.O[i].name

    def synonyms(self, i: int) -> list[str]:
        t = self.obo.get(_hp(i))
        return list(t.synonyms) if t is not None else []

    def snomed(self, i: int) -> list[str]:
        t = self.obo.get(_hp(i))
        return sorted(set(t.snomed)) if t is not None else []


# ---- disease selection ----------------------------------------------------------------------------

@dataclass
class Disease:
    disease_id: str
    name: str
    gene: str
    chromosome: str
    inheritance: str            # AR | AD | XL | XLR | XLD
    hpo: list[int]              # phenotypic-abnormality terms (ints)
    freq: dict[int, float]      # per-term inclusion probability
    has_lab: bool
    pattern: str = "none"
    site: int = 0

    def truth(self, h: _Hpo) -> dict:
        return {"disease_id": self.disease_id, "name": self.name, "genes": [self.gene],
                "hpo": [_hp(t) for t in self.hpo], "inheritance": self.inheritance,
                "inheritance_hpo": _hp({v: k for k, v in INHERITANCE.items()}[self.inheritance]),
                "frequencies": {_hp(t): round(self.freq[t], 3) for t in self.hpo},
                "image_pattern": self.pattern, "body_site": BODY_SITES[self.site][1],
                "gene_chromosome": self.chromosome, "lab_phenotype": self.has_lab}


def _lab_effects(h: _Hpo, terms) -> list[tuple[str, str]]:
    lab_ints = {int(k[3:]): v for k, v in LAB_TERMS.items()}
    out = []
    for t in sorted(terms):
        for anc in sorted({t} | h.ancestors(t)):
            if anc in lab_ints:
                out.extend(lab_ints[anc])
    seen, res = set(), []
    for loinc, d in out:
        if loinc not in seen:
            seen.add(loinc)
            res.append((loinc, d))
    return res


def _gene_chrom(symbol: str, chroms: dict) -> str:
    c = chroms.get(symbol, ("", ""))[0]
    if c in {n for n, _ in CONTIGS}:
        return c
    return str(_stable_int("chrom", symbol) % 22 + 1)


def _candidates(h: _Hpo, chroms: dict) -> list:
    """Diseases passing the cheap filters: one inheritance mode, ≥ 8 phenotype terms (sorted by id)."""
    out = []
    for d in h.O.omim_diseases:
        terms = {int(t) for t in d.hpo}
        modes = sorted(m for m in INHERITANCE if m in terms)
        if len(modes) != 1:
            continue
        pheno = sorted(t for t in terms if t in h.pa)
        if len(pheno) < 8:
            continue
        name = d.name
        if not name or any(ch in name for ch in "{[?") or "susceptibility" in name.lower():
            continue
        out.append((int(d.id), name, terms, INHERITANCE[modes[0]], pheno))
    out.sort(key=lambda x: x[0])
    return out


def _unique_gene(h: _Hpo, terms: set, pheno: list) -> str | None:
    rarest = min(pheno, key=lambda t: (len(h.O[t].genes), t))
    hits = sorted({g.name for g in h.O[rarest].genes if terms <= {int(x) for x in g.hpo}})
    # hpo3 names a few genes "-" (no symbol): such a disease has no gene to put in a VCF. They still
    # count as hits, so no other disease becomes eligible (the cohorts of every seed stay as they were)
    return hits[0] if len(hits) == 1 and hits[0] != "-" else None


def select_diseases(h: _Hpo, seed: int, n: int, chroms: dict, ids: Sequence | None = None) -> list[Disease]:
    """Pick ``n`` eligible OMIM diseases (about a third with lab phenotypes), or the given ``ids``."""
    cands = _candidates(h, chroms)
    rng = _rng(seed, 1)
    if ids is not None:
        want = [int(str(x).split(":")[-1]) for x in ids]
        by = {c[0]: c for c in cands}
        missing = [w for w in want if w not in by]
        if missing:
            raise ValueError(f"not eligible (need one inheritance mode and >= 8 phenotype terms): {missing}")
        order = [by[w] for w in want]
        n = len(order)
    else:
        order = [cands[i] for i in rng.permutation(len(cands))]
    n_lab = 0 if ids is not None else max(1, int(round(n / 3)))
    chosen: list[Disease] = []
    used_genes: set[str] = set()

    def take(c) -> bool:
        did, name, terms, mode, pheno = c
        gene = _unique_gene(h, terms, pheno)
        if gene is None or gene in used_genes:
            return False
        chrom = _gene_chrom(gene, chroms)
        if chrom in ("Y", "MT"):
            return False
        if (mode in ("XL", "XLR", "XLD")) != (chrom == "X"):
            return False
        used_genes.add(gene)
        has_lab = bool(_lab_effects(h, pheno))
        chosen.append(Disease(f"OMIM:{did}", name, gene, chrom, mode, pheno, {}, has_lab))
        return True

    if n_lab:
        for c in order:
            if sum(d.has_lab for d in chosen) >= n_lab:
                break
            if _lab_effects(h, c[4]):
                take(c)
    for c in order:
        if len(chosen) >= n:
            break
        if any(d.disease_id == f"OMIM:{c[0]}" for d in chosen):
            continue
        if not take(c) and ids is not None:
            raise ValueError(f"OMIM:{c[0]} has no unique gene / inconsistent chromosome")
    if ids is None:
        chosen.sort(key=lambda d: int(d.disease_id[5:]))
    pat = rng.permutation(len(PATTERNS))
    for k, d in enumerate(chosen):
        d.pattern = PATTERNS[int(pat[k % len(PATTERNS)])]
        d.site = int(rng.integers(len(BODY_SITES)))
        fr = 0.35 + 0.6 * rng.beta(2.0, 1.5, size=len(d.hpo))
        d.freq = {t: float(f) for t, f in zip(d.hpo, fr)}
    return chosen


# ---- people ----------------------------------------------------------------------------------------

def _person(seed: int, i: int, sex: str, base: _dt.date) -> dict:
    r = _rng(seed, 2, i)
    if sex == "male":
        given = _GIVEN_M[r.integers(len(_GIVEN_M))] + _GIVEN_END_M[r.integers(len(_GIVEN_END_M))]
    else:
        given = _GIVEN_F[r.integers(len(_GIVEN_F))] + _GIVEN_END_F[r.integers(len(_GIVEN_END_F))]
    family = _FAM_A[r.integers(len(_FAM_A))] + _FAM_B[r.integers(len(_FAM_B))]
    city = _CITY_A[r.integers(len(_CITY_A))] + _CITY_B[r.integers(len(_CITY_B))]
    age_days = int(r.integers(2 * 365, 80 * 365))
    return {
        "given": given, "family": family, "city": city, "state": _STATES[r.integers(len(_STATES))],
        "line": f"{int(r.integers(1, 9999))} {_STREETS[r.integers(len(_STREETS))]}",
        "postal": f"{int(r.integers(1000, 99999)):05d}",
        "phone": f"{int(r.integers(201, 989))}-555-{int(r.integers(0, 10000)):04d}",
        "email": f"{given.lower()}.{family.lower()}{int(r.integers(10, 99))}@example.org",
        "mrn": f"MRN{int(r.integers(10**7, 10**8))}",
        "ssn": f"999-{int(r.integers(10, 100)):02d}-{int(r.integers(0, 10000)):04d}",
        "birth": base - _dt.timedelta(days=age_days),
        "age": age_days // 365,
    }


# ---- labs --------------------------------------------------------------------------------------------

#: SI reporting at "SI" sites: loinc -> (unit, factor from the canonical unit)
def _si_unit(loinc: str, lab: dict) -> tuple[str, float] | None:
    mm, unit = lab["mm"], lab["unit"]
    if mm and unit == "mg/dL":
        f = 10.0 / mm                           # mg/dL -> mmol/L
        if loinc in ("2160-0", "38483-4", "1975-2", "3084-1"):
            return "umol/L", f * 1000.0
        return "mmol/L", f
    if unit == "g/dL":
        return "g/L", 10.0
    if unit == "10*3/uL":
        return "10*9/L", 1.0
    return None


def _us_unit(loinc: str, lab: dict) -> tuple[str, float] | None:
    """Conventional-unit reporting of analytes whose canonical unit is a substance concentration."""
    mm, unit = lab["mm"], lab["unit"]
    if not mm:
        return None
    if unit == "mmol/L":
        if loinc in ("2524-7",):
            return "mg/dL", mm / 10.0           # mmol/L -> mg/dL
        return None
    if unit == "umol/L":
        if loinc == "29573-3":
            return "mg/dL", mm / 10000.0        # umol/L -> mg/dL
        if loinc == "16362-6":
            return "ug/dL", mm / 10.0           # umol/L -> ug/dL
    return None


_VITAL_RANGE = {"8302-2": (150, 190), "29463-7": (55, 95), "8480-6": (105, 125), "8462-4": (65, 82),
                "8867-4": (62, 95), "39156-5": (20, 26)}


def _lab_value(r: np.random.Generator, lab: dict, direction: str | None) -> float:
    lo, hi = lab["low"], lab["high"]
    if lo is None or hi is None:
        lo, hi = 1.0, 2.0
    span = hi - lo
    if direction == "high":
        v = hi + span * r.uniform(0.6, 3.0) if span > 0 else hi * r.uniform(1.5, 3)
        if lab["loinc"] in ("2157-6", "1742-6", "1920-8", "16362-6", "29573-3"):
            v = hi * r.uniform(2.5, 12.0)       # enzymes / metabolites rise many-fold
    elif direction == "low":
        v = lo * r.uniform(0.45, 0.85)
    else:
        v = r.normal((lo + hi) / 2, span / 4.5)
        v = float(np.clip(v, lo - 0.1 * span, hi + 0.1 * span))
    return max(v, 0.01 * max(hi, 1e-6))


# ---- images -------------------------------------------------------------------------------------------

def _image(seed: int, i: int, shape: tuple, pattern: str, difficulty: float, site: int) -> np.ndarray:
    """Float image/volume in 'physical' units (HU-like for CT, arbitrary for MR), shape (H,W) or (D,H,W)."""
    r = _rng(seed, 5, i)
    nd = len(shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    # anatomy-like background: an elliptical body, a smooth low-frequency field, an inner structure
    ax = r.uniform(0.75, 0.92, size=nd)
    body = (sum((g / a) ** 2 for g, a in zip(grids, ax)) <= 1.0).astype(np.float32)
    smooth = np.zeros(shape, np.float32)
    for _ in range(3):
        k = r.uniform(1.0, 3.0, size=nd)
        ph = r.uniform(0, 2 * np.pi, size=nd)
        smooth += np.prod([np.cos(np.pi * kk * g + p) for kk, g, p in zip(k, grids, ph)], axis=0).astype(np.float32)
    inner = (sum((g / (a * 0.45)) ** 2 for g, a in zip(grids, ax)) <= 1.0).astype(np.float32)
    base = 1.0 * body + 0.15 * smooth * body + 0.25 * inner
    noise_sd = 0.12
    contrast = noise_sd * (0.5 + 8.0 * (1.0 - float(np.clip(difficulty, 0, 1))))
    if pattern == "blob":
        c = r.uniform(-0.3, 0.3, size=nd)
        rad = r.uniform(0.15, 0.25)
        d2 = sum((g - cc) ** 2 for g, cc in zip(grids, c))
        base = base + contrast * np.exp(-d2 / (2 * rad * rad)) * body
    elif pattern == "ring":
        c = r.uniform(-0.2, 0.2, size=nd)
        rad = r.uniform(0.25, 0.35)
        d = np.sqrt(sum((g - cc) ** 2 for g, cc in zip(grids, c)))
        base = base + contrast * np.exp(-((d - rad) ** 2) / (2 * 0.05 ** 2)) * body
    elif pattern == "streaks":
        ang = r.uniform(0, np.pi)
        proj = np.cos(ang) * grids[-1] + np.sin(ang) * grids[-2]
        base = base + contrast * (np.cos(proj * np.pi * 6) > 0.6).astype(np.float32) * body
    elif pattern == "texture":
        fine = r.normal(0, 1, size=shape).astype(np.float32)
        fine = (fine + np.roll(fine, 1, -1) + np.roll(fine, 1, -2)) / 3.0
        base = base + contrast * 0.9 * fine * body + 0.3 * contrast * body
    return base + r.normal(0, noise_sd, size=shape).astype(np.float32)


def _write_dicom(path: Path, pixels_u16: np.ndarray, meta: dict) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = meta["sop_class"]
    fm.MediaStorageSOPInstanceUID = meta["sop_uid"]
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = meta["sop_class"]
    ds.SOPInstanceUID = meta["sop_uid"]
    ds.StudyDate = meta["date"]
    ds.SeriesDate = meta["date"]
    ds.ContentDate = meta["date"]
    ds.StudyTime = meta["time"]
    ds.SeriesTime = meta["time"]
    ds.AccessionNumber = meta["accession"]
    ds.Modality = meta["modality"]
    ds.Manufacturer = "raretarget synthetic"
    ds.InstitutionName = meta["institution"]
    ds.ReferringPhysicianName = "Synth^Referrer"
    ds.StudyDescription = meta["description"]
    ds.SeriesDescription = meta["description"]
    ds.PatientName = meta["patient_name"]
    ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate = meta["birth"]
    ds.PatientSex = meta["sex"]
    ds.BodyPartExamined = meta["body_part"]
    ds.SliceThickness = meta["thickness"]
    ds.StudyInstanceUID = meta["study_uid"]
    ds.SeriesInstanceUID = meta["series_uid"]
    ds.FrameOfReferenceUID = meta["for_uid"]
    ds.StudyID = meta["study_id"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = meta["instance"]
    ds.ImagePositionPatient = [-100.0, -100.0, float(meta["z"])]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = float(meta["z"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels_u16.shape[0]), int(pixels_u16.shape[1])
    ds.PixelSpacing = [meta["spacing"], meta["spacing"]]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = meta["wc"]
    ds.WindowWidth = meta["ww"]
    ds.RescaleIntercept = meta["intercept"]
    ds.RescaleSlope = meta["slope"]
    if meta["modality"] == "CT":
        ds.RescaleType = "HU"
        ds.KVP = 120
    else:
        ds.MagneticFieldStrength = 1.5
        ds.RepetitionTime = 500.0
        ds.EchoTime = 15.0
    ds.PixelData = np.ascontiguousarray(pixels_u16, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---- VCF -----------------------------------------------------------------------------------------------

_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


_BLOCK = 65280


def write_bgzf(path: Path, data: bytes, level: int = 6) -> list[int]:
    """Write ``data`` as BGZF (blocked gzip, the SAM/VCF spec's format; any gzip reader reads it).

    Blocks hold ``_BLOCK`` uncompressed bytes each; returns the compressed file offset of every block
    (plus the EOF marker block), from which virtual offsets are computed for a tabix index.
    """
    starts = []
    with open(path, "wb") as f:
        for i in range(0, len(data), _BLOCK):
            starts.append(f.tell())
            chunk = data[i:i + _BLOCK]
            c = zlib.compressobj(level, zlib.DEFLATED, -15)
            comp = c.compress(chunk) + c.flush()
            f.write(struct.pack("<BBBBIBBHBBHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(comp) + 25))
            f.write(comp)
            f.write(struct.pack("<II", zlib.crc32(chunk) & 0xFFFFFFFF, len(chunk)))
        starts.append(f.tell())
        f.write(_BGZF_EOF)
    return starts


def _reg2bin(beg: int, end: int) -> int:
    end -= 1
    for shift, off in ((14, 4681), (17, 585), (20, 73), (23, 9), (26, 1)):
        if beg >> shift == end >> shift:
            return off + (beg >> shift)
    return 0


def tabix_index(data: bytes, block_starts: list[int]) -> bytes:
    """Uncompressed tabix (.tbi) index for VCF text ``data`` written by :func:`write_bgzf`.

    Coordinates: VCF POS is 1-based; tabix bins use 0-based half-open [POS-1, POS-1+len(REF)).
    """
    def voff(u: int) -> int:
        b = u // _BLOCK
        return (block_starts[b] << 16) | (u - b * _BLOCK)

    names: list[str] = []
    refs: dict[str, dict] = {}
    u = 0
    for line in data.split(b"\n"):
        start, u = u, u + len(line) + 1
        if not line or line[:1] == b"#":
            continue
        f = line.split(b"\t", 5)
        chrom = f[0].decode()
        beg = int(f[1]) - 1
        end = beg + len(f[3])
        if chrom not in refs:
            names.append(chrom)
            refs[chrom] = {"bins": {}, "lin": {}, "first": voff(start), "n": 0}
        ref = refs[chrom]
        vs, ve = voff(start), voff(min(u, len(data)))
        chunks = ref["bins"].setdefault(_reg2bin(beg, end), [])
        if chunks and chunks[-1][1] == vs:
            chunks[-1][1] = ve
        else:
            chunks.append([vs, ve])
        for w in range(beg >> 14, ((end - 1) >> 14) + 1):
            ref["lin"].setdefault(w, vs)
        ref["last"], ref["n"] = ve, ref["n"] + 1
    nm = b"".join(n.encode() + b"\0" for n in names)
    out = [b"TBI\x01", struct.pack("<8i", len(names), 2, 1, 2, 0, ord("#"), 0, len(nm)), nm]
    for n in names:
        ref = refs[n]
        bins = sorted(ref["bins"].items())
        out.append(struct.pack("<i", len(bins) + 1))
        for b, chunks in bins:
            out.append(struct.pack("<Ii", b, len(chunks)))
            out.extend(struct.pack("<QQ", a, e) for a, e in chunks)
        out.append(struct.pack("<IiQQQQ", 37450, 2, ref["first"], ref["last"], ref["n"], 0))
        n_intv = max(ref["lin"]) + 1
        lin, prev = [], 0
        for w in range(n_intv):
            prev = ref["lin"].get(w, prev)
            lin.append(prev)
        out.append(struct.pack(f"<i{n_intv}Q", n_intv, *lin))
    out.append(struct.pack("<Q", 0))
    return b"".join(out)


@dataclass
class _Site:
    chrom: str
    pos: int
    ref: str
    alt: str
    gene: str
    ens: str
    cls: str            # common_benign | rare_benign | vus | carrier_plp | causal
    csq: str
    impact: str
    hgvsc: str
    hgvsp: str
    af: float | None
    clnsig: str

    @property
    def key(self) -> str:
        return f"{self.chrom}:{self.pos}:{self.ref}:{self.alt}"


_AA = ["Ala", "Arg", "Asn", "Asp", "Cys", "Gln", "Glu", "Gly", "His", "Ile", "Leu", "Lys", "Met", "Phe", "Pro",
       "Ser", "Thr", "Trp", "Tyr", "Val"]
_CLASS_SPEC = {
    # cls: [(consequence, impact, weight)], (VEP CLIN_SIG, ClinVar CLNSIG), gnomAD AF range
    "common_benign": ([("synonymous_variant", "LOW", 3), ("intron_variant", "MODIFIER", 4),
                       ("missense_variant", "MODERATE", 1), ("3_prime_UTR_variant", "MODIFIER", 2)],
                      ("benign", "Benign"), (0.02, 0.45)),
    "rare_benign": ([("synonymous_variant", "LOW", 3), ("intron_variant", "MODIFIER", 3),
                     ("missense_variant", "MODERATE", 1)], ("likely_benign", "Likely_benign"), (1e-4, 0.01)),
    "vus": ([("missense_variant", "MODERATE", 6), ("inframe_deletion", "MODERATE", 1),
             ("splice_region_variant", "LOW", 1)], ("uncertain_significance", "Uncertain_significance"), (0, 2e-4)),
    "carrier_plp": ([("stop_gained", "HIGH", 3), ("frameshift_variant", "HIGH", 2),
                     ("splice_donor_variant", "HIGH", 1), ("missense_variant", "MODERATE", 2)],
                    ("pathogenic", "Pathogenic"), (1e-5, 2e-3)),
    "causal": ([("stop_gained", "HIGH", 2), ("frameshift_variant", "HIGH", 2), ("missense_variant", "MODERATE", 3),
                ("splice_acceptor_variant", "HIGH", 1)], ("pathogenic", "Pathogenic"), (0, 5e-5)),
}


def _make_site(r: np.random.Generator, cls: str, gene: str, chrom: str, ens: str, gene_pos: int,
               used: set) -> _Site:
    spec, (_vep_sig, clnsig), (alo, ahi) = _CLASS_SPEC[cls]
    w = np.array([s[2] for s in spec], float)
    csq, impact, _ = spec[int(r.choice(len(spec), p=w / w.sum()))]
    clen = dict(CONTIGS)[chrom]
    while True:
        pos = int(min(max(gene_pos + int(r.integers(0, 60000)), 1), clen - 10))
        if (chrom, pos) not in used:
            used.add((chrom, pos))
            break
    bases = "ACGT"
    ref = bases[int(r.integers(4))]
    alt = bases[(bases.index(ref) + int(r.integers(1, 4))) % 4]
    cpos = int(r.integers(30, 4000))
    aa = int(cpos // 3 + 1)
    a1 = _AA[int(r.integers(len(_AA)))]
    if csq == "frameshift_variant":
        alt = ref + bases[int(r.integers(4))]
        hgvsc, hgvsp = f"c.{cpos}dup", f"p.{a1}{aa}fs"
    elif csq == "inframe_deletion":
        ref = ref + "".join(bases[int(x)] for x in r.integers(0, 4, size=3))
        alt = ref[0]
        hgvsc, hgvsp = f"c.{cpos}_{cpos + 2}del", f"p.{a1}{aa}del"
    elif csq == "stop_gained":
        hgvsc, hgvsp = f"c.{cpos}{ref}>{alt}", f"p.{a1}{aa}Ter"
    elif csq == "missense_variant":
        a2 = _AA[(int(r.integers(1, len(_AA))) + _AA.index(a1)) % len(_AA)]
        hgvsc, hgvsp = f"c.{cpos}{ref}>{alt}", f"p.{a1}{aa}{a2}"
    elif csq == "synonymous_variant":
        hgvsc, hgvsp = f"c.{cpos}{ref}>{alt}", f"p.{a1}{aa}="
    elif csq in ("splice_donor_variant", "splice_acceptor_variant", "splice_region_variant"):
        off = {"splice_donor_variant": "+1", "splice_acceptor_variant": "-2", "splice_region_variant": "+5"}[csq]
        hgvsc, hgvsp = f"c.{cpos}{off}{ref}>{alt}", ""
    elif csq == "intron_variant":
        hgvsc, hgvsp = f"c.{cpos}+{int(r.integers(20, 900))}{ref}>{alt}", ""
    else:
        hgvsc, hgvsp = f"c.*{int(r.integers(1, 900))}{ref}>{alt}", ""
    af = None
    if ahi > 0:
        af = float(np.exp(r.uniform(np.log(max(alo, 1e-6)), np.log(ahi))))
        if cls == "causal" and r.random() < 0.5:
            af = None
    return _Site(chrom, pos, ref, alt, gene, ens, cls, csq, impact, hgvsc, hgvsp, af, clnsig)


def _csq(s: _Site) -> str:
    vep_sig = _CLASS_SPEC[s.cls][1][0]
    af = "" if s.af is None else f"{s.af:.3g}"
    return "|".join([s.alt, s.csq, s.impact, s.gene, s.ens, "Transcript", "", "protein_coding", s.hgvsc, s.hgvsp,
                     "YES", af, vep_sig])


def _gene_pos(gene: str, chrom: str) -> int:
    clen = dict(CONTIGS)[chrom]
    if clen < 1_100_000:                       # MT
        return 100
    return 500000 + _stable_int("pos", gene) % (clen - 1000000)


def _vcf_text(sites: list[_Site], G: np.ndarray, sample_ids: list[str], males: np.ndarray, seed: int) -> bytes:
    order = {c: k for k, (c, _) in enumerate(CONTIGS)}
    idx = sorted(range(len(sites)), key=lambda k: (order[sites[k].chrom], sites[k].pos, sites[k].ref, sites[k].alt))
    lines = ["##fileformat=VCFv4.2", f"##source=raretarget.cohort(seed={seed})", "##reference=GRCh38"]
    lines += [f"##contig=<ID={c},length={n},assembly=GRCh38>" for c, n in CONTIGS]
    lines += [
        '##FILTER=<ID=PASS,Description="All filters passed">',
        f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {CSQ_FORMAT}">',
        '##INFO=<ID=CLNSIG,Number=.,Type=String,Description="Clinical significance for this single variant (ClinVar style)">',
        '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene symbol (synthetic placement)">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "#" + "\t".join(["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *sample_ids]),
    ]
    dip = np.array(["0/0", "0/1", "1/1"])
    hap = np.array(["0", "1", "1"])
    for k in idx:
        s = sites[k]
        g = G[k]
        if s.chrom == "X":
            gts = np.where(males, hap[g], dip[g])
        elif s.chrom == "MT":
            gts = hap[g]
        else:
            gts = dip[g]
        info = f"CSQ={_csq(s)};CLNSIG={s.clnsig};GENE={s.gene}"
        lines.append("\t".join([s.chrom, str(s.pos), ".", s.ref, s.alt, "50", "PASS", info, "GT"]) + "\t"
                     + "\t".join(gts.tolist()))
    return ("\n".join(lines) + "\n").encode()


# ---- FHIR pieces -----------------------------------------------------------------------------------------

def _codeable(system: str, code: str, display: str, text: str | None = None) -> dict:
    c = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        c["text"] = text
    return c


def _condition(cid: str, subj: str, coding: list, text: str, onset: _dt.date, recorded: _dt.date) -> dict:
    return {
        "resourceType": "Condition", "id": cid,
        "clinicalStatus": _codeable("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
        "verificationStatus": _codeable("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                                        "Confirmed"),
        "category": [_codeable("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                               "Problem List Item")],
        "code": {"coding": coding, "text": text},
        "subject": {"reference": subj},
        "onsetDateTime": _date(onset),
        "recordedDate": _date(recorded),
    }


def _observation(oid: str, subj: str, loinc: str, name: str, value: float, unit: str, when: str,
                 category: str, ref: tuple | None) -> dict:
    o = {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [_codeable("http://terminology.hl7.org/CodeSystem/observation-category", category,
                               "Laboratory" if category == "laboratory" else "Vital Signs")],
        "code": _codeable(LOINC, loinc, name, name),
        "subject": {"reference": subj},
        "effectiveDateTime": when,
        "issued": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }
    if ref is not None:
        o["referenceRange"] = [{"low": {"value": ref[0], "unit": unit, "system": UCUM, "code": unit},
                                "high": {"value": ref[1], "unit": unit, "system": UCUM, "code": unit}}]
    return o


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[:2] != s[:2].upper() else s


def _note_text(r: np.random.Generator, h: _Hpo, p: dict, person: dict, visit: _dt.date, comorb: list) -> tuple:
    """History & physical note: returns (text, {HP id: phrase used})."""
    phrases: dict[str, str] = {}
    mentions = []
    for t in p["hpo_int"]:
        syns = [s for s in h.synonyms(t) if 3 <= len(s) <= 60]
        if syns and r.random() < 0.4:
            ph = syns[int(r.integers(min(len(syns), 3)))]
        else:
            ph = h.label(t)
        phrases[_hp(t)] = ph
        mentions.append(_lower_first(ph))
    negs = []
    for t in p["excluded_int"]:
        x = _lower_first(h.label(t))
        tpl = _NEG_TEMPLATES[int(r.integers(len(_NEG_TEMPLATES)))]
        negs.append(tpl.format(x=x, X=x[:1].upper() + x[1:]))
    name = f"{person['given']} {person['family']}"
    sexw = "man" if p["sex"] == "male" else "woman"
    if person["age"] < 18:
        sexw = "boy" if p["sex"] == "male" else "girl"
    vs = visit.strftime("%m/%d/%Y")
    out = ["HISTORY AND PHYSICAL",
           f"Patient: {name}    MRN: {person['mrn']}    DOB: {person['birth'].strftime('%m/%d/%Y')}",
           f"Date of service: {vs}", ""]
    if mentions:
        r.shuffle(mentions)
        cc = mentions[0]
        out.append(f"Chief complaint: {cc[:1].upper() + cc[1:]}.")
        hpi = (f"{name} is a {person['age']}-year-old {sexw} from {person['city']} seen on {vs} for evaluation. "
               f"The history is significant for {', '.join(mentions[:3])}.")
        if len(mentions) > 3:
            rest = mentions[3:]
            chunks = [rest[i:i + 3] for i in range(0, len(rest), 3)]
            for ch in chunks:
                lead = ["Examination shows", "Also noted:", "Records document", "On review there is"][int(r.integers(4))]
                hpi += f" {lead} {', '.join(ch)}."
    else:
        out.append("Chief complaint: Routine health maintenance visit.")
        hpi = (f"{name} is a {person['age']}-year-old {sexw} from {person['city']} seen on {vs} for an annual "
               f"examination and feels well overall.")
    out += ["", "History of present illness: " + hpi]
    if comorb:
        out.append("Past medical history: " + ", ".join(c[2] for c in comorb) + ".")
    else:
        out.append("Past medical history: none significant.")
    if negs:
        out.append("Pertinent negatives: " + " ".join(negs))
    out.append("Social history: " + " ".join(r.choice(_SOCIAL, size=2, replace=False).tolist()))
    out.append("Family history: " + str(r.choice(_FAMILY)))
    out.append(f"Plan: follow up in clinic. The family can be reached at {person['phone']}.")
    out.append("")
    return "\n".join(out), phrases


# ---- the generator ----------------------------------------------------------------------------------------

@dataclass
class CohortParams:
    n_patients: int = 50
    seed: int = 0
    n_diseases: int = 10
    fraction_affected: float = 0.5
    phenotype_noise: float = 0.2
    image_difficulty: float = 0.5
    n_background_variants: int = 40
    fmt: str = "bundle"
    image_size: int | tuple = 64
    imaging_fraction: float = 0.85
    comorbidity_rate: float = 0.4
    diseases: list | None = None
    vcf_samples_per_file: int = 2000


def generate(out: str | Path, n_patients: int = 50, seed: int = 0, n_diseases: int = 10,
             fraction_affected: float = 0.5, phenotype_noise: float = 0.2, image_difficulty: float = 0.5,
             n_background_variants: int = 40, fmt: str = "bundle", image_size: int | Sequence[int] = 64,
             imaging_fraction: float = 0.85, comorbidity_rate: float = 0.4,
             diseases: Sequence[str] | None = None, vcf_samples_per_file: int = 2000) -> dict:
    """Write a synthetic cohort under ``out`` (see the module docstring) and return the truth dict.

    ``n_patients``: number of people; ``fraction_affected`` of them (rounded) have one of
    ``n_diseases`` OMIM diseases (or exactly ``diseases``, e.g. ``["OMIM:310200"]``), shared
    round-robin so every disease has several patients; the rest are controls.
    ``phenotype_noise`` (0–1): per affected patient, each shown disease term is dropped with
    probability ``0.5*noise``, replaced by a parent ("imprecise") with probability ``0.3*noise``, and
    ``Poisson(2*noise)`` unrelated terms are added (controls get ``Poisson(noise)`` such terms).
    ``image_difficulty`` (0–1): 0 = pattern contrast ≈ 8.5 noise SDs, 1 = 0.5 noise SD.
    ``n_background_variants``: non-reference background genotypes per person (about; drawn from a
    shared site pool so common variants recur). ``fmt``: ``"bundle"`` or ``"ndjson"``.
    ``image_size``: int ``n`` → one 2D ``n×n`` slice; ``(d, h, w)`` → a ``d``-slice series.
    ``imaging_fraction``: share of patients (affected and controls alike) with an imaging study.
    ``comorbidity_rate``: chance of each person having ≥ 1 common comorbidity.
    ``vcf_samples_per_file``: people per VCF file (the files hold the sites their samples carry; the genotypes
    are the same whatever the split, so the stored variants are too). Memory stays bounded by this, not by
    ``n_patients``.
    """
    if fmt not in ("bundle", "ndjson"):
        raise ValueError("fmt must be 'bundle' or 'ndjson'")
    if isinstance(image_size, (int, np.integer)):
        shape: tuple = (int(image_size), int(image_size))
    else:
        shape = tuple(int(x) for x in image_size)
        if len(shape) == 2:
            pass
        elif len(shape) != 3:
            raise ValueError("image_size: int, (h, w) or (d, h, w)")
    params = CohortParams(n_patients, seed, n_diseases, fraction_affected, phenotype_noise, image_difficulty,
                          n_background_variants, fmt, image_size if isinstance(image_size, int) else list(shape),
                          imaging_fraction, comorbidity_rate, list(diseases) if diseases else None,
                          int(vcf_samples_per_file))
    out = Path(out)
    for sub in ("fhir", "dicom", "vcf"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    h = _Hpo()
    chroms = load_gene_chromosomes()
    labs = load_lab_units()
    dis = select_diseases(h, seed, n_diseases, chroms, diseases)
    base = _dt.date(2024, 1, 1) + _dt.timedelta(days=int(_rng(seed, 0).integers(0, 365)))

    # ---- assign people -------------------------------------------------------------------------------
    r0 = _rng(seed, 3)
    n_aff = int(round(n_patients * fraction_affected)) if dis else 0
    slots = [dis[k % len(dis)] for k in range(n_aff)] + [None] * (n_patients - n_aff)
    perm = r0.permutation(n_patients)
    assign = [slots[int(j)] for j in perm]
    # common background phenotype pool: terms of all chosen diseases + some frequent terms
    pool = sorted({t for d in dis for t in d.hpo} | {1250, 1263, 2315, 12378, 1945, 2019, 2027, 1252, 12531,
                                                     2094, 1249, 1290, 2076, 100543, 3324, 1903})
    pool = [t for t in pool if t in h.pa]

    patients: list[dict] = []
    for i, d in enumerate(assign):
        r = _rng(seed, 4, i)
        if d is not None and d.inheritance in ("XLR", "XL"):
            sex = "male" if r.random() < 0.85 else "female"
        else:
            sex = "male" if r.random() < 0.5 else "female"
        pid = _uuid(seed, "patient", i)
        p = {"i": i, "id": pid, "sex": sex, "disease": d, "fmt_bundle": fmt == "bundle"}
        latent: list[int] = []
        shown: list[int] = []
        excluded: list[int] = []
        if d is not None:
            latent = [t for t in d.hpo if r.random() < d.freq[t]]
            if len(latent) < min(5, len(d.hpo)):
                extra = sorted((t for t in d.hpo if t not in latent), key=lambda t: -d.freq[t])
                latent = sorted(set(latent) | set(extra[:min(5, len(d.hpo)) - len(latent)]))
            for t in latent:
                u = r.random()
                if u < 0.5 * phenotype_noise:
                    continue
                if u < 0.8 * phenotype_noise:
                    par = [q for q in h.parents(t) if q in h.pa]
                    if par:
                        shown.append(par[int(r.integers(len(par)))])
                        continue
                shown.append(t)
            if not shown:
                shown = [latent[0]]
            n_extra = int(r.poisson(2 * phenotype_noise))
            notin = [t for t in d.hpo if t not in latent]
            if notin:
                # pertinent negatives: preferably the disease's rarer features
                w = np.array([(1.0 - d.freq[t]) ** 2 + 1e-3 for t in notin])
                k = min(len(notin), int(r.integers(1, 4)))
                excluded = [notin[int(j)] for j in r.choice(len(notin), size=k, replace=False, p=w / w.sum())]
        else:
            n_extra = int(r.poisson(phenotype_noise))
            k = int(r.integers(0, 3))
            excluded = [pool[int(j)] for j in r.choice(len(pool), size=min(k, len(pool)), replace=False)]
        for _ in range(n_extra):
            shown.append(pool[int(r.integers(len(pool)))])
        shown = sorted(set(shown))
        # excluded terms must not contradict shown ones (no ancestor/descendant relation)
        rel = set(shown)
        for t in shown:
            rel |= h.ancestors(t)
        excluded = sorted({t for t in excluded if t not in rel and not (h.ancestors(t) & set(shown))})
        p["hpo_int"], p["latent_int"], p["excluded_int"] = shown, sorted(latent), excluded
        person = _person(seed, i, sex, base)
        p["person"] = person
        comorb = []
        if r.random() < comorbidity_rate:
            ks = r.choice(len(COMORBIDITIES), size=int(r.integers(1, 4)), replace=False)
            comorb = [COMORBIDITIES[int(k)] for k in sorted(ks)]
            if person["age"] < 18:          # no adult-onset comorbidities in children
                comorb = [c for c in comorb if c[0] in _PEDIATRIC_COMORB]
        p["comorb"] = comorb
        p["site"] = ["conventional", "si", "mixed"][int(r.integers(3))]
        p["imaged"] = bool(r.random() < imaging_fraction)
        patients.append(p)

    # ---- genomes --------------------------------------------------------------------------------------
    sites, G, causal = _genomes(seed, patients, dis, chroms, n_background_variants)
    sample_ids = [p["id"] for p in patients]
    males = np.array([p["sex"] == "male" for p in patients])
    per = max(int(vcf_samples_per_file), 1)
    blocks = [(0, len(patients))] if len(patients) <= per else \
        [(a, min(a + per, len(patients))) for a in range(0, len(patients), per)]
    for b, (a, z) in enumerate(blocks):
        name = "cohort.vcf.gz" if len(blocks) == 1 else f"cohort.{b:05d}.vcf.gz"
        Gb = G[:, a:z]
        rows = np.flatnonzero(Gb.any(axis=1)) if len(blocks) > 1 else np.arange(len(sites))
        vcf = _vcf_text([sites[k] for k in rows], Gb[rows], sample_ids[a:z], males[a:z], seed)
        starts = write_bgzf(out / "vcf" / name, vcf)
        write_bgzf(out / "vcf" / f"{name}.tbi", tabix_index(vcf, starts))
        del vcf

    # ---- per-patient FHIR + DICOM ---------------------------------------------------------------------
    ndjson: dict[str, list[bytes]] = {k: [] for k in
                                      ("Patient", "Condition", "Observation", "DocumentReference", "ImagingStudy")}
    truth_patients = []
    for p in patients:
        res, tp = _patient_resources(seed, h, labs, p, base, shape, image_difficulty, out)
        tp.update(causal.get(p["i"], {"gene": None, "variant": None, "variants": [], "zygosity": None}))
        truth_patients.append(tp)
        if fmt == "bundle":
            bundle = {"resourceType": "Bundle", "id": _uuid(seed, "bundle", p["i"]), "type": "transaction",
                      "entry": [{"fullUrl": f"urn:uuid:{x['id']}", "resource": x,
                                 "request": {"method": "POST", "url": x["resourceType"]}} for x in res]}
            (out / "fhir" / f"{p['id']}.json").write_bytes(_dumps(bundle))
        else:
            for x in res:
                ndjson[x["resourceType"]].append(_dumps(x))
    if fmt == "ndjson":
        for k, lines in ndjson.items():
            (out / "fhir" / f"{k}.ndjson").write_bytes(b"".join(line + b"\n" for line in lines))

    truth = {
        "diseases": [d.truth(h) for d in dis],
        "patients": truth_patients,
        "params": {**asdict(params), "hpo_annotations": "hpo3 " + _hpo3_version(h),
                   "hp_obo": h.obo_version, "reference_date": _date(base), "genome": "GRCh38",
                   "vcf_pos_base": 1, "frequency_model": "p = 0.35 + 0.6*Beta(2,1.5) per (disease, term)"},
    }
    path = truth_path(out, existing=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    (out / "truth.json").unlink(missing_ok=True)        # a former layout's key in the same folder
    path.write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return truth


#: where :func:`generate` writes the answer key, relative to the cohort folder (hidden: never an ingest input)
TRUTH = Path(".answer_key") / "truth.json"


def truth_path(cohort_dir, existing: bool = True) -> Path:
    """The answer key of the cohort in ``cohort_dir``. ``existing``: fall back to the ``truth.json`` at the top of
    the folder that cohorts generated before 2026-11-30 have, when the new location holds none."""
    cohort_dir = Path(cohort_dir)
    p = cohort_dir / TRUTH
    if existing and not p.exists() and (cohort_dir / "truth.json").exists():
        return cohort_dir / "truth.json"
    return p


def read_truth(cohort_dir) -> dict:
    """The answer key (``diseases``, ``patients``, ``params``) of a generated cohort folder."""
    return json.loads(truth_path(cohort_dir).read_text(encoding="utf-8"))


def _hpo3_version(h: _Hpo) -> str:
    try:
        return str(h.O.version())
    except Exception:  # noqa: BLE001
        return "unknown"


def _dumps(obj) -> bytes:
    import orjson

    return orjson.dumps(obj)


def _genomes(seed: int, patients: list, dis: list[Disease], chroms: dict, n_bg: int):
    """Site list, genotype matrix (sites × samples; 0 ref, 1 het, 2 hom-alt) and causal truth per patient."""
    r = _rng(seed, 6)
    n = len(patients)
    used: set = set()
    genes_all = sorted(g for g, (c, _) in chroms.items() if c in {str(k) for k in range(1, 23)} | {"X"})
    if not genes_all:
        genes_all = [f"GENE{k}" for k in range(2000)]
    ar_genes = sorted({g.name for g in _ontology().genes if 7 in {int(x) for x in g.hpo}})
    ar_genes = [g for g in ar_genes if _gene_chrom(g, chroms) not in ("X", "Y", "MT")] or genes_all[:50]
    causal_genes = {d.gene for d in dis}

    def site(cls, gene):
        chrom = _gene_chrom(gene, chroms)
        ens = chroms.get(gene, ("", ""))[1]
        return _make_site(r, cls, gene, chrom, ens, _gene_pos(gene, chrom), used)

    sites: list[_Site] = []
    # background pool
    n_common = 150
    n_rare = max(200, min(6000, n * max(n_bg, 1) // 6))
    for _ in range(n_common):
        sites.append(site("common_benign", genes_all[int(r.integers(len(genes_all)))]))
    for _ in range(n_rare):
        cls = ["rare_benign", "vus"][int(r.random() < 0.35)]
        sites.append(site(cls, genes_all[int(r.integers(len(genes_all)))]))
    # VUS / benign noise inside the causal genes too, so their presence alone is not the answer
    for g in sorted(causal_genes):
        for cls in ("vus", "rare_benign"):
            sites.append(site(cls, g))
    n_carrier = max(40, n // 10)
    carrier_genes = sorted({d.gene for d in dis if d.inheritance == "AR"}) + \
        [ar_genes[int(k)] for k in r.choice(len(ar_genes), size=min(n_carrier, len(ar_genes)), replace=False)]
    carrier_start = len(sites)
    for g in carrier_genes:
        sites.append(site("carrier_plp", g))
    carrier_idx = np.arange(carrier_start, len(sites))

    G = np.zeros((len(sites), n), np.int8)
    af = np.array([s.af if s.af is not None else 1e-4 for s in sites])
    # common sites: HWE genotypes for everybody
    for k in range(n_common):
        q = af[k]
        u = r.random(n)
        G[k] = np.where(u < q * q, 2, np.where(u < q * q + 2 * q * (1 - q), 1, 0))
    # rare pool: each person draws ~ n_bg - (their common non-ref count) rare sites (at least n_bg//4)
    rare_idx = np.arange(n_common, n_common + n_rare)
    for j in range(n):
        k = max(n_bg // 4, n_bg - int((G[:n_common, j] > 0).sum()))
        k = min(k, n_rare)
        if k > 0:
            pick = rare_idx[r.choice(n_rare, size=k, replace=False)]
            G[pick, j] = 1
    # causal-gene noise sites: a few random people
    for k in range(n_common + n_rare, carrier_start):
        G[k, r.random(n) < 0.03] = 1
    # carriers: ~8% of controls (and a few affected) carry one het P/LP allele in a recessive gene
    for j, p in enumerate(patients):
        rate = 0.08 if p["disease"] is None else 0.03
        if r.random() < rate and len(carrier_idx):
            G[int(carrier_idx[int(r.integers(len(carrier_idx)))]), j] = 1

    # causal alleles: 3 pathogenic alleles per disease (allelic heterogeneity)
    causal: dict[int, dict] = {}
    allele_sites: dict[str, list[int]] = {}
    for d in dis:
        allele_sites[d.disease_id] = []
        for _ in range(3):
            sites.append(site("causal", d.gene))
            allele_sites[d.disease_id].append(len(sites) - 1)
    G = np.vstack([G, np.zeros((len(sites) - G.shape[0], n), np.int8)])
    for j, p in enumerate(patients):
        d = p["disease"]
        if d is None:
            continue
        al = allele_sites[d.disease_id]
        a = int(r.integers(3))
        male = p["sex"] == "male"
        if d.inheritance == "AR":
            if r.random() < 0.5:
                G[al[a], j] = 2
                gts, zyg = [(al[a], "1/1")], "homozygous"
            else:
                b = (a + 1 + int(r.integers(2))) % 3
                G[al[a], j] = 1
                G[al[b], j] = 1
                gts, zyg = [(al[a], "0/1"), (al[b], "0/1")], "compound_heterozygous"
        elif d.inheritance == "AD":
            G[al[a], j] = 1
            gts, zyg = [(al[a], "0/1")], "heterozygous"
        else:
            if male:
                G[al[a], j] = 1
                gts, zyg = [(al[a], "1")], "hemizygous"
            else:
                G[al[a], j] = 1
                gts, zyg = [(al[a], "0/1")], "heterozygous"
        vs = [{"variant": sites[k].key, "gt": gt, "hgvsc": sites[k].hgvsc, "hgvsp": sites[k].hgvsp,
               "consequence": sites[k].csq} for k, gt in gts]
        causal[p["i"]] = {"gene": d.gene, "variant": vs[0]["variant"], "variants": vs, "zygosity": zyg}
    # drop pool sites nobody carries (keeps the file smaller; the site list stays deterministic)
    keep = [k for k in range(len(sites)) if G[k].any()]
    return [sites[k] for k in keep], G[keep], causal


def _patient_resources(seed: int, h: _Hpo, labs: dict, p: dict, base: _dt.date, shape: tuple,
                       difficulty: float, out: Path) -> tuple[list[dict], dict]:
    i = p["i"]
    r = _rng(seed, 7, i)
    person = p["person"]
    pid = p["id"]
    d: Disease | None = p["disease"]
    res: list[dict] = []
    # references: Bundle → urn:uuid:<id>; NDJSON → Patient/<id>
    subj = f"urn:uuid:{pid}" if p["fmt_bundle"] else f"Patient/{pid}"
    patient = {
        "resourceType": "Patient", "id": pid,
        "identifier": [
            {"use": "usual", "type": _codeable("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                                                "Medical Record Number", "Medical Record Number"),
             "system": "http://hospital.example.org/mrn", "value": person["mrn"]},
            {"type": _codeable("http://terminology.hl7.org/CodeSystem/v2-0203", "SS", "Social Security number",
                               "Social Security Number"),
             "system": "http://hl7.org/fhir/sid/us-ssn", "value": person["ssn"]},
        ],
        "name": [{"use": "official", "family": person["family"], "given": [person["given"]]}],
        "telecom": [{"system": "phone", "value": person["phone"], "use": "home"},
                    {"system": "email", "value": person["email"], "use": "home"}],
        "gender": p["sex"],
        "birthDate": _date(person["birth"]),
        "address": [{"use": "home", "line": [person["line"]], "city": person["city"], "state": person["state"],
                     "postalCode": person["postal"], "country": "US"}],
    }
    res.append(patient)
    birth = person["birth"]
    visit = base - _dt.timedelta(days=int(r.integers(30, 900)))
    if visit <= birth:
        visit = birth + _dt.timedelta(days=30)
    age_days = (visit - birth).days

    def onset_date(early: bool) -> _dt.date:
        if early:
            off = int(r.integers(0, max(2, min(age_days, 6 * 365))))
        else:
            off = int(r.integers(min(age_days - 1, 18 * 365) if age_days > 18 * 365 else 0, max(age_days, 1)))
        return birth + _dt.timedelta(days=min(off, age_days))

    # HPO conditions
    for t in p["hpo_int"]:
        coding = [{"system": HPO_SYSTEM, "code": _hp(t), "display": h.label(t)}]
        for sc in h.snomed(t)[:1]:
            coding.append({"system": SNOMED, "code": sc, "display": h.label(t)})
        on = onset_date(d is not None)
        res.append(_condition(_uuid(seed, "cond", i, t), subj, coding, h.label(t), on,
                              max(on, visit - _dt.timedelta(days=int(r.integers(0, 60))))))
    for code, disp, words, _eff in p["comorb"]:
        on = onset_date(False)
        res.append(_condition(_uuid(seed, "comorb", i, code), subj,
                              [{"system": SNOMED, "code": code, "display": disp}], disp, on, on))

    # labs + vitals
    effects = dict(_lab_effects(h, p["latent_int"] or p["hpo_int"]) if d is not None else
                   _lab_effects(h, p["hpo_int"]))
    for _c, _d, _w, eff in p["comorb"]:
        for loinc, direction in eff:
            effects.setdefault(loinc, direction)
    when = f"{_date(visit)}T09:{int(r.integers(0, 60)):02d}:00Z"
    abnormal = []
    for loinc in LAB_PANEL:
        lab = labs[loinc]
        direction = effects.get(loinc)
        if direction:
            abnormal.append({"loinc": loinc, "direction": direction})
        v = _lab_value(r, lab, direction)
        unit, factor = lab["unit"], 1.0
        alt = None
        if p["site"] == "si" or (p["site"] == "mixed" and r.random() < 0.5):
            alt = _si_unit(loinc, lab)
        elif p["site"] == "conventional":
            alt = _us_unit(loinc, lab)
        if alt is not None:
            unit, factor = alt
        ref = (_sig(lab["low"] * factor), _sig(lab["high"] * factor)) if lab["low"] is not None else None
        res.append(_observation(_uuid(seed, "obs", i, loinc), subj, loinc, lab["name"], _sig(v * factor), unit,
                                when, "laboratory", ref))
    # vitals
    h_cm = float(r.uniform(150, 190)) if person["age"] >= 16 else float(60 + 6.5 * person["age"] + r.normal(0, 4))
    bmi = float(r.uniform(19.5, 27)) if "39156-5" not in effects else float(r.uniform(31, 42))
    if person["age"] < 16:
        bmi = float(r.uniform(15, 20)) if "39156-5" not in effects else float(r.uniform(24, 30))
    w_kg = bmi * (h_cm / 100) ** 2
    vit = {"8302-2": h_cm, "29463-7": w_kg, "39156-5": bmi}
    for loinc in ("8480-6", "8462-4", "8867-4"):
        lo, hi = _VITAL_RANGE[loinc]
        vit[loinc] = float(r.uniform(lo, hi)) * (1.2 if effects.get(loinc) == "high" else 1.0)
    for loinc in VITALS:
        lab = labs[loinc]
        ref = (lab["low"], lab["high"]) if lab["low"] is not None else None
        res.append(_observation(_uuid(seed, "vit", i, loinc), subj, loinc, lab["name"], round(vit[loinc], 1),
                                lab["unit"], when, "vital-signs", ref))

    # note
    text, phrases = _note_text(r, h, p, person, visit, p["comorb"])
    note_date = f"{_date(visit)}T10:{int(r.integers(0, 60)):02d}:00Z"
    res.append({
        "resourceType": "DocumentReference", "id": _uuid(seed, "note", i), "status": "current",
        "type": _codeable(LOINC, "34117-2", "History and physical note", "History and physical note"),
        "category": [_codeable("http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                               "clinical-note", "Clinical Note")],
        "subject": {"reference": subj},
        "date": note_date,
        "description": "History and physical",
        "content": [{"attachment": {"contentType": "text/plain", "language": "en-US",
                                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                                    "title": "History and physical", "creation": note_date}}],
    })

    # imaging
    pattern = d.pattern if d is not None else "none"
    site_k = d.site if d is not None else int(r.integers(len(BODY_SITES)))
    imaging = None
    if p["imaged"]:
        imaging = _imaging(seed, p, person, site_k, pattern, shape, difficulty, visit, subj, out)
        res.append(imaging)

    tp = {"patient": pid, "disease_id": d.disease_id if d else None, "disease_name": d.name if d else None,
          "inheritance": d.inheritance if d else None, "sex": p["sex"],
          "hpo": [_hp(t) for t in p["hpo_int"]], "hpo_latent": [_hp(t) for t in p["latent_int"]],
          "excluded_hpo": [_hp(t) for t in p["excluded_int"]], "note_phrases": phrases,
          "image_pattern": pattern if imaging is not None else None,
          "imaging_study": imaging["identifier"][0]["value"][8:] if imaging is not None else None,
          "body_site": BODY_SITES[site_k][1] if imaging is not None else None,
          "comorbidities": [c[0] for c in p["comorb"]], "lab_site_units": p["site"], "abnormal_labs": abnormal,
          "mrn": person["mrn"]}
    return res, tp


def _imaging(seed, p, person, site_k, pattern, shape, difficulty, visit, subj, out) -> dict:
    i, pid = p["i"], p["id"]
    code, disp, part, modality = BODY_SITES[site_k]
    study_uid = _dicom_uid(seed, "study", i)
    series_uid = _dicom_uid(seed, "series", i)
    sop_class = SOP_CLASS[modality]
    img = _image(seed, i, shape, pattern, difficulty, site_k)
    if modality == "CT":
        phys = -1000.0 + 1040.0 * img          # air -1000 HU, soft tissue ~ +40 HU
        slope, intercept, wc, ww = 1.0, -1024.0, 40.0, 400.0
    else:
        phys = 800.0 * img
        slope, intercept, wc, ww = 1.0, 0.0, 600.0, 1200.0
    stored = np.clip(np.round((phys - intercept) / slope), 0, 65535).astype(np.uint16)
    slices = stored[None] if stored.ndim == 2 else stored
    instances = []
    date = visit.strftime("%Y%m%d")
    for k in range(slices.shape[0]):
        sop_uid = _dicom_uid(seed, "sop", i, k)
        meta = {"sop_class": sop_class, "sop_uid": sop_uid, "date": date, "time": "101500",
                "accession": f"ACC{_stable_int(seed, 'acc', i) % 10**8:08d}", "modality": modality,
                "institution": "Synthetic General Hospital", "description": f"{part.title()} {modality}",
                "patient_name": f"{person['family']}^{person['given']}", "patient_id": pid,
                "birth": person["birth"].strftime("%Y%m%d"), "sex": "M" if p["sex"] == "male" else "F",
                "body_part": part, "thickness": 5.0, "study_uid": study_uid, "series_uid": series_uid,
                "for_uid": _dicom_uid(seed, "for", i), "study_id": f"S{i + 1}", "instance": k + 1,
                "z": 5.0 * k, "spacing": round(200.0 / slices.shape[-1], 4), "wc": wc, "ww": ww,
                "slope": slope, "intercept": intercept}
        _write_dicom(out / "dicom" / pid / f"{sop_uid}.dcm", slices[k], meta)
        instances.append({"uid": sop_uid, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"},
                          "number": k + 1, "title": f"{part.title()} slice {k + 1}"})
    return {
        "resourceType": "ImagingStudy", "id": _uuid(seed, "img", i),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": modality}],
        "subject": {"reference": subj},
        "started": f"{_date(visit)}T10:15:00Z",
        "numberOfSeries": 1, "numberOfInstances": len(instances),
        "description": f"{part.title()} {modality}",
        "series": [{"uid": series_uid, "number": 1, "modality": {"system": DCM, "code": modality},
                    "description": f"{part.title()} {modality}", "numberOfInstances": len(instances),
                    "bodySite": {"system": SNOMED, "code": code, "display": disp},
                    "started": f"{_date(visit)}T10:15:00Z", "instance": instances}],
    }

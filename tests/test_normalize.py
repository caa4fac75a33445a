"""Units (UCUM via pint), HPO mapping from hp.obo xrefs, and text de-identification."""

from __future__ import annotations

import pytest

from raretarget.ingest.deid import compile_terms, patient_phi_terms, scrub_text
from raretarget.ingest.phenotypes import PhenotypeMapper
from raretarget.ingest.units import UnitNormalizer, load_lab_table


@pytest.fixture(scope="module")
def units():
    return UnitNormalizer()


@pytest.fixture(scope="module")
def hpo():
    return PhenotypeMapper()


@pytest.mark.parametrize("loinc,value,unit,expected", [
    ("2339-0", 5.0, "mmol/L", 5.0 * 180.156 / 10),        # substance -> mass via molar mass
    ("2339-0", 1.0, "g/L", 100.0),
    ("16362-6", 0.1, "mg/dL", 0.1 * 10 / 17.031 * 1000),  # ammonia mg/dL -> umol/L
    ("3094-0", 5.0, "mmol/L", 5.0 * 28.014 / 10),         # BUN, as N2
    ("6690-2", 7000.0, "/uL", 7.0),                       # 10*3/uL canonical
    ("6690-2", 7.0, "10*9/L", 7.0),
    ("8310-5", 98.6, "[degF]", 37.0),                     # affine conversion
    ("29463-7", 150.0, "[lb_av]", 150 * 0.45359237),
    ("2157-6", 1.0, "ukat/L", 60.0),                      # enzyme activity: 1 ukat = 60 U
    ("2157-6", 250.0, "[IU]/L", 250.0),
])
def test_conversions(units, loinc, value, unit, expected):
    v, u, status = units.normalize(loinc, value, unit)
    assert v == pytest.approx(expected, rel=1e-6)
    assert u == load_lab_table()[loinc].unit
    assert status in ("converted", "canonical")


@pytest.mark.parametrize("loinc,unit,status", [
    ("2339-0", "furlong", "incompatible"),
    ("2339-0", "[foo_bar]", "unknown_unit"),
    ("2339-0", "U/L", "incompatible"),              # activity is not a concentration
    ("2157-6", "mg/dL", "incompatible"),           # no molar mass for an enzyme
    ("2339-0", None, "no_unit"),
    ("12345-6", "mg", "no_canonical"),
])
def test_unknown_units_flagged_not_guessed(units, loinc, unit, status):
    v, u, s = units.normalize(loinc, 3.0, unit)
    assert s == status
    if status != "no_canonical":
        assert v is None
    else:
        assert v == 3.0 and u == "mg"


def test_hpo_mapping(hpo):
    assert hpo.version.endswith("2025-01-16")
    assert hpo.map("http://snomed.info/sct", "38341003", "Hypertension") == ("HP:0000822", "xref")
    assert hpo.map("http://snomed.info/sct", "000000", "Seizure (finding)") == ("HP:0001250", "label")
    assert hpo.map("http://human-phenotype-ontology.org", "HP:0001250", None) == ("HP:0001250", "source")
    assert hpo.map("http://snomed.info/sct", "000000", "Not a phenotype at all") == (None, None)
    obsolete = next(t for t in hpo.terms.values() if t.obsolete and t.replaced_by)
    assert hpo.map(None, obsolete.id, None)[0] == obsolete.replaced_by
    t = hpo.terms["HP:0001250"]
    assert t.name == "Seizure" and t.synonyms and "HP:0012638" in t.parents


def test_scrub_own_identifiers_and_patterns():
    patient = {"id": "abc-123", "name": [{"given": ["Ada"], "family": "Lovelacey"}], "birthDate": "1950-12-10",
               "telecom": [{"value": "617-555-0199"}], "identifier": [{"value": "MRN0042"}],
               "address": [{"line": ["12 Analytical Way"], "city": "Byronton", "postalCode": "02139"}]}
    own = compile_terms(patient_phi_terms(patient))
    text = ("Ada Lovelacey (MRN0042), born 12/10/1950, lives at 12 Analytical Way, Byronton 02139. "
            "Phone 617-555-0199, ada@example.com, SSN 999-00-1234. Seen March 3, 2021 and 2021-03-04. "
            "Adaptive gait training; lovelace-like habitus. Hemoglobin 12.5 g/dL, 3 episodes.")
    out = scrub_text(text, own)
    for s in ["Ada ", "Lovelacey", "MRN0042", "12/10/1950", "Analytical", "Byronton", "02139", "617-555-0199",
              "ada@example.com", "999-00-1234", "March 3, 2021", "2021-03-04"]:
        assert s not in out, s
    # word boundaries: clinical words that contain a name are kept, numbers with units too
    assert "Adaptive gait training" in out and "12.5 g/dL" in out and "3 episodes" in out

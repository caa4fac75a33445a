"""The one query resolver (issue 18): every form resolved by QuerySpec, one rule for HPO ids."""

from __future__ import annotations

import pytest

from raretarget.query.spec import OBSOLETE, UNKNOWN, QuerySpec, require_one_form, resolve_terms


@pytest.fixture(scope="module")
def hpo():
    from raretarget.ingest.phenotypes import PhenotypeMapper

    return PhenotypeMapper()


def test_obsolete_ids_follow_replaced_by_unknown_ids_are_dropped_with_notes(hpo):
    old = next(t for t in hpo.terms.values() if t.obsolete and t.replaced_by)
    gone = next((t for t in hpo.terms.values() if t.obsolete and not t.replaced_by), None)
    terms = ["HP:0001250", old.id, "HP:9999999"] + ([gone.id] if gone else [])
    notes: dict = {}
    assert resolve_terms(terms, hpo, notes) == ["HP:0001250", old.replaced_by]
    assert notes[old.id] == f"replaced_by {old.replaced_by}" and notes["HP:9999999"] == UNKNOWN
    assert gone is None or notes[gone.id] == OBSOLETE
    assert "HP:0001250" not in notes


def test_spec_forms_and_lazy_ontology(hpo):
    calls = []

    def ontology():
        calls.append(1)
        return hpo

    s = QuerySpec.resolve("proximal weakness", ontology=ontology)
    assert s.form == "text" and s.query_text(hpo) == "proximal weakness" and not calls   # no term: nothing parsed
    s = QuerySpec.resolve(phenotypes=["HP:0001250", "HP:9999999"], excluded=["HP:0001252"], ontology=ontology)
    assert calls and s.form == "phenotypes" and s.observed == ("HP:0001250",) and s.excluded == ("HP:0001252",)
    assert s.notes == {"HP:9999999": UNKNOWN} and "HP:9999999" in s.dropped()
    assert s.phenotype_text(hpo).startswith(hpo.terms["HP:0001250"].name) and "; no " in s.phenotype_text(hpo)
    s.require_searchable()                                   # one known observed term: searchable
    with pytest.raises(ValueError, match="unknown HPO term.*HP:9999999"):
        QuerySpec.resolve(phenotypes=["HP:9999999"], ontology=hpo).require_searchable()


def test_exactly_one_form_for_a_search():
    assert require_one_form(patient="pt-1") == "patient"
    with pytest.raises(ValueError, match="exactly one"):
        require_one_form("x", phenotypes=["HP:0001250"])
    with pytest.raises(ValueError, match="exactly one"):
        require_one_form()


def test_phenopacket_terms_are_the_query_terms(hpo):
    from conftest import DATA

    from raretarget.query.phenopacket import parse_phenopacket

    pp = DATA / "phenopackets" / "marfan_like.json"
    s = QuerySpec.resolve(phenopacket=pp, ontology=hpo)
    parsed = parse_phenopacket(pp)
    assert s.form == "phenopacket" and s.phenopacket is not None
    assert list(s.observed) == resolve_terms(parsed.observed, hpo)
    assert list(s.excluded) == resolve_terms(parsed.excluded, hpo)

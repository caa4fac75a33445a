"""Issue 17, items 3-7 and 10: bad inputs under tests/data/bad/ are quarantined with a code and a field path,
never echo their values, never make raretarget open another file, never stop the rest of a file, and
conflicting duplicates are reported. Counts per file reconcile from what was written."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import DATA, store_text
from raretarget import Engine
from raretarget.ingest.reasons import REASONS

BAD = DATA / "bad" / "fhir"


def _ingest(tmp_path, *names):
    eng = Engine.open(tmp_path / "S", create=True)
    rep = eng.ingest([BAD / n for n in names])
    return eng, rep


def _ledger_ok(eng):
    led = eng.sql("select records, accepted, ignored, quarantined, conflicts from ingested").to_pylist()
    assert led and all(r["records"] == r["accepted"] + r["ignored"] + r["quarantined"] + r["conflicts"] for r in led), led
    q = eng.sql("select code from quarantine").column(0).to_pylist()
    assert "unaccounted" not in q and all(c in REASONS for c in q)
    return led


def test_attachment_urls_never_opened(tmp_path):
    eng, rep = _ingest(tmp_path, "attachment_urls.ndjson")
    texts = eng.sql("select text from notes").column(0).to_pylist()
    assert texts == ["Inline note: mild ataxia."]
    codes = sorted(q.code for q in rep.quarantine)
    assert codes == ["attachment_url_refused"] * 3                       # d1 (file://), d2 (../..), d3 (relative)
    assert eng.sql("select count(*) from reports").column(0)[0].as_py() == 1   # the report row; its url not read
    everything = store_text(eng.store.root)
    assert "root:" not in everything and "SECRET-LOCAL-FILE-CONTENT" not in everything
    fields = {q.field for q in rep.quarantine}
    assert fields == {"DocumentReference.content.attachment"}
    _ledger_ok(eng)


def test_reasons_are_codes_and_never_echo_values(tmp_path, capsys):
    eng, rep = _ingest(tmp_path, "phi_in_values.ndjson")
    assert rep.quarantined == 6             # c1's conditional reference is taken as a patient identifier
    assert {q.code for q in rep.quarantine} == {"value_not_number", "unknown_resource_type", "broken_reference",
                                                "reference_not_patient", "attachment_not_text", "malformed_record"}
    by_code = {q.code: q for q in rep.quarantine}
    assert by_code["value_not_number"].field == "Observation.valueQuantity.value"
    assert by_code["broken_reference"].field == "subject.reference"
    shown = "\n".join(str(q) for q in rep.quarantine) + rep.summary()
    store = store_text(eng.store.root)
    for secret in ("Featherstonehaugh", "Bartholomew"):
        assert secret not in shown and secret not in store
    # the raw record is kept on the secure side only
    raw = "\n".join(eng.store.read_links("quarantine").column("raw").to_pylist())
    assert "Featherstonehaugh" in raw
    _ledger_ok(eng)


def test_one_bad_date_quarantines_one_record_only(tmp_path):
    eng, rep = _ingest(tmp_path, "date_overflow.ndjson")
    # the patient's shift is +-d days (never 0): exactly one of year 9999 / year 1 leaves the calendar
    assert [q.code for q in rep.quarantine] == ["date_out_of_range"]
    assert rep.records == 5
    n_obs = eng.sql("select count(*) from observations").column(0)[0].as_py()
    n_cond = eng.sql("select count(*) from conditions").column(0)[0].as_py()
    assert n_obs + n_cond == 3 and n_obs >= 2                      # the records after the bad one got in
    assert eng.sql("select count(*) from patients").column(0)[0].as_py() == 1
    (led,) = _ledger_ok(eng)
    assert led == {"records": 5, "accepted": 4, "ignored": 0, "quarantined": 1, "conflicts": 0}


def test_conflicting_duplicates_reported_identical_ones_not(tmp_path):
    eng, rep = _ingest(tmp_path, "conflict_bundle.json", "conflict_a.ndjson", "conflict_b.ndjson")
    conflicts = [q for q in rep.quarantine if q.code == "conflicting_duplicate"]
    assert rep.conflicts == 2 and len(conflicts) == 2 and rep.quarantined == 0
    assert {q.field for q in conflicts} == {"Observation.id", "Condition.id"}
    # the first version is kept, the conflicting one is listed (raw on the secure side), never dropped silently
    assert eng.sql("select original_value from observations order by 1").column(0).to_pylist() == [80.0, 100.0]
    assert eng.sql("select display from conditions").column(0).to_pylist() == ["Ataxia"]
    assert eng.sql("select count(*) from quarantine where code = 'conflicting_duplicate'").column(0)[0].as_py() == 2
    raw = eng.store.read_links("quarantine").column("raw").to_pylist()
    assert any("250" in r for r in raw) and any("Seizure" in r for r in raw)
    led = _ledger_ok(eng)
    assert sum(r["conflicts"] for r in led) == 2
    assert rep.duplicates >= 1                                  # the identical re-send (meta aside) is a duplicate


def test_implausible_values_and_bom(tmp_path):
    eng, rep = _ingest(tmp_path, "implausible_values.ndjson", "bom.ndjson", "bom_bundle.json")
    codes = sorted(q.code for q in rep.quarantine)
    assert codes == ["malformed_json", "value_implausible", "value_implausible", "value_not_number", "value_not_number"]
    vals = eng.sql("select original_value, value from observations order by 1").to_pylist()
    assert [v["original_value"] for v in vals] == [95.0, 101.0]
    assert all(v["value"] is not None and abs(v["value"]) < 1e6 for v in vals)
    assert eng.sql("select count(*) from patients").column(0)[0].as_py() == 3      # both BOM files read
    assert "not_utf8" not in codes
    _ledger_ok(eng)


def test_link_folder_is_private(tmp_path):
    eng, _ = _ingest(tmp_path, "phi_in_values.ndjson", "date_overflow.ndjson")
    links = eng.store.links
    entries = [links] + list(links.rglob("*"))
    assert len(entries) > 4
    for p in entries:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_vep_csq_with_wrong_field_count_is_quarantined(tmp_path):
    eng = Engine.open(tmp_path / "S", create=True)
    rep = eng.ingest([DATA / "bad" / "vcf" / "csq_wrong_fields.vcf"])
    assert sorted((q.code, q.field, q.record) for q in rep.quarantine) == [
        ("vcf_bad_annotation", "INFO/CSQ", "line 6"), ("vcf_bad_annotation", "INFO/CSQ", "line 8")]
    rows = eng.sql("select pos, gene, consequence, impact from variants").to_pylist()
    assert rows == [{"pos": 200, "gene": "FBN1", "consequence": "missense_variant", "impact": "MODERATE"}]
    (led,) = _ledger_ok(eng)
    assert led["records"] == 3 and led["accepted"] == 1 and led["quarantined"] == 2


def test_dicom_without_patient_id_is_flagged(tmp_path):
    eng = Engine.open(tmp_path / "S", create=True)
    eng.ingest([DATA / "dicom" / "SC_rgb_jpeg.dcm", DATA / "dicom" / "CT_small.dcm"])
    rows = {r["modality"]: r for r in eng.sql("select modality, patient_id, patient_link from images").to_pylist()}
    links = sorted((r["patient_id"] is None, r["patient_link"]) for r in rows.values())
    assert links == [(False, "patient_id"), (True, "none")]
    _ledger_ok(eng)

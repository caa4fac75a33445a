"""Real Synthea data (../shared/data/fhir): scale, units, HPO mapping, and no identifier in the store."""

from __future__ import annotations

import tarfile

import orjson
import pytest

from raretarget import Engine
from conftest import shared, store_text

pytestmark = pytest.mark.realdata
N_BUNDLES = 40


@pytest.fixture(scope="module")
def synthea(tmp_path_factory):
    src = shared("fhir", "synthea_r4_dev.tar.xz")
    dest = tmp_path_factory.mktemp("synthea")
    files = []
    with tarfile.open(src, "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json") and "Information" not in m.name:
                tf.extract(m, dest, filter="data")
                files.append(dest / m.name)
                if len(files) >= N_BUNDLES:
                    break
    return files


def _identifiers(resources) -> set[str]:
    """Every fake identifier Synthea put in Patients: names, SSN/MRN/licence/passport, phone, address, ids."""
    out: set[str] = set()
    for r in resources:
        if r.get("resourceType") != "Patient":
            continue
        out.add(r["id"])
        for n in r.get("name", []):
            out.update(n.get("given", []))
            out.add(n.get("family", ""))
        for i in r.get("identifier", []):
            out.add(i.get("value", ""))
        for t in r.get("telecom", []):
            out.add(t.get("value", ""))
        for a in r.get("address", []):
            out.update(a.get("line", []))
        for e in r.get("extension", []):
            if e.get("url", "").endswith("mothersMaidenName"):
                out.add(e["valueString"])
    return {s for s in out if s and len(s) >= 5}


def test_synthea_bundles_leave_no_identifier_in_store(synthea, tmp_path):
    eng = Engine.open(tmp_path / "store", create=True)
    rep = eng.ingest(synthea)
    assert rep.quarantined == 0
    st = eng.status()["tables"]
    assert st["patients"] == len(synthea) and st["observations"] > 1000 and st["conditions"] > 50
    resources = [e["resource"] for f in synthea for e in orjson.loads(f.read_bytes())["entry"]]
    ids = _identifiers(resources)
    ids |= {f.name for f in synthea} | {r["id"] for r in resources[:2000]}
    assert len(ids) > 5 * len(synthea)
    text = store_text(eng.store.root)
    leaked = sorted(s for s in ids if s in text)
    assert not leaked, f"{len(leaked)} identifiers leaked, e.g. {leaked[:5]}"
    # unit normalisation covered every Synthea lab with a table entry
    bad = eng.sql("select count(*) from observations where unit_status in ('unknown_unit','incompatible','no_unit')")
    assert bad.column(0)[0].as_py() == 0
    # SNOMED conditions reach HPO through hp.obo xrefs (e.g. hypertension, prediabetes, obesity)
    mapped = eng.sql("select count(*) filter (where hpo_id is not null) * 1.0 / count(*) from conditions").column(0)[0]
    assert mapped.as_py() > 0.1


def test_bulk_ndjson_notes_scrubbed(tmp_path):
    src = shared("fhir", "bulk_ndjson_10_patients")
    eng = Engine.open(tmp_path / "store", create=True)
    rep = eng.ingest([src])
    assert eng.status()["tables"]["notes"] == 1215
    assert all(q.code == "missing_resource_type" for q in rep.quarantine)   # only the export's log.ndjson
    import gzip

    resources = [orjson.loads(line) for line in gzip.open(src / "Patient.000.ndjson.gz")]
    ids = _identifiers(resources)
    text = store_text(eng.store.root)
    leaked = sorted(s for s in ids if s in text)
    assert not leaked, f"leaked: {leaked[:5]}"
    # notes keep their clinical content
    n = eng.sql("select count(*) from notes where text like '%Chief Complaint%'").column(0)[0].as_py()
    assert n > 1000

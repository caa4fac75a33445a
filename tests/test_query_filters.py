"""Structured filters (DuckDB over the store) that restrict vector search to matching patients."""

from __future__ import annotations

import pytest

from raretarget import Engine
from raretarget.query.filters import LabFilter, allowed_patients
from raretarget.vocab.variants import plp_sql


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    from raretarget.cohort import generate

    tmp = tmp_path_factory.mktemp("q")
    generate(tmp / "cohort", n_patients=30, seed=5)
    e = Engine.open(tmp / "store", create=True)
    e.ingest([tmp / "cohort"])
    return e


def test_where_genes_labs_intersect(eng):
    everyone = set(eng.sql("select patient_id from patients").column(0).to_pylist())
    assert allowed_patients(eng.sql) is None
    females = allowed_patients(eng.sql, where="sex = 'female'")
    assert females and females < everyone
    assert females == set(eng.sql("select patient_id from patients where sex='female'").column(0).to_pylist())
    gene, carriers = eng.sql(f"select gene, list(distinct patient_id) from variants where {plp_sql('clinvar')} "
                             "group by gene order by count(*) desc limit 1").to_pylist()[0].values()
    plp = allowed_patients(eng.sql, genes=[gene], pathogenic_only=True)
    assert plp == set(carriers)
    assert allowed_patients(eng.sql, genes=[gene]) >= plp
    both = allowed_patients(eng.sql, where="sex = 'female'", genes=[gene], pathogenic_only=True)
    assert both == females & plp
    loinc, v = eng.sql("select loinc, median(value) from observations where unit_status in ('canonical','converted') "
                       "group by loinc order by loinc limit 1").to_pylist()[0].values()
    high = allowed_patients(eng.sql, labs=[LabFilter(loinc, ">", v)])
    low = allowed_patients(eng.sql, labs=[(loinc, "<=", v)])
    assert high and low and high | low <= everyone


def test_bad_filters_refused(eng):
    for bad in ("1=1; drop table patients", "sex = 'x' -- comment", "true; load httpfs"):
        with pytest.raises(ValueError):
            allowed_patients(eng.sql, where=bad)
    with pytest.raises(ValueError):
        allowed_patients(eng.sql, labs=[("2157-6", "like", 3)])

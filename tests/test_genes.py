"""GeneNormalizer: approved / alias / ambiguous / unknown / missing, ids, speed, packaged table."""

import gzip
import time
from pathlib import Path

import pytest

from raretarget.ingest.genes import GeneNormalizer, default_table


@pytest.fixture(scope="module")
def genes():
    return GeneNormalizer()


def _table_rows():
    with gzip.open(default_table(), "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f]


def test_packaged_table_small_and_complete():
    p = default_table()
    assert p.exists() and p.stat().st_size < 2_000_000
    header, rows = _table_rows()
    assert header == ["entrez_id", "symbol", "name", "gene_type", "chromosome", "aliases", "ensembl_gene_ids", "omim_ids"]
    types = {r["gene_type"] for r in rows}
    assert {"protein-coding", "ncRNA"} <= types
    assert sum(r["gene_type"] == "protein-coding" for r in rows) > 19000


def test_approved_case_insensitive(genes):
    assert genes.normalize("BRCA1") == ("BRCA1", "approved")
    assert genes.normalize("brca1") == ("BRCA1", "approved")
    assert genes.normalize(" Tp53 ") == ("TP53", "approved")


def test_alias_and_previous_symbols(genes):
    # previous symbols are in NCBI's alias list: both come back as 'alias'
    assert genes.normalize("MLL") == ("KMT2A", "alias")
    assert genes.normalize("FAM134B") == ("RETREG1", "alias")
    assert genes.normalize("mut") == ("MMUT", "alias")


def test_ambiguous_alias_is_not_guessed(genes):
    header, rows = _table_rows()
    owners = {}
    for r in rows:
        for a in r["aliases"].split("|"):
            if a:
                owners.setdefault(a.upper(), set()).add(r["symbol"])
    symbols = {r["symbol"].upper() for r in rows}
    amb = sorted(a for a, s in owners.items() if len(s) > 1 and a not in symbols)[:50]
    assert amb
    for a in amb:
        assert genes.normalize(a) == (None, "ambiguous"), a
    assert genes.normalize("p34") == (None, "ambiguous")
    assert set(genes.candidates("p34")) == owners["P34"]


def test_approved_wins_over_alias_of_other_gene(genes):
    header, rows = _table_rows()
    symbols = {r["symbol"].upper(): r["symbol"] for r in rows}
    clash = [(a, r["symbol"]) for r in rows for a in r["aliases"].split("|")
             if a and a.upper() in symbols and symbols[a.upper()] != r["symbol"]]
    assert clash
    for a, _other in clash[:50]:
        assert genes.normalize(a) == (symbols[a.upper()], "approved")


def test_ids_unknown_missing(genes):
    assert genes.normalize("ENSG00000012048") == ("BRCA1", "approved")
    assert genes.normalize("ENSG00000012048.23") == ("BRCA1", "approved")
    assert genes.normalize("672") == ("BRCA1", "approved")
    assert genes.normalize("NOTAGENE1") == (None, "unknown")
    assert genes.normalize("999999999") == (None, "unknown")
    for empty in (None, "", "  ", "."):
        assert genes.normalize(empty) == (None, "missing")


def test_mitochondrial_hgnc_symbols(genes):
    assert genes.normalize("MT-ND1") == ("MT-ND1", "approved")
    assert genes.normalize("MT-CO1") == ("MT-CO1", "approved")
    assert genes.normalize("MT-TF") == ("MT-TF", "approved")
    assert genes.normalize("MTCYB") == ("MT-CYB", "alias")


def test_info(genes):
    i = genes.info("brca1")
    assert i["symbol"] == "BRCA1" and i["entrez_id"] == 672 and i["chromosome"] == "17"
    assert i["gene_type"] == "protein-coding" and "113705" in i["omim_ids"]
    assert genes.info("MLL")["symbol"] == "KMT2A"
    assert genes.info("p34") is None and genes.info("NOTAGENE1") is None


def test_load_fast_and_no_singleton():
    t = time.perf_counter()
    a = GeneNormalizer()
    dt = time.perf_counter() - t
    assert dt < 0.5, f"gene table load took {dt:.2f}s"
    b = GeneNormalizer()
    assert a is not b and len(a) == len(b) > 60000


def test_build_script_reproduces_packaged_table(tmp_path):
    src = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "genes" / \
        "ncbi_gene_human_symbols_aliases_2022-09-12.tsv.gz"
    if not src.exists():
        pytest.skip(f"source gene table not present at {src}")
    import importlib.util
    spec = importlib.util.spec_from_file_location("bgt", Path(__file__).resolve().parents[1] / "scripts" / "build_gene_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "genes.tsv.gz"
    mod.build(src, out)
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(default_table().read_bytes())

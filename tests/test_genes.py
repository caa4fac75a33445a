"""GeneNormalizer: approved / alias / ambiguous / unknown / missing, ids, speed, packaged table."""

import gzip
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


def test_no_singleton():
    # (load time is measured in benchmarks/bench_rank_vcf.py, not asserted here: the machine is shared)
    a = GeneNormalizer()
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


# ---- one current vocabulary with the knowledge base (issue 16) -----------------------------------------------

def test_current_symbols_of_hpo3_are_approved_and_old_ones_map_forward(genes):
    # hpo3's HPO release uses these symbols; the NCBI 2022 table had the old ones
    for new, old in (("CIROZ", "C1orf127"), ("CPAP", "CENPJ"), ("VMA12", "TMEM199"), ("COXFA4", "NDUFA4")):
        assert genes.normalize(new) == (new, "approved")
        assert genes.normalize(old) == (new, "previous")
        assert genes.normalize(old.lower()) == (new, "previous")
    # NDUFA4 is also an alias of another gene: the previous symbol still maps to its own gene, not 'ambiguous'
    assert genes.info("NDUFA4")["entrez_id"] == 4697
    assert genes.info("CIROZ")["entrez_id"] == 148345
    assert genes.candidates("CENPJ") == ["CPAP"]


def test_every_hpo3_gene_symbol_is_approved_with_its_ncbi_id(genes):
    """The knowledge base's gene vocabulary (hpo3 Ontology.genes) and the variant table's agree: each named hpo3
    gene normalises to itself, and its NCBI gene id to the same symbol. Fails when hpo3 moves to a release with
    newer symbols until scripts/build_gene_table.py is re-run."""
    from raretarget.vocab.hpo import ontology

    Ontology = ontology()
    bad = []
    for g in Ontology.genes:
        if not g.name or g.name == "-":
            continue
        if genes.normalize(g.name) != (g.name, "approved") or genes.normalize(str(g.id))[0] != g.name:
            bad.append((g.id, g.name, genes.normalize(g.name)))
    assert not bad, bad[:10]


def test_symbol_updates_are_dated_and_sourced():
    from raretarget.ingest.genes import symbol_updates_table

    lines = symbol_updates_table().read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["entrez_id", "ncbi_2022_symbol", "symbol", "source"]
    rows = [l.split("\t") for l in lines[1:]]
    assert ["148345", "C1orf127", "CIROZ"] in [r[:3] for r in rows]
    assert all(r[3].startswith("HPO 2025-11-24 via hpo3 ") for r in rows)
    # the table itself carries the renaming: new symbol, old symbol first among the aliases
    header, table = _table_rows()
    ciroz = next(r for r in table if r["entrez_id"] == "148345")
    assert ciroz["symbol"] == "CIROZ" and ciroz["aliases"].split("|")[0] == "C1orf127"


def test_druggability_table_uses_current_symbols():
    from raretarget.prioritize.knowledge import load_druggability

    d = load_druggability()
    assert "COXFA4" in d and "NDUFA4" not in d and d["COXFA4"]["pharos_tdl"] == "Tclin"
    assert "CPAP" in d and "CENPJ" not in d

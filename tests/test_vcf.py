"""VCF reader: rows per sample × carried allele, annotation picking, accounting, robustness, privacy."""

import gzip
import shutil
from pathlib import Path

import pytest

from raretarget import Engine
from raretarget.ingest import vcf as V

DATA = Path(__file__).parent / "data" / "vcf"
SHARED_VCF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vcf"


def _lines(path: Path) -> tuple[list[str], list[list[str]]]:
    raw = path.read_bytes()
    header, data = [], []
    for line in raw.decode("utf-8", "replace").splitlines():
        (header if line.startswith("#") else data).append(line)
    return header[-1].split("\t")[9:], [l.split("\t") for l in data]


def _expected_rows(path: Path) -> list[tuple]:
    """Independent tiny parser: (chrom, pos, alt, sample_index, zygosity) for every carried allele."""
    samples, data = _lines(path)
    out = []
    for f in data:
        alts = f[4].split(",")
        chrom = V.normalize_chrom(f[0])
        for si, s in enumerate(f[9:]):
            gt = s.split(":")[0].replace("|", "/").split("/")
            for k, alt in enumerate(alts, 1):
                n = gt.count(str(k))
                if n:
                    z = "hemi" if len(gt) == 1 else ("hom_alt" if n == len(gt) else "het")
                    out.append((chrom, int(f[1]), alt, si, z))
    return sorted(out)


def _ingest(tmp_path, *paths):
    eng = Engine.open(tmp_path / "s", create=True)
    return eng, eng.ingest(list(paths))


def _ledger(eng):
    return eng.sql("select records, accepted, ignored, quarantined from ingested").to_pylist()


def test_vep_multisample_rows_zygosity_and_patients(tmp_path):
    p = DATA / "vep_multi.vcf"
    eng, rep = _ingest(tmp_path, p)
    exp = _expected_rows(p)
    samples, data = _lines(p)
    got = eng.sql("select chrom, pos, alt, patient_id, zygosity from variants").to_pylist()
    assert rep.accepted["variants"] == len(exp) == len(got)
    # patient ids are the keyed pseudonyms of the sample names
    pid = {eng.pseudo.patient(s): i for i, s in enumerate(samples)}
    assert sorted((r["chrom"], r["pos"], r["alt"], pid[r["patient_id"]], r["zygosity"]) for r in got) == exp
    assert {z for *_, z in exp} == {"het", "hom_alt", "hemi"}
    # accounting: every data line is a record; a line without carrier is ignored
    carried = {(c, p_) for c, p_, *_ in exp}
    no_carrier = sum((V.normalize_chrom(f[0]), int(f[1])) not in carried for f in data)
    assert no_carrier >= 1
    assert _ledger(eng) == [{"records": len(data), "accepted": len(data) - no_carrier, "ignored": no_carrier, "quarantined": 0}]
    assert rep.ignored == {"vcf_site_without_carrier": no_carrier}
    assert eng.sql("select distinct chrom from variants order by 1").column(0).to_pylist() == ["1", "MT", "X"]


def test_vep_annotation_choice(tmp_path):
    eng, _ = _ingest(tmp_path, DATA / "vep_multi.vcf")
    rows = {(r["pos"], r["alt"]): r for r in eng.sql("select * from variants").to_pylist()}
    r = rows[(100, "G")]
    # equal-severity missense: the CANONICAL=YES transcript wins; intron entry loses on severity
    assert (r["consequence"], r["impact"]) == ("missense_variant", "MODERATE")
    assert r["hgvsc"] == "ENST00000000001.4:c.30A>G" and r["hgvsp"] == "ENSP00000000001.4:p.Lys10Arg"
    assert (r["gene"], r["gene_raw"], r["gene_status"]) == ("KMT2A", "MLL", "alias")
    assert r["clinvar"] == "likely_pathogenic"
    assert r["af"] == pytest.approx(0.0001)
    # multi-allelic indels: VEP's minimised alleles (first base dropped) matched to CT / CTT
    a1, a2 = rows[(200, "CT")], rows[(200, "CTT")]
    assert (a1["consequence"], a1["gene"], a1["gene_raw"], a1["gene_status"]) == ("frameshift_variant", None, "p34", "ambiguous")
    assert (a2["consequence"], a2["gene"], a2["gene_status"]) == ("inframe_insertion", "BRCA1", "approved")
    assert a1["af"] == pytest.approx(0.002) and a2["af"] == pytest.approx(0.0003)
    assert a1["clinvar"] == a2["clinvar"] == "pathogenic/likely_pathogenic"
    # MANE entry preferred over canonical at equal severity; chrM → MT
    m = rows[(500, "C")]
    assert m["hgvsc"] == "ENST00000361390.2:c.10T>C" and m["gene"] == "MT-ND1" and m["zygosity"] == "hemi"
    x = rows[(400, "T")]
    assert (x["gene"], x["gene_status"], x["hgvsp"], x["filter"]) == (None, "unknown", "p.Gly1=", None)
    assert rows[(100, "G")]["filter"] == "PASS" and rows[(100, "G")]["qual"] == 50.0


def test_most_severe_term_order():
    order = [t for t, _ in V.CONSEQUENCE_ORDER]
    assert order[:7] == ["transcript_ablation", "splice_acceptor_variant", "splice_donor_variant", "stop_gained",
                         "frameshift_variant", "stop_lost", "start_lost"]
    assert order[-2:] == ["intergenic_variant", "sequence_variant"] and len(set(order)) == len(order)
    assert V._most_severe_mc("SO:0001627|intron_variant,SO:0001587|nonsense") == ("stop_gained", "HIGH")


def test_snpeff_ann(tmp_path):
    p = DATA / "snpeff.vcf"
    eng, rep = _ingest(tmp_path, p)
    rows = {(r["pos"], r["alt"]): r for r in eng.sql("select * from variants").to_pylist()}
    assert len(rows) == len(_expected_rows(p))
    a = rows[(43045712, "A")]
    assert (a["consequence"], a["impact"], a["gene"], a["hgvsp"]) == ("stop_gained", "HIGH", "BRCA1", "p.Arg35*")
    t = rows[(43045712, "T")]
    assert (t["consequence"], t["gene"], t["zygosity"]) == ("upstream_gene_variant", "NBR2", "het")
    s = rows[(43045800, "G")]
    assert (s["gene"], s["gene_raw"], s["gene_status"], s["zygosity"]) == ("RETREG1", "FAM134B", "alias", "hom_alt")


def test_sites_only_clinvar_like(tmp_path):
    p = DATA / "sites_only.vcf"
    eng, rep = _ingest(tmp_path, p)
    _, data = _lines(p)
    with_alt = [f for f in data if f[4] != "."]
    rows = {r["pos"]: r for r in eng.sql("select * from variants").to_pylist()}
    assert len(rows) == sum(len(f[4].split(",")) for f in with_alt)
    assert all(r["patient_id"] is None and r["zygosity"] is None for r in rows.values())
    r = rows[43044295]
    assert (r["gene"], r["gene_status"], r["clinvar"], r["consequence"]) == ("BRCA1", "approved", "pathogenic", "frameshift_variant")
    assert r["af"] == pytest.approx(0.00002)
    assert rows[43045000]["gene"] == "NBR2" and rows[43045000]["consequence"] == "stop_gained"
    assert rows[32315000]["clinvar"] == "conflicting_classifications_of_pathogenicity|association"
    assert _ledger(eng) == [{"records": len(data), "accepted": len(with_alt), "ignored": len(data) - len(with_alt),
                             "quarantined": 0}]


def test_bad_lines_quarantined_rest_kept(tmp_path):
    p = DATA / "bad_lines.vcf"
    eng, rep = _ingest(tmp_path, p)
    raw = p.read_bytes().split(b"\n")
    nhead = sum(l.startswith(b"#") for l in raw)
    ndata = sum(1 for l in raw if l and not l.startswith(b"#"))
    q = {x.record: x.reason for x in rep.quarantine}
    line_of = {l.split(b"\t")[1]: i + 1 for i, l in enumerate(raw) if l and not l.startswith(b"#")}
    assert q[f"line {line_of[b'1x00']}"] == "vcf_bad_pos: POS is not a positive integer [POS]"
    assert q[f"line {line_of[b'1100']}"].startswith("vcf_column_count")
    assert q[f"line {line_of[b'1200']}"].startswith("vcf_bad_gt")
    assert q[f"line {line_of[b'1300']}"].startswith("vcf_unknown_contig")
    assert q[f"line {line_of[b'1700']}"].startswith("not_utf8")
    assert len(q) == 5
    # the good lines around them (declared GL contig, undeclared standard contig, the line after) are all in
    pos = set(eng.sql("select pos from variants").column(0).to_pylist())
    assert pos == {1000, 1400, 1600, 1800}
    led = _ledger(eng)[0]
    assert led["records"] == ndata and led["quarantined"] == 5 and led["ignored"] == 1
    assert led["records"] == led["accepted"] + led["ignored"] + led["quarantined"]
    # the raw bad line goes to the secure link folder only
    assert eng.store.read_links("quarantine").num_rows == 5
    assert nhead == 5


def test_htslib_aborts_on_bad_line_but_reader_does_not(tmp_path):
    """Documents why the pre-scan exists: cyvcf2 stops the whole iteration at a malformed line."""
    import cyvcf2

    got = []
    with pytest.raises(Exception):
        for v in cyvcf2.VCF(str(DATA / "bad_lines.vcf")):
            got.append(v.POS)
    assert got == [1000]


def test_restart_after_unexpected_htslib_error(tmp_path, monkeypatch):
    # a line the pre-scan lets through but htslib rejects (simulated): quarantined, the rest still read
    src = (DATA / "vep_multi.vcf").read_text().replace("\t99\tPASS", "\t9\x009\tPASS")
    p = tmp_path / "nul.vcf"
    p.write_text(src)
    monkeypatch.setattr(V, "_QUAL_RE", __import__("re").compile(rb"[^\t]*"))
    eng, rep = _ingest(tmp_path, p)
    _, data = _lines(p)
    led = _ledger(eng)[0]
    assert led["records"] == len(data) and led["records"] == led["accepted"] + led["ignored"] + led["quarantined"]
    assert led["quarantined"] == 1 and "htslib" in rep.quarantine[0].reason
    assert 500 in set(eng.sql("select pos from variants").column(0).to_pylist())


def test_gzip_and_truncated_gzip(tmp_path):
    src = (DATA / "vep_multi.vcf").read_bytes()
    gz = tmp_path / "a.vcf.gz"
    gz.write_bytes(gzip.compress(src))
    eng, rep = _ingest(tmp_path, gz)
    full = rep.accepted["variants"]
    assert full == len(_expected_rows(DATA / "vep_multi.vcf")) and not rep.quarantine
    # truncated: the part before the cut is kept, the cut is one quarantine entry
    big = src + b"".join(b"1\t%d\t.\tA\tG\t50\tPASS\t.\tGT:DP\t0/1:1\t0/0:1\t0/0:1\n" % (10000 + i) for i in range(3000))
    blob = gzip.compress(big)
    tr = tmp_path / "t" / "b.vcf.gz"
    tr.parent.mkdir()
    tr.write_bytes(blob[: len(blob) // 2])
    eng2 = Engine.open(tmp_path / "s2", create=True)
    rep2 = eng2.ingest([tr])
    assert len(rep2.quarantine) == 1 and "truncated" in rep2.quarantine[0].reason
    n = rep2.accepted["variants"]
    assert full < n < full + 3000
    led = _ledger(eng2)[0]
    assert led["records"] == led["accepted"] + led["ignored"] + led["quarantined"]
    # garbage behind a gzip magic number
    bad = tmp_path / "u" / "c.vcf.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    rep3 = Engine.open(tmp_path / "s3", create=True).ingest([bad])
    assert len(rep3.quarantine) == 1 and "gzip" in rep3.quarantine[0].reason


def test_sample_names_never_in_store_and_reingest_adds_nothing(tmp_path):
    eng, rep = _ingest(tmp_path, DATA)
    names = set()
    for p in DATA.glob("*.vcf"):
        names.update(_lines(p)[0])
    assert names
    blob = b"".join(f.read_bytes() for f in (tmp_path / "s").rglob("*") if f.is_file())
    for n in names:
        assert n.encode() not in blob, n
    # the secure side does hold them (that is what links are for)
    assert names <= set(eng.store.read_links("ids").column("original").to_pylist())
    before = eng.status()["tables"]["variants"]
    rep2 = eng.ingest([DATA])
    assert rep2.files_already_ingested == rep.files and eng.status()["tables"]["variants"] == before
    # a copy under another name is the same content → skipped too
    cp = tmp_path / "copy.vcf"
    shutil.copy(DATA / "vep_multi.vcf", cp)
    assert eng.ingest([cp]).files_already_ingested == 1


def test_same_sample_name_links_to_same_patient(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    eng.ingest([DATA / "vep_multi.vcf"])
    s = _lines(DATA / "vep_multi.vcf")[0][0]
    assert eng.pseudo.patient(s) in set(eng.sql("select patient_id from variants").column(0).to_pylist())


def test_vep_allele_keys():
    assert V._vep_keys("C", ["CT", "CTT"]) == {"T": 0, "TT": 1, "CT": 0, "CTT": 1}
    assert V._vep_keys("CA", ["C"])["-"] == 0
    assert V._vep_keys("C", ["CT", "A"]) == {"CT": 0, "A": 1}      # mixed first bases: no trimming
    assert V._vep_keys("A", ["G"]) == {"G": 0}


# ---- real data -----------------------------------------------------------------------------------

def _need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"real data not present: {p} (../shared/data/vcf is only on the build machine)")
    return p


@pytest.mark.realdata
def test_scout_trio_real(tmp_path):
    p = _need(SHARED_VCF / "scout_demo_trio" / "643594.clinical.vcf.gz")
    eng, rep = _ingest(tmp_path, p)
    assert not rep.quarantine, [str(q) for q in rep.quarantine]
    with gzip.open(p, "rt") as f:
        ndata = sum(1 for l in f if not l.startswith("#"))
    led = _ledger(eng)[0]
    assert led["records"] == ndata == 680 and led["accepted"] + led["ignored"] == ndata
    t = eng.sql("select count(distinct patient_id) n, count(*) rows from variants").to_pylist()[0]
    assert t["n"] == 3 and t["rows"] >= led["accepted"]
    st = dict(eng.sql("select gene_status, count(*) from variants group by 1").to_pylist() and
              [tuple(r.values()) for r in eng.sql("select gene_status, count(*) c from variants group by 1").to_pylist()])
    assert st.get("approved", 0) / t["rows"] > 0.9 and st.get("ambiguous", 0) / t["rows"] < 0.02
    assert eng.sql("select count(*) from variants where clinvar is not null").column(0)[0].as_py() > 0
    assert eng.sql("select count(*) from variants where consequence is null").column(0)[0].as_py() / t["rows"] < 0.05


@pytest.mark.realdata
def test_clinvar_subset_real(tmp_path):
    p = _need(SHARED_VCF / "clinvar_subset" / "clinvar_20260226_GRCh38_subset.vcf.gz")
    eng, rep = _ingest(tmp_path, p)
    assert not rep.quarantine, [str(q) for q in rep.quarantine][:5]
    led = _ledger(eng)[0]
    assert led["records"] == 69302 and led["accepted"] + led["ignored"] == led["records"]
    assert eng.sql("select count(*) from variants where patient_id is not null or zygosity is not null").column(0)[0].as_py() == 0
    st = {r["gene_status"]: r["c"] for r in eng.sql("select gene_status, count(*) c from variants group by 1").to_pylist()}
    assert st["approved"] / sum(st.values()) > 0.98
    top = eng.sql("select gene, count(*) c from variants group by 1 order by 2 desc limit 3").column(0).to_pylist()
    assert set(top) == {"BRCA2", "APC", "BRCA1"}
    cl = {r["clinvar"]: r["c"] for r in eng.sql("select clinvar, count(*) c from variants group by 1").to_pylist()}
    with gzip.open(p, "rt") as f:
        exp = {}
        for l in f:
            if not l.startswith("#"):
                c = l.split("\t")
                if c[4] != "." and ";CLNSIG=" in ";" + c[7]:
                    v = (";" + c[7]).split(";CLNSIG=")[1].split(";")[0].lower()
                    exp[v] = exp.get(v, 0) + 1
    assert cl["pathogenic"] == exp["pathogenic"] > 12000
    assert cl["likely_pathogenic"] == exp["likely_pathogenic"]
    assert cl["pathogenic/likely_pathogenic"] == exp["pathogenic/likely_pathogenic"]


# ---- store-free reading for ranking (issue 16) -----------------------------------------------------------------

_DIRECT_KEY = ("chrom", "pos", "ref", "alt", "gene", "gene_raw", "gene_status", "consequence", "impact", "hgvsc",
               "hgvsp", "clinvar", "af", "revel", "cadd_phred", "spliceai", "zygosity", "qual", "filter")


def _key(r):
    return tuple(round(r[c], 6) if isinstance(r[c], float) else r[c] for c in _DIRECT_KEY)


@pytest.mark.parametrize("name", ["vep_multi.vcf", "snpeff.vcf", "sites_only.vcf", "bad_lines.vcf",
                                  "vep_predictions.vcf"])
def test_read_variants_gives_the_rows_ingest_stores(tmp_path, name):
    """Same reader semantics without a store: per sample, the rows of Engine.ingest (annotation pick, gene
    normalisation, ClinVar, AF, zygosity, QUAL/FILTER) and the same quarantined lines and codes."""
    p = DATA / name
    eng, rep = _ingest(tmp_path, p)
    samples, _ = _lines(p)
    stored = eng.sql("select * from variants").to_pylist()
    for si in range(len(samples)) if samples else [None]:
        pid = eng.pseudo.patient(samples[si]) if si is not None else None
        want = sorted(_key(r) for r in stored if r["patient_id"] == pid)
        try:
            t, problems = V.read_variants(p, eng.resources, sample=si, require_gene=False)
            got = sorted(_key(r) for r in t.to_pylist())
        except V.NoUsableVariant:
            got = []
        assert got == want, (name, si)
    assert sorted((q.record, q.code) for q in rep.quarantine) == sorted((r, c) for r, c, _ in problems.quarantined)


def test_read_variants_never_returns_sample_names(tmp_path):
    names = ["SAMPLE_ALPHA_7731", "SAMPLE_BETA_8842", "SAMPLE_GAMMA_9953", "PROBAND_NAME_Q7", "MOTHER_NAME_Q8",
             "BAD_SAMPLE_A", "PRIVATE_SAMPLE_ZX81"]
    seen = []
    for f, kw in (("vep_multi.vcf", {}), ("vep_multi.vcf", {"sample": "SAMPLE_GAMMA_9953"}),
                  ("old_symbols_two_samples.vcf", {}), ("bad_lines.vcf", {"require_gene": False}),
                  ("no_csq_grch38.vcf", {})):
        t, pr = V.read_variants(DATA / f, **kw)
        assert "patient_id" not in t.column_names and "source_ref" not in t.column_names
        seen.append(repr(t.to_pylist()) + repr(pr) + repr(pr.notes) + repr(pr.quarantined))
    for f, kw in (("no_carried_allele.vcf", {}), ("old_symbols_two_samples.vcf", {"sample": "SAMPLE_NOT_THERE"})):
        with pytest.raises(ValueError) as e:
            V.read_variants(DATA / f, **kw)
        seen.append(str(e.value))
    text = "\n".join(seen)
    assert not any(n in text for n in names + ["SAMPLE_NOT_THERE"])


def test_read_variants_sample_choice():
    p = DATA / "old_symbols_two_samples.vcf"
    first, pr = V.read_variants(p)
    assert pr.n_samples == 2 and pr.sample_index == 0 and "the first" in pr.notes["sample"]
    assert sorted(zip(first.column("gene").to_pylist(), first.column("zygosity").to_pylist())) == \
        [("CIROZ", "het"), ("CPAP", "het")]
    second, pr2 = V.read_variants(p, sample="MOTHER_NAME_Q8")
    same, _ = V.read_variants(p, sample=1)
    assert pr2.sample_index == 1 and "the first" not in pr2.notes["sample"]
    assert sorted(zip(second.column("gene").to_pylist(), second.column("zygosity").to_pylist())) == \
        [("BRCA1", "het"), ("CIROZ", "hom_alt")] == \
        sorted(zip(same.column("gene").to_pylist(), same.column("zygosity").to_pylist()))
    with pytest.raises(ValueError, match="not in the VCF"):
        V.read_variants(p, sample=5)


def test_read_variants_maps_old_symbols_to_the_current_ones():
    t, _ = V.read_variants(DATA / "old_symbols_two_samples.vcf")
    rows = {r["gene_raw"]: r for r in t.to_pylist()}
    assert rows["C1orf127"]["gene"] == "CIROZ" and rows["C1orf127"]["gene_status"] == "previous"
    assert rows["CENPJ"]["gene"] == "CPAP" and rows["C1orf127"]["impact"] == "HIGH"


def test_read_variants_no_usable_variant_is_an_error():
    with pytest.raises(V.NoUsableVariant, match="carries no alt allele.*vcf_site_without_carrier"):
        V.read_variants(DATA / "no_carried_allele.vcf")
    # a file of only bad lines: the reason codes are in the message
    with pytest.raises(V.NoUsableVariant, match="vcf_bad_pos"):
        V.read_variants(DATA / "bad_lines.vcf", sample=1)


def test_genes_by_position_without_csq():
    """No CSQ/ANN: genes from the shipped GRCh38 intervals (build from chr1's contig length), 1-based closed,
    impact unknown (NULL), a deletion spanning a coding and an ncRNA gene goes to the coding one."""
    t, pr = V.read_variants(DATA / "no_csq_grch38.vcf")
    assert pr.build == "GRCh38" and pr.by_position == 4
    got = {r["pos"]: r for r in t.to_pylist()}
    assert got[10946473]["gene"] == "CIROZ" and got[10982037]["gene"] == "CIROZ"   # first and last base of CIROZ
    assert got[10982038]["gene"] is None                                           # one past its end
    assert got[24900000]["gene"] == "CPAP"
    assert got[43125360]["gene"] == "BRCA1"                                        # not NBR2 (ncRNA) as well
    placed = [r for r in t.to_pylist() if r["gene"]]
    assert all(r["gene_status"] == "position" and r["impact"] is None and r["consequence"] is None for r in placed)
    assert "GRCh38" in pr.notes["genes_by_position"] and "1-based" in pr.notes["genes_by_position"]
    # the same positions read as GRCh37 fall elsewhere: the build matters
    t37, pr37 = V.read_variants(DATA / "no_csq_grch38.vcf", build="hg19", require_gene=False)
    assert pr37.build == "GRCh37" and "CIROZ" not in t37.column("gene").to_pylist()


def test_gene_intervals_both_builds():
    from raretarget.ingest.intervals import detect_build, gene_intervals

    b38, b37 = gene_intervals("GRCh38"), gene_intervals("GRCh37")
    assert "BRCA1" in b38.genes_at("17", 43044295) and "BRCA1" not in b38.genes_at("17", 43044294)
    assert "BRCA1" in b37.genes_at("17", 41196312) and "BRCA1" not in b37.genes_at("17", 43044295)
    assert "TP53" in b37.genes_at("17", 7577120) and "TP53" in b38.genes_at("17", 7674220)
    assert len(b38.rows()) > 25000 and len(b37.rows()) > 20000
    assert detect_build(None, {"1": 249250621}) == "GRCh37" and detect_build("file:///ref/hg38.fa", {}) == "GRCh38"
    assert detect_build("", {}) is None


def test_unknown_build_says_so(tmp_path):
    src = (DATA / "no_csq_grch38.vcf").read_text().splitlines()
    p = tmp_path / "no_build.vcf"
    p.write_text("\n".join(l for l in src if not l.startswith("##contig")) + "\n")   # no length, no ##reference
    with pytest.raises(V.NoUsableVariant, match="build='GRCh37' or 'GRCh38'"):
        V.read_variants(p)
    t, pr = V.read_variants(p, build="GRCh38")
    assert pr.build == "GRCh38" and "CIROZ" in t.column("gene").to_pylist()
    with pytest.raises(V.NoUsableVariant, match="none lies in a GRCh38 gene"):
        V.read_variants(DATA / "bad_lines.vcf")          # chr1:1000-1500: no gene there


def test_in_silico_predictions_from_csq(tmp_path):
    """REVEL / CADD PHRED / SpliceAI from the picked CSQ entry (issue 16): the canonical entry's values, not another
    transcript's, and CSQ's CADD before an INFO ``CADD``; a dbNSFP-style ``a&b`` value counts as its maximum;
    SpliceAI is the maximum of the four delta scores; absent or ``.`` is null. Ingest stores the same values."""
    p = DATA / "vep_predictions.vcf"
    t, _ = V.read_variants(p)
    got = {(r["gene"], r["consequence"]): (r["revel"], r["cadd_phred"], r["spliceai"]) for r in t.to_pylist()}
    assert got[("FBN1", "missense_variant")] == pytest.approx((0.93, 28.1, 0.01))
    assert got[("TGFBR2", "missense_variant")] == pytest.approx((0.05, 3.2, 0.0))
    assert got[("SMAD3", "synonymous_variant")][0] is None
    assert got[("SMAD3", "synonymous_variant")][1] == pytest.approx(22.5)       # INFO CADD when CSQ has none
    assert got[("SMAD3", "synonymous_variant")][2] == pytest.approx(0.88)
    assert got[("SMAD3", "missense_variant")][0] is None and got[("SMAD3", "missense_variant")][2] is None
    eng, _ = _ingest(tmp_path, p)
    stored = eng.sql("select gene, revel, cadd_phred, spliceai from variants order by pos").to_pylist()
    assert [r["revel"] for r in stored] == pytest.approx([0.93, 0.05, None, None], nan_ok=True) or \
        [round(r["revel"], 4) if r["revel"] is not None else None for r in stored] == [0.93, 0.05, None, None]
    # a file without prediction fields gives null columns
    t2, _ = V.read_variants(DATA / "vep_multi.vcf")
    assert t2.column("revel").null_count == t2.num_rows and t2.column("spliceai").null_count == t2.num_rows


def test_a_store_written_before_the_prediction_columns_still_reads(tmp_path):
    """A variants part without ``revel``/``cadd_phred``/``spliceai`` (written by an older release) reads with those
    columns null, through Store.read and SQL alike."""
    import pyarrow.parquet as pq

    eng, _ = _ingest(tmp_path, DATA / "vep_multi.vcf")
    parts = eng.store.parts("variants")
    assert parts
    for part in parts:
        old = pq.read_table(part)
        pq.write_table(old.drop_columns(["revel", "cadd_phred", "spliceai"]), part)
    n = eng.store.count("variants")
    t = eng.store.read("variants")
    assert t.num_rows == n and t.column("revel").null_count == n
    assert eng.sql("select count(*) as n from variants where spliceai is null").column("n")[0].as_py() == n


@pytest.mark.realdata
def test_scout_vep104_predictions_real():
    """Scout's demo VEP 104 output: REVEL and the SpliceAI plugin's delta scores in CSQ, CADD as an INFO field
    (MIP/vcfanno style); the values of the file, read for ranking."""
    t, _ = V.read_variants(_need(SHARED_VCF / "scout_demo_trio" / "vep104_annotated.vcf"), require_gene=False)
    r = t.to_pylist()[0]
    assert r["gene"] == "NPHP4" and r["consequence"] == "missense_variant"
    assert r["revel"] == pytest.approx(0.664) and r["cadd_phred"] == pytest.approx(24.3, abs=1e-4)
    assert r["spliceai"] == pytest.approx(0.04)


def _to_bcf(src: Path, bcf: Path) -> Path:
    """The same records written as BCF by htslib (cyvcf2)."""
    import cyvcf2

    r = cyvcf2.VCF(str(src))
    w = cyvcf2.Writer(str(bcf), r, mode="wb")
    for v in r:
        w.write_record(v)
    w.close()
    r.close()
    return bcf


def test_read_variants_bcf_equals_text_for_each_sample(tmp_path):
    """A BCF goes through the ingest loop restricted to the chosen genotype column: per sample, the same rows as
    the text reader of the same file."""
    src = DATA / "vep_multi.vcf"
    bcf = _to_bcf(src, tmp_path / "vep_multi.bcf")
    for si in range(3):
        try:
            want = sorted(_key(x) for x in V.read_variants(src, sample=si, require_gene=False)[0].to_pylist())
        except V.NoUsableVariant:
            want = []
        try:
            got = sorted(_key(x) for x in V.read_variants(bcf, sample=si, require_gene=False)[0].to_pylist())
        except V.NoUsableVariant:
            got = []
        assert got == want, si
    assert any(V.read_variants(bcf, sample=si, require_gene=False)[0].num_rows for si in range(3))


def test_wide_vep_entries_the_picked_entry_gives_its_late_fields(tmp_path):
    """VEP --everything entries have ~80 fields; an entry is chosen on its first fields (allele, consequence,
    impact, symbol, canonical / MANE) and the chosen one's later fields (AF, ClinVar, REVEL) are read, not the
    first entry's; an entry with more fields than the header names is still a misaligned annotation."""
    fmt = (["Allele", "Consequence", "IMPACT", "SYMBOL", "Gene", "Feature", "HGVSc", "HGVSp", "CANONICAL", "MANE_SELECT"]
           + [f"X{i}" for i in range(40)] + ["gnomADe_AF", "CLIN_SIG", "REVEL_score"])

    def entry(**kw) -> str:
        return "|".join(kw.get(k, "") for k in fmt)

    intron = entry(Allele="T", Consequence="intron_variant", IMPACT="MODIFIER", SYMBOL="FBN1", gnomADe_AF="0.2",
                   CLIN_SIG="benign", REVEL_score="0.01")
    missense = entry(Allele="T", Consequence="missense_variant", IMPACT="MODERATE", SYMBOL="FBN1",
                     HGVSp="p.(Cys1117Tyr)", CANONICAL="YES", gnomADe_AF="1e-05", CLIN_SIG="likely_pathogenic",
                     REVEL_score="0.93")
    body = [f"15\t48700000\t.\tC\tT\t50\tPASS\tCSQ={intron},{missense},{intron}\tGT\t0/1",
            f"15\t48700100\t.\tC\tT\t50\tPASS\tCSQ={intron}|extra\tGT\t0/1"]
    t, pr = V.read_variants(_wide_vcf(tmp_path / "wide.vcf", body, fmt))
    [r] = t.to_pylist()
    assert (r["gene"], r["consequence"], r["impact"], r["hgvsp"]) == ("FBN1", "missense_variant", "MODERATE",
                                                                       "p.(Cys1117Tyr)")
    assert r["af"] == pytest.approx(1e-5) and r["clinvar"] == "likely_pathogenic" and r["revel"] == pytest.approx(0.93)
    assert pr.codes() == {"vcf_bad_annotation": 1}


def test_vep_entries_of_unequal_width_in_one_record(tmp_path):
    """One alt allele, entries of different widths in one record: an entry shorter than the header is read (its
    missing late fields are empty) and the most severe entry still wins; an entry wider than the header is a
    misaligned annotation even when a shorter entry in the same record makes the record's total field count right."""
    fmt = ["Allele", "Consequence", "IMPACT", "SYMBOL", "HGVSc", "HGVSp", "CANONICAL", "gnomADe_AF", "REVEL_score"]

    def entry(**kw) -> str:
        return "|".join(kw.get(k, "") for k in fmt)

    intron = entry(Allele="T", Consequence="intron_variant", IMPACT="MODIFIER", SYMBOL="FBN1", gnomADe_AF="0.2")
    missense = entry(Allele="T", Consequence="missense_variant", IMPACT="MODERATE", SYMBOL="FBN1",
                     HGVSp="p.(Cys1117Tyr)", gnomADe_AF="1e-05", REVEL_score="0.9")
    short = missense.rsplit("|", 1)[0]                    # no REVEL field at all
    body = [f"15\t48700000\t.\tC\tT\t50\tPASS\tCSQ={intron},{short}\tGT\t0/1",
            f"15\t48700100\t.\tC\tT\t50\tPASS\tCSQ={intron}|extra,{short}\tGT\t0/1"]
    p = _wide_vcf(tmp_path / "uneven.vcf", body, fmt)
    for mx in (None, 0.05):
        t, pr = V.read_variants(p, max_af=mx)
        [r] = t.to_pylist()
        assert (r["pos"], r["consequence"], r["hgvsp"], r["revel"]) == (48700000, "missense_variant", "p.(Cys1117Tyr)",
                                                                         None)
        assert r["af"] == pytest.approx(1e-5)
        assert pr.codes() == {"vcf_bad_annotation": 1}


def _wide_vcf(path: Path, body: list[str], fmt: list[str], extra_head: tuple[str, ...] = ()) -> Path:
    head = ["##fileformat=VCFv4.2", "##contig=<ID=15>", *extra_head,
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
            '##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: '
            + "|".join(fmt) + '">', "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1"]
    path.write_text("\n".join(head + body) + "\n")
    return path


def test_max_af_drops_exactly_the_common_alleles(tmp_path):
    """``read_variants(max_af=)`` (the ranking's read) gives the rows of a full read whose AF is below
    ``max_af`` or unknown, counts the others as ``vcf_common_allele``, and quarantines what the full read does:
    a record is skipped early only when every CSQ entry says common, so the picked entry's frequency decides."""
    fmt = (["Allele", "Consequence", "IMPACT", "SYMBOL", "HGVSp", "CANONICAL"] + [f"X{i}" for i in range(30)]
           + ["gnomADe_AF", "CLIN_SIG"])

    def entry(af: str, cons: str = "intron_variant", imp: str = "MODIFIER", allele: str = "T", **kw) -> str:
        d = {"Allele": allele, "Consequence": cons, "IMPACT": imp, "SYMBOL": "FBN1", "gnomADe_AF": af, **kw}
        return "|".join(d.get(k, "") for k in fmt)

    mis = dict(cons="missense_variant", imp="MODERATE", CANONICAL="YES")
    rows = [
        ",".join([entry("0.2"), entry("0.2", **mis), entry("0.2")]),          # common on every entry: skipped early
        ",".join([entry("0.2"), entry("1e-05", **mis)]),                       # the picked (missense) entry is rare
        entry("0.01", **mis),                                                  # 1 %: scored (rarity > 0)
        entry("", **mis),                                                      # unknown AF: kept
        entry("0.3&0.01", **mis),                                              # several values: the largest
        ",".join([entry("0.2"), entry("0.2", **mis) + "|extra"]),              # misaligned: quarantined, not common
    ]
    body = [f"15\t{48700000 + 10 * i}\t.\tC\tT\t50\tPASS\tCSQ={c}\tGT\t0/1" for i, c in enumerate(rows)]
    # a multi-allelic record: the common allele goes, the rare one stays (decided on the picked entries)
    multi = ",".join([entry("0.3", **mis), entry("2e-05", allele="G", **mis)])
    body.append(f"15\t48700100\t.\tC\tT,G\t50\tPASS\tCSQ={multi}\tGT\t1/2")
    p = _wide_vcf(tmp_path / "af.vcf", body, fmt)
    full, pf = V.read_variants(p)
    got, pg = V.read_variants(p, max_af=0.05)
    want = [r for r in full.to_pylist() if r["af"] is None or r["af"] < 0.05]
    assert got.to_pylist() == want
    assert [(r["pos"], r["alt"]) for r in want] == [(48700010, "T"), (48700020, "T"), (48700030, "T"),
                                                     (48700100, "G")]
    assert want[0]["af"] == pytest.approx(1e-5) and want[2]["af"] is None
    assert pg.ignored["vcf_common_allele"] == full.num_rows - len(want) == 3
    assert pg.codes() == pf.codes() == {"vcf_bad_annotation": 1}
    # a BCF goes through the ingest loop (no early test): the same rows, dropped on the picked AF
    gb, pb = V.read_variants(_to_bcf(p, tmp_path / "af.bcf"), max_af=0.05)
    assert sorted(_key(x) for x in gb.to_pylist()) == sorted(_key(x) for x in want)
    assert pb.ignored["vcf_common_allele"] == 3
    # nothing but common alleles: a clear error, no empty table
    only = _wide_vcf(tmp_path / "common.vcf", body[:1], fmt)
    with pytest.raises(V.NoUsableVariant, match="is common.*vcf_common_allele ×1"):
        V.read_variants(only, max_af=0.05)
    assert V.read_variants(only)[0].num_rows == 1


def test_max_af_from_info_when_csq_has_no_frequency(tmp_path):
    fmt = ["Allele", "Consequence", "IMPACT", "SYMBOL"]
    body = [f"15\t{48700000 + i}\t.\tC\tT\t50\tPASS\tCSQ=T|missense_variant|MODERATE|FBN1;gnomAD_AF={af}\tGT\t0/1"
            for i, af in enumerate(["0.3", "0.001", "."])]
    p = _wide_vcf(tmp_path / "info.vcf", body, fmt, ('##INFO=<ID=gnomAD_AF,Number=A,Type=Float,Description="AF">',))
    t, pr = V.read_variants(p, max_af=0.05)
    assert t.column("pos").to_pylist() == [48700001, 48700002] and pr.ignored["vcf_common_allele"] == 1
    assert t.column("af").to_pylist()[0] == pytest.approx(0.001)

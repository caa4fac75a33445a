"""Build ``raretarget/data/druggability.tsv.gz``: one row per gene, the druggability evidence
used by the ``druggability`` scorer (:mod:`raretarget.prioritize.scorers`).

Inputs (a developer's copy of ``../shared/data/druggability``; see its SOURCES.md):

* ``finan2017_druggable_genome.csv`` – Finan et al. 2017 (Sci Transl Med 9:eaag1166) druggable-genome
  tiers (Tier 1 / 2 / 3A / 3B), via chembl/tractability_pipeline_v2 (MIT). Symbols are 2016-era: each row is
  normalised through its Ensembl gene id, then its symbol, with :class:`raretarget.ingest.genes.GeneNormalizer`.
* ``doe_prediction/druggability.csv`` – Pharos target development level (Tclin/Tchem/Tbio/Tdark) per gene,
  from robchiral/DOE-prediction (MIT).
* ``doe_prediction/drug_mechanisms_chembl_gtp_only.csv`` – drug→target mechanisms with max clinical phase,
  derived from ChEMBL 35 (CC BY-SA 3.0) and Guide to PHARMACOLOGY (CC BY-SA 4.0) (share-alike: the output keeps
  that licence and attribution). The file carries internal drug ids only (no drug names), so
  ``example_drugs`` lists ``DOE-<id>`` ids with drug type and mechanism.

Output columns: gene, finan_tier (1, 2, 3A, 3B or empty), small_mol_druggable, bio_druggable (Y/N/empty),
pharos_tdl, n_drugs (distinct drugs with a mechanism on the gene), max_phase (highest clinical phase,
4 = approved; empty when unknown), drug_types, mechanisms, example_drugs (up to 3, highest phase first).

    python scripts/build_druggability_table.py [--src ../shared/data/druggability] [--out raretarget/data/druggability.tsv.gz]
"""

from __future__ import annotations

import argparse
import csv
import gzip
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "druggability"))
    ap.add_argument("--out", default=str(ROOT / "raretarget" / "data" / "druggability.tsv.gz"))
    a = ap.parse_args(argv)
    src = Path(a.src)

    from raretarget.ingest.genes import GeneNormalizer

    norm = GeneNormalizer()

    def symbol(*cands: str) -> str | None:
        for c in cands:
            if not c:
                continue
            s, status = norm.normalize(c.strip())
            if s:
                return s
        return None

    rows: dict[str, dict] = defaultdict(dict)
    stats = defaultdict(int)
    with open(src / "finan2017_druggable_genome.csv", encoding="utf-8-sig", newline="") as f:
        for r in csv.DictReader(f):
            g = symbol(r["ensembl_gene_id"], r["hgnc_names"])
            if g is None:
                stats["finan_unmapped"] += 1
                continue
            tier = r["druggability_tier"].replace("Tier", "").strip()
            old = rows[g].get("finan_tier")
            if old is None or tier < old:              # "1" < "2" < "3A" < "3B": keep the best tier
                rows[g]["finan_tier"] = tier
            rows[g]["small_mol_druggable"] = r["small_mol_druggable"]
            rows[g]["bio_druggable"] = r["bio_druggable"]
    with open(src / "doe_prediction" / "druggability.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            g = symbol(r["Gene"])
            if g is None:
                stats["pharos_unmapped"] += 1
                continue
            order = {"Tclin": 0, "Tchem": 1, "Tbio": 2, "Tdark": 3}
            tdl = r["Pharos TDL"].strip()
            old = rows[g].get("pharos_tdl")
            if tdl in order and (old is None or order[tdl] < order[old]):
                rows[g]["pharos_tdl"] = tdl
    drugs: dict[str, dict[str, tuple[float, str, str]]] = defaultdict(dict)
    with open(src / "doe_prediction" / "drug_mechanisms_chembl_gtp_only.csv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            g = symbol(r["Gene"])
            if g is None:
                stats["mech_unmapped"] += 1
                continue
            try:
                ph = float(r["Phase"])
            except ValueError:
                ph = -1.0
            d = r["Internal drug ID"]
            old = drugs[g].get(d)
            if old is None or ph > old[0]:
                drugs[g][d] = (ph, r["Drug type"], r["Mechanism"])
    for g, ds in drugs.items():
        rows[g]["n_drugs"] = len(ds)
        phases = [p for p, _, _ in ds.values() if p >= 0]
        rows[g]["max_phase"] = int(max(phases)) if phases else None
        rows[g]["drug_types"] = "|".join(sorted({t for _, t, _ in ds.values()}))
        rows[g]["mechanisms"] = "|".join(sorted({m for _, _, m in ds.values() if m}))
        top = sorted(ds.items(), key=lambda kv: (-kv[1][0], int(kv[0]) if kv[0].isdigit() else 0))[:3]
        rows[g]["example_drugs"] = "|".join(
            f"DOE-{d}:{t}:{m}:phase {int(p) if p >= 0 else '?'}" for d, (p, t, m) in top)

    cols = ["gene", "finan_tier", "small_mol_druggable", "bio_druggable", "pharos_tdl", "n_drugs", "max_phase",
            "drug_types", "mechanisms", "example_drugs"]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\t".join(cols) + "\n")
        for g in sorted(rows):
            r = rows[g]
            vals = [g] + ["" if r.get(c) is None else str(r.get(c)) for c in cols[1:]]
            vals[cols.index("n_drugs")] = str(r.get("n_drugs", 0))
            f.write("\t".join(v.replace("\t", " ") for v in vals) + "\n")
    print(f"{len(rows)} genes -> {out} ({out.stat().st_size / 1e6:.2f} MB); unmapped: {dict(stats)}")


if __name__ == "__main__":
    main()

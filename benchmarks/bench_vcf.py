#!/usr/bin/env python3
"""VCF ingest throughput: variant rows/s through ``Engine.ingest`` vs bare cyvcf2 iteration (same run).

Inputs: the shared Scout trio and ClinVar subset (when ../shared/data/vcf exists) and a synthetic
multi-sample VEP-annotated VCF generated in a temp dir (default 20,000 sites × 50 samples).

    .venv/bin/python benchmarks/bench_vcf.py [--sites 20000] [--samples 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

import cyvcf2

from raretarget import Engine

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vcf"
CSQF = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|HGVSc|HGVSp|CANONICAL|gnomADe_AF"
TERMS = ["missense_variant", "synonymous_variant", "intron_variant", "stop_gained", "frameshift_variant",
         "splice_region_variant&intron_variant", "3_prime_UTR_variant"]
GENES = ["BRCA1", "TP53", "MLL", "FAM134B", "PER3", "KMT2A", "SCN1A", "CFTR", "DMD", "p34"]


def synth(path: Path, sites: int, samples: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    gts = ["0/0"] * 6 + ["0/1"] * 3 + ["1/1", "./."]
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        for c in list(range(1, 23)) + ["X"]:
            f.write(f"##contig=<ID={c}>\n")
        f.write(f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {CSQF}">\n')
        f.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        f.write('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n')
        f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"SYN{i:04d}" for i in range(samples)) + "\n")
        for i in range(sites):
            chrom = str(1 + i * 23 // sites) if i * 23 // sites < 22 else "X"
            g = rnd.choice(GENES)
            entries = []
            for t in range(3):
                term = rnd.choice(TERMS)
                entries.append(f"G|{term}|MODERATE|{g}|ENSG0000000000{t}|Transcript|ENST0000000{i:05d}{t}|protein_coding|"
                               f"ENST0000000{i:05d}{t}.1:c.{i}A>G|p.Lys{i}Arg|{'YES' if t == 0 else ''}|{rnd.random() / 100:.5f}")
            sg = "\t".join(f"{rnd.choice(gts)}:{rnd.randint(5, 60)}" for _ in range(samples))
            f.write(f"{chrom}\t{1000 + i * 10}\t.\tA\tG\t{rnd.randint(10, 900)}\tPASS\tCSQ={','.join(entries)}\tGT:DP\t{sg}\n")


def bare(path: Path) -> tuple[int, float]:
    """cyvcf2 only: iterate, touch the same fields, count carrier rows with numpy."""
    t = time.perf_counter()
    rows = 0
    for v in cyvcf2.VCF(str(path), lazy=True):
        _ = (v.CHROM, v.POS, v.REF, v.QUAL, v.FILTERS, v.INFO.get("CSQ"), v.INFO.get("CLNSIG"))
        alts = v.ALT
        g = v.genotype
        if g is None:
            rows += len(alts)
            continue
        a = g.array()[:, :-1]
        for k in range(1, len(alts) + 1):
            rows += int((a == k).any(1).sum())
    return rows, time.perf_counter() - t


def ours(path: Path, tmp: Path) -> tuple[int, float, int]:
    store = Path(tempfile.mkdtemp(dir=tmp)) / "s"
    eng = Engine.open(store, create=True)
    eng.resources.genes          # gene table load is a one-off per engine (~0.1 s): not counted per file
    t = time.perf_counter()
    rep = eng.ingest([path])
    return rep.accepted.get("variants", 0), time.perf_counter() - t, rep.quarantined


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        inputs = []
        for rel in ("scout_demo_trio/643594.clinical.vcf.gz", "clinvar_subset/clinvar_20260226_GRCh38_subset.vcf.gz"):
            if (SHARED / rel).exists():
                inputs.append((rel.split("/")[-1], SHARED / rel))
        syn = tmp / "synthetic.vcf"
        synth(syn, args.sites, args.samples)
        inputs.append((f"synthetic {args.sites} sites x {args.samples} samples (plain VCF)", syn))
        from raretarget.machine import describe

        print(f"machine: {describe()}, cyvcf2 {cyvcf2.__version__}")
        print(f"date: {dt.datetime.now().isoformat(timespec='seconds')}")
        print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
        print()
        print("| input | rows | bare cyvcf2 s | bare rows/s | Engine.ingest s | ingest rows/s | quarantined |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, p in inputs:
            b_rows, b_t = bare(p)
            o_rows, o_t, q = ours(p, tmp)
            print(f"| {name} | {o_rows:,} | {b_t:.2f} | {b_rows / b_t:,.0f} | {o_t:.2f} | {o_rows / o_t:,.0f} | {q} |")


if __name__ == "__main__":
    main()

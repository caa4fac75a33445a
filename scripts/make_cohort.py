#!/usr/bin/env python
"""Write a deterministic synthetic rare-disease cohort (FHIR + DICOM + VCF + the answer key .answer_key/truth.json).

    python scripts/make_cohort.py --patients 1000 --seed 0 --out cohort/

See ``raretarget.synth.cohort`` for what is generated and the meaning of each knob.
"""

from __future__ import annotations

import argparse
import sys
import time


def _size(s: str):
    parts = [int(x) for x in s.lower().replace("x", ",").split(",") if x]
    return parts[0] if len(parts) == 1 else tuple(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=50, help="number of patients (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output folder (fhir/, dicom/, vcf/, .answer_key/truth.json)")
    ap.add_argument("--diseases", type=int, default=10, help="number of OMIM diseases (default 10)")
    ap.add_argument("--disease-ids", nargs="*", default=None, help="explicit OMIM ids, e.g. OMIM:310200")
    ap.add_argument("--fraction-affected", type=float, default=0.5)
    ap.add_argument("--phenotype-noise", type=float, default=0.2, help="0..1 (missing/extra/imprecise terms)")
    ap.add_argument("--image-difficulty", type=float, default=0.5, help="0 easy .. 1 hard (pattern contrast)")
    ap.add_argument("--background-variants", type=int, default=40, help="non-reference background genotypes per person")
    ap.add_argument("--format", choices=["bundle", "ndjson"], default="bundle")
    ap.add_argument("--image-size", type=_size, default=64, help="N (2D NxN) or DxHxW (3D series), e.g. 16x64x64")
    ap.add_argument("--imaging-fraction", type=float, default=0.85)
    a = ap.parse_args(argv)

    from raretarget.synth.cohort import generate

    t0 = time.perf_counter()
    truth = generate(a.out, n_patients=a.patients, seed=a.seed, n_diseases=a.diseases,
                     fraction_affected=a.fraction_affected, phenotype_noise=a.phenotype_noise,
                     image_difficulty=a.image_difficulty, n_background_variants=a.background_variants,
                     fmt=a.format, image_size=a.image_size, imaging_fraction=a.imaging_fraction,
                     diseases=a.disease_ids)
    dt = time.perf_counter() - t0
    n_aff = sum(p["disease_id"] is not None for p in truth["patients"])
    print(f"wrote {len(truth['patients'])} patients ({n_aff} affected, {len(truth['diseases'])} diseases) "
          f"to {a.out} in {dt:.1f} s", file=sys.stderr)
    for d in truth["diseases"]:
        print(f"  {d['disease_id']}  {d['inheritance']:<4} {d['genes'][0]:<10} {d['image_pattern']:<8} {d['name']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

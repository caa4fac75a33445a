"""Issue 21: does a round of expert verdicts help (or at least not harm) the ranking of causal genes?

Generated cohort (``--patients``, ``--seed``); one hypothesis per disease (its first ``--terms`` HPO terms).
Round 1 ranks every disease; an "expert" (the cohort's truth) gives ``--verdicts`` verdicts on the diseases of
up to half of the diseases: up to --per-hypothesis (5) non-causal genes ranked above the causal one rejected, the causal gene
confirmed when it is in the top 10. Round 2 ranks again. Reported: the causal gene's rank per disease before/after, separately for the
reviewed hypotheses and for the other diseases (whose hypotheses got no verdict). Verdicts act per hypothesis
(rejected genes demoted, confirmed marked) — they are not yet training pairs of the encoders, so the other
diseases can only be unchanged; the figure checks exactly that.

    python benchmarks/bench_review_loop.py --patients 60 --verdicts 20 --out review_loop.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--terms", type=int, default=5)
    ap.add_argument("--verdicts", type=int, default=20)
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--per-hypothesis", type=int, default=5, help="rejections at most per hypothesis")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from raretarget import Engine
    from raretarget.cohort import generate

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "c", n_patients=a.patients, seed=a.seed)
        eng = Engine.open(tmp / "s", create=True)
        eng.ingest([tmp / "c" / "fhir", tmp / "c" / "vcf"])
        truth = json.loads((tmp / "c" / "truth.json").read_text())
        dis = [d for d in truth["diseases"] if d.get("genes")]

        def ranks():
            out = {}
            for d in dis:
                t = eng.rank_targets(phenotypes=d["hpo"][:a.terms], k=a.top)
                genes = t.column("gene").to_pylist()
                verdict = dict(zip(genes, t.column("verdict").to_pylist()))
                hit = [genes.index(g) + 1 for g in d["genes"] if g in genes and verdict.get(g) != "rejected"]
                out[d["disease_id"]] = (min(hit) if hit else None, genes,
                                        t.schema.metadata[b"hypothesis_id"].decode())
            return out
        r1 = ranks()
        reviewed, given = [], 0
        for d in dis:                       # the expert reviews hypotheses in cohort order until the round is spent
            if given >= a.verdicts or len(reviewed) >= max(1, len(dis) // 2):
                break
            rank, genes, hid = r1[d["disease_id"]]
            above = [g for g in genes[: (rank or 11) - 1] if g not in d["genes"]][:a.per_hypothesis]
            for g in above:                 # false positives above the causal gene: rejected
                if given < a.verdicts:
                    eng.review(hid, g, "rejected", reviewer="bench")
                    given += 1
            if rank is not None and rank <= 10 and given < a.verdicts:
                eng.review(hid, genes[rank - 1], "confirmed", reviewer="bench")
                given += 1
            reviewed.append(d["disease_id"])
        r2 = ranks()

    def summary(ids):
        pairs = [(r1[i][0], r2[i][0]) for i in ids]
        found = [(b, c) for b, c in pairs if b is not None and c is not None]
        return {"hypotheses": len(ids), "improved": sum(c < b for b, c in found),
                "unchanged": sum(c == b for b, c in found), "worse": sum(c > b for b, c in found),
                "median_rank_before": statistics.median([b for b, _ in found]) if found else None,
                "median_rank_after": statistics.median([c for _, c in found]) if found else None,
                "top1_before": sum(b == 1 for b, _ in found), "top1_after": sum(c == 1 for _, c in found),
                "not_in_top_before": sum(b is None for b, _ in pairs), "not_in_top_after": sum(c is None for _, c in pairs)}
    others = [d["disease_id"] for d in dis if d["disease_id"] not in reviewed]
    res = {"patients": a.patients, "seed": a.seed, "diseases": len(dis), "verdicts": given,
           "reviewed": summary(reviewed), "others": summary(others), "seconds": round(time.time() - t0, 1)}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

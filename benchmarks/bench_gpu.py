"""Every throughput figure of issue 19 in one process, step by step, printing as it goes (runs on CPU too).

    python benchmarks/bench_gpu.py [--patients 3000] [--max-epochs E] [--knowledge-steps S] [--out FILE]

1. generate ``--patients`` people with the project's cohort generator (``raretarget.synth.cohort.generate``);
2. ingest them into a temporary store (source records/s: FHIR resources + DICOM files + VCF records);
3. ``eng.train()`` with the default config (MiniLM frozen, knowledge phase on, term tables; on CUDA when
   present) – ``--max-epochs`` / ``--knowledge-steps`` only shorten it for a CPU run;
4. ``eng.embed()`` (``device="auto"``): vectors/s and source records/s over every table;
5. per modality, the trained model embedding that modality alone (notes – also clauses/s –, images,
   labs, variants, the gene vocabulary);
6. the text backbone's own ceiling: MiniLM forward alone on the notes' clauses, tokenised beforehand,
   sorted by length, in calls of ``--ceiling-tokens`` tokens (bf16 autocast on CUDA), so the text path can be
   read as a share of it. The ceiling runs every clause; the text path runs each distinct clause of a batch
   once, so with repeated boilerplate clauses its clauses/s can exceed the ceiling.

Writes a JSON of every figure (``--out``, default ``bench_gpu.json`` in the working folder). On an offline
GPU machine without the MiniLM weights use the random-weight stand-in of
``../shared/tools/gpu-carry`` (README there): the figures are then throughput only, never quality.
Times include CUDA synchronisation (every step ends with ``torch.cuda.synchronize``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def machine() -> dict:
    import torch

    try:
        from raretarget.machine import cpu_model

        cpu = cpu_model()
    except Exception:  # pragma: no cover - informational only
        cpu = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def backbone_ceiling(text_encoder, texts: list[str], tokens: int, repeats: int = 2) -> dict:
    """MiniLM forward alone on the clauses of ``texts`` (tokenised and sorted beforehand): clauses/s."""
    import numpy as np
    import torch

    from raretarget.encoders.device import inference_autocast
    from raretarget.encoders.text import split_segments

    clauses = [c for t in texts for c in split_segments(t, text_encoder.max_segments)]
    b = text_encoder.tokenize(clauses, text_encoder.clause_length)
    ids, mask = b["input_ids"], b["attention_mask"]
    lens = mask.sum(1).numpy()
    order = np.argsort(lens, kind="stable")
    dev = next(text_encoder.backbone.parameters()).device
    chunks, s = [], 0
    while s < len(order):                         # the same cut as the text path: <= tokens per call
        e = s + 1
        while e < len(order) and (e + 1 - s) * int(lens[order[e]]) <= tokens:
            e += 1
        T = max(int(lens[order[e - 1]]), 1)
        ix = torch.from_numpy(order[s:e])
        chunks.append((ids[ix, :T].to(dev), mask[ix, :T].to(dev)))
        s = e
    bb = text_encoder.backbone
    best = None
    with torch.no_grad(), inference_autocast(dev):
        for r in range(repeats + 1):              # the first pass warms up (kernels, allocator)
            sync()
            t = time.time()
            for i, m in chunks:
                bb(input_ids=i, attention_mask=m)
            sync()
            dt_ = time.time() - t
            if r and (best is None or dt_ < best):
                best = dt_
    return {"clauses": len(clauses), "distinct_clauses": len(set(clauses)), "mean_tokens": float(lens.mean()) if len(lens) else 0.0,
            "calls": len(chunks), "seconds": round(best, 3), "clauses_per_s": round(len(clauses) / best, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--max-epochs", type=int, default=None, help="default: the config's (trainer.max_epochs)")
    ap.add_argument("--knowledge-steps", type=int, default=None, help="default: the config's (1500)")
    ap.add_argument("--batch-size", type=int, default=None, help="eng.embed batch size (default: its own)")
    ap.add_argument("--ceiling-tokens", type=int, default=None, help="tokens per backbone call for the ceiling "
                    "(default: the text tower's call_tokens on the device)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_gpu.json")
    ap.add_argument("--keep", default=None, help="keep the store in this folder instead of a temporary one")
    args = ap.parse_args(argv)

    import torch

    from raretarget import Engine
    from raretarget.synth.cohort import generate
    from raretarget.encoders.data import PatientDataset, load_store_samples
    from raretarget.encoders.training import embed, load_model

    res: dict = {"machine": machine(), "args": vars(args), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    say(f"machine: {res['machine']}")
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(res, indent=1, default=str))

    tmpctx = tempfile.TemporaryDirectory() if args.keep is None else None
    tmp = Path(tmpctx.name if tmpctx else args.keep)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        # 1. generate
        t = time.time()
        generate(tmp / "cohort", n_patients=args.patients, seed=args.seed)
        files = sum(1 for p in (tmp / "cohort").rglob("*") if p.is_file())
        res["generate"] = {"patients": args.patients, "files": files, "seconds": round(time.time() - t, 2)}
        say(f"generate: {res['generate']}")
        save()

        # 2. ingest
        eng = Engine.open(tmp / "store", create=True)
        t = time.time()
        rep = eng.ingest([tmp / "cohort" / "fhir", tmp / "cohort" / "dicom", tmp / "cohort" / "vcf"])
        secs = time.time() - t
        res["ingest"] = {"records": rep.records, "files": rep.files, "seconds": round(secs, 2),
                         "records_per_s": round(rep.records / secs, 1), "accepted": dict(rep.accepted)}
        say(f"ingest: {rep.records} source records in {secs:.1f}s = {rep.records / secs:,.0f}/s")
        save()

        # 3. train, default config
        over: dict = {"eval_untrained": False}
        if args.max_epochs is not None:
            over["max_epochs"] = args.max_epochs
        if args.knowledge_steps is not None:
            over["model.knowledge.steps"] = args.knowledge_steps
        say(f"train: default config, overrides {over}")
        t = time.time()
        s = eng.train(**over)
        secs = time.time() - t
        epochs = len(s["train_loss"]) or 1
        fit = s["timings"].get("fit", 0.0)
        res["train"] = {"seconds": round(secs, 2), "timings": s["timings"], "device": s["device"],
                        "precision": s["precision"], "n_train": s["n_train"], "epochs": epochs,
                        "patient_epochs_per_s": round(s["n_train"] * epochs / fit, 1) if fit else None,
                        "knowledge": {k: s.get("knowledge", {}).get(k) for k in
                                      ("steps", "genes", "labels", "terms", "seconds", "feature_seconds",
                                       "loss_first", "loss_last")},
                        "recall": (s.get("recall") or {}).get("recall@1")}
        say(f"train: {secs:.1f}s on {s['device']} ({s['precision']}), timings {s['timings']}, "
            f"{res['train']['patient_epochs_per_s']} patient-epochs/s")
        save()

        # 4. eng.embed(), device auto
        kw = {} if args.batch_size is None else {"batch_size": args.batch_size}
        sync()
        t = time.time()
        counts = eng.embed(**kw)
        sync()
        secs = time.time() - t
        vectors = sum(counts.values())
        res["embed"] = {"counts": counts, "seconds": round(secs, 2), "vectors_per_s": round(vectors / secs, 1),
                        "source_records_per_s": round(rep.records / secs, 1), "device": Engine.device}
        say(f"eng.embed(): {vectors} vectors in {secs:.1f}s = {vectors / secs:,.0f} vectors/s, "
            f"{rep.records / secs:,.0f} source records/s; {counts}")
        save()

        # 5. per modality, the same model
        net = load_model(eng.current_model()["path"])
        dev = str(next(net.parameters()).device)
        samples = load_store_samples(eng)
        bs = args.batch_size or 128
        per: dict = {}
        for m in [x for x in ("text", "image", "labs", "variants") if x in net.encoders]:
            if m == "text":                          # a cold clause cache: the rate of new notes
                net.encoders["text"]._cache.clear()
            sync()
            t = time.time()
            tab = embed(net, samples=samples, modalities=[m], genes=False, batch_size=bs)[m]
            sync()
            secs = time.time() - t
            per[m] = {"rows": tab.num_rows, "seconds": round(secs, 3), "rows_per_s": round(tab.num_rows / secs, 1)}
            say(f"embed {m}: {tab.num_rows} rows in {secs:.2f}s = {tab.num_rows / secs:,.0f}/s")
        if "variants" in net.encoders:
            syms = list(net.encoders["variants"].genes)
            sync()
            t = time.time()
            embed(net, samples=[], modalities=[], genes=True)
            sync()
            secs = time.time() - t
            per["gene"] = {"rows": len(syms), "seconds": round(secs, 3), "rows_per_s": round(len(syms) / secs, 1)}
            say(f"embed genes: {len(syms)} in {secs:.2f}s = {len(syms) / secs:,.0f}/s")
        res["per_modality"] = per
        save()

        # 6. the text backbone's own ceiling on the same notes
        if "text" in net.encoders:
            from raretarget.encoders.text import split_segments

            te = net.encoders["text"]
            ds = PatientDataset(samples, False)
            texts = [it["text"] for it in (ds[i] for i in range(len(ds))) if it["text"]]
            n_clauses = sum(len(split_segments(x, te.max_segments)) for x in texts)
            ceil = backbone_ceiling(te, texts, args.ceiling_tokens or te.call_tokens(dev))
            res["text_ceiling"] = ceil
            tp = per.get("text")
            if tp:
                path_cps = n_clauses / tp["seconds"]
                tp["clauses"] = n_clauses
                tp["clauses_per_s"] = round(path_cps, 1)
                res["text_path_share_of_ceiling"] = round(path_cps / ceil["clauses_per_s"], 3)
            say(f"text backbone ceiling: {ceil}; text path {per.get('text', {}).get('clauses_per_s')} clauses/s "
                f"= {res.get('text_path_share_of_ceiling')} of it")
        res["device"] = dev
        res["total_seconds"] = round(time.time() - T0, 1)
        save()
        say(f"done in {res['total_seconds']}s; figures in {out.resolve()}")
    finally:
        if tmpctx is not None:
            tmpctx.cleanup()
    return res


if __name__ == "__main__":
    main()

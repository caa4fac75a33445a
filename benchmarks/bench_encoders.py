"""Encoder throughput: training samples/s and embedding records/s per modality, on this machine.

    python benchmarks/bench_encoders.py [--patients 300] [--epochs 3] [--device auto]

A generated cohort (raretarget.synth.cohort) is ingested into a temporary store; the default model
(MiniLM text tower frozen, MONAI image CNN, lab MLP, variant set encoder, embed_dim 256) is trained
with ``Engine.train`` and each modality is embedded separately. Training samples/s counts patients
per second of ``Trainer.fit`` (all towers, all modality pairs, knowledge pairs included); embedding
records/s counts the records of one modality per second of inference (batch 128, no grad).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    from raretarget.machine import cpu_model

    cpu = cpu_model()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto|cpu|gpu")
    args = ap.parse_args(argv)

    from raretarget import Engine
    from raretarget.synth.cohort import generate
    from raretarget.encoders.data import load_store_samples
    from raretarget.encoders.training import embed, load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "c", n_patients=args.patients, seed=0)
        eng = Engine.open(tmp / "s", create=True)
        eng.ingest([tmp / "c" / "fhir", tmp / "c" / "dicom", tmp / "c" / "vcf"])
        acc = {"auto": "auto", "cpu": "cpu", "gpu": "gpu"}[args.device]
        # baseline first: the same training with the frozen-text clause-feature cache off
        s0 = eng.train(max_epochs=args.epochs, accelerator=acc, eval_untrained=False,
                       **{"encoders.text.cache_size": 0})
        s = eng.train(max_epochs=args.epochs, accelerator=acc, eval_untrained=False)
        fit0, fit = s0["timings"]["fit"], s["timings"]["fit"]
        rows = [("training (all towers, fit), clause-feature cache off [baseline]", s0["n_train"] * args.epochs, fit0),
                ("training (all towers, fit)", s["n_train"] * args.epochs, fit)]
        kn = s.get("knowledge") or {}
        if kn.get("steps"):
            # knowledge phase: composed term phrases <-> genes; items = phrases (steps x genes per step)
            from raretarget.encoders.knowledge import DEFAULTS as KDEF

            n = kn["steps"] * min(KDEF["batch_size"], kn["genes"])
            rows.append((f"knowledge phase ({kn['steps']} steps, {kn.get('terms', 0)} term rows; "
                         f"label features {kn['feature_seconds']} s of it)", n, kn["seconds"]))
        model = load_model(eng.current_model()["path"], device="cuda" if s["device"].startswith("cuda") else "cpu")
        samples = load_store_samples(eng)
        tenc = model.encoders["text"]
        # text baselines (same weights, cold cache each time): whole-text mean pooling (<= max_length
        # tokens, the previous default) and clause pooling without the cache
        for label, pooling, cache in (("whole-text mean pooling, <= 128 tokens [baseline]", "mean", 0),
                                      ("clause pooling, cache off", "segments", 0)):
            tenc.pooling, tenc.cache_size = pooling, cache
            tenc._cache.clear()
            t0 = time.perf_counter()
            tabs = embed(model, samples=samples, modalities=["text"], genes=False)
            rows.append((f"embedding: text, {label}", tabs["text"].num_rows, time.perf_counter() - t0))
        tenc.pooling, tenc.cache_size = "segments", 200_000
        if getattr(tenc, "n_terms", 0):      # the term lookup's cost: the same tower with its table switched off
            ready = tenc.terms_ready.clone()
            tenc.terms_ready.zero_()
            tenc._cache.clear()
            t0 = time.perf_counter()
            tabs = embed(model, samples=samples, modalities=["text"], genes=False)
            rows.append(("embedding: text, clause pooling, term tables off [baseline]", tabs["text"].num_rows,
                         time.perf_counter() - t0))
            tenc.terms_ready.copy_(ready)
        tenc._cache.clear()
        for m in ("text", "image", "labs", "variants"):
            t0 = time.perf_counter()
            tabs = embed(model, samples=samples, modalities=[m], genes=False)
            rows.append((f"embedding: {m}", tabs[m].num_rows, time.perf_counter() - t0))
        t0 = time.perf_counter()
        tabs = embed(model, samples=samples, modalities=[], genes=True)
        rows.append(("embedding: gene vocabulary", tabs["gene"].num_rows, time.perf_counter() - t0))
    print(f"### Encoder throughput ({dt.date.today()}, {machine()}, device used: {s['device']}, "
          f"precision {s['precision']})\n")
    print(f"command: `python {' '.join(sys.argv)}`\n")
    print("| stage | items | seconds | items/s |")
    print("|---|---:|---:|---:|")
    for name, n, sec in rows:
        print(f"| {name} | {n} | {sec:.2f} | {n / sec:,.0f} |")


if __name__ == "__main__":
    main()

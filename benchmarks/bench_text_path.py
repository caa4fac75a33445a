"""Same-run A/B of the text path: before issue 19 (``transformers`` tokenizer call per batch, one padded
backbone call over a batch's new clauses) vs now (Rust batch tokenisation straight into arrays, in-batch
clause dedupe, length-sorted backbone calls of ``forward_tokens`` tokens). Also checks the vectors agree.

    python benchmarks/bench_text_path.py [--patients 200] [--rounds 3] [--device auto]

Notes come from a generated cohort (``raretarget.synth.cohort``) ingested into a temporary store, one text per
patient as ``eng.embed()`` sees it. The model is the default text tower (MiniLM, clause pooling) with a
seeded projection. Each round runs old then new with a cold clause cache; the best round counts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path


# ---- the text path as it was before issue 19 (verbatim), swapped in for the A run ----------------------
def _old_tokenize(self, texts, max_length=None):
    enc = self.tokenizer([t or "" for t in texts], padding=True, truncation=True,
                         max_length=int(max_length or self.max_length), return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _old_collate(self, values, train=False):
    import torch

    from raretarget.encoders.text import split_segments

    if self.pooling == "mean":
        return self.tokenize(values)
    segs = [split_segments(v, self.max_segments) for v in values]
    out = self.tokenize([x for s in segs for x in s], self.segment_length)
    out["segment_counts"] = torch.as_tensor([len(s) for s in segs], dtype=torch.long)
    return out


def _old_encode_rows(self, ids, mask):
    import torch

    from raretarget.encoders.text import mean_pool

    if not self._cacheable():
        out = self.backbone(input_ids=ids, attention_mask=mask)
        return mean_pool(out.last_hidden_state, mask)
    ids_c, lens = ids.detach().cpu(), mask.sum(1).cpu().tolist()
    keys = [ids_c[i, :n].numpy().tobytes() for i, n in enumerate(lens)]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
    if todo:
        t = torch.as_tensor(todo, device=ids.device)
        T = max(lens[i] for i in todo)
        out = self.backbone(input_ids=ids[t, :T], attention_mask=mask[t, :T])
        new = mean_pool(out.last_hidden_state, mask[t, :T]).float()
        if len(self._cache) + len(todo) > self.cache_size:
            self._cache.clear()
        for j, i in enumerate(todo):
            self._cache[keys[i]] = new[j]
    return torch.stack([self._cache[k] for k in keys]).to(ids.device)


@contextlib.contextmanager
def old_text_path():
    from raretarget.encoders.text import TextEncoder

    saved = {k: TextEncoder.__dict__[k] for k in ("tokenize", "collate", "_encode_rows")}
    TextEncoder.tokenize, TextEncoder.collate, TextEncoder._encode_rows = _old_tokenize, _old_collate, _old_encode_rows
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(TextEncoder, k, v)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from raretarget import Engine
    from raretarget.synth.cohort import generate
    from raretarget.encoders.data import PatientDataset, load_store_samples
    from raretarget.encoders.device import resolve_device
    from raretarget.encoders.model import MultiModalModel
    from raretarget.encoders.text import split_segments
    from raretarget.encoders.training import DEFAULTS, encode_samples

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "c", n_patients=args.patients, seed=0)
        eng = Engine.open(tmp / "s", create=True)
        eng.ingest([tmp / "c" / "fhir"])
        samples = load_store_samples(eng)
    ds = PatientDataset(samples, False)
    items = [{"text": it["text"]} for it in (ds[i] for i in range(len(ds))) if it["text"]]
    torch.manual_seed(0)
    cfg = {k: v for k, v in DEFAULTS["encoders"]["text"].items() if k not in ("terms", "term_aliases")}
    model = MultiModalModel({"text": cfg}, embed_dim=DEFAULTS["model"]["embed_dim"]).eval()
    dev = resolve_device(args.device)
    model.to(dev)
    te = model.encoders["text"]
    clauses = [c for it in items for c in split_segments(it["text"], te.max_segments)]
    print(f"{len(items)} note texts, {len(clauses)} clauses ({len(set(clauses))} distinct) on {dev}", flush=True)

    def run():
        te._cache.clear()
        t = time.time()
        enc = encode_samples(model, items, args.batch_size)["text"][1]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.time() - t, enc

    def tok_time(collate):
        t = time.time()
        for s in range(0, len(items), args.batch_size):
            collate([it["text"] for it in items[s:s + args.batch_size]])
        return time.time() - t

    old_t, new_t, old_tok, new_tok = [], [], [], []
    for r in range(args.rounds):
        with old_text_path():
            s, v_old = run()
            old_t.append(s)
            old_tok.append(tok_time(te.collate))
        s, v_new = run()
        new_t.append(s)
        new_tok.append(tok_time(te.collate))
        print(f"round {r + 1}: old {old_t[-1]:.2f}s (collate {old_tok[-1]:.3f}s), new {new_t[-1]:.2f}s "
              f"(collate {new_tok[-1]:.3f}s)", flush=True)
    diff = float(np.abs(v_old - v_new).max())
    cos = float((v_old * v_new).sum(1).min())
    res = {"device": str(dev), "texts": len(items), "clauses": len(clauses), "distinct_clauses": len(set(clauses)),
           "old_seconds": round(min(old_t), 3), "new_seconds": round(min(new_t), 3),
           "old_texts_per_s": round(len(items) / min(old_t), 1), "new_texts_per_s": round(len(items) / min(new_t), 1),
           "old_collate_seconds": round(min(old_tok), 4), "new_collate_seconds": round(min(new_tok), 4),
           "speedup": round(min(old_t) / min(new_t), 3), "max_abs_diff": diff, "min_cosine": cos,
           "torch_threads": torch.get_num_threads(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    print(json.dumps(res, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()

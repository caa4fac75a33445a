"""Knowledge alignment phase: HPO term labels (text tower) ↔ genes (gene tower), many fast steps.

With a frozen text backbone the only trainable parts of the text tower are its projection and clause
weighting, so the backbone's pooled features of every term label can be computed once
(:func:`label_features`). Each step then takes ``batch_size`` genes (walking a fresh permutation of
every gene with knowledge, so the whole vocabulary is covered many times), builds one query-like text
feature per gene – a random subset of 1…``max_terms`` of its term labels, composed with the tower's
clause weights from the cached label features: with ``pooling="segments"`` exactly what the tower
computes for the phrase "term a; term b; term c" (with ``"mean"``, the token-weighted mean only
approximates the joined phrase's feature) – and applies the symmetric InfoNCE of
:func:`.model.clip_loss` between the projected text features and the genes' embeddings
(``MultiModalModel.encode_gene_ids``).

Only the text projection / clause weighting and the variant/gene encoder are updated; the learnable
logit scale is not (the temperature is ``logit_scale`` or the model's current value).

Before the steps, when the gene encoder has a knowledge path (``feature_dim > 0``), each gene's
feature row is filled with its composed term features (:func:`fill_gene_features`), and with
``init_projection="pca"`` the text projection starts as the PCA whitening of the label features
(top ``embed_dim`` components; the gene encoder's ``know_proj`` starts as the same map and its learned
residual path is scaled down by ``residual_init_scale``). Genes then start where their annotations
put them in the text space: on 300 OMIM diseases vs 5,164 annotated genes that start alone ranks the
disease gene first for 0.78 of the term profiles (0.90 for term-level TF-IDF), and the steps refine it.

When the text tower has a term table (``terms > 0``) and the gene encoder a term path, the phase also
fills them (:func:`fill_terms`): each distinct label (by clause key) gets a row with its IDF and a random
Gaussian vector (a random projection of the term-level TF-IDF space, seeded), its exact synonyms
(``aliases``, when the tower has alias slots) become extra keys of that row, and each gene starts as
the IDF-weighted, L2-normalised sum of its terms' vectors. The steps then train the term vectors, the
gene vectors and the balance with the dense part; ``term_dropout`` of the phrases train without their
term rows (free text matches no label), which keeps genes reachable from the dense part too.
``scripts/bench_knowledge.py`` (this phase alone, 5,163 genes): 300 OMIM disease label profiles 0.93
recall@1 with term tables vs 0.85 dense only (term-level TF-IDF 0.94); the same profiles in synonyms
0.90 with synonym keys vs 0.60 dense only (word TF-IDF 0.77); 1,000 solved Phenopackets 0.26 vs 0.19
(term TF-IDF 0.20).
"""

from __future__ import annotations

import math
import random
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .base import normalize

def default_config() -> dict[str, Any]:
    """Knowledge-phase settings: ``knowledge`` of ``conf/model/contrastive.yaml`` (the one source), plus ``seed``
    (the run's seed inside ``train()``). A fresh dict per call."""
    from raretarget.config import load_yaml

    return {**load_yaml("model/contrastive.yaml")["knowledge"], "seed": 0}


def __getattr__(name: str) -> Any:
    # ``DEFAULTS`` stays importable, read lazily from the packaged YAML (no file is read at import)
    if name == "DEFAULTS":
        return default_config()
    raise AttributeError(name)


def term_idf(terms: Sequence[Sequence[int]], n_labels: int) -> torch.Tensor:
    """``log((1 + n_genes) / (1 + genes with the term)) + 1`` per label ``(n_labels,)`` (sklearn's smooth IDF)."""
    df = torch.zeros(n_labels, device="cpu")          # host-side bookkeeping over Python lists
    for ts in terms:
        df[torch.as_tensor(list(ts), dtype=torch.long, device="cpu")] += 1
    return torch.log((1 + len(terms)) / (1 + df)) + 1


@torch.no_grad()
def fill_gene_features(variant_encoder, genes: Sequence[str], terms: Sequence[Sequence[int]], feats: torch.Tensor,
                       ntok: torch.Tensor) -> int:
    """Set ``variant_encoder.gene_features`` rows: gene i -> mean of ``feats[terms[i]]`` weighted by
    IDF × token count (all other rows zero). ``feats`` ``(n_labels, F)``, ``ntok`` ``(n_labels,)``.
    Returns the number of rows filled."""
    F = int(getattr(variant_encoder, "feature_dim", 0))
    if not F:
        return 0
    if feats.shape[1] != F:
        raise ValueError(f"gene encoder feature_dim is {F} but the text backbone's features are {feats.shape[1]} wide "
                         "(set encoders.variants.feature_dim to the text backbone's hidden size, or 'auto')")
    idf = term_idf(terms, feats.shape[0])
    buf = torch.zeros_like(variant_encoder.gene_features, device="cpu")
    rows = variant_encoder.gene_ids(list(genes))
    # one copy to the host, then thousands of small gathers there (per-gene GPU gathers would each sync)
    feats_c, ntok_c = feats.float().cpu(), ntok.float().cpu()
    for r, ts in zip(rows.tolist(), terms):
        ix = torch.as_tensor(list(ts), dtype=torch.long, device="cpu")
        w = idf[ix] * ntok_c[ix]
        buf[r] = (feats_c[ix] * w[:, None]).sum(0) / w.sum()
    variant_encoder.gene_features.copy_(buf.to(variant_encoder.gene_features.device))
    return len(genes)


@torch.no_grad()
def _keys(text_encoder, texts: Sequence[str]) -> torch.Tensor:
    if not texts:
        return torch.zeros(0, dtype=torch.long, device="cpu")
    b = text_encoder.tokenize(list(texts), text_encoder.clause_length)
    return text_encoder.clause_keys(b["input_ids"], b["attention_mask"]).cpu()


@torch.no_grad()
def fill_terms(text_encoder, variant_encoder, labels: Sequence[str], genes: Sequence[str],
               terms: Sequence[Sequence[int]], seed: int = 0,
               aliases: Mapping[str, Sequence[str]] | None = None) -> tuple[torch.Tensor, int]:
    """Fill the text tower's term table and the gene encoder's term vectors (module doc).

    ``labels`` ``(n_labels,)`` strings; ``terms[i]``: label indices of ``genes[i]``; ``aliases``: label ->
    synonyms, used when the tower has alias slots (a synonym whose key is a label's, or is shared by
    two rows, is left out). Labels whose clause keys coincide (case variants) share a row. Returns the
    term row of each label ``(n_labels,)`` int64 (what :meth:`TextEncoder.term_rows` finds for that label
    as a clause) and the number of alias keys filled.
    """
    from .text import NO_KEY

    keys = _keys(text_encoder, labels)
    uniq = torch.unique(keys)                              # sorted ascending
    n, cap = len(uniq), text_encoder.n_terms
    if n > cap:
        raise ValueError(f"{n} distinct term labels but the text tower's term table has {cap} rows "
                         "(set encoders.text.terms to at least that, or 'auto')")
    label_row = torch.searchsorted(uniq, keys)
    n_alias = 0
    if text_encoder.n_aliases:
        owner: dict[int, set[int]] = {}
        alias_texts, alias_rows = [], []
        for i, lab in enumerate(labels):
            for a in (aliases or {}).get(lab, ()):
                alias_texts.append(a)
                alias_rows.append(int(label_row[i]))
        for k, r in zip(_keys(text_encoder, alias_texts).tolist(), alias_rows):
            owner.setdefault(k, set()).add(r)
        taken = set(uniq.tolist())
        extra = sorted((k, next(iter(rs))) for k, rs in owner.items() if len(rs) == 1 and k not in taken)
        extra = extra[: text_encoder.n_aliases]
        n_alias = len(extra)
        all_keys = torch.cat([uniq, torch.as_tensor([k for k, _ in extra], dtype=torch.long, device="cpu")])
        all_rows = torch.cat([torch.arange(n, device="cpu"),
                              torch.as_tensor([r for _, r in extra], dtype=torch.long, device="cpu")])
        order = torch.argsort(all_keys)
        m = len(order)
        text_encoder.term_keys.fill_(NO_KEY)
        text_encoder.term_keys[:m] = all_keys[order].to(text_encoder.term_keys.device)
        text_encoder.term_key_rows.fill_(-1)
        text_encoder.term_key_rows[:m] = all_rows[order].to(text_encoder.term_key_rows.device)
    else:
        text_encoder.term_keys.fill_(NO_KEY)
        text_encoder.term_keys[:n] = uniq.to(text_encoder.term_keys.device)
    key_terms = [sorted({int(label_row[t]) for t in ts}) for ts in terms]
    idf = term_idf(key_terms, n)
    dev = text_encoder.term_emb.device
    D = text_encoder.embed_dim
    # drawn on the host from a seeded CPU generator: the same table whatever device the model is on
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    E = torch.randn(n, D, generator=g, device="cpu") / math.sqrt(D)
    text_encoder.term_idf.zero_()
    text_encoder.term_idf[:n] = idf.to(dev)
    text_encoder.term_emb.zero_()
    text_encoder.term_emb[:n] = E.to(dev)
    text_encoder.term_scale.fill_(1.0)
    text_encoder.terms_ready.fill_(1.0)
    vec = torch.zeros_like(variant_encoder.gene_terms, device="cpu")
    for r, ts in zip(variant_encoder.gene_ids(list(genes)).tolist(), key_terms):
        ix = torch.as_tensor(ts, dtype=torch.long, device="cpu")
        w = idf[ix]
        vec[r] = (E[ix] * w[:, None]).sum(0) / w.norm().clamp_min(1e-12)
    variant_encoder.gene_terms.copy_(vec.to(variant_encoder.gene_terms.device))
    variant_encoder.term_scale.fill_(1.0)
    variant_encoder.terms_ready.fill_(1.0)
    return label_row, n_alias


@torch.no_grad()
def pca_whitening_(linear: torch.nn.Linear, feats: torch.Tensor, eps: float = 1e-3) -> None:
    """Set ``linear`` (``F -> D``) to ``x -> diag(1/sqrt(λ + eps·λmax)) Uᵀ (x - μ)`` over the top
    ``k = min(D, F, n)`` principal components of ``feats`` ``(n, F)`` (output dims past k are zero):
    outputs are centred and about unit variance per dim."""
    x = feats.double()
    mu = x.mean(0)
    xc = x - mu
    ev, evec = torch.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))
    k = min(linear.out_features, x.shape[1], len(x))
    top, lam = evec[:, -k:].flip(1), ev[-k:].flip(0)
    # on the features' device: W meets mu (and the eigenvectors) there (a CPU W crashed on CUDA, issue 19)
    W = torch.zeros(linear.out_features, x.shape[1], dtype=x.dtype, device=x.device)
    W[:k] = (top / torch.sqrt(lam.clamp_min(0) + eps * ev.max().clamp_min(1e-12))).T
    linear.weight.copy_(W.to(linear.weight.dtype))
    linear.bias.copy_((-(W @ mu)).to(linear.bias.dtype))


def _linear(module) -> torch.nn.Linear:
    if isinstance(module, torch.nn.Linear):
        return module
    lins = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if len(lins) != 1:
        raise ValueError("expected exactly one Linear in the projection")
    return lins[0]


def backbone_frozen(model) -> bool:
    """True when the model has a text tower whose backbone has no trainable parameter."""
    encs = getattr(model, "encoders", None)
    enc = encs["text"] if encs is not None and "text" in encs else None
    return enc is not None and hasattr(enc, "backbone") and not any(p.requires_grad for p in enc.backbone.parameters())


@torch.no_grad()
def label_features(text_encoder, labels: Sequence[str], batch_size: int = 256,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features ``(n, hidden)`` float32 and token counts ``(n,)`` of ``labels``
    (batched by length to limit padding)."""
    from .text import mean_pool

    was = text_encoder.training
    text_encoder.eval()
    order = sorted(range(len(labels)), key=lambda i: len(labels[i]))
    hidden = text_encoder.backbone.config.hidden_size
    feats = torch.zeros(len(labels), hidden, device="cpu")   # returned on the host (cached to disk)
    ntok = torch.ones(len(labels), device="cpu")
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            b = text_encoder.tokenize([labels[i] for i in idx], text_encoder.clause_length)   # a label = a clause
            ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            out = text_encoder.backbone(input_ids=ids, attention_mask=mask)
            feats[idx] = mean_pool(out.last_hidden_state, mask).float().cpu()
            ntok[idx] = mask.sum(1).float().cpu()
    finally:
        text_encoder.train(was)
    return feats, ntok


def cached_label_features(text_encoder, labels: Sequence[str], batch_size: int, device,
                          cache_dir: str | os.PathLike | None):
    """:func:`label_features`, memoised on disk under ``cache_dir`` (public HPO labels only, no patient
    data). The key hashes the labels and the frozen backbone's weights, so another backbone or label set
    never reuses a stale file. Written atomically."""
    if cache_dir is None:
        return label_features(text_encoder, labels, batch_size, device)
    from safetensors.torch import load_file, save_file

    h = hashlib.sha256("\n".join(labels).encode())
    h.update(f"tokens={text_encoder.clause_length}".encode())
    for name, p in sorted(text_encoder.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"label-features-{h.hexdigest()[:24]}.safetensors"
    if path.exists():
        d = load_file(str(path))
        return d["feats"], d["ntok"]
    feats, ntok = label_features(text_encoder, labels, batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"feats": feats.contiguous(), "ntok": ntok.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return feats, ntok


def align_knowledge(model, knowledge: Mapping[str, Sequence[str]], steps: int = 1500, batch_size: int = 512,
                    lr: float = 5e-3, weight_decay: float = 0.01, warmup_steps: int = 20, min_lr_ratio: float = 0.05,
                    max_terms: int = 32, logit_scale: float | None = None, feature_batch_size: int = 256,
                    seed: int = 0, device: torch.device | str | None = None,
                    cache_dir: str | os.PathLike | None = None, init_projection: str | None = "pca",
                    residual_init_scale: float = 0.1, term_dropout: float = 0.5,
                    aliases: Mapping[str, Sequence[str]] | None = None,
                    verdicts: Sequence[tuple[Sequence[str], str, str]] | None = None, verdict_weight: float = 1.0,
                    verdict_batch: int = 64) -> dict:
    """Run the knowledge alignment phase on ``model`` (a :class:`MultiModalModel` with ``text`` and
    ``variants`` encoders and a frozen text backbone), in place.

    ``knowledge``: gene symbol -> term labels; genes outside the model's vocabulary are ignored.
    ``aliases``: term label -> synonyms (extra keys of the text tower's term table, when it has slots).
    ``verdicts``: experts' ``(profile term labels, gene, "confirmed" | "rejected")`` pairs
    (:func:`.data.verdict_pairs`); with ``verdict_weight > 0`` each step adds ``verdict_weight`` × the
    verdict loss of up to ``verdict_batch`` of them (:func:`verdict_loss`). Labels or genes they share with
    the knowledge keep their rows; the rest are read by the dense path only, so the knowledge phase is the
    same with or without verdicts apart from this term (its own RNG stream: the knowledge batches are too).
    Returns ``{"steps", "genes", "labels", "gene_features", "terms" (filled term rows, when the towers
    have term tables), "init_projection", "loss_first", "loss_last", "feature_seconds", "seconds",
    "verdicts" (``{"confirmed", "rejected", "weight", "loss_first", "loss_last"}`` when any was used)}``.
    """
    from .model import clip_loss

    t0 = time.time()
    if not ({"text", "variants"} <= set(model.encoders)):
        raise ValueError("knowledge alignment needs the 'text' and 'variants' encoders")
    if not backbone_frozen(model):
        raise ValueError("knowledge alignment caches backbone features: the text backbone must be frozen")
    venc, tenc = model.encoders["variants"], model.encoders["text"]
    genes = [g for g in sorted(knowledge) if g in venc.gene_index and knowledge[g]]
    info = {"steps": 0, "genes": len(genes), "labels": 0, "loss_first": None, "loss_last": None,
            "gene_features": 0, "init_projection": None}
    has_terms = bool(getattr(tenc, "n_terms", 0)) and bool(getattr(venc, "term_path", False))
    if len(genes) < 2 or (steps <= 0 and not getattr(venc, "feature_dim", 0) and not has_terms):
        info["seconds"] = round(time.time() - t0, 2)
        return info
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    labels = sorted({t for g in genes for t in knowledge[g] if t})
    lab_index = {t: i for i, t in enumerate(labels)}
    terms = [sorted({lab_index[t] for t in knowledge[g] if t}) for g in genes]
    feats, ntok = cached_label_features(tenc, labels, feature_batch_size, dev, cache_dir)
    feats, ntok = feats.to(dev), ntok.clamp_min(1).to(dev)
    info["labels"] = len(labels)
    info["feature_seconds"] = round(time.time() - t0, 2)
    info["gene_features"] = fill_gene_features(venc, genes, terms, feats, ntok)
    label_row = None
    if has_terms:
        label_row, info["term_aliases"] = fill_terms(tenc, venc, labels, genes, terms, seed, aliases)
        label_row = label_row.to(dev)
        info["terms"] = int(tenc.term_idf.gt(0).sum())
    if init_projection == "pca":
        lin = _linear(tenc.proj)
        pca_whitening_(lin, feats)
        if info["gene_features"]:
            venc.know_proj.load_state_dict(lin.state_dict())
            with torch.no_grad():   # the learned residual starts small next to the knowledge path
                venc.proj.weight.mul_(residual_init_scale)
                venc.proj.bias.mul_(residual_init_scale)
        info["init_projection"] = "pca"
    elif init_projection not in (None, "none"):
        raise ValueError(f"init_projection must be 'pca' or None, got {init_projection!r}")
    if steps <= 0:
        info["seconds"] = round(time.time() - t0, 2)
        return info
    gene_ids = venc.gene_ids(genes).to(dev)
    vd = _prepare_verdicts(verdicts, venc, tenc, lab_index, feats, ntok, label_row, feature_batch_size, dev) \
        if verdicts and float(verdict_weight) > 0 else None
    if vd is not None:
        feats, ntok, label_row = vd.pop("feats"), vd.pop("ntok"), vd.pop("label_row")
        vrng = random.Random(f"verdicts|{seed}")    # its own stream: the knowledge batches stay as without verdicts
        vlosses = []

    tparams = [*tenc.proj.parameters(), *(tenc.clause_score.parameters() if tenc.pooling == "segments" else []),
               *([tenc.term_emb, tenc.term_scale] if label_row is not None else [])]
    params = [p for p in [*tparams, *venc.parameters()] if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min((step - warmup_steps) / max(steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = random.Random(seed)
    B = max(2, min(int(batch_size), len(genes)))
    perm: list[int] = []
    was = model.training
    model.train()
    scale = float(logit_scale) if logit_scale is not None else float(model.scale().detach())
    losses = []
    try:
        for step in range(int(steps)):
            if len(perm) < B:            # walk permutations of every gene: full coverage
                nxt = list(range(len(genes)))
                rng.shuffle(nxt)
                rest = set(perm)
                nxt = [g for g in nxt if g not in rest]
                perm = perm + nxt
            batch, perm = perm[:B], perm[B:]
            flat, seg = [], []
            for r, gi in enumerate(batch):
                ts = terms[gi]
                k = rng.randint(1, min(max_terms, len(ts)))
                picked = rng.sample(ts, k)
                flat += picked
                seg += [r] * k
            flat_t = torch.as_tensor(flat, device=dev)
            seg_t = torch.as_tensor(seg, device=dev)
            rows = None
            if label_row is not None:
                # free text (notes, synonyms) matches no label: part of the phrases train the dense path
                # alone, so genes stay reachable from the dense part as well
                drop = torch.as_tensor([rng.random() < term_dropout for _ in range(B)], device=dev)
                rows = torch.where(drop[seg_t], torch.full_like(flat_t, -1), label_row[flat_t])
            t = normalize(tenc.head(feats[flat_t], ntok[flat_t], seg_t, B, rows))
            g = model.encode_gene_ids(gene_ids[torch.as_tensor(batch, device=dev)])
            loss = clip_loss(t, g, scale)
            if vd is not None:
                vl = verdict_loss(model, tenc, vd, feats, ntok, label_row, g, gene_ids[torch.as_tensor(batch, device=dev)],
                                  scale, vrng, int(verdict_batch), max_terms, term_dropout, dev)
                loss = loss + float(verdict_weight) * vl
                vlosses.append(vl.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.detach())     # kept on the device: a float() per step would sync the GPU
    finally:
        model.train(was)
    losses = torch.stack(losses).cpu().tolist() if losses else []
    info.update(steps=len(losses), loss_first=losses[0], loss_last=float(sum(losses[-10:]) / len(losses[-10:])),
                logit_scale=scale, seconds=round(time.time() - t0, 2))
    if vd is not None and vlosses:
        vl = torch.stack(vlosses).cpu().tolist()
        info["verdicts"] = {"confirmed": len(vd["pos"]), "rejected": len(vd["neg"]), "weight": float(verdict_weight),
                            "loss_first": vl[0], "loss_last": float(sum(vl[-10:]) / len(vl[-10:]))}
    return info


def _prepare_verdicts(verdicts, venc, tenc, lab_index, feats, ntok, label_row, feature_batch_size, dev) -> dict | None:
    """Verdict pairs as label indices and gene ids. Profile labels outside the knowledge labels get backbone
    features appended after them (row -1: no term row, the dense path reads them), so the label table and
    term rows of the knowledge phase are unchanged. Genes outside the model's vocabulary are dropped."""
    extra = sorted({t for ts, _, _ in verdicts for t in ts if t and t not in lab_index})
    index = dict(lab_index)
    if extra:
        xf, xn = label_features(tenc, extra, feature_batch_size, dev)
        index.update({t: len(lab_index) + i for i, t in enumerate(extra)})
        feats = torch.cat([feats, xf.to(feats.device)])
        ntok = torch.cat([ntok, xn.clamp_min(1).to(ntok.device)])
        if label_row is not None:
            label_row = torch.cat([label_row, torch.full((len(extra),), -1, dtype=label_row.dtype,
                                                         device=label_row.device)])
    profiles: dict[tuple, dict[str, set]] = {}
    for ts, gene, verdict in verdicts:
        if gene not in venc.gene_index or verdict not in ("confirmed", "rejected"):
            continue
        key = tuple(sorted({index[t] for t in ts if t}))
        if key:
            profiles.setdefault(key, {"confirmed": set(), "rejected": set()})[verdict].add(gene)
    keys = sorted(profiles)
    pos = [(p, g) for p, k in enumerate(keys) for g in sorted(profiles[k]["confirmed"])]
    neg = [(p, g) for p, k in enumerate(keys) for g in sorted(profiles[k]["rejected"])]
    if not pos and not neg:
        return None
    genes = sorted({g for _, g in pos + neg})
    gid = dict(zip(genes, venc.gene_ids(genes).tolist()))
    return {"profiles": [list(k) for k in keys], "pos": [(p, gid[g]) for p, g in pos],
            "neg": [(p, gid[g]) for p, g in neg],
            "confirmed": [{gid[g] for g in profiles[k]["confirmed"]} for k in keys],
            "feats": feats, "ntok": ntok, "label_row": label_row}


def verdict_loss(model, tenc, vd: dict, feats, ntok, label_row, g_batch, batch_ids, scale: float, rng: random.Random,
                 n: int, max_terms: int, term_dropout: float, dev) -> torch.Tensor:
    """The experts' verdicts as one loss term of a knowledge step.

    Up to ``n`` verdict pairs (all when fewer) are drawn; each profile becomes a phrase of a random half-or-more
    of its term labels (as the knowledge phrases: the clause weights compose them, ``term_dropout`` of them
    without term rows). The candidate genes are the step's knowledge genes (``g_batch``, in-batch negatives)
    plus every gene of the drawn verdicts. A confirmed pair is an InfoNCE row (cross-entropy towards its gene;
    the profile's other confirmed genes are masked, not negatives); a rejected gene is a hard negative of the
    rows of its profile and, for every rejected pair, an unlikelihood term ``-log(1 - p(gene | profile))``,
    so a rejected gene is pushed away from its profile even when no gene of it was confirmed. The mean over
    the drawn pairs."""
    pairs = [("pos", x) for x in vd["pos"]] + [("neg", x) for x in vd["neg"]]
    if len(pairs) > n:
        pairs = rng.sample(pairs, n)
    flat, seg = [], []
    for r, (_, (p, _)) in enumerate(pairs):
        ts = vd["profiles"][p]
        k = rng.randint(max(1, (len(ts) + 1) // 2), max(1, min(max_terms, len(ts))))
        picked = rng.sample(ts, min(k, len(ts)))
        flat += picked
        seg += [r] * len(picked)
    R = len(pairs)
    flat_t = torch.as_tensor(flat, device=dev)
    seg_t = torch.as_tensor(seg, device=dev)
    rows = None
    if label_row is not None:
        drop = torch.as_tensor([rng.random() < term_dropout for _ in range(R)], device=dev)
        rows = torch.where(drop[seg_t], torch.full_like(flat_t, -1), label_row[flat_t])
    t = normalize(tenc.head(feats[flat_t], ntok[flat_t], seg_t, R, rows))
    col = {int(x): i for i, x in enumerate(batch_ids.tolist())}
    extra = sorted({gid for _, (_, gid) in pairs if gid not in col})
    G = g_batch
    if extra:
        for gid in extra:
            col[gid] = len(col)
        G = torch.cat([g_batch, model.encode_gene_ids(torch.as_tensor(extra, device=dev))])
    logits = scale * t @ G.T
    terms = []
    for r, (kind, (p, gid)) in enumerate(pairs):
        row = logits[r]
        if kind == "pos":
            others = [col[x] for x in vd["confirmed"][p] if x != gid and x in col]
            if others:
                row = row.index_fill(0, torch.as_tensor(others, device=dev), float("-inf"))
            terms.append(torch.nn.functional.cross_entropy(row[None], torch.as_tensor([col[gid]], device=dev)))
        else:
            p_rej = torch.softmax(row, 0)[col[gid]]
            terms.append(-torch.log1p(-p_rej.clamp(max=1 - 1e-6)))
    return torch.stack(terms).mean()

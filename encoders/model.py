"""The shared-space model and its contrastive losses.

* :class:`MultiModalModel` – one encoder per modality (``nn.ModuleDict``), the learnable logit scale,
  and :meth:`MultiModalModel.encode`, the single place where embeddings are L2-normalised.
* :func:`clip_loss` – symmetric InfoNCE (open_clip's ``ClipLoss`` on one device).
* :func:`multimodal_loss` – ImageBind-style: the mean CLIP loss over every pair of modalities, each on
  the patients that have both (missing modalities are simply absent from that pair).

The ``LightningModule`` lives in :mod:`raretarget.encoders.module`, so that loading a model to embed
(nightly job, search) never imports Lightning.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _plain, build_encoder
from .base import normalize


def gather_features(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched rows of every rank, as open_clip's ``gather_features`` (``gather_with_grad=False``): under
    ``torch.distributed`` with more than one process, ``all_gather`` of ``a`` and ``b`` ``(n_rank, D)`` from every
    rank (ranks may hold different numbers of rows: padded for the exchange, trimmed after), this rank's own rows
    put back with their gradients. Single process: ``(a, b)`` unchanged. Returns ``(N, D)`` each, rank order."""
    import torch.distributed as dist

    if not distributed():
        return a, b
    ws, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([a.shape[0]], device=a.device, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(counts, n)
    counts_l = [int(c) for c in counts]
    m = max(counts_l)
    out = []
    for x in (a, b):
        xp = F.pad(x.detach(), (0, 0, 0, m - x.shape[0])).contiguous()
        parts = [torch.zeros_like(xp) for _ in range(ws)]
        dist.all_gather(parts, xp)
        parts = [p[:c] for p, c in zip(parts, counts_l)]
        parts[rank] = x                                  # the local rows keep their gradients
        out.append(torch.cat(parts))
    return out[0], out[1]


def distributed() -> bool:
    """True under multi-process training (``torch.distributed`` initialised with more than one process)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_count(n: int, device) -> int:
    """``n`` summed over all processes (``n`` itself in one process). Every rank must call :func:`clip_loss` or
    none: callers decide on this global count, never on their own batch alone, so no collective is left waiting."""
    if not distributed():
        return n
    import torch.distributed as dist

    t = torch.tensor([n], device=device, dtype=torch.long)
    dist.all_reduce(t)
    return int(t)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over matched rows: ``a``, ``b`` ``(n, D)`` L2-normalised, row i of ``a`` ↔ row i of ``b``.

    ``logit_scale`` is the *multiplier* (``exp`` of the learnable log-scale). Returns a scalar:
    ``(CE(s·a·bᵀ, arange) + CE(s·b·aᵀ, arange)) / 2``. Under multi-process training (DDP) the rows of every
    rank are the negatives (:func:`gather_features`), as open_clip does, so the loss is that of the global batch.
    """
    a, b = gather_features(a, b)
    logits = logit_scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def pair_rows(index_a: torch.Tensor, index_b: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of two modality outputs that belong to the same batch sample.

    ``index_a``/``index_b``: batch positions ``(n_a,)``/``(n_b,)`` of each output row. Returns the row
    numbers ``(ra, rb)`` (each ``(n_common,)``) such that ``index_a[ra] == index_b[rb]``.
    """
    dev = index_a.device
    pa_ = torch.full((size,), -1, dtype=torch.long, device=dev)
    pb_ = torch.full((size,), -1, dtype=torch.long, device=dev)
    pa_[index_a] = torch.arange(len(index_a), device=dev)
    pb_[index_b] = torch.arange(len(index_b), device=dev)
    both = (pa_ >= 0) & (pb_ >= 0)
    return pa_[both], pb_[both]


def multimodal_loss(embs: Mapping[str, torch.Tensor], index: Mapping[str, torch.Tensor], size: int,
                    logit_scale: torch.Tensor, min_pairs: int = 2) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Mean :func:`clip_loss` over all modality pairs with at least ``min_pairs`` shared patients (over all ranks
    under multi-process training, where each pair's rows are gathered across ranks: :func:`gather_features`).

    Returns ``(loss or None, {"a|b": loss value})``.
    """
    import torch.distributed as dist

    losses, parts = [], {}
    names = sorted(embs)
    multi = distributed()
    if multi:
        # every rank must make the same collective calls in the same order: the union of the modalities present
        # on any rank, and each pair's global count of shared patients decides whether it is scored
        seen: list = [None] * dist.get_world_size()
        dist.all_gather_object(seen, names)
        names = sorted(set().union(*seen))
        ref = next(iter(embs.values()))
        dim, dev, dt = int(ref.shape[1]), ref.device, ref.dtype
    for a, b in itertools.combinations(names, 2):
        if a in embs and b in embs:
            ra, rb = pair_rows(index[a], index[b], size)
            xa, xb = embs[a][ra], embs[b][rb]
        else:
            xa = xb = torch.zeros((0, dim), device=dev, dtype=dt)
        if global_count(len(xa), xa.device) < min_pairs:
            continue
        loss = clip_loss(xa, xb, logit_scale)
        losses.append(loss)
        parts[f"{a}|{b}"] = float(loss.detach())
    if not losses:
        return None, parts
    return torch.stack(losses).mean(), parts


class MultiModalModel(nn.Module):
    """Encoders of every modality mapped into one ``embed_dim`` space.

    Args:
        encoders: ``{modality: encoder config}`` (``name`` or ``_target_`` + kwargs; see
            :func:`raretarget.encoders.build_encoder`); ``embed_dim`` is filled in.
        embed_dim: width D of the shared space.
        logit_scale_init: initial temperature multiplier (CLIP: 1/0.07).
        logit_scale_max: clamp of the multiplier (open_clip: 100).
    """

    def __init__(self, encoders: Mapping[str, Any], embed_dim: int = 256, logit_scale_init: float = 1 / 0.07,
                 logit_scale_max: float = 100.0):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.encoders = nn.ModuleDict({m: build_encoder(c, embed_dim=embed_dim) for m, c in _plain(encoders).items()})
        for m, enc in self.encoders.items():
            if enc.embed_dim != self.embed_dim:
                raise ValueError(f"encoder {m!r} has embed_dim {enc.embed_dim}, model has {self.embed_dim}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init), dtype=torch.float32))
        self.logit_scale_max = float(logit_scale_max)
        self.model_version: str | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def config(self) -> dict:
        """Everything needed to rebuild the architecture (explicit gene list / panel included)."""
        return {"encoders": {m: {"name": e.registry_name, **e.config()} for m, e in self.encoders.items()},
                "embed_dim": self.embed_dim, "logit_scale_init": float(self.logit_scale.detach().exp()),
                "logit_scale_max": self.logit_scale_max}

    def scale(self) -> torch.Tensor:
        """The logit multiplier ``exp(logit_scale)`` clamped to ``[1, logit_scale_max]``."""
        return self.logit_scale.clamp(0, math.log(self.logit_scale_max)).exp()

    # ---- collation (CPU, DataLoader workers) -----------------------------------------------------
    def collate(self, samples: Sequence[Mapping[str, Any]], train: bool = False) -> dict:
        """Per-patient sample dicts -> CPU tensors ``{"size": B, "patient_id": [...], "record_id": (B,),
        "inputs": {modality: encoder batch}, "index": {modality: (n_m,) batch positions}}``.
        A sample lacks a modality when its key is missing or ``None``."""
        inputs, index = {}, {}
        for m, enc in self.encoders.items():
            pos = [i for i, s in enumerate(samples) if s.get(m) is not None]
            if pos:
                inputs[m] = enc.collate([samples[i][m] for i in pos], train=train)
                index[m] = torch.as_tensor(pos, dtype=torch.long, device="cpu")
        out = {"size": len(samples), "inputs": inputs, "index": index,
               "patient_id": [s.get("patient_id") for s in samples]}
        if all("record_id" in s for s in samples):
            out["record_id"] = torch.as_tensor([int(s["record_id"]) for s in samples], dtype=torch.long, device="cpu")
        if all("group" in s for s in samples):
            out["group"] = torch.as_tensor([int(s["group"]) for s in samples], dtype=torch.long, device="cpu")
        return out

    def collate_knowledge(self, texts: Sequence[str], genes: Sequence[str]) -> dict:
        """Knowledge pairs (term label text_i ↔ gene_i) -> ``{"text": text batch, "gene_ids": (n,)}``."""
        return {"text": self.encoders["text"].collate(list(texts)),
                "gene_ids": self.encoders["variants"].gene_ids(list(genes))}

    # ---- encoding ---------------------------------------------------------------------------------
    def encode(self, modality: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One modality's collated batch -> ``(n, D)`` float32, unit L2 norm (the one normalisation)."""
        return normalize(self.encoders[modality](batch))

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Collated batch -> ``{modality: (n_m, D)}`` normalised embeddings (rows = ``batch["index"][m]``)."""
        return {m: self.encode(m, x) for m, x in batch["inputs"].items()}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Free text (queries, HPO term labels) -> ``(n, D)`` unit vectors."""
        b = self.encoders["text"].collate(list(texts))
        return self.encode("text", {k: v.to(self._device()) for k, v in b.items()})

    def encode_gene_ids(self, ids: torch.Tensor) -> torch.Tensor:
        enc = self.encoders["variants"]
        n = ids.shape[0]
        dev = ids.device
        b = {"gene": ids.unsqueeze(1), "af": torch.zeros(n, 1, 2, device=dev),
             "mask": torch.ones(n, 1, dtype=torch.bool, device=dev)}
        for k in enc.vocab:
            b[k] = torch.zeros(n, 1, dtype=torch.long, device=dev)
        return normalize(enc(b))

    @torch.no_grad()
    def encode_genes(self, symbols: Sequence[str]) -> torch.Tensor:
        """Gene symbols -> ``(n, D)`` unit vectors (same space as patients' variant sets)."""
        return self.encode_gene_ids(self.encoders["variants"].gene_ids(list(symbols)).to(self._device()))

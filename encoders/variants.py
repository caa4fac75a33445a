"""Variant set encoder: a patient's variants -> one vector, built on a gene embedding table so that
genes themselves are points of the shared space (:meth:`VariantEncoder.encode_genes`).

Per variant (``variants`` table columns): ``gene`` (approved symbol), ``consequence`` (SO term),
``impact`` (HIGH|MODERATE|LOW|MODIFIER), ``clinvar`` (CLNSIG, lower case), ``zygosity``
(het|hom_alt|hemi), ``af`` (population allele frequency, 0–1). A variant token is
``LayerNorm(gene_emb + consequence_emb + impact_emb + clinvar_emb + zygosity_emb + af_proj(-log10 af))``
followed by a residual MLP; tokens are pooled (attention or mean) and projected to ``embed_dim``.
A gene alone is the same token with every attribute set to "none", through the same projection, so
``encode_genes(["FBN1"])`` and a patient whose only variant is a pathogenic FBN1 one are comparable.

Knowledge features (``feature_dim > 0``): every gene row also carries a fixed feature vector
``gene_features[row]`` (a buffer, saved with the weights): the text backbone's features of the gene's
HPO term labels, averaged (IDF × token-count weights; :func:`.knowledge.fill_gene_features`). The
encoder output adds ``know_proj(f)``, where ``f`` is that feature of the gene, or for a patient the
variants' features averaged with the pooling's attention weights. A gene is then placed by what is
known about it (its phenotypes, in the text tower's feature space) plus a learned residual, so genes
that no patient in the store carries still land near their phenotypes. Rows without knowledge
(unknown symbols, genes without annotations) have zero features.

Gene vocabulary: an explicit symbol list, or ``"hpo"`` (every gene with HPO annotations, from
``hpo3``); symbols outside it share ``n_hash_buckets`` hashed rows.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raretarget.vocab.variants import CLINVAR_CLASSES, ENCODER_CONSEQUENCES
from raretarget.vocab.variants import IMPACTS as _IMPACTS

from . import register_encoder
from .base import Encoder

# consequence / impact / ClinVar rows of the embeddings: the one vocabulary (raretarget.vocab.variants)
CONSEQUENCES = list(ENCODER_CONSEQUENCES)
IMPACTS = list(_IMPACTS)
CLINVAR = list(CLINVAR_CLASSES)
ZYGOSITY = ["het", "hom_alt", "hemi"]
_IMPACT_RANK = {k: i for i, k in enumerate(IMPACTS)}
_CLNSIG_RANK = {"pathogenic": 0, "pathogenic/likely_pathogenic": 0, "likely_pathogenic": 1}


def _vocab_index(values: Sequence[str]) -> dict[str, int]:
    """0 = none/missing, 1 = other, 2.. = known values."""
    return {v: i + 2 for i, v in enumerate(values)}


def hpo_genes() -> list[str]:
    """Sorted symbols of every gene with HPO annotations (hpo3; genes without a symbol left out)."""
    from raretarget.ingest.genes import hpo_gene_annotations

    return sorted(hpo_gene_annotations())


def variant_priority(v: Mapping[str, Any]) -> tuple:
    """Sort key: pathogenic ClinVar first, then impact HIGH→MODIFIER, then rarer first."""
    cl = (v.get("clinvar") or "").lower()
    af = v.get("af")
    return (_CLNSIG_RANK.get(cl, 2), _IMPACT_RANK.get(v.get("impact") or "", 4),
            af if af is not None and af == af else 0.0)


@register_encoder("variants")
class VariantEncoder(Encoder):
    """Variant lists -> ``(B, embed_dim)`` (un-normalised); genes -> ``(n, embed_dim)``.

    Args:
        embed_dim: shared space width.
        genes: gene vocabulary (list of symbols) or ``"hpo"``.
        dim: token width; ``pooling``: ``"attention"`` | ``"mean"``.
        max_variants: per patient, the highest-priority ones are kept (:func:`variant_priority`).
        n_hash_buckets: rows shared by out-of-vocabulary symbols (by hash).
        feature_dim: width of the per-gene knowledge features (the text backbone's hidden size, 384 for
            MiniLM); 0 = no knowledge path (``"auto"`` = the text tower's width inside ``train()``, else 0).
        term_path: a learned ``embed_dim`` term vector per gene (``gene_terms``), started by the knowledge
            phase as the IDF-weighted sum of the gene's HPO term vectors (the text tower's term table, see
            :mod:`.text`); once filled, the output is ``unit(learned + knowledge path) + term_scale · pooled
            gene term vectors``. ``"auto"`` = on when the text tower has terms, inside ``train()``.
    """

    modality = "variants"

    def __init__(self, embed_dim: int = 256, genes: Sequence[str] | str = "hpo", dim: int = 128,
                 pooling: str = "attention", max_variants: int = 64, n_hash_buckets: int = 256,
                 dropout: float = 0.1, heads: int = 4, feature_dim: int | str = 0, term_path: bool | str = False):
        super().__init__(embed_dim)
        feature_dim = 0 if feature_dim in (None, "auto") else int(feature_dim)
        term_path = False if term_path in (None, "auto") else bool(term_path)
        if isinstance(genes, str):
            if genes not in ("hpo", "auto"):
                raise ValueError("genes must be a list of symbols, 'hpo' or 'auto' (= 'hpo' outside train())")
            genes = hpo_genes()
        self.genes = list(genes)
        self._config = dict(genes=self.genes, dim=dim, pooling=pooling, max_variants=max_variants,
                            n_hash_buckets=n_hash_buckets, dropout=dropout, heads=heads, feature_dim=feature_dim,
                            term_path=term_path)
        self.gene_index = {g: i + 1 for i, g in enumerate(self.genes)}  # 0 = padding
        self.n_hash = int(n_hash_buckets)
        self.max_variants, self.pooling = int(max_variants), pooling
        self.vocab = {"consequence": _vocab_index(CONSEQUENCES), "impact": _vocab_index(IMPACTS),
                      "clinvar": _vocab_index(CLINVAR), "zygosity": _vocab_index(ZYGOSITY)}
        self.gene_emb = nn.Embedding(len(self.genes) + 1 + self.n_hash, dim, padding_idx=0)
        nn.init.normal_(self.gene_emb.weight, std=1.0)
        self.attr_emb = nn.ModuleDict({k: nn.Embedding(len(v) + 2, dim) for k, v in self.vocab.items()})
        for e in self.attr_emb.values():
            nn.init.normal_(e.weight, std=0.1)
        self.af_proj = nn.Linear(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 2, dim))
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, dim))
            self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        elif pooling != "mean":
            raise ValueError("pooling must be 'attention' or 'mean'")
        self.proj = nn.Linear(dim, embed_dim)
        self.feature_dim = feature_dim
        if self.feature_dim:
            self.register_buffer("gene_features", torch.zeros(len(self.genes) + 1 + self.n_hash, self.feature_dim))
            self.know_proj = nn.Linear(self.feature_dim, embed_dim)
        self.term_path = term_path
        if term_path:
            self.gene_terms = nn.Parameter(torch.zeros(len(self.genes) + 1 + self.n_hash, embed_dim))
            self.term_scale = nn.Parameter(torch.ones(()))
            self.register_buffer("terms_ready", torch.zeros(()))   # 1 once the knowledge phase filled them

    # ---- indexing --------------------------------------------------------------------------------
    def gene_ids(self, symbols: Sequence[str | None]) -> torch.Tensor:
        """Symbols -> row ids ``(n,)`` int64 on the CPU (0 for missing; hashed rows for unknown symbols)."""
        return torch.as_tensor(self._gene_rows(symbols), dtype=torch.long, device="cpu")

    def _gene_rows(self, symbols: Sequence[str | None]) -> list[int]:
        out = []
        n = len(self.genes) + 1
        index = self.gene_index
        for s in symbols:
            if not s:
                out.append(0)
            elif s in index:
                out.append(index[s])
            else:
                h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")
                out.append(n + h % self.n_hash if self.n_hash else 0)
        return out

    def _attr(self, key: str, value: Any) -> int:
        if value is None or value == "":
            return 0
        return self.vocab[key].get(str(value).lower() if key != "impact" else str(value).upper(), 1)

    def collate(self, values: Sequence[Sequence[Mapping[str, Any]]], train: bool = False) -> dict[str, torch.Tensor]:
        """Variant lists -> ``gene``/``consequence``/``impact``/``clinvar``/``zygosity`` ``(B, V)`` int64,
        ``af`` ``(B, V, 2)`` float32 (``[-log10(af)/6, af missing]``), ``mask`` ``(B, V)`` bool; CPU tensors.

        One pass over the batch's variants into flat lists, then one scatter per column into numpy
        arrays (per-element tensor writes made this the slowest collate of all modalities)."""
        lists = [sorted(v or [], key=variant_priority)[: self.max_variants] for v in values]
        V = max([len(x) for x in lists] + [1])
        B = len(lists)
        counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=B)
        rows = np.repeat(np.arange(B, dtype=np.int64), counts)
        cols = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = [v for vs in lists for v in vs]
        out = {}
        gene = np.zeros((B, V), np.int64)
        gene[rows, cols] = self._gene_rows([v.get("gene") for v in flat])
        out["gene"] = torch.from_numpy(gene)
        for k, voc in self.vocab.items():
            up = k == "impact"
            col = []
            for v in flat:
                x = v.get(k)
                col.append(0 if x is None or x == "" else voc.get(str(x).upper() if up else str(x).lower(), 1))
            a = np.zeros((B, V), np.int64)
            a[rows, cols] = col
            out[k] = torch.from_numpy(a)
        af = np.zeros((B, V, 2), np.float32)
        val, miss = [], []
        for v in flat:
            x = v.get("af")
            if x is None or not (x == x):
                val.append(0.0)
                miss.append(1.0)
            else:
                val.append(-math.log10(max(float(x), 1e-6)) / 6.0)
                miss.append(0.0)
        af[rows, cols, 0] = val
        af[rows, cols, 1] = miss
        mask = np.zeros((B, V), np.bool_)
        mask[rows, cols] = True
        out["af"], out["mask"] = torch.from_numpy(af), torch.from_numpy(mask)
        return out

    # ---- model -----------------------------------------------------------------------------------
    def tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Variant tokens ``(B, V, dim)``."""
        h = self.gene_emb(batch["gene"]) + self.af_proj(batch["af"])
        for k, emb in self.attr_emb.items():
            h = h + emb(batch[k])
        h = self.norm(h)
        return h + self.mlp(h)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.tokens(batch)
        mask = batch["mask"]
        m = mask.to(h.dtype)
        mean_w = m / m.sum(1, keepdim=True).clamp_min(1.0)          # (B, V) masked-mean weights
        if self.pooling == "mean":
            pooled = (h * mean_w.unsqueeze(-1)).sum(1)
            weights = mean_w
        else:
            empty = ~mask.any(1)
            key_pad = ~mask
            key_pad[empty, 0] = False  # avoid all-masked rows (NaN); their output is zeroed below
            q = self.query.expand(h.shape[0], -1, -1)
            att, attw = self.attn(q, h, h, key_padding_mask=key_pad, need_weights=True)
            pooled = att[:, 0] + (h * mean_w.unsqueeze(-1)).sum(1)
            pooled = pooled.masked_fill(empty.unsqueeze(-1), 0.0)
            weights = attw[:, 0].masked_fill(empty.unsqueeze(-1), 0.0)   # (B, V), head-averaged
        out = self.proj(pooled)
        if self.feature_dim:
            f = (self.gene_features[batch["gene"]] * weights.unsqueeze(-1).to(self.gene_features.dtype)).sum(1)
            out = out + self.know_proj(f.to(out.dtype))
        if self.term_path and bool(self.terms_ready):
            # F.embedding: a deterministic backward over repeated genes (see TextEncoder.term_part)
            t = (F.embedding(batch["gene"], self.gene_terms) * weights.unsqueeze(-1).to(self.gene_terms.dtype)).sum(1)
            # the same balance as the text tower: unit-length dense part + scaled term part
            out = F.normalize(out, dim=-1) + self.term_scale * t.to(out.dtype)
        return out

    def encode_genes(self, symbols: Sequence[str]) -> torch.Tensor:
        """Genes as points of the shared space: ``(n, embed_dim)`` (un-normalised; the model normalises)."""
        dev = self.gene_emb.weight.device
        n = len(symbols)
        batch = {"gene": self.gene_ids(symbols).to(dev).unsqueeze(1),
                 "af": torch.zeros(n, 1, 2, device=dev),
                 "mask": torch.ones(n, 1, dtype=torch.bool, device=dev)}
        for k in self.vocab:
            batch[k] = torch.zeros(n, 1, dtype=torch.long, device=dev)
        return self.forward(batch)

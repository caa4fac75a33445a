"""Shared pieces of the modality encoders: the base class and the one L2-normalisation."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L2-normalise rows: ``(n, D)`` -> ``(n, D)`` float32 with unit norm. The only place it happens."""
    return F.normalize(x.float(), dim=-1, eps=eps)


class Encoder(nn.Module):
    """Base class: one modality -> un-normalised ``(n, embed_dim)`` vectors.

    Subclasses implement

    * ``collate(values, train)``: raw per-sample values (the modality's entry of a sample dict, never
      ``None``) -> a dict of tensors for ``forward``; ``train`` switches on augmentation;
    * ``forward(batch)``: that dict -> ``(n, embed_dim)`` (last op: the projection to ``embed_dim``).
    """

    modality: str = ""
    registry_name: str = ""

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        self.embed_dim = int(embed_dim)

    def collate(self, values: Sequence[Any], train: bool = False) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def config(self) -> dict:
        """Keyword arguments that rebuild this encoder (``build_encoder({"name": ..., **config()})``)."""
        return dict(getattr(self, "_config", {}), embed_dim=self.embed_dim)

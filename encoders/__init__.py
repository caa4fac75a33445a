"""raretarget.encoders: modality encoders mapped into one shared, L2-normalised embedding space.

Every encoder is an ``nn.Module`` that turns a collated batch of one modality into an
un-normalised ``(n, embed_dim)`` float tensor (its last layer is a projection to ``embed_dim``).
L2-normalisation happens in exactly one place, :func:`normalize`, called by
``MultiModalModel.encode(modality, batch)`` (:mod:`raretarget.encoders.model`).

Encoders are built by name or by hydra ``_target_``::

    >>> from raretarget.encoders import build_encoder
    >>> enc = build_encoder({"name": "labs", "embed_dim": 256})                      # registry
    >>> enc = build_encoder({"_target_": "raretarget.encoders.labs.LabEncoder"})      # hydra style

Registered names: ``text`` (MiniLM or a tiny random BERT), ``image`` (MONAI DenseNet, 2D or 3D),
``labs`` (MLP over the canonical lab panel), ``variants`` (set encoder over a gene embedding table).
Importing this package imports no torch / transformers / monai: the registry maps names to module
paths and imports the module when an encoder is built.

Entry points (lazy): ``train(cfg)``, ``load_model(folder)``, ``embed(model, store, out)``
(:mod:`raretarget.encoders.training`), ``ContrastiveModule`` (:mod:`raretarget.encoders.module`), ``MultiModalModel`` / ``clip_loss``
(:mod:`raretarget.encoders.model`), ``MultiModalDataModule`` / ``StreamedPatients`` (a store's patients streamed in chunks;
:mod:`raretarget.encoders.datamodule`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

#: name -> "module:Class" (imported on first build) or the class itself once registered
_REGISTRY: dict[str, Any] = {
    "text": "raretarget.encoders.text:TextEncoder",
    "image": "raretarget.encoders.image:ImageEncoder",
    "labs": "raretarget.encoders.labs:LabEncoder",
    "variants": "raretarget.encoders.variants:VariantEncoder",
}

_LAZY = {
    "train": "raretarget.encoders.training",
    "load_model": "raretarget.encoders.training",
    "embed": "raretarget.encoders.training",
    "retrieval_recall": "raretarget.encoders.training",
    "ContrastiveModule": "raretarget.encoders.module",
    "MultiModalModel": "raretarget.encoders.model",
    "clip_loss": "raretarget.encoders.model",
    "normalize": "raretarget.encoders.base",
    "MultiModalDataModule": "raretarget.encoders.datamodule",
    "StreamedPatients": "raretarget.encoders.datamodule",
    "synthetic_samples": "raretarget.encoders.data",
    "load_store_samples": "raretarget.encoders.data",
}

__all__ = ["register_encoder", "build_encoder", "encoder_names", "get_encoder_class", *_LAZY]


def register_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_encoder("text")`` makes ``build_encoder({"name": "text"})`` work."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def encoder_names() -> list[str]:
    return sorted(_REGISTRY)


def get_encoder_class(name: str) -> type:
    """The class registered under ``name`` (imports its module on first use)."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; registered: {encoder_names()}") from None
    if isinstance(entry, str):
        mod, _, attr = entry.partition(":")
        cls = getattr(importlib.import_module(mod), attr)
        _REGISTRY[name] = cls
        return cls
    return entry


def _plain(cfg: Any) -> dict:
    """DictConfig / Mapping -> plain dict (resolving interpolations)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def build_encoder(cfg: Mapping[str, Any] | Any, **overrides: Any):
    """Build one encoder from ``{"name": <registered name>, **kwargs}`` or ``{"_target_": "pkg.Class", **kwargs}``.

    ``overrides`` (e.g. ``embed_dim=256``) fill in keys missing from ``cfg``. With ``_target_`` the
    object is created through ``hydra.utils.instantiate`` (so hydra configs work unchanged).
    """
    cfg = _plain(cfg)
    for k, v in overrides.items():
        cfg.setdefault(k, v)
    if "_target_" in cfg:
        cfg.pop("name", None)
        from hydra.utils import instantiate

        return instantiate(cfg, _convert_="all")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise KeyError("encoder config needs 'name' (a registered encoder) or '_target_'")
    return get_encoder_class(name)(**cfg)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raretarget.encoders' has no attribute {name!r}")

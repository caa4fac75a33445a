"""Image encoder: a MONAI DenseNet (2D over the store's 64×64 uint8 thumbnails, or 3D volumes) +
projection, with MONAI dictionary transforms (unknown keys pass through untouched).

Input of ``collate``: per sample a thumbnail (flattened ``THUMB_SIZE**2`` uint8, or an array of
shape ``(H, W)`` / ``(1, H, W)`` for 2D, ``(D, H, W)`` / ``(1, D, H, W)`` for 3D), or a dict with key
``"image"`` holding one. ``forward`` takes ``image`` ``(B, 1, *spatial)`` float in [0, 1].
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import register_encoder
from .base import Encoder

#: DenseNet sizes: "densenet121" is MONAI's standard one; "small" trains in seconds on CPU
ARCHS = {
    "densenet121": dict(init_features=64, growth_rate=32, block_config=(6, 12, 24, 16)),
    "small": dict(init_features=8, growth_rate=8, block_config=(2, 2, 2), bn_size=2),
}


def image_transforms(image_size: int | Sequence[int] = 64, spatial_dims: int = 2, train: bool = False,
                     keys: Sequence[str] = ("image",), seed: int | None = 0):
    """MONAI dict transforms: intensity scaled to [0, 1], resized to ``image_size``, and (train) random
    flip + small affine drawn from a generator seeded with ``seed`` (None: MONAI's default, seeded from
    OS entropy, so runs differ). Keys other than ``keys`` pass through unchanged."""
    from monai.transforms import (Compose, EnsureTyped, RandAffined, RandFlipd, Resized,
                                  ScaleIntensityd)

    size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(image_size)
    keys = list(keys)
    ts: list = [ScaleIntensityd(keys=keys, minv=0.0, maxv=1.0),
                Resized(keys=keys, spatial_size=size, mode="bilinear" if spatial_dims == 2 else "trilinear")]
    if train:
        ts += [RandFlipd(keys=keys, prob=0.5, spatial_axis=spatial_dims - 1),
               RandAffined(keys=keys, prob=0.5, rotate_range=(0.15,) * (1 if spatial_dims == 2 else 3),
                           scale_range=(0.1,) * spatial_dims, translate_range=(4,) * spatial_dims,
                           padding_mode="zeros")]
    ts.append(EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False))
    out = Compose(ts)
    if seed is not None:
        out.set_random_state(seed=int(seed))
    return out


@register_encoder("image")
class ImageEncoder(Encoder):
    """Images -> ``(B, embed_dim)`` (un-normalised).

    Args:
        embed_dim: shared space width.
        arch: ``"small"`` | ``"densenet121"`` (see :data:`ARCHS`).
        spatial_dims: 2 (thumbnails) or 3 (volumes).
        image_size: side of the resized input (voxels/pixels).
        features: DenseNet output width before the projection.
        augment: random flip/affine in training collation.
    """

    modality = "image"

    def __init__(self, embed_dim: int = 256, arch: str = "small", spatial_dims: int = 2, in_channels: int = 1,
                 image_size: int = 64, features: int = 128, augment: bool = True, dropout: float = 0.0):
        super().__init__(embed_dim)
        from monai.networks.nets import DenseNet

        self._config = dict(arch=arch, spatial_dims=spatial_dims, in_channels=in_channels, image_size=image_size,
                            features=features, augment=augment, dropout=dropout)
        self.spatial_dims, self.image_size, self.in_channels = int(spatial_dims), int(image_size), int(in_channels)
        self.backbone = DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=features,
                                 dropout_prob=dropout, **ARCHS[arch])
        self.proj = nn.Sequential(nn.GELU(), nn.Linear(features, embed_dim))
        # augmentation follows the global torch seed (lightning.seed_everything), so a seeded run repeats
        seed = int(torch.initial_seed() % 2**31)
        self._tf = {False: image_transforms(image_size, spatial_dims, False),
                    True: image_transforms(image_size, spatial_dims, augment, seed=seed)}

    def _as_array(self, v: Any) -> np.ndarray:
        if isinstance(v, dict):
            v = v["image"]
        a = np.asarray(v, dtype=np.float32)
        nd = self.spatial_dims
        if a.ndim == 1:  # flattened square (cube) thumbnail
            side = round(a.size ** (1 / nd))
            a = a.reshape((side,) * nd)
        if a.ndim == nd:
            a = a[None]
        return a

    def collate(self, values: Sequence[Any], train: bool = False) -> dict[str, torch.Tensor]:
        """Thumbnails -> ``image`` ``(B, 1, *[image_size]*spatial_dims)`` float32 in [0, 1]."""
        tf = self._tf[bool(train)]
        return {"image": torch.stack([torch.as_tensor(tf({"image": self._as_array(v)})["image"]) for v in values])}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(self.backbone(batch["image"]))

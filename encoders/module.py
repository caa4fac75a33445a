"""The ``LightningModule`` of contrastive training (lightning-hydra-template: the model is a plain
``nn.Module`` in :mod:`raretarget.encoders.model`; this module adds losses, logging and optimisers).

* :class:`ContrastiveModule` – patient modality pairs + knowledge pairs (HPO term label text ↔ gene)
  with weight ``knowledge_weight``; optimiser/scheduler from config.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import lightning as L
import torch

from . import _plain
from .model import MultiModalModel, clip_loss, global_count, multimodal_loss


def _optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name", "adamw").lower()
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    return cls(params, **cfg)


class ContrastiveModule(L.LightningModule):
    """Contrastive training of a :class:`MultiModalModel`.

    Loss = ``multimodal_loss`` over patient modality pairs + ``knowledge_weight`` × CLIP loss of
    knowledge pairs (``batch["knowledge"]``: HPO term label text ↔ gene). Logged: ``train_loss``,
    ``train_patient_loss``, ``train_knowledge_loss``, ``logit_scale``, ``val_loss``.

    Args:
        encoders, embed_dim, logit_scale_init, logit_scale_max: see :class:`MultiModalModel`.
        optimizer: ``{"name": "adamw"|"adam"|"sgd", "lr": ..., "weight_decay": ...}``.
        scheduler: ``{"name": "cosine"|"constant", "warmup_steps": int, "min_lr_ratio": float}`` (per step).
        knowledge_weight: weight of the knowledge-pair loss (0 disables it).
    """

    def __init__(self, encoders: Mapping[str, Any], embed_dim: int = 256, logit_scale_init: float = 1 / 0.07,
                 logit_scale_max: float = 100.0, optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, knowledge_weight: float = 0.5):
        super().__init__()
        encoders = _plain(encoders)
        self.save_hyperparameters({"encoders": encoders, "embed_dim": embed_dim, "logit_scale_init": logit_scale_init,
                                   "logit_scale_max": logit_scale_max, "optimizer": _plain(optimizer or {}),
                                   "scheduler": _plain(scheduler or {}), "knowledge_weight": knowledge_weight})
        self.model = MultiModalModel(encoders, embed_dim, logit_scale_init, logit_scale_max)
        self.optimizer_cfg = dict(_plain(optimizer or {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}))
        self.scheduler_cfg = dict(_plain(scheduler or {"name": "cosine", "warmup_steps": 0}))
        self.knowledge_weight = float(knowledge_weight)

    def forward(self, batch):
        return self.model(batch)

    def losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        embs = self.model(batch)
        scale = self.model.scale()
        total, parts = multimodal_loss(embs, batch["index"], batch["size"], scale)
        out: dict[str, torch.Tensor] = {}
        if total is not None:
            out["patient_loss"] = total
        k = batch.get("knowledge")
        n_k = len(k["gene_ids"]) if k is not None and self.knowledge_weight > 0 else 0
        # under DDP clip_loss gathers across ranks: all of them score the knowledge pairs or none does
        if self.knowledge_weight > 0 and global_count(n_k, scale.device) >= 2:
            if n_k:
                t = self.model.encode("text", k["text"])
                g = self.model.encode_gene_ids(k["gene_ids"])
            else:
                t = g = torch.zeros((0, self.model.embed_dim), device=scale.device)
            out["knowledge_loss"] = clip_loss(t, g, scale)
        loss = out.get("patient_loss", 0.0) + self.knowledge_weight * out.get("knowledge_loss", 0.0)
        if not isinstance(loss, torch.Tensor):  # nothing to contrast in this batch
            loss = self.model.logit_scale * 0.0
        out["loss"] = loss
        return out

    def training_step(self, batch, batch_idx):
        out = self.losses(batch)
        bs = batch["size"]
        self.log("train_loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k in ("patient_loss", "knowledge_loss"):
            if k in out:
                self.log(f"train_{k}", out[k], on_step=False, on_epoch=True, batch_size=bs)
        self.log("logit_scale", self.model.scale(), on_step=False, on_epoch=True, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self.losses(batch)
        self.log("val_loss", out["loss"], prog_bar=True, on_epoch=True, batch_size=batch["size"], sync_dist=True)
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # open_clip: clamp the learnable log-scale after each step
            self.model.logit_scale.clamp_(0, math.log(self.model.logit_scale_max))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        cfg = dict(self.optimizer_cfg)
        wd = cfg.pop("weight_decay", 0.0)
        opt = _optimizer([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], cfg)
        sch = dict(self.scheduler_cfg)
        name = sch.get("name", "constant")
        if name in (None, "none", "constant") and not sch.get("warmup_steps"):
            return opt
        warmup = int(sch.get("warmup_steps", 0))
        min_ratio = float(sch.get("min_lr_ratio", 0.0))
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self.trainer else 1000

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if name != "cosine":
                return 1.0
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

"""The ``LightningDataModule`` of contrastive training: patients from a store or a synthetic cohort,
split by a hash of the patient id (:func:`raretarget.encoders.data.is_val`). Kept apart from
:mod:`raretarget.encoders.data` so that embedding never imports Lightning.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L

from .data import (Collate, PatientDataset, hpo_aliases, hpo_knowledge, load_store_samples, split, synthetic_samples,
                   verdict_pairs)


class MultiModalDataModule(L.LightningDataModule):
    """Patients from a store (``store=path or Engine``) or synthetic (``synthetic=True``), split by hash (:func:`raretarget.encoders.data.is_val`).

    Args:
        store / synthetic: the source (exactly one).
        n_patients, n_groups, p_missing, synthetic_seed: synthetic cohort size and structure.
        batch_size, num_workers: DataLoader settings (``num_workers="auto"``: ``min(4, cpu_count - 1)``,
            :func:`raretarget.encoders.device.resolve_workers`; collation – tokenising, image transforms –
            then runs beside the training step; host batches are pinned when CUDA is present).
        val_fraction, split_seed: held-out split (:func:`is_val`).
        knowledge: use knowledge pairs (HPO term label ↔ gene; synthetic: group phrase ↔ gene).
        knowledge_batch: knowledge pairs per training batch.
        verdicts: use the store's expert verdicts (:func:`raretarget.encoders.data.verdict_pairs`) as
            training pairs of the knowledge phase (``self.verdicts``; none for a synthetic cohort).
        max_note_chars: cut of the concatenated notes.

    Call :meth:`attach` with the :class:`MultiModalModel` before the loaders are used.
    """

    def __init__(self, store: Any = None, synthetic: bool = False, n_patients: int = 256, n_groups: int = 8,
                 p_missing: float = 0.2, synthetic_seed: int = 0, batch_size: int = 64, num_workers: int | str = 0,
                 val_fraction: float = 0.2, split_seed: int = 0, knowledge: bool = True, knowledge_batch: int = 32,
                 max_note_chars: int = 2000, verdicts: bool = True):
        super().__init__()
        if bool(synthetic) == (store is not None):
            raise ValueError("give exactly one of store=... or synthetic=True")
        self.store, self.synthetic = store, bool(synthetic)
        self.n_patients, self.n_groups, self.p_missing, self.synthetic_seed = n_patients, n_groups, p_missing, synthetic_seed
        from .device import resolve_workers

        self.batch_size, self.num_workers = int(batch_size), resolve_workers(num_workers)
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)
        self.use_knowledge, self.knowledge_batch = bool(knowledge), int(knowledge_batch)
        self.max_note_chars = int(max_note_chars)
        self.use_verdicts = bool(verdicts)
        self.verdicts: list[tuple[list[str], str, str]] = []
        self.samples: list[dict] | None = None
        self.model = None

    def prepare(self) -> None:
        """Load (or generate) every sample once and split them."""
        if self.samples is not None:
            return
        if self.synthetic:
            self.samples, pairs, self.genes = synthetic_samples(self.n_patients, self.n_groups, self.synthetic_seed,
                                                                self.p_missing)
            kn: dict[str, list[str]] = {}
            for text, gene in pairs:
                kn.setdefault(gene, []).append(text)
            self.knowledge = kn
            self.aliases: dict[str, list[str]] = {}
        else:
            self.samples = load_store_samples(self.store)
            store_genes = {v["gene"] for s in self.samples for v in (s["variants"] or []) if v.get("gene")}
            self.knowledge = hpo_knowledge() if self.use_knowledge else {}
            self.aliases = hpo_aliases({t for v in self.knowledge.values() for t in v})
            self.verdicts = verdict_pairs(self.store) if self.use_verdicts else []
            # a confirmed or rejected gene gets a vector even without annotations or carriers
            self.genes = sorted(store_genes | set(self.knowledge) | {g for _, g, _ in self.verdicts})
        self.train_samples, self.val_samples = split(self.samples, self.val_fraction, self.split_seed)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def gene_vocabulary(self) -> list[str]:
        self.prepare()
        return list(self.genes)

    def attach(self, model) -> "MultiModalDataModule":
        """Use ``model`` (a :class:`MultiModalModel`) for collation."""
        self.model = model
        return self

    def _loader(self, samples, train: bool):
        import torch
        from torch.utils.data import DataLoader

        if self.model is None:
            raise RuntimeError("call attach(model) first")
        coll = Collate(self.model, train, self.knowledge if (train and self.use_knowledge) else None,
                       self.knowledge_batch, self.split_seed)
        ds = PatientDataset(samples, train, self.max_note_chars, self.split_seed)
        w = self.num_workers
        return DataLoader(ds, batch_size=self.batch_size, shuffle=train, collate_fn=coll, num_workers=w,
                          drop_last=train and len(samples) > self.batch_size, persistent_workers=w > 0,
                          pin_memory=torch.cuda.is_available(),
                          worker_init_fn=_WorkerInit(ds, coll, self.split_seed) if w > 0 else None)

    def train_dataloader(self):
        self.prepare()
        return self._loader(self.train_samples, True)

    def val_dataloader(self):
        self.prepare()
        return self._loader(self.val_samples, False)


class _WorkerInit:
    """DataLoader ``worker_init_fn``: Lightning's per-worker seeding of the global RNGs, plus our own
    RNGs. Each worker holds a forked copy of the dataset's and the collate's ``random.Random`` and of the
    image augmentation's state; worker 0 keeps that copy (so one worker draws what the main process
    would), workers 1.. reseed theirs from ``(seed, worker)``, so they do not repeat worker 0's draws."""

    def __init__(self, dataset: PatientDataset, collate: Collate, seed: int):
        self.dataset, self.collate, self.seed = dataset, collate, int(seed)

    def __call__(self, worker_id: int) -> None:
        try:
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id)
        except ImportError:  # pragma: no cover
            pass
        if worker_id == 0:
            return
        s = (self.seed * 1_000_003 + worker_id) % 2**31
        self.dataset.rng = random.Random(s)
        self.collate.rng = random.Random(s + 1)
        img = self.collate.model.encoders["image"] if "image" in self.collate.model.encoders else None
        tf = getattr(img, "_tf", {}).get(True)
        if tf is not None and hasattr(tf, "set_random_state"):
            tf.set_random_state(seed=s)

"""The ``LightningDataModule`` of contrastive training: patients from a store or a synthetic cohort,
split by a hash of the patient id (:func:`raretarget.encoders.data.is_val`). Kept apart from
:mod:`raretarget.encoders.data` so that embedding never imports Lightning.

A store's patients are streamed (:class:`StreamedPatients`): only the list of patient ids is held, and each
DataLoader worker reads ``chunk_patients`` patients at a time from the store, so the loader's memory does not grow
with the store. A synthetic cohort is generated in memory.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Sequence

import lightning as L
from torch.utils.data import IterableDataset

from . import data as D
from .data import Collate, PatientDataset, hpo_aliases, hpo_knowledge, split, synthetic_samples, verdict_pairs


def patient_partitions(store, chunks):
    """:func:`raretarget.store.partition.patient_partitions` (imported when a worker first needs it)."""
    from raretarget.store.partition import patient_partitions as split_store

    return split_store(store, chunks)


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
        chunk_patients: a store's patients read at once by each DataLoader worker (:class:`StreamedPatients`);
            None: the ``data.chunk_patients`` of ``conf/data/store.yaml``.

    After :meth:`prepare`: ``train_ids`` / ``val_ids`` (sorted patient ids), ``n_train`` / ``n_val``; a synthetic
    cohort also has ``train_samples`` / ``val_samples``. :meth:`eval_samples` loads held-out samples for evaluation.

    Call :meth:`attach` with the :class:`MultiModalModel` before the loaders are used.
    """

    def __init__(self, store: Any = None, synthetic: bool = False, n_patients: int = 256, n_groups: int = 8,
                 p_missing: float = 0.2, synthetic_seed: int = 0, batch_size: int = 64, num_workers: int | str = 0,
                 val_fraction: float = 0.2, split_seed: int = 0, knowledge: bool = True, knowledge_batch: int = 32,
                 max_note_chars: int = 2000, verdicts: bool = True, chunk_patients: int | None = None):
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
        if chunk_patients is None:            # the YAML is the one source of defaults
            from .training import default_config

            chunk_patients = default_config()["data"]["chunk_patients"]
        self.chunk_patients = int(chunk_patients)
        if self.chunk_patients < 1:
            raise ValueError(f"chunk_patients must be >= 1, got {chunk_patients}")
        self.samples: list[dict] | None = None
        self.train_ids: list[str] | None = None
        self.model = None

    def prepare(self) -> None:
        """Split the patients once: a synthetic cohort is generated (in memory); a store gives its patient ids,
        gene vocabulary (one ``select distinct``) and knowledge, never its samples."""
        if self.train_ids is not None:
            return
        if self.synthetic:
            self.samples, pairs, self.genes = synthetic_samples(self.n_patients, self.n_groups, self.synthetic_seed,
                                                                self.p_missing)
            kn: dict[str, list[str]] = {}
            for text, gene in pairs:
                kn.setdefault(gene, []).append(text)
            self.knowledge = kn
            self.aliases: dict[str, list[str]] = {}
            self.train_samples, self.val_samples = split(self.samples, self.val_fraction, self.split_seed)
            self.train_ids = [s["patient_id"] for s in self.train_samples]
            self.val_ids = [s["patient_id"] for s in self.val_samples]
        else:
            self.train_ids, self.val_ids = D.split_ids(D.sample_patients(self.store), self.val_fraction,
                                                       self.split_seed)
            store_genes = set(D.store_genes(self.store))
            self.knowledge = hpo_knowledge() if self.use_knowledge else {}
            self.aliases = hpo_aliases({t for v in self.knowledge.values() for t in v})
            self.verdicts = verdict_pairs(self.store) if self.use_verdicts else []
            # a confirmed or rejected gene gets a vector even without annotations or carriers
            self.genes = sorted(store_genes | set(self.knowledge) | {g for _, g, _ in self.verdicts})

    @property
    def n_train(self) -> int:
        self.prepare()
        return len(self.train_ids)

    @property
    def n_val(self) -> int:
        self.prepare()
        return len(self.val_ids)

    def eval_samples(self, limit: int | None = None) -> list[dict]:
        """Held-out samples for evaluation (:func:`raretarget.encoders.training.retrieval_recall`): the first
        ``limit`` of ``val_ids`` (sorted pseudonyms, so an arbitrary but fixed subset; None = all), read from a
        store ``chunk_patients`` at a time. Their count, not the store's size, bounds the memory."""
        self.prepare()
        if self.synthetic:
            return list(self.val_samples[:limit])
        ids = self.val_ids[:limit]
        out: list[dict] = []
        for i in range(0, len(ids), self.chunk_patients):
            out.extend(D.load_store_samples(self.store, patients=ids[i:i + self.chunk_patients]))
        return out

    def fit_lab_stats(self, lab) -> None:
        """z-score statistics of the labs tower ``lab`` from the training split (:meth:`LabEncoder.fit_stats`); a
        store's in one aggregate query (:func:`raretarget.encoders.data.store_lab_moments`)."""
        self.prepare()
        if self.synthetic:
            rows = [s["labs"] for s in self.train_samples if s.get("labs")]
            if rows:
                lab.fit_stats(lab.to_matrix(rows))
            return
        import numpy as np

        from .labs import panel_loincs

        # samples carry the panel's LOINCs only (load_store_samples' default): the tower's others get no values
        panel = set(panel_loincs())
        codes = [c for c in lab.loincs if c in panel]
        n, m, sd = D.store_lab_moments(self.store, codes, exclude=self.val_ids)
        pos = {c: i for i, c in enumerate(codes)}
        pick = np.array([pos.get(c, -1) for c in lab.loincs])
        have = pick >= 0
        N, M, S = np.zeros(len(pick)), np.full(len(pick), np.nan), np.full(len(pick), np.nan)
        N[have], M[have], S[have] = n[pick[have]], m[pick[have]], sd[pick[have]]
        lab.fit_moments(N, M, S)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def gene_vocabulary(self) -> list[str]:
        self.prepare()
        return list(self.genes)

    def attach(self, model) -> "MultiModalDataModule":
        """Use ``model`` (a :class:`MultiModalModel`) for collation."""
        self.model = model
        return self

    def _rank(self) -> tuple[int, int]:
        """``(rank, world size)`` of this process: the trainer's when one is attached (Lightning sets them up before
        asking for loaders), else torch.distributed's, else ``(0, 1)``."""
        tr = getattr(self, "trainer", None)
        if tr is not None:
            return int(tr.global_rank), int(tr.world_size)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _loader(self, train: bool):
        import torch
        from torch.utils.data import DataLoader

        if self.model is None:
            raise RuntimeError("call attach(model) first")
        coll = Collate(self.model, train, self.knowledge if (train and self.use_knowledge) else None,
                       self.knowledge_batch, self.split_seed)
        w = self.num_workers
        common = dict(collate_fn=coll, num_workers=w, persistent_workers=w > 0, pin_memory=torch.cuda.is_available())
        if self.synthetic:
            samples = self.train_samples if train else self.val_samples
            ds = PatientDataset(samples, train, self.max_note_chars, self.split_seed)
            return DataLoader(ds, batch_size=self.batch_size, shuffle=train,
                              drop_last=train and len(samples) > self.batch_size,
                              worker_init_fn=_WorkerInit(ds, coll, self.split_seed) if w > 0 else None, **common)
        rank, world = self._rank()
        ds = StreamedPatients(self.store, self.train_ids if train else self.val_ids, train=train,
                              batch_size=self.batch_size, chunk_patients=self.chunk_patients,
                              max_note_chars=self.max_note_chars, seed=self.split_seed, rank=rank, world_size=world,
                              num_workers=w)
        # batch_size=None: the dataset yields whole batches (lists of items), so it decides their number
        return DataLoader(ds, batch_size=None, worker_init_fn=_WorkerInit(ds, coll, self.split_seed) if w > 0 else None,
                          **common)

    def train_dataloader(self):
        self.prepare()
        return self._loader(True)

    def val_dataloader(self):
        self.prepare()
        return self._loader(False)


class StreamedPatients(IterableDataset):
    """A store's patients as batches of model inputs, read ``chunk_patients`` at a time.

    Each epoch (one ``__iter__`` per process and epoch), rank ``rank`` takes its chunks from
    :func:`raretarget.encoders.data.epoch_chunks` (a seeded permutation per epoch in training, sorted otherwise;
    the same number of patients on every rank); DataLoader worker ``w`` of ``num_workers`` reads chunks
    ``w, w + num_workers, ...`` through :func:`raretarget.encoders.data.load_store_samples` (``patients=`` the
    chunk's ids: at most ``chunk_patients`` patients in memory per worker; a worker's first chunk of an epoch is
    read from the store, and when it goes on to a second, its remaining chunks of the epoch are split from the
    store in one scan, :mod:`raretarget.store.partition`, instead of one whole-store scan per chunk), shuffles a chunk's samples in training
    and yields lists of ``batch_size`` items (:class:`PatientDataset` items; batches run across chunk boundaries,
    the last partial one of a worker is dropped in training when it has more than one batch's worth).

    Chunks hold :meth:`chunk_size` patients: ``chunk_patients``, cut smaller only so that every worker gets one
    when the rank's share is small. Randomness (order, note subsets, image choice) is seeded by
    ``(seed, epoch, rank, chunk)``, so once the share fills every worker's chunk a batch does not depend on the
    number of workers that made it. ``len()`` is the exact number of batches of this rank, the same
    on every rank.
    """

    def __init__(self, store: Any, patient_ids: Sequence[str], *, train: bool, batch_size: int, chunk_patients: int,
                 max_note_chars: int = 2000, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        self.store, self.ids = store, list(patient_ids)
        self.train, self.batch_size, self.chunk_patients = bool(train), int(batch_size), int(chunk_patients)
        self.max_note_chars, self.seed = int(max_note_chars), int(seed)
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.epoch = 0
        self.rng = random.Random(seed)        # unused here (seeding is per chunk); _WorkerInit may reseed it

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunk_size(self, num_workers: int = 1) -> int:
        """Patients a chunk holds: ``chunk_patients``, or fewer when this rank's share would not give every one of
        ``num_workers`` DataLoader workers a chunk (``ceil(share / num_workers)``). Chunks are the workers' unit of
        work, so a store smaller than ``num_workers * chunk_patients`` would otherwise be read and collated by one
        worker while the others idle (seen on an H200: 4 workers, 2,417 training patients, one chunk, the GPU
        waiting on one worker's image augmentation)."""
        share = len(self.ids) // self.world_size
        return max(1, min(self.chunk_patients, -(-share // max(1, int(num_workers)))))

    def chunks(self, epoch: int | None = None, worker: int = 0, num_workers: int = 1) -> list[tuple[int, list[str]]]:
        """``(chunk index, patient ids)`` that ``worker`` of ``num_workers`` reads in ``epoch`` (default: next)."""
        c = D.epoch_chunks(self.ids, self.chunk_size(num_workers), epoch=self.epoch if epoch is None else epoch,
                           seed=self.seed, shuffle=self.train, rank=self.rank, world_size=self.world_size)
        return D.worker_chunks(c, worker, num_workers)

    def __len__(self) -> int:
        W = max(1, self.num_workers)
        return sum(D.stream_batches(sum(len(c) for _, c in self.chunks(0, w, W)), self.batch_size, self.train)
                   for w in range(W))

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, W = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        self.epoch += 1                       # each process copy counts its own epochs (persistent workers)
        mine = self.chunks(epoch, worker, W)
        n = sum(len(c) for _, c in mine)
        keep = D.stream_batches(n, self.batch_size, self.train) * self.batch_size   # items this worker yields
        buf: list[dict] = []
        sent = 0
        with contextlib.ExitStack() as stack:
            reads = None
            for j, (k, ids) in enumerate(mine):
                if sent >= keep:
                    break
                if j == 0:
                    src = self.store          # a short run (a step budget) may read no more than this chunk
                else:
                    if reads is None:         # going on: the rest of this epoch's chunks split in one store scan
                        reads = stack.enter_context(patient_partitions(D.as_store(self.store), [c for _, c in mine[1:]]))
                    src = reads[j - 1]
                samples = D.load_store_samples(src, patients=ids)
                seed = D._mix("chunk", self.seed, epoch, self.rank, k)
                if self.train:
                    random.Random(seed).shuffle(samples)
                ds = PatientDataset(samples, self.train, self.max_note_chars, seed)
                for i in range(len(ds)):
                    if sent >= keep:
                        break
                    buf.append(ds[i])
                    sent += 1
                    if len(buf) == self.batch_size:
                        yield buf
                        buf = []
                del samples, ds               # one chunk at a time: free it before the next is read
        if buf:
            yield buf


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

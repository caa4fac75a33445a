"""The one place that knows where a store's derived artifacts live on disk (models, embeddings, index
generations, run logs, audit). Every other module asks :class:`Artifacts` for a path, never joins one itself.

Layout (beside the tables, inside ``<store>/``; the format is that of stores written before issue 18)::

    models/CURRENT                               {"model_version": v}: the model embed/search use
    models/<v>/                                  a trained model (safetensors + config.json + metrics.json)
    models/.training-<pid>/                      a training run in progress (renamed to models/<v>/ when done)
    models/cache/                                label features of the knowledge phase (public HPO labels only)
    embeddings/<v>/<modality>.parquet            EMBEDDINGS rows of model v, one file per modality
    embeddings/<v>/_batches.json                 sorted store batch ids those embeddings cover
    embeddings/<v>/_delta/                       a night's delta files (inside: raretarget.index.embedding_delta)
    embeddings/<v>/_shards/of-<n>/<i:04d>/       shard i of n (Engine.embed_shard), DONE.json written last
    index/CURRENT                                {"generation", "model_version", "counts", "batches"?}
    index/gen-<NNNNNN>/<modality>/               one VectorIndex per modality
    index/gen-<NNNNNN>/_delta/<modality>/        delta index + deleted-id mask (inside: raretarget.index.delta)
    runs/<time>-<pid>.json                       nightly run logs
    .nightly.lock                                one nightly run at a time
    audit/<YYYY-MM-DD>/                          audit events
    reviews/hypotheses/, reviews/verdicts/       the expert review loop (raretarget.store.reviews)
    .scratch/partition-<pid>@<host>-<x>/c<i>/    a full embedding pass's rows split by patient chunk
                                                 (raretarget.store.partition; deleted when the pass ends)

No file is read or written when an :class:`Artifacts` is made; the methods that read say so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import atomic_write_bytes

#: index generation folder names: ``gen-000001`` ... (``GENERATION_FORMAT % n``)
GENERATION_FORMAT = "gen-%06d"
GENERATION_GLOB = "gen-*"


class Artifacts:
    """Paths (and the small JSON pointers) of one store's derived artifacts; ``root`` is the store folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ---- models --------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def current_model_file(self) -> Path:
        return self.models_dir / "CURRENT"

    def model_dir(self, version: str) -> Path:
        return self.models_dir / version

    def training_dir(self, pid: int | None = None) -> Path:
        """Where a training run writes before its result is renamed to :meth:`model_dir`."""
        return self.models_dir / f".training-{os.getpid() if pid is None else pid}"

    @property
    def knowledge_cache_dir(self) -> Path:
        return self.models_dir / "cache"

    def current_model(self) -> dict | None:
        """Reads ``models/CURRENT``: ``{"model_version", "path"}`` or None when no model was trained."""
        p = self.current_model_file
        if not p.exists():
            return None
        info = json.loads(p.read_text())
        info["path"] = str(self.model_dir(info["model_version"]))
        return info

    def set_current_model(self, version: str) -> None:
        """Point ``models/CURRENT`` at ``version`` (one atomic write)."""
        atomic_write_bytes(self.current_model_file, json.dumps({"model_version": version}).encode())

    # ---- embeddings ----------------------------------------------------------------------------
    @property
    def embeddings_root(self) -> Path:
        return self.root / "embeddings"

    def embeddings_dir(self, version: str) -> Path:
        return self.embeddings_root / version

    def embeddings_file(self, version: str, modality: str) -> Path:
        return self.embeddings_dir(version) / f"{modality}.parquet"

    def batches_file(self, version: str) -> Path:
        return self.embeddings_dir(version) / "_batches.json"

    def read_batches(self, version: str) -> list[str] | None:
        """The store batch ids the embeddings of ``version`` cover (written by embed), or None."""
        f = self.batches_file(version)
        return json.loads(f.read_text()) if f.exists() else None

    def write_batches(self, version: str, batches) -> None:
        atomic_write_bytes(self.batches_file(version), json.dumps(sorted(batches)).encode())

    def shards_dir(self, version: str, shards: int) -> Path:
        return self.embeddings_dir(version) / "_shards" / f"of-{shards}"

    def shard_dir(self, version: str, shards: int, shard: int) -> Path:
        return self.shards_dir(version, shards) / f"{shard:04d}"

    # ---- index generations ---------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def index_current_file(self) -> Path:
        return self.index_dir / "CURRENT"

    def generation_dir(self, generation: int) -> Path:
        return self.index_dir / (GENERATION_FORMAT % generation)

    def generation_dirs(self) -> list[Path]:
        """Every generation folder on disk (published or not), oldest first."""
        return sorted(p for p in self.index_dir.glob(GENERATION_GLOB) if p.is_dir())

    # ---- runs / audit --------------------------------------------------------------------------
    @property
    def scratch_dir(self) -> Path:
        return self.root / ".scratch"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def nightly_lock(self) -> Path:
        return self.root / ".nightly.lock"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def reviews_dir(self) -> Path:
        """Hypotheses and verdicts of the expert review loop (:mod:`raretarget.store.reviews`)."""
        return self.root / "reviews"


def store_batches(store) -> set[str]:
    """Batch ids of every committed part (all tables) of ``store`` (re-reads its manifest)."""
    man = store.manifest(refresh=True)
    return {Path(p).stem for ps in man.get("tables", {}).values() for p in ps}

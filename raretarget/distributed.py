"""Ray as the engine past one machine (issue 20): ``pip install 'raretarget[distributed]'``.

Two Ray Data jobs, each with ONE committer in the driver, so the store is the one the single-process path
writes:

* **ingest** (:class:`RayReader`, ``Engine.ingest(paths, ray=True)``, ``raretarget ingest STORE PATH... --ray``):
  the file list is cut into the same tasks as :mod:`raretarget.ingest.parallel` (a few consecutive files
  each), and ``map_batches`` runs them in actors that read, pseudonymise and scrub them with the very
  function the process pool uses (:func:`raretarget.ingest.parallel._read_group`). The driver merges the
  results strictly in input order and commits, checking every cross-file lookup a worker answered from its
  snapshot (an out-of-date answer: the driver reads that file itself), exactly as with ``workers=n``. One
  Ray Data job per group of files that may run together: the files after a FHIR group start when that
  group is merged, with a snapshot of every patient, alias and study it made.
* **embedding** (:func:`embed`, ``Engine.embed(ray=True)``, ``raretarget embed STORE --ray``): the patients
  are split into hash partitions (:func:`raretarget.encoders.data.shard_of`, as ``--shard i --shards n``);
  ``map_batches`` runs :meth:`Engine.embed_shard` in actors that load the model once (one GPU per actor
  when the cluster has GPUs, CPU actors otherwise); each writes its partition's Parquet beside the store
  and the driver merges them (:meth:`Engine.merge_shards`).

Workers need the store folder, the inputs and (ingest only) the link folder's key at the same paths as the
driver (a shared file system): they are on the secure side, like the raw files they read. What comes back
to the driver is what the process pool sends (de-identified rows as Arrow, plus the link records the
committer writes to the link folder); see docs/scale-out.md.

Ray is imported only when one of these runs; without it the error names the extra.
"""

from __future__ import annotations

import json
import os
# pickle only carries results between this ingest call's own processes (its workers / Ray actors, started by
# it, over its own queue or object store): never bytes read from an input file or the store, so it does not
# widen what an input can do (multiprocessing and Ray pickle those messages anyway).
import pickle
from pathlib import Path

from raretarget.ingest.parallel import ParallelReader, _Snapshot

EXTRA = "raretarget[distributed]"
MISSING = (f"Ray is not installed: `pip install '{EXTRA}'` (adds ray[data]) to run ingest/embed on Ray, "
           "or run without --ray (one machine: --workers N)")


def require_ray():
    """The ``ray`` module (with Ray Data), or an ImportError that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:           # pragma: no cover - depends on the environment
        raise ImportError(MISSING) from e
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` ("auto", "ray://head:10001", ...), or with None the one in
    ``RAY_ADDRESS``, or start a local one (``num_cpus``). A running ``ray.init`` is reused as it is.
    No usage statistics are sent and no dashboard is started (no network at run time)."""
    ray = require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            kw["address"] = address
        elif num_cpus and not os.environ.get("RAY_ADDRESS"):
            kw["num_cpus"] = num_cpus
        ray.init(**kw)
    return ray


def _cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def _gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _default_actors(ray) -> int:
    """CPU actors: one per cluster CPU but one, which is left to Ray Data's own tasks (a pool that takes
    every CPU starves them and the job hangs)."""
    return max(1, _cpus(ray) - 1)


def _ordered(ray) -> None:
    ray.data.DataContext.get_current().execution_options.preserve_order = True


# ---- ingest ----------------------------------------------------------------------------------------------
class _ReadFiles:
    """Ray Data actor: reads groups of files as a :mod:`raretarget.ingest.parallel` worker does."""

    def __init__(self, links: str, options: dict, conflicts: bool, kinds: list, snapshot: bytes):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from raretarget.ingest.core import Resources
        from raretarget.ingest.parallel import _warm

        self.key = (Path(links) / "secret.key").read_bytes()
        self.resources = Resources()
        try:
            _warm(kinds, self.resources)
        except Exception:  # noqa: BLE001 - a reader that can't load fails on its file, as in one process
            pass
        self.ext = pickle.loads(snapshot)
        self.options, self.conflicts = options, conflicts

    def __call__(self, batch):
        import pyarrow as pa

        from raretarget.ingest.parallel import _read_group

        tasks, out = [], []
        for t, group in zip(batch.column("task").to_pylist(), batch.column("group").to_pylist()):
            try:
                files = [tuple(f) for f in json.loads(group)]
                payload = pickle.dumps(_read_group(self.key, self.resources, self.ext, self.options,
                                                   self.conflicts, files), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:  # noqa: BLE001 - the driver re-reads those files and reports as one process
                payload = b""
            tasks.append(t)
            out.append(payload)
        return pa.table({"task": pa.array(tasks, pa.int64()), "payload": pa.array(out, pa.large_binary())})


class RayReader(ParallelReader):
    """:class:`ParallelReader` whose workers are Ray Data actors: same plan, same merge, same checks."""

    def __init__(self, writer, kinds=(), local=None, *, address: str | None = None, actors: int | None = None):
        self.ray = connect(address)
        self.writer = writer
        self.local = local or (lambda inp: False)
        self.log = []
        self.kinds = sorted(set(kinds))
        self.actors = actors or _default_actors(self.ray)
        self.workers = []
        self.stats = {"jobs": 0, "tasks": 0, "files_from_ray": 0}
        self.plan([])

    def plan(self, files: list[tuple]) -> None:
        super().plan(files)
        self.segment_of: dict[int, int] = {}      # task -> job (tasks with the same barrier run together)
        self.segments: list[list[int]] = []
        for t, (barrier, _) in enumerate(self.tasks):
            if not self.segments or self.tasks[self.segments[-1][0]][0] != barrier:
                self.segments.append([])
            self.segments[-1].append(t)
            self.segment_of[t] = len(self.segments) - 1
        self.running: tuple[int, object] | None = None

    def _dispatch(self) -> None:          # Ray Data schedules; a job starts when its first task is needed
        pass

    def _start(self, s: int):
        ray = self.ray
        _ordered(ray)
        ext = _Snapshot()
        ext.apply(self.log)               # every lookup merged so far (the barrier: all earlier files)
        rows = []
        for t in self.segments[s]:
            group = [(str(inp.path), inp.kind, digest, fref)
                     for inp, digest, fref in (self.files[i] for i in self.tasks[t][1])]
            rows.append({"task": t, "group": json.dumps(group)})
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        self.stats["jobs"] += 1
        self.stats["tasks"] += len(rows)
        opts = dict(self.writer.options)
        conflicts = self.writer.seen_resources is not None
        ds = ds.map_batches(
            _ReadFiles, batch_size=1, batch_format="pyarrow",
            fn_constructor_args=(str(self.writer.store.links), opts, conflicts, self.kinds,
                                 pickle.dumps(ext, protocol=pickle.HIGHEST_PROTOCOL)),
            concurrency=max(1, min(self.actors, len(rows))), num_cpus=1)
        return iter(ds.iter_rows())

    def _wait(self, t: int):
        s = self.segment_of[t]
        if self.running is None or self.running[0] != s:
            self.running = (s, self._start(s))
        while t not in self.done:
            try:
                row = next(self.running[1])
            except StopIteration:
                return None
            self.done[int(row["task"])] = bytes(row["payload"]) or None
        payload = self.done.pop(t)
        return pickle.loads(payload) if payload is not None else None

    def _apply(self, batch, res, tables, spans, inp, digest, fref):
        self.stats["files_from_ray"] += 1
        return super()._apply(batch, res, tables, spans, inp, digest, fref)

    def close(self) -> None:
        global last_ingest
        self.running = None
        last_ingest = dict(self.stats, fallbacks=self.fallbacks)


#: what the last Ray ingest in this process did: Ray Data jobs, tasks, files merged from Ray results, files
#: re-read in the driver because a worker's snapshot answer was out of date
last_ingest: dict = {}


# ---- embedding -------------------------------------------------------------------------------------------
class _EmbedPartitions:
    """Ray Data actor: loads the model once, embeds whole patient partitions with
    :func:`raretarget.encoders.pipeline.embed_shard` (what :meth:`Engine.embed_shard` runs)."""

    def __init__(self, root: str, links: str, version: str, partitions: int, batch_size: int, device: str,
                 threads: int):
        import torch

        from raretarget.encoders.pipeline import require_model
        from raretarget.encoders.training import load_model
        from raretarget.store import Store

        torch.set_num_threads(max(1, threads))
        self.store = Store.open(root, links=links)          # the store, no Engine: only the embedding part runs here
        model = require_model(self.store)
        if model["model_version"] != version:
            raise RuntimeError(f"the store's current model changed to {model['model_version']} during the job")
        self.net = load_model(model["path"], device=device)
        self.partitions, self.batch_size, self.device = partitions, batch_size, device

    def __call__(self, batch):
        import pyarrow as pa

        shards = batch.column("partition").to_pylist()
        from raretarget.encoders.pipeline import embed_shard

        counts = [json.dumps(embed_shard(self.store, i, self.partitions, batch_size=self.batch_size,
                                         device=self.device, net=self.net)) for i in shards]
        return pa.table({"partition": pa.array(shards, pa.int64()), "counts": pa.array(counts, pa.string())})


def embed(engine, *, address: str | None = None, partitions: int | None = None, actors: int | None = None,
          batch_size: int = 128, device: str | None = None) -> dict[str, int]:
    """Embed the store with its current model as a Ray Data job over ``partitions`` hash partitions of the
    patients, then merge (one writer); the rows are those of ``Engine.embed()``. ``actors``: how many embed
    at once (default: one per GPU when the cluster has GPUs, else one per CPU but one)."""
    ray = connect(address)
    model = engine.require_model()
    gpus = _gpus(ray)
    if actors is None:
        actors = gpus if gpus else _default_actors(ray)
    partitions = partitions or 2 * actors
    if gpus:
        res, threads, dev = {"num_gpus": 1}, 2, device or "auto"
    else:
        res, threads, dev = {"num_cpus": 1}, max(1, _cpus(ray) // actors), "cpu" if device in (None, "auto") else device
    _ordered(ray)
    ds = ray.data.from_items([{"partition": i} for i in range(partitions)], override_num_blocks=partitions)
    ds = ds.map_batches(_EmbedPartitions, batch_size=1, batch_format="pyarrow",
                        fn_constructor_args=(str(engine.store.root), str(engine.store.links), model["model_version"],
                                             partitions, batch_size, dev, threads),
                        concurrency=max(1, min(actors, partitions)), **res)
    done = sorted(int(r["partition"]) for r in ds.iter_rows())
    if done != list(range(partitions)):
        raise RuntimeError(f"Ray embedding finished partitions {done}, expected 0..{partitions - 1}")
    return engine.merge_shards(partitions)

"""One ingest call: discover the inputs, skip files already ingested (by content hash), read each batch of files
(here, in worker processes or in Ray actors) and hand the rows to the store writer, which commits each batch
atomically (:class:`raretarget.store.writer.StoreWriter`). ``Engine.ingest`` is this function over the
engine's writer and reference resources.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from raretarget.store.compact import IntMap

from . import core
from .core import BatchState, Planned, discover, read_file, sha256_file


@dataclass
class IngestReport:
    """What one ``Engine.ingest`` call did.

    ``accepted``: rows added per table (after de-duplication against the store).
    ``quarantined``: number of rejected records/files; ``quarantine`` has (file, record, reason) each.
    ``records``: input records read, ``ignored``: valid records of resource types raretarget does not
    store (by type), ``duplicates``: rows already in the store or met earlier with the same content,
    ``conflicts``: resources met again in the same ``ingest`` call with the same id and other content (the
    first version is kept, each later one is listed in ``quarantine`` with code ``conflicting_duplicate``).
    For every file ``records == accepted records + ignored + quarantined + conflicts``, each term counted
    from what was written (the ``ingested`` table holds them per file).
    ``updated``: accepted rows that replace an older version of the same record (same record_id,
    other content; included in ``accepted``); ``deleted``: rows removed by FHIR deletes (Bundle
    entries with ``request.method = DELETE`` or Bulk Data ``deleted/`` listings).
    """

    accepted: dict[str, int] = field(default_factory=dict)
    quarantine: list = field(default_factory=list)
    records: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    files: int = 0
    files_already_ingested: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    updated: int = 0
    deleted: int = 0
    conflicts: int = 0

    @property
    def quarantined(self) -> int:
        return len(self.quarantine) - self.conflicts

    def summary(self) -> str:
        acc = ", ".join(f"{k}={v}" for k, v in sorted(self.accepted.items()) if v) or "none"
        ign = sum(self.ignored.values())
        return (f"{self.files} file(s) read ({self.files_already_ingested} already ingested), "
                f"{self.records} record(s): rows accepted {acc}; {ign} ignored (unsupported types); "
                f"{self.duplicates} duplicate row(s) skipped; {self.quarantined} quarantined"
                + (f"; {self.conflicts} conflicting duplicate(s)" if self.conflicts else "")
                + (f"; {self.updated} updated, {self.deleted} deleted" if self.updated or self.deleted else ""))


def run_ingest(writer, resources, paths: str | os.PathLike | Sequence[str | os.PathLike], *, batch_files: int = 64,
           batch_records: int = 200_000, fhir_validate: str = "none", workers: int = 1,
           chunk_records: int = 50_000, ray_reader: Callable | None = None,
           progress: bool | Callable[[int, int], None] = False) -> IngestReport:
    """The ingest of :meth:`raretarget.Engine.ingest` (whose docstring gives every argument), over a store
    ``writer`` and the reference ``resources`` instead of an Engine. ``ray_reader``: ``(writer, kinds=, local=)`` →
    a reader pool like :class:`raretarget.ingest.parallel.ParallelReader` whose workers are elsewhere
    (``Engine.ingest(ray=...)`` passes :class:`raretarget.distributed.RayReader`): the files are read there,
    merged and committed here the same way."""
    if fhir_validate not in ("none", "full"):
        raise ValueError("fhir_validate must be 'none' or 'full'")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError("workers must be an integer >= 1")
    if not isinstance(chunk_records, int) or chunk_records < 1:
        raise ValueError("chunk_records must be an integer >= 1")
    writer.options = {"fhir_validate": fhir_validate}

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    inputs, skipped = discover(paths)
    report = IngestReport(skipped_files=skipped)
    # conflicts are found across the batches of this call: every resource's content hash, kept compact
    writer.seen_resources = IntMap(np.uint64)
    pseudo = writer.pseudo
    bar = _progress(progress, len(inputs))
    with writer.store.writer():
        writer.sync()               # another writer committed since this (long-lived) writer's last call: reload
        # Earlier batches' identifiers, loaded once and then kept current by each commit, so a lookup
        # gives the same answer whichever process made it (and in whatever batch).
        writer.known_phi("")
        writer.known_alias()
        done = set(writer.store.read("ingested", ["file_ref"]).column("file_ref").to_pylist())
        pool = None
        if ray_reader is not None:
            pool = ray_reader(writer, kinds=inputs.kinds(), local=_is_large)
        elif workers > 1 and len(inputs) > 1:     # started now: they load while the inputs are hashed
            from .parallel import ParallelReader

            pool = ParallelReader(writer, workers, kinds=inputs.kinds(), local=_is_large)
        try:
            # the files to read (positions in ``inputs``) and the batches as ranges of them: every file's
            # hash and reference are computed here first (their pseudonym links go with the first commit)
            todo = array("q")
            bounds: list[int] = [0]
            pending, size = 0, 0
            for i in range(len(inputs)):
                path = inputs.path(i)
                digest = sha256_file(path)
                fref = pseudo.file(digest)
                if fref in done:
                    report.files_already_ingested += 1
                    bar(1)
                    continue
                done.add(fref)
                inputs.set_hash(i, digest, fref)
                todo.append(i)
                pending += 1
                size += os.stat(path).st_size
                if pending >= batch_files or size >= batch_records * 500:
                    bounds.append(len(todo))
                    pending, size = 0, 0
            if pending:
                bounds.append(len(todo))
            del done
            files = Planned(inputs, todo)
            if pool is not None:
                pool.plan(files)
            for a, b in zip(bounds, bounds[1:]):
                _ingest_batch(writer, resources, [files[k] for k in range(a, b)], report, bar, pool, chunk_records)
        except BaseException:
            writer.forget()         # a call that failed part-way: the next one reads the lookups again
            raise
        finally:
            if pool is not None:
                pool.close()
    bar(0, close=True)
    return report


def _ingest_batch(writer, resources, files, report: IngestReport, bar, pool=None,
                  chunk_records: int = 50_000) -> None:
    pseudo = writer.pseudo
    batch = BatchState(pseudo, resources, writer.known_phi)
    batch.known_studies = writer.known_studies()
    batch.known_alias = writer.known_alias()
    batch.options = dict(writer.options)
    batch.seen_resources = writer.seen_resources
    batch_id = "b" + hashlib.blake2b("|".join(f for _, _, f in files).encode(), digest_size=8).hexdigest()
    ledger: list[tuple] = []
    chunks = [0]

    def partial() -> None:
        """A large file's rows so far (and the files finished before it) committed as their own part, so
        memory holds at most ``chunk_records`` records of it. The file's ledger row comes with its last
        part: a killed ingest reads the file again, its committed rows are then duplicates and its
        quarantine entries (ids from file and position) are not stored twice."""
        chunks[0] += 1
        writer.commit_batch(batch, ledger, f"{batch_id}-{chunks[0]}", report)
        ledger.clear()

    batch.partial = partial
    batch.chunk_records = chunk_records
    for k, (inp, digest, fref) in enumerate(files):
        if pool is not None:            # read by a worker, checked and merged here (or read here)
            entry, ignored = pool.merge(batch, inp, digest, fref)
        else:
            entry, ignored = read_file(batch, inp.path, inp.kind, digest, fref)
        ledger.append(entry)
        # many files each below the large-file size can still hold many rows together (a multi-sample VCF:
        # 0.5 MB compressed, 100k variant rows): their rows so far and ledger rows go out as a part at a file
        # boundary, so a batch holds at most about chunk_records rows plus one file's
        if chunk_records and k + 1 < len(files) and batch.buffered_rows() >= chunk_records:
            partial()
        report.conflicts += entry[6]
        report.records += entry[2]
        for k, v in ignored.items():
            report.ignored[k] = report.ignored.get(k, 0) + v
        report.files += 1
        bar(1)
    writer.commit_batch(batch, ledger, batch_id, report)
    report.batches += 1


def _is_large(inp) -> bool:
    """Large files are read (streamed, committed in parts) by the committing process, never by a worker."""
    return inp.path.stat().st_size >= core.LARGE_FILE      # read at call time (tests lower it)


def _progress(progress, total: int):
    """A callable bar(n, close=False). progress=True uses rich; a callable gets (done, total)."""
    if callable(progress) and not isinstance(progress, bool):
        state = {"n": 0}

        def cb(n, close=False):
            state["n"] += n
            progress(state["n"], total)
        return cb
    if not progress:
        return lambda n, close=False: None
    from rich.progress import Progress

    p = Progress(transient=False)
    p.start()
    task = p.add_task("ingest", total=total)

    def bar(n, close=False):
        p.advance(task, n)
        if close:
            p.stop()
    return bar

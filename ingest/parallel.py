"""Parallel ingest on one machine: files parsed and de-identified in worker processes, one committer.

``Engine.ingest(paths, workers=n)`` starts ``n`` worker processes (``spawn``: no state inherited from the
parent, safe under any start method and thread mix). Each worker reads whole files with the same
readers and :func:`raretarget.ingest.core.read_file` as the single-process path and sends back what
that file added to its batch: rows as Arrow tables (already pseudonymised, dates shifted, text scrubbed),
quarantine entries, and the link records the parent commits to the link folder anyway (pseudonym
links, identifiers' aliases, scrub terms, quarantined raw records). Nothing else leaves a worker.

The parent merges the files strictly in input order into the batch and commits as before, so batches,
record ids, pseudonyms and quarantine are those of ``workers=1``. What makes that exact:

* A file's reading depends on other files only through a few lookups (a patient's scrub terms, an
  identifier's patient, a study's patient, whether a resource id was met before with other content).
  A worker answers them from a snapshot of what the parent had merged when it sent the file (plus the
  file's own records) and records every answer that came from the snapshot. At merge time the parent
  checks each recorded answer against its own state; if one differs, the worker's result is thrown
  away and the parent reads the file itself. So a snapshot that is out of date costs time, never
  correctness.
* Files are handed out in order; before the first file of a group that follows a FHIR group (Patient
  files, then other FHIR files, then DICOM/VCF; see :func:`raretarget.ingest.core.discover`) the parent
  waits until the FHIR group is merged, so the snapshot then holds every patient, alias and study.
* A worker that dies or fails on a file: the parent reads that file itself (the same errors and
  quarantine entries as ``workers=1``; no error text crosses the process boundary).
"""

from __future__ import annotations

import os
# pickle only carries results between this ingest call's own processes (its workers / Ray actors, started by
# it, over its own queue or object store): never bytes read from an input file or the store, so it does not
# widen what an input can do (multiprocessing and Ray pickle those messages anyway).
import pickle
import queue
from pathlib import Path

import numpy as np

from raretarget.store.compact import DigestMap

from .core import BatchState, Resources, read_file

#: tasks handed to one worker ahead of the merge (keeps it busy while the parent commits)
AHEAD_PER_WORKER = 3
#: rough read cost per input byte by kind, relative to FHIR JSON (measured on the generated cohort: FHIR
#: 0.07 s/MB, DICOM 0.14 s/MB, bgzipped multi-sample VCF 2.1 s/MB, plain-text VCF about 7x less per byte).
#: It only orders the hand-out (see :meth:`ParallelReader._plan`); what is merged never depends on it.
COST_PER_BYTE = {"fhir": 1.0, "dicom": 2.0, "vcf": 30.0, "vcf_text": 4.0}
#: a task costing more than this many times its segment's median task is handed out first: a long file
#: last in the input order would otherwise be read by one worker while the other has nothing left to do
HEAVY = 4.0
#: one task: up to this many consecutive files or bytes (one message and one Arrow conversion for many
#: small files, e.g. one Bundle per patient)
GROUP_FILES = 16
GROUP_BYTES = 8 << 20
#: the merged-lookups log is cut once every live worker has been sent at least this many of its entries (and
#: half of it): entries are then dropped a prefix at a time
LOG_TRIM_MIN = 1024


class _Snapshot:
    """A worker's copy of the parent's merged lookups (latest write wins, as in the parent). The scrub terms
    only of the :data:`raretarget.store.phi.HOT_MAX` patients merged last (a file almost always carries its
    own Patient; one that needs an older patient's terms gets "unknown" here, which the parent finds wrong:
    it reads that file itself), so a worker's memory does not grow with every patient of the ingest."""

    def __init__(self):
        self.phi: dict[str, list] = {}
        # identifier → patient and study → patient, by key digest (compact; the log carries digests)
        self.alias = DigestMap()
        self.study = DigestMap()

    def apply(self, delta) -> None:
        from raretarget.store.phi import HOT_MAX

        phi = self.phi
        for kind, key, value in delta:
            if kind == "phi":
                phi.pop(key, None)               # re-inserted last: the dict's order is the merge order
                phi[key] = value
                if len(phi) > HOT_MAX:
                    del phi[next(iter(phi))]
            else:
                getattr(self, kind).put_digest(key, value)


class _WorkerBatch(BatchState):
    """The batch as one worker sees it: the file's own records first, then the snapshot, each answer
    taken from the snapshot recorded for the parent to check (first answer per key: the snapshot does
    not change while a file is read)."""

    def __init__(self, pseudo, resources, ext: _Snapshot, conflicts: bool):
        super().__init__(pseudo, resources, lambda pid: None)
        self.ext = ext
        self.seen_resources = {} if conflicts else None
        self.read_phi: dict[str, list | None] = {}
        self.read_alias: dict[str, str | None] = {}
        self.read_study: dict[str, str | None] = {}
        self.read_seen: list[tuple[int, int]] = []

    def phi_for(self, patient_id: str):
        from .deid import compile_terms

        if patient_id in self.phi_terms:
            terms = self.phi_terms[patient_id]
        else:
            terms = self.ext.phi.get(patient_id)
            self.read_phi.setdefault(patient_id, terms)
        return compile_terms(terms or [])

    def patient_for_identifier(self, value: str | None) -> str | None:
        if value is None or not str(value).strip():
            return None
        v = str(value).strip()
        hit = self.alias.get(v)
        if hit is None:
            hit = self.ext.alias.get(v)
            self.read_alias.setdefault(v, hit)
        return hit or self.pseudo.patient(v)

    def study_of(self, study_uid: str) -> str | None:
        if study_uid in self.study_patient:
            return self.study_patient[study_uid]
        hit = self.ext.study.get(study_uid)
        self.read_study.setdefault(study_uid, hit)
        return hit

    def check_resource(self, key: int, content: int) -> bool:
        seen = self.seen_resources
        if seen is None:
            return False
        prev = seen.get(key)
        if prev is None:               # first time in this file: the parent checks the rest of the ingest
            seen[key] = content
            self.read_seen.append((key, content))
            return False
        return prev != content


def _read_in_worker(pseudo_key: bytes, resources: Resources, ext: _Snapshot, options: dict, conflicts: bool,
                    path: str, kind: str, digest: str, fref: str) -> tuple[dict, dict]:
    """One file read into a batch of its own: (what it added besides rows, its rows as column lists)."""
    from raretarget.store.pseudo import Pseudonymizer

    # a fresh pseudonymizer per file, so its links list every pseudonym this file used that the parent may
    # not have made yet (a cache shared across files would hide some when an earlier file is re-read there)
    pseudo = Pseudonymizer(pseudo_key)
    b = _WorkerBatch(pseudo, resources, ext, conflicts)
    b.options = options
    entry, ignored = read_file(b, Path(path), kind, digest, fref)
    return {
        "entry": entry, "ignored": ignored, "quarantine": b.quarantine, "raw": b.raw,
        "files": b.files[1:], "phi": b.phi_terms, "alias": b.alias, "study": b.study_patient,
        "deletions": b.deletions, "links": pseudo.drain(),
        "reads": (b.read_phi, b.read_alias, b.read_study, b.read_seen),
    }, {name: (cols, b.nrows[name]) for name, cols in b.rows.items()}


def _read_group(key, resources, ext, options, conflicts, group) -> dict:
    """Several consecutive files: per-file results, and their rows as ONE Arrow table per data table with
    per-file offsets (one conversion and one message for many small files; the parent slices per file)."""
    from raretarget.store import schema as S

    files, rows = [], []
    for path, kind, digest, fref in group:
        meta, r = _read_in_worker(key, resources, ext, options, conflicts, path, kind, digest, fref)
        files.append(meta)
        rows.append(r)
    tables, spans = {}, [dict() for _ in group]
    for name in dict.fromkeys(n for r in rows for n in r):
        cols: dict[str, list] = {}
        total = 0
        for k, r in enumerate(rows):
            if name not in r:
                continue
            fcols, n = r[name]
            for c, v in fcols.items():
                col = cols.get(c)
                if col is None:
                    col = cols[c] = [None] * total
                col.extend(v[:n])
            total += n
            for col in cols.values():
                if len(col) < total:
                    col.extend([None] * (total - len(col)))
            spans[k][name] = (total - n, n)
        if total:
            tables[name] = S.conform(name, cols)
    return {"files": files, "tables": tables, "spans": spans}


def _cost_per_byte(inp) -> float:
    if inp.kind == "vcf" and not inp.path.name.endswith((".gz", ".bgz", ".bcf")):
        return COST_PER_BYTE["vcf_text"]
    return COST_PER_BYTE.get(inp.kind, 1.0)


def _dispatch_order(tasks: list[tuple[int, list[int]]], cost: list[float]) -> list[int]:
    """The order tasks are handed out: per segment (tasks behind the same barrier), the heavy ones (cost
    above :data:`HEAVY` x the segment's median) first, then the rest in input order. Merging stays in input
    order; a heavy task's result waits in the parent until its turn."""
    order: list[int] = []
    k = 0
    while k < len(tasks):
        j = k
        while j < len(tasks) and tasks[j][0] == tasks[k][0]:
            j += 1
        seg = range(k, j)
        ref = HEAVY * sorted(cost[t] for t in seg)[(j - k) // 2]
        order.extend(t for t in seg if cost[t] > ref)
        order.extend(t for t in seg if cost[t] <= ref)
        k = j
    return order


def _warm(kinds, resources: Resources) -> None:
    """Load the readers and reference tables the inputs will need, before the first file arrives."""
    from raretarget.ingest import readers

    for kind in kinds:
        readers.get(kind)
    if "fhir" in kinds:
        resources.units, resources.phenotypes
    if "vcf" in kinds:
        resources.genes
    if "dicom" in kinds:
        import pydicom  # noqa: F401


def _worker(links: str, options: dict, conflicts: bool, kinds, tasks, results) -> None:
    """Worker process main loop: ``(task id, [(path, kind, digest, fref)], delta)`` in,
    ``(status, task id, payload)`` out."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")       # one core per worker, the parent has its own
    key = (Path(links) / "secret.key").read_bytes()
    resources = Resources()
    try:
        _warm(kinds, resources)
    except Exception:  # noqa: BLE001 - a reader that can't load fails on its file, as with workers=1
        pass
    ext = _Snapshot()
    while True:
        msg = tasks.get()
        if msg is None:
            return
        t, group, delta = msg
        try:
            ext.apply(delta)
            out = pickle.dumps(_read_group(key, resources, ext, options, conflicts, group),
                               protocol=pickle.HIGHEST_PROTOCOL)
            results.put(("ok", t, out))
        except BaseException:  # noqa: BLE001 - the parent re-reads the files and reports like workers=1
            results.put(("failed", t, None))


class ParallelReader:
    """Parent side: hands files to workers ahead of the merge, merges their results in input order."""

    def __init__(self, writer, workers: int, kinds=(), local=None):
        """Start the workers (they load readers and reference tables for ``kinds`` while the parent hashes
        the inputs); :meth:`plan` then gives them the files. ``writer``: the ingest call's
        :class:`raretarget.store.writer.StoreWriter` (the store, its options and the earlier batches' lookups)."""
        import multiprocessing as mp

        self.writer = writer
        self.local = local or (lambda inp: False)           # files the parent reads itself
        self.log: list[tuple[str, str, object]] = []        # merged lookups, in order (sent as deltas)
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        store = writer.store
        conflicts = writer.seen_resources is not None
        opts = dict(writer.options)
        self.workers = []
        for _ in range(workers):
            q = ctx.Queue()
            p = ctx.Process(target=_worker, args=(str(store.links), opts, conflicts, sorted(set(kinds)), q,
                                                  self.results), daemon=True)
            p.start()
            self.workers.append({"p": p, "q": q, "sent": 0, "busy": set()})
        self.plan([])

    def plan(self, files) -> None:
        """The files to read: a sequence of ``(InputFile, digest, file_ref)`` in input order (a
        :class:`raretarget.ingest.core.Planned` makes them on demand, each ``InputFile`` knowing its position)."""
        writer = self.writer
        self.files = files
        self._index = None        # file_ref -> position, for items that don't carry theirs (built when asked)
        self.tasks, self.task_of, self.cost = self._plan(files)
        self.order = _dispatch_order(self.tasks, self.cost)
        self.pos = {t: k for k, t in enumerate(self.order)}
        self.log.clear()
        for w in self.workers:
            w["sent"] = 0
        # what every worker needs first: the store's identifiers from earlier ingests
        self.log.extend(("phi", k, v) for k, v in writer.known_phi_items().items())
        self.log.extend(("alias", d, v) for d, v in writer.known_alias().digest_items())
        self.log.extend(("study", d, v) for d, v in writer.known_studies().digest_items())
        self.next = 0             # position in self.order of the next task to hand out
        self.merged = 0           # files merged so far
        self.done: dict[int, object] = {}      # task -> pickled result (None: read those files here)
        self.open: dict[int, dict | None] = {}  # task being merged -> its result
        self.fallbacks = 0

    def _plan(self, files) -> tuple[list[tuple[int, range]], np.ndarray, list[float]]:
        """Tasks of consecutive files (a few small files per message: a ``range`` of positions), each with how
        many files must be merged before it is handed out (the whole previous group when that group is FHIR),
        the task of each file (-1: read by the parent) and each task's estimated read cost (bytes x
        :data:`COST_PER_BYTE`). Per file only the int32 task number is kept (185k files at 100k patients)."""
        tasks: list[tuple[int, range]] = []
        task_of = np.full(len(files), -1, dtype=np.int32)
        cost: list[float] = []
        start, cur, size = 0, None, 0          # cur: the task being filled (its number), or None
        prev = None                            # (order, kind) of the previous file
        for i, (inp, _, _) in enumerate(files):
            if prev is not None and inp.order != prev[0] and prev[1] == "fhir":
                start, cur = i, None
            prev = (inp.order, inp.kind)
            if self.local(inp):
                cur = None
                continue
            nbytes = inp.path.stat().st_size
            # a task holds files of one kind, and a VCF (many samples' genotypes) is a task of its own,
            # so that a long file can be handed out ahead of the short ones (see _dispatch_order)
            if (cur is None or len(tasks[cur][1]) >= GROUP_FILES or size + nbytes > GROUP_BYTES
                    or inp.kind != cur_kind or inp.kind == "vcf"):
                tasks.append((start, range(i, i)))
                cur, cur_kind = len(tasks) - 1, inp.kind
                cost.append(0.0)
                size = 0
            tasks[cur] = (tasks[cur][0], range(tasks[cur][1].start, i + 1))
            size += nbytes
            task_of[i] = cur
            cost[-1] += nbytes * _cost_per_byte(inp)
        return tasks, task_of, cost

    # ---- dispatch -------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        alive = [w for w in self.workers if w["p"].is_alive()]
        while self.next < len(self.order) and alive:
            t = self.order[self.next]
            barrier, idx = self.tasks[t]
            if barrier > self.merged:
                return
            # the worker with the least estimated work in hand: one reading a long file gets no short
            # ones queued behind it (the merge would wait for them) while the other has room
            w = min(alive, key=lambda w: (sum(self.cost[j] for j in w["busy"]), len(w["busy"])))
            if len(w["busy"]) >= AHEAD_PER_WORKER:
                return
            delta = self.log[w["sent"]:]
            w["sent"] = len(self.log)
            self._trim_log()
            group = [(str(inp.path), inp.kind, digest, fref) for inp, digest, fref in (self.files[i] for i in idx)]
            w["q"].put((t, group, delta))
            w["busy"].add(t)
            self.next += 1

    def _trim_log(self) -> None:
        """Drop the log entries every live worker has been sent (the log held every patient's lookups, scrub
        terms included, to the end of the call). A worker that died gets nothing more: it does not count."""
        sent = [w["sent"] for w in self.workers if w["p"].is_alive()]
        m = min(sent) if sent else len(self.log)
        if m and m >= max(LOG_TRIM_MIN, len(self.log) // 2):      # amortised: a prefix at a time, not per task
            del self.log[:m]
            for w in self.workers:
                w["sent"] = max(0, w["sent"] - m)

    def _wait(self, t: int):
        """The result of task ``t``, or None when the parent must read its files itself."""
        while True:
            self._dispatch()
            if t in self.done:
                payload = self.done.pop(t)
                return pickle.loads(payload) if payload is not None else None
            if self.pos[t] >= self.next or not any(t in w["busy"] for w in self.workers):
                return None           # not handed out (workers full) or lost: read here
            try:
                status, j, payload = self.results.get(timeout=1.0)
            except queue.Empty:
                for w in self.workers:            # a dead worker's files are read here
                    if not w["p"].is_alive():
                        for j in w["busy"]:
                            self.done[j] = None
                        w["busy"].clear()
                continue
            for w in self.workers:
                w["busy"].discard(j)
            self.done[j] = payload if status == "ok" else None

    # ---- merge ---------------------------------------------------------------------------------------
    def merge(self, batch: BatchState, inp, digest: str, fref: str) -> tuple:
        """Add file ``fref`` to ``batch`` exactly as :func:`read_file` would have, return its ledger entry."""
        i = inp.pos if inp.pos >= 0 else self._position(fref)
        t = int(self.task_of[i])
        res = None
        if t >= 0:
            if t not in self.open:
                self.open[t] = self._wait(t)
            tres = self.open[t]
            idx = self.tasks[t][1]
            k = idx.index(i)
            if k == len(idx) - 1:
                self.open.pop(t)
            if tres is not None:
                res = (tres["files"][k], tres["tables"], tres["spans"][k])
        if res is None or not self._consistent(batch, res[0]["reads"]):
            if res is not None:
                self.fallbacks += 1
            out = self._read_here(batch, inp, digest, fref)
        else:
            out = self._apply(batch, *res, inp, digest, fref)
        self.merged = i + 1
        self._dispatch()
        return out

    def _position(self, fref: str) -> int:
        if self._index is None:
            self._index = {f[2]: i for i, f in enumerate(self.files)}
        return self._index[fref]

    def _consistent(self, batch: BatchState, reads) -> bool:
        phi, alias, study, seen = reads
        writer = self.writer
        for pid, terms in phi.items():
            real = batch.phi_terms[pid] if pid in batch.phi_terms else writer.known_phi(pid)
            if list(real or ()) != list(terms or ()):
                return False
        for v, pid in alias.items():
            if (batch.alias.get(v) or batch.known_alias.get(v)) != pid:
                return False
        for s, pid in study.items():
            if batch.study_of(s) != pid:
                return False
        known = batch.seen_resources                       # the committer's IntMap: one search per file
        if known is not None and seen:
            for (_key, h), prev in zip(seen, known.get_many([k for k, _ in seen])):
                if prev is not None and prev != h:
                    return False
        return True

    def _apply(self, batch: BatchState, res: dict, tables: dict, spans: dict, inp, digest: str, fref: str) -> tuple:
        batch.files.append((fref, str(inp.path), digest, inp.kind))
        for f in res["files"]:                 # files a DICOMDIR referenced, listed once per batch
            if not any(x[0] == f[0] for x in batch.files):
                batch.files.append(f)
        for name, (off, n) in spans.items():
            batch.add_segment(name, tables[name].slice(off, n))
        batch.quarantine.extend(res["quarantine"])
        batch.raw.extend(res["raw"])
        batch.deletions.extend(res["deletions"])
        batch.phi_terms.update(res["phi"])
        batch.alias.update(res["alias"])
        batch.study_patient.update(res["study"])
        seen, pairs = batch.seen_resources, res["reads"][3]
        if seen is not None and pairs:
            seen.setdefault_many([k for k, _ in pairs], [h for _, h in pairs])
        pseudo = batch.pseudo
        for p, original, kind in res["links"]:       # pseudonyms first made by this file, in its order
            if (kind, original) not in pseudo._cache:
                pseudo._cache[(kind, original)] = p
                pseudo.new_links.append((p, original, kind))
        self._log_lookups(res["phi"], res["alias"], res["study"])
        return res["entry"], res["ignored"]

    def _read_here(self, batch: BatchState, inp, digest: str, fref: str) -> tuple:
        """Read a file in the parent (a big file, a worker's failure, or an out-of-date snapshot)."""
        before = (dict(batch.phi_terms), dict(batch.alias), dict(batch.study_patient))
        out = read_file(batch, inp.path, inp.kind, digest, fref)
        self._log_lookups(*({k: v for k, v in new.items() if k not in old or old[k] is not v}
                            for old, new in zip(before, (batch.phi_terms, batch.alias, batch.study_patient))))
        return out

    def _log_lookups(self, phi: dict, alias: dict, study: dict) -> None:
        """Append a file's new lookups to the log the workers' snapshots follow (identifiers and studies by
        digest: :class:`raretarget.store.compact.DigestMap`)."""
        digest = DigestMap.digest
        self.log.extend(("phi", k, v) for k, v in phi.items())
        self.log.extend(("alias", digest(k), v) for k, v in alias.items())
        self.log.extend(("study", digest(k), v) for k, v in study.items())

    def close(self) -> None:
        for w in self.workers:
            try:
                w["q"].put(None)
            except (OSError, ValueError):
                pass
        for w in self.workers:
            w["p"].join(timeout=10)
            if w["p"].is_alive():
                w["p"].terminate()
                w["p"].join(timeout=5)
        self.results.close()


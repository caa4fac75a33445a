"""The scrub terms of the patients an ingest has met, held for the committer in bounded memory (issue 20).

A note is scrubbed of its patient's own identifiers (names, MRN, address ...: :mod:`raretarget.ingest.deid`)
even when its Patient was read in an earlier batch or an earlier ingest (FHIR Bulk NDJSON: every Patient in
one file, the notes in others). So the writer answers "terms of patient X" for every patient met so far. It
used to hold them all as Python lists (about 1 KB a patient: ~106 MB at 100k patients, for the whole call).

:class:`PhiTerms` keeps the :data:`HOT_MAX` most recently used patients' terms as lists; older ones are
written to an unnamed temporary file in the link folder and read back when asked for (then they are recent
again). In memory per patient written out: its key and the place of its terms in the file, 16 bytes. The
file is on the secure side, where the same terms are stored anyway (``<links>/phi``); it has no name (it is
never listed in the folder), only its owner may read it, and it is gone when the writer is (or its process
ends, however it ends). Nothing else changes: the answer for a patient is the last terms put for it.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import orjson

from .compact import IntMap

#: patients whose terms stay in memory as lists (about 1 KB each): the ones asked for or put most recently
HOT_MAX = 8192
#: a spilled patient's place in the file is packed in 64 bits: offset (bytes) << LEN_BITS | length (bytes)
LEN_BITS = 24
_MISSING = object()


class PhiTerms:
    """Patient id → scrub terms (a list of strings), the last put wins. ``folder``: where the temporary file
    goes (the link folder); None or not writable: everything stays in memory, as before."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self._hot: OrderedDict[str, list | None] = OrderedDict()
        self._where = IntMap(np.uint64)            # patient key → offset << LEN_BITS | length, in the file
        self._other: dict[str, list | None] = {}   # never written out (an id not of the pseudonym form)
        self._file = None
        self._end = 0                              # bytes written to the file
        self._dirty = False                        # written since the last flush (pread reads the OS file)
        self.spilled = 0                           # patients written out (a statistic for tests)

    @staticmethod
    def _key(pid: str) -> int | None:
        """The 64-bit integer of a patient pseudonym ``pt-<16 hex digits>`` (one to one), else None."""
        if isinstance(pid, str) and len(pid) == 19 and pid.startswith("pt-"):
            try:
                return int(pid[3:], 16)
            except ValueError:
                return None
        return None

    def get(self, pid: str):
        """The terms last put for ``pid``, or None."""
        t = self._hot.get(pid, _MISSING)
        if t is not _MISSING:
            self._hot.move_to_end(pid)
            return t
        t = self._other.get(pid, _MISSING)
        if t is not _MISSING:
            return t
        key = self._key(pid)
        packed = self._where.get(key) if key is not None else None
        if packed is None:
            return None
        if self._dirty:
            self._file.flush()
            self._dirty = False
        off, n = packed >> LEN_BITS, packed & ((1 << LEN_BITS) - 1)
        t = orjson.loads(os.pread(self._file.fileno(), n, off))
        self._put(pid, t)            # asked for once, likely asked again soon (a patient's notes come together)
        return t

    def put(self, pid: str, terms) -> None:
        self._other.pop(pid, None)
        self._put(pid, terms)

    def update(self, mapping: dict) -> None:
        for pid, terms in mapping.items():
            self.put(pid, terms)

    def hot_items(self) -> dict:
        """The terms held in memory (the parallel readers' first snapshot; the others they don't get: a worker's
        answer "unknown" that the committer finds wrong makes it read that file itself)."""
        return {**self._other, **self._hot}

    def _put(self, pid: str, terms) -> None:
        hot = self._hot
        hot[pid] = terms
        hot.move_to_end(pid)
        while len(hot) > HOT_MAX:
            old, t = hot.popitem(last=False)
            if not self._spill(old, t):
                self._other[old] = t

    def _spill(self, pid: str, terms) -> bool:
        """Write ``pid``'s terms to the file; False when they must stay in memory instead."""
        key = self._key(pid)
        if key is None or self.folder is None:
            return False
        blob = orjson.dumps(terms)
        if len(blob) >= 1 << LEN_BITS:
            return False
        if self._file is None:
            try:
                # O_TMPFILE where the system has it: never a name in the folder; mode 0600 in any case
                self._file = tempfile.TemporaryFile(dir=self.folder, prefix=".phi-")
            except OSError:
                self.folder = None
                return False
        self._file.write(blob)
        self._dirty = True
        self._where[key] = (self._end << LEN_BITS) | len(blob)
        self._end += len(blob)
        self.spilled += 1
        return True

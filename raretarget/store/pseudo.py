"""Keyed pseudonyms and per-patient date shifts.

Every identifier that leaves the source data (patient ids, resource ids, DICOM UIDs, file contents)
is replaced by ``HMAC-SHA256(key, kind | original)``. The key is random per store and lives in the
link folder (``<store>.links/secret.key``), never in the store folder: without it a pseudonym can't
be recomputed from a guessed identifier.
"""

from __future__ import annotations

import hmac
import hashlib
from datetime import date, datetime, timedelta, timezone

#: date shifts are whole days in [-MAX_SHIFT_DAYS, MAX_SHIFT_DAYS], never 0
MAX_SHIFT_DAYS = 365
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class DateOutOfRange(ValueError):
    """A date that can't be shifted (the shifted date falls outside years 1..9999)."""


class Pseudonymizer:
    """Deterministic keyed pseudonyms; remembers each mapping it made so the caller can persist links.

    ``new_links`` collects ``(pseudo, original, kind)`` for mappings made since the last ``drain()``.
    """

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("pseudonymisation key must be at least 16 bytes")
        self._key = key
        self._cache: dict[tuple[str, str], str] = {}
        self._shift: dict[str, int] = {}
        self.new_links: list[tuple[str, str, str]] = []

    def _digest(self, kind: str, original: str) -> bytes:
        return hmac.new(self._key, f"{kind}|{original}".encode(), hashlib.sha256).digest()

    def _get(self, kind: str, original: str, fmt) -> str:
        k = (kind, original)
        p = self._cache.get(k)
        if p is None:
            p = fmt(self._digest(kind, original))
            self._cache[k] = p
            self.new_links.append((p, original, kind))
        return p

    def patient(self, original: str) -> str:
        """Pseudonymous patient id, ``pt-`` + 16 hex digits."""
        return self._get("patient", original.strip(), lambda d: "pt-" + d[:8].hex())

    def resource(self, resource_type: str, original: str) -> str:
        """Pseudonymous resource id (type kept: it is not identifying)."""
        return self._get("resource", f"{resource_type}/{original}", lambda d: d[:8].hex())

    def uid(self, original: str) -> str:
        """Pseudonymous DICOM UID in the ``2.25.<128-bit int>`` form (still a valid UID)."""
        return self._get("uid", original.strip().rstrip("\x00"), lambda d: "2.25." + str(int.from_bytes(d[:16], "big")))

    def file(self, sha256_hex: str) -> str:
        """Pseudonymous file reference from the file's content hash."""
        return self._get("file", sha256_hex, lambda d: "f" + d[:6].hex())

    def sample(self, file_ref: str, name: str) -> str:
        return self._get("sample", f"{file_ref}/{name}", lambda d: "s" + d[:6].hex())

    def alias_key(self, value: str) -> str:
        """Keyed hash of a secondary identifier (MRN, DICOM PatientID) for linking, not stored in the store."""
        return self._digest("alias", value.strip()).hex()[:32]

    # ---- dates -----------------------------------------------------------------------------------
    def shift_days(self, patient_id: str) -> int:
        s = self._shift.get(patient_id)
        if s is None:
            d = int.from_bytes(self._digest("shift", patient_id)[:4], "big")
            s = d % (2 * MAX_SHIFT_DAYS) - MAX_SHIFT_DAYS
            if s == 0:
                s = MAX_SHIFT_DAYS
            self._shift[patient_id] = s
        return s

    def shift(self, value: str | None, patient_id: str | None) -> datetime | None:
        """Parse a FHIR/DICOM date or dateTime and shift it by the patient's offset (UTC result).

        Partial dates (``YYYY``, ``YYYY-MM``) take the first day. Unparseable → None.
        Without a patient the value is dropped (an unshifted exact date is PHI).
        """
        if not value or patient_id is None:
            return None
        dt = parse_datetime(value)
        if dt is None:
            return None
        try:
            return dt + timedelta(days=self.shift_days(patient_id))
        except OverflowError:
            raise DateOutOfRange("date outside the representable range after the shift") from None

    #: mappings remembered between two drains before the cache is emptied (ingest memory bounded by the batch)
    CACHE_MAX = 65536

    def drain(self) -> list[tuple[str, str, str]]:
        """Mappings made since the last drain (each once). The cache is then emptied if it grew past
        :data:`CACHE_MAX`, so a long ingest does not keep one entry per record it ever read: a mapping made
        again later is listed again (a duplicate link row with the same content, harmless). The date shifts
        likewise (one per patient met: ~14 MB at 100k patients); a shift is recomputed, the same, when asked again."""
        out, self.new_links = self.new_links, []
        if len(self._cache) > self.CACHE_MAX:
            self._cache.clear()
        if len(self._shift) > self.CACHE_MAX:
            self._shift.clear()
        return out


def parse_datetime(value: str) -> datetime | None:
    """FHIR date/dateTime/instant or DICOM DA/DT → aware UTC datetime; None if unparseable."""
    v = value.strip()
    try:
        if len(v) == 8 and v.isdigit():                      # DICOM DA: YYYYMMDD
            return datetime(int(v[:4]), int(v[4:6]), int(v[6:8]), tzinfo=timezone.utc)
        if len(v) == 4 and v.isdigit():
            return datetime(int(v), 1, 1, tzinfo=timezone.utc)
        if len(v) == 7 and v[4] == "-":
            return datetime(int(v[:4]), int(v[5:7]), 1, tzinfo=timezone.utc)
        if v.endswith("Z"):
            v = v[:-1] + "+00:00"
        dt = datetime.fromisoformat(v)
    except (ValueError, TypeError):
        return None
    if isinstance(dt, date) and not isinstance(dt, datetime):
        dt = datetime(dt.year, dt.month, dt.day)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    try:
        return dt.astimezone(timezone.utc)
    except OverflowError:
        raise DateOutOfRange("date outside the representable range in UTC") from None

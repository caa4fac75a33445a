"""Append-only audit trail: who ran which query, ranking, review or link-folder reveal, when, with what.

One JSON file per event under ``<store>/audit/<YYYY-MM-DD>/`` written atomically (write to a temporary, fsync,
rename) and never rewritten, so concurrent writers (the CLI, ``raretarget serve``, a notebook) never interleave
and a crash leaves either the whole event or nothing. ``read_audit`` returns the events in time order.

Never PHI: arguments are reduced before they are written (:func:`sanitize`): HPO ids, gene symbols,
pseudonymous patient ids and numbers are kept; free text goes through the store's de-identification
(:func:`raretarget.review.scrub`); SQL has its quoted literals redacted; files (VCF, Phenopacket, output paths)
are named by a content digest or their suffix only, because a path may carry a patient's name.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path

log = logging.getLogger("raretarget.audit")

__all__ = ["record", "read_audit", "quiet", "current_user", "sanitize"]

#: nested engine calls made on behalf of one audited action (a ranking's internal search) are not logged again
_NESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("raretarget_audit_nested", default=False)

_HPO = re.compile(r"^HP:\d{7}$")


def current_user() -> str:
    """The acting user: ``$RARETARGET_USER`` (set by a site's launcher or the web app's login), else the OS user."""
    u = os.environ.get("RARETARGET_USER")
    if u:
        return u
    try:
        return getpass.getuser()
    except Exception:            # no passwd entry (containers)
        return "unknown"


@contextlib.contextmanager
def quiet():
    """Suppress audit events of nested calls (the caller logged the action already)."""
    tok = _NESTED.set(True)
    try:
        yield
    finally:
        _NESTED.reset(tok)


def _file_digest(p) -> str:
    try:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()[:16]
    except OSError:
        return "unreadable-file"


def sanitize(engine, args: dict) -> dict:
    """Arguments reduced to what an audit may hold (see the module docstring)."""
    from .review import scrub

    out: dict = {}
    for k, v in args.items():
        if v is None or (isinstance(v, (list, tuple)) and not v and k != "phenotypes"):
            continue
        if k in ("phenotypes", "excluded"):
            vals = [str(x).strip().upper() for x in v]
            out[k] = [x if _HPO.match(x) else "non-HPO-term" for x in vals]
        elif k in ("query", "text", "note"):
            out[k] = scrub(engine, str(v))[:500]
        elif k in ("sql", "where"):
            from .store.safe_sql import redact

            out[k] = redact(str(v))[:2000]
        elif k in ("vcf", "phenopacket", "image"):
            out[k] = _file_digest(v) if isinstance(v, (str, os.PathLike)) else f"<in-memory {k}>"
        elif k == "out":
            out[k] = "*" + Path(str(v)).suffix               # the folder may carry a name: its kind only
        elif isinstance(v, (bool, int, float)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [str(x)[:64] for x in v][:200]
        else:
            out[k] = str(v)[:200]
    return out


def record(engine, action: str, **args) -> dict | None:
    """Append one event (time, user, action, sanitized arguments). Returns it, or None when nested in an
    already-audited action. A store whose folder is read-only cannot hold an audit: that is logged as a
    warning and the action goes on (the store's owner decides who may write it)."""
    if _NESTED.get():
        return None
    now = dt.datetime.now(dt.timezone.utc)
    ev = {"time": now.isoformat(timespec="milliseconds"), "user": current_user(), "action": action,
          "args": sanitize(engine, args), "pid": os.getpid()}
    from .store.artifacts import Artifacts
    from .store.io import atomic_write_bytes

    d = Artifacts(engine.store.root).audit_dir / now.strftime("%Y-%m-%d")
    try:
        d.mkdir(parents=True, exist_ok=True)
        name = f"{now.strftime('%H%M%S%f')}-{uuid.uuid4().hex[:8]}.json"
        atomic_write_bytes(d / name, json.dumps(ev, sort_keys=True).encode())
    except OSError as e:
        log.warning("audit event %s not written (%s)", action, type(e).__name__)
        return None
    return ev


def read_audit(store_root, *, action: str | None = None, user: str | None = None,
               since: str | None = None) -> list[dict]:
    """Events in time order, optionally only of one ``action`` / ``user`` / from an ISO date ``since``."""
    from .store.artifacts import Artifacts

    root = Artifacts(store_root).audit_dir
    if not root.exists():
        return []
    out = []
    for f in sorted(root.glob("*/*.json")):
        if since and f.parent.name < since[:10]:
            continue
        try:
            ev = json.loads(f.read_text())
        except (OSError, ValueError):
            continue          # a foreign file: atomic renames never leave half an event
        if action and ev.get("action") != action:
            continue
        if user and ev.get("user") != user:
            continue
        if since and ev.get("time", "") < since:
            continue
        out.append(ev)
    out.sort(key=lambda e: e.get("time", ""))
    return out

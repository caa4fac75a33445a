"""Numbers and cells as a reader sees them, for every app (CLI tables and TSV, HTML report, review web app):
one rule, so a score reads the same everywhere."""

from __future__ import annotations

import math


def finite(v) -> float | None:
    """``v`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def number(v, digits: int = 3) -> str:
    """A number for a reader: blank when missing or not finite (never 'NaN'); ``0``; below 1e-3 or from 1e5 on in
    ``digits`` significant digits (``%g``); else ``digits`` decimals without trailing zeros. A value that is not a
    number (a string) is shown as its text."""
    if v is None:
        return ""
    f = finite(v)
    if f is None:
        try:
            float(v)
        except (TypeError, ValueError):
            return str(v)           # text, not a number
        return ""                   # NaN / infinite
    if f == 0:
        return "0"
    if abs(f) < 1e-3 or abs(f) >= 1e5:
        return f"{f:.{digits}g}"
    return f"{f:.{digits}f}".rstrip("0").rstrip(".")


def cell(v, width: int | None = None) -> str:
    """A table cell: blank for None / NaN, floats in 4 significant digits, dates as YYYY-MM-DD, other values as
    text cut to ``width`` characters (with "...") when given."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else ""
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d")
    s = str(v)
    return s if width is None or len(s) <= width else s[:width - 3] + "..."

"""The packaged LOINC → canonical unit table (``raretarget/data/lab_units.csv``, see ``data/SOURCES.md``),
parsed once on first use."""

from __future__ import annotations

import csv
import functools
import io
from importlib import resources
from typing import NamedTuple


class LabUnit(NamedTuple):
    loinc: str
    name: str
    unit: str                      # canonical (UCUM) unit
    molar_mass: float | None       # g/mol
    ref_low: float | None          # reference range, canonical unit
    ref_high: float | None


def parse_lab_units(text: str) -> dict[str, LabUnit]:
    """``lab_units.csv`` text → {loinc: :class:`LabUnit`} in file order."""
    out: dict[str, LabUnit] = {}
    for r in csv.DictReader(io.StringIO(text)):
        fl = lambda k: float(r[k]) if r.get(k) else None  # noqa: E731
        out[r["loinc"]] = LabUnit(r["loinc"], r["name"], r["canonical_unit"], fl("molar_mass_g_per_mol"),
                                  fl("ref_low"), fl("ref_high"))
    return out


@functools.lru_cache(maxsize=1)
def _packaged() -> dict[str, LabUnit]:
    text = resources.files("raretarget").joinpath("data/lab_units.csv").read_text(encoding="utf-8")
    return parse_lab_units(text)


def lab_units() -> dict[str, LabUnit]:
    """The packaged table, {loinc: :class:`LabUnit`} in file order (a fresh dict over the one parsed table)."""
    return dict(_packaged())


def panel_loincs() -> list[str]:
    """LOINC codes of the canonical lab panel, in file order."""
    return list(_packaged())

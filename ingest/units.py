"""Lab unit normalisation: every quantity to one canonical UCUM unit per LOINC code.

The canonical unit and (for mass ↔ substance conversions) the analyte's molar mass come from one
sourced table, ``raretarget/data/lab_units.csv``. Dimensional conversion is done by pint after a
small UCUM → pint translation (UCUM annotations such as ``{1.73_m2}`` or ``{score}`` are
dimensionless by the UCUM spec and dropped; ``10*3`` is a factor of 1000; ``[IU]``, ``mm[Hg]``,
``Cel``, ``[degF]``, ``[lb_av]``, ``[in_i]`` are mapped). Unknown units are flagged, never guessed.

``unit_status`` values: ``canonical`` (already in the canonical unit), ``converted``,
``no_canonical`` (LOINC code not in the table: value and unit kept as given), ``unknown_unit``
(the unit could not be parsed), ``incompatible`` (different dimension and no molar mass bridges it),
``no_unit`` (a quantity without unit where the canonical unit has a dimension).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from raretarget.vocab.labs import LabUnit, lab_units  # noqa: F401  (LabUnit importable from here as before)

_ANNOT = re.compile(r"\{[^}]*\}")
_POW10 = re.compile(r"10[*^]([+-]?\d+)")
_EXP = re.compile(r"(?<=[A-Za-z\]])([+-]?\d+)(?![\d.*^])")
_ATOMS = {
    "[IU]": "IU", "[iU]": "IU", "mm[Hg]": "mmHg", "[mm_Hg]": "mmHg", "Cel": "degC", "[degF]": "degF",
    "[lb_av]": "lb", "[in_i]": "inch", "[ft_i]": "foot", "[oz_av]": "ounce", "%": "percent",
    "[pH]": "dimensionless", "pH": "dimensionless",
}
_DIMENSIONLESS = {"", "1", "{count}", "{score}", "{ratio}", "{index}", "(score)", "{nominal}", "{T-score}", "{#}"}


class Conversion(NamedTuple):
    scale: float
    offset: float
    status: str
    unit: str | None


def load_lab_table() -> dict[str, LabUnit]:
    """The packaged LOINC → canonical unit table (see raretarget/data/SOURCES.md), parsed once
    (:func:`raretarget.vocab.labs.lab_units`)."""
    return lab_units()


class UnitNormalizer:
    """Converts (loinc, value, ucum_unit) to the canonical unit; conversions are cached per pair."""

    def __init__(self, table: dict[str, LabUnit] | None = None):
        self.table = table if table is not None else load_lab_table()
        self._ureg = None
        self._cache: dict[tuple[str, str | None], Conversion] = {}

    @property
    def ureg(self):
        """pint's registry, built on the first unit that is not already canonical (~0.2 s: values given in
        the canonical unit, the common case, and codes without a canonical unit never need it)."""
        if self._ureg is None:
            import pint

            self._ureg = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
            self._ureg.define("international_unit = [iu] = IU")
        return self._ureg

    def to_pint(self, ucum: str):
        """UCUM unit string → pint Quantity (magnitude carries any 10*n factor). Raises ValueError."""
        s = ucum.strip()
        if s in _DIMENSIONLESS or _ANNOT.sub("", s) == "":
            return self.ureg.Quantity(1.0, "dimensionless")
        for k, v in _ATOMS.items():
            s = s.replace(k, v)
        s = _ANNOT.sub("", s)
        s = _EXP.sub(r"**\1", s)                  # UCUM exponents: m2 -> m**2 (before 10*n becomes 1en)
        s = _POW10.sub(lambda m: f"1e{m.group(1)}*", s)
        s = s.replace("*/", "/").rstrip("*/")
        if s.startswith("/"):
            s = "1" + s
        if "[" in s or "]" in s:
            raise ValueError(f"unsupported UCUM atom in {ucum!r}")
        try:
            q = self.ureg.parse_expression(s)
        except Exception as e:  # pint raises several types
            raise ValueError(f"unknown unit {ucum!r}: {e}") from None
        if not hasattr(q, "units"):
            q = self.ureg.Quantity(float(q), "dimensionless")
        return q

    def conversion(self, loinc: str | None, unit: str | None) -> Conversion:
        key = (loinc or "", unit)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = self._conversion(loinc, unit)
        return c

    def _conversion(self, loinc: str | None, unit: str | None) -> Conversion:
        lab = self.table.get(loinc or "")
        if lab is None:
            return Conversion(1.0, 0.0, "no_canonical", unit)
        if unit is None or unit.strip() == "":
            try:
                dimless = self.to_pint(lab.unit).dimensionless
            except ValueError:
                dimless = False
            return Conversion(1.0, 0.0, "canonical", lab.unit) if dimless else Conversion(1.0, 0.0, "no_unit", None)
        if unit == lab.unit:
            return Conversion(1.0, 0.0, "canonical", lab.unit)
        if "[IU]" in unit and "[IU]" not in lab.unit and "U" in lab.unit:
            # enzyme activity: the IU of enzymology is defined as 1 umol/min, i.e. UCUM's U
            unit = unit.replace("[IU]", "U")
        try:
            src = self.to_pint(unit)
        except ValueError:
            return Conversion(float("nan"), 0.0, "unknown_unit", None)
        dst = self.to_pint(lab.unit)
        try:
            a = _affine(src, dst)
        except Exception:
            a = None
            if lab.molar_mass:
                a = self._via_molar_mass(src, dst, lab.molar_mass)
        if a is None:
            return Conversion(float("nan"), 0.0, "incompatible", None)
        scale, offset = a
        status = "canonical" if abs(scale - 1) < 1e-12 and offset == 0 else "converted"
        return Conversion(scale, offset, status, lab.unit)

    def _via_molar_mass(self, src, dst, molar_mass: float):
        """mass ↔ substance concentration through the analyte's molar mass (g/mol)."""
        u = self.ureg
        mm = u.Quantity(molar_mass, "g/mol")
        for bridged in (src * mm, src / mm):
            try:
                return _affine(bridged, dst)
            except Exception:
                continue
        return None

    def normalize(self, loinc: str | None, value: float | None, unit: str | None) -> tuple[float | None, str | None, str]:
        """Returns (value in canonical unit or None, canonical unit or None, unit_status)."""
        c = self.conversion(loinc, unit)
        if c.status in ("unknown_unit", "incompatible", "no_unit") or value is None:
            return None, c.unit, c.status
        return value * c.scale + c.offset, c.unit, c.status


def _affine(src, dst) -> tuple[float, float]:
    """(scale, offset) such that x[src] == (scale*x + offset)[dst]; raises on a dimension mismatch."""
    Q = type(src)
    # build from (magnitude, units) rather than multiplying: offset units (degC) don't multiply
    y0 = Q(0.0 * src.magnitude, src.units).to(dst.units).magnitude / dst.magnitude
    y1 = Q(1.0 * src.magnitude, src.units).to(dst.units).magnitude / dst.magnitude
    return float(y1 - y0), float(y0)

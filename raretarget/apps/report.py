"""Static HTML report of a store: one folder that opens offline (no server, no CDN, no scripts).

``write_report(engine, out_dir)`` writes

* ``index.html`` – the population: demographics, top conditions / HPO phenotypes, lab distributions
  in canonical units, variants by gene and ClinVar significance, imaging modalities and pixel
  features, data completeness per modality, quarantine summary;
* ``patients/<patient_id>.html`` – one page per patient (the first ``max_patients`` by id): timeline
  of conditions/labs/notes/images on shifted dates, de-identified notes, image thumbnails (inline PNG),
  variants and nearest neighbours (when a search index exists);
* ``hypothesis.html`` – when ``ranked`` (a :meth:`Engine.rank_targets` table) is given.

Only store data is used (already pseudonymous; dates shifted) and every value is HTML-escaped.
Charts are inline SVG, thumbnails inline PNG written with zlib: nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from raretarget.store import schema as S
from raretarget.vocab.variants import plp_sql

from .fmt import cell as _fmt, finite as _finite, number as _rnum  # noqa: F401  (the apps' one rule)

__all__ = ["write_report", "png_gray", "svg_bars", "svg_hist", "svg_scores", "gene_evidence_html", "evidence_summary",
           "explain_text", "add_parser", "cmd_report"]

LAB_CHARTS = 6          # lab LOINCs shown as histograms (most frequent first)
TOP_N = 15


def esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


# ---- tiny image / chart writers -------------------------------------------------------------------
def png_gray(pixels: Sequence[int] | bytes, width: int, height: int) -> bytes:
    """8-bit grayscale PNG from row-major pixel values (pure Python: zlib + struct)."""
    raw = bytes(pixels)
    if len(raw) != width * height:
        raise ValueError(f"expected {width * height} pixels, got {len(raw)}")
    rows = b"".join(b"\x00" + raw[y * width:(y + 1) * width] for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def _data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def svg_bars(labels: Sequence, values: Sequence[float], *, title: str = "", width: int = 520,
             bar_h: int = 18, label_w: int = 200, color: str = "#4a7ab5") -> str:
    """Horizontal bar chart (inline SVG)."""
    n = len(values)
    if n == 0:
        return '<p class="empty">no data</p>'
    vmax = max(max(values), 1e-12)
    top = 22 if title else 4
    h = top + n * (bar_h + 4) + 4
    plot_w = width - label_w - 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
           f'aria-label="{esc(title)}" class="chart">']
    if title:
        out.append(f'<text x="4" y="15" class="t">{esc(title)}</text>')
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + 4)
        w = max(0.0, plot_w * float(v) / vmax)
        lab_s = str(lab)
        lab_s = lab_s if len(lab_s) <= 32 else lab_s[:30] + "…"
        out.append(f'<text x="{label_w - 4}" y="{y + bar_h - 5}" text-anchor="end">'
                   f'<title>{esc(lab)}</title>{esc(lab_s)}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}">{esc(_fmt(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def _bins(values: Sequence[float], bins: int) -> tuple[list[int], float, float]:
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    step = (hi - lo) / bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / step)))] += 1
    return counts, lo, hi


def svg_hist(values: Iterable[float], *, bins: int = 20, title: str = "", unit: str = "",
             width: int = 360, height: int = 160, color: str = "#5b9b6b", integer: bool = False) -> str:
    """Histogram (inline SVG) of finite values; ``integer`` bins whole numbers one per bin when few."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return f'<p class="empty">{esc(title)}: no data</p>'
    if integer:
        lo, hi = int(min(vals)), int(max(vals))
        if hi - lo + 1 <= 40:
            bins = hi - lo + 1
            counts = [0] * bins
            for v in vals:
                counts[int(v) - lo] += 1
            hi = hi + 1
        else:
            counts, lo, hi = _bins(vals, bins)
    else:
        counts, lo, hi = _bins(vals, bins)
    top, bottom, left = 22 if title else 6, 28, 34
    plot_w, plot_h = width - left - 8, height - top - bottom
    cmax = max(counts)
    bw = plot_w / len(counts)
    step = (hi - lo) / len(counts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title)}" class="chart">']
    if title:
        out.append(f'<text x="4" y="15" class="t">{esc(title)}</text>')
    for i, c in enumerate(counts):
        bh = plot_h * c / cmax if cmax else 0
        x = left + i * bw
        a, b = lo + i * step, lo + (i + 1) * step
        out.append(f'<rect x="{x:.1f}" y="{top + plot_h - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" '
                   f'fill="{color}"><title>{esc(_fmt(a))}–{esc(_fmt(b))}: {c}</title></rect>')
    y_axis = top + plot_h
    out.append(f'<line x1="{left}" y1="{y_axis}" x2="{left + plot_w}" y2="{y_axis}" stroke="#444"/>')
    out.append(f'<text x="{left - 3}" y="{top + 9}" text-anchor="end">{cmax}</text>')
    out.append(f'<text x="{left - 3}" y="{y_axis}" text-anchor="end">0</text>')
    lo_s = str(int(lo)) if integer else _fmt(lo)
    hi_s = str(int(hi) - 1) if integer and len(counts) == hi - lo else _fmt(hi)
    out.append(f'<text x="{left}" y="{y_axis + 14}">{esc(lo_s)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{y_axis + 14}" text-anchor="end">{esc(hi_s)}</text>')
    if unit:
        out.append(f'<text x="{left + plot_w / 2:.0f}" y="{y_axis + 24}" text-anchor="middle">{esc(unit)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{top - 4}" text-anchor="end" class="n">n={len(vals)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_timeline(events: Sequence[tuple], *, width: int = 900) -> str:
    """Events ``(datetime, lane, label)`` on a date axis, one lane per kind (conditions, labs, …)."""
    events = [e for e in events if e[0] is not None]
    if not events:
        return '<p class="empty">no dated events</p>'
    lanes = []
    for _, lane, _ in events:
        if lane not in lanes:
            lanes.append(lane)
    t0 = min(e[0] for e in events).timestamp()
    t1 = max(e[0] for e in events).timestamp()
    span = max(t1 - t0, 86400.0)
    left, right, lane_h, top = 110, 20, 26, 10
    plot_w = width - left - right
    h = top + lane_h * len(lanes) + 30
    colors = {"conditions": "#c0504d", "labs": "#4a7ab5", "notes": "#8064a2", "images": "#9bbb59"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
           f'aria-label="timeline" class="chart timeline">']
    for i, lane in enumerate(lanes):
        y = top + i * lane_h + lane_h / 2
        out.append(f'<text x="{left - 6}" y="{y + 4:.0f}" text-anchor="end">{esc(lane)}</text>')
        out.append(f'<line x1="{left}" y1="{y:.0f}" x2="{left + plot_w}" y2="{y:.0f}" stroke="#ddd"/>')
    for t, lane, label in events:
        x = left + plot_w * (t.timestamp() - t0) / span
        y = top + lanes.index(lane) * lane_h + lane_h / 2
        out.append(f'<circle cx="{x:.1f}" cy="{y:.0f}" r="4" fill="{colors.get(lane, "#666")}" fill-opacity="0.7">'
                   f'<title>{esc(_fmt(t))} {esc(label)}</title></circle>')
    ya = top + lane_h * len(lanes) + 14
    out.append(f'<text x="{left}" y="{ya}">{esc(_fmt(min(e[0] for e in events)))}</text>')
    out.append(f'<text x="{left + plot_w}" y="{ya}" text-anchor="end">{esc(_fmt(max(e[0] for e in events)))}</text>')
    out.append("</svg>")
    return "".join(out)


# ---- HTML scaffolding -----------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em;background:#fff}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{font-size:11px;background:#fafafa;border:1px solid #eee}
.chart .t{font-weight:bold;font-size:12px}.chart .n{fill:#777}
pre.note{white-space:pre-wrap;background:#f8f8f4;border:1px solid #e5e5dc;padding:.6em;font-size:.88em}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;font-size:.8em}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}
.empty{color:#888;font-style:italic}.muted{color:#777;font-size:.85em}nav a{margin-right:1em}
section.gene{border-top:1px solid #ddd;margin-top:1em}.evgrid{display:flex;flex-wrap:wrap;gap:16px}
.evgrid>div{flex:1 1 420px}.scores .n{fill:#999;font-style:italic}h4{margin:.6em 0 .2em}
.verdict{font-size:.8em;padding:1px 6px;border-radius:8px;background:#eee}.v-confirmed{background:#cdebd3}
.v-rejected{background:#f3c9c9;text-decoration:line-through}.v-unsure{background:#f5e6b8}
"""


def _page(title: str, body: str, *, root: str = "", hyp: bool = False) -> str:
    nav = (f'<nav><a href="{root}index.html">Population</a>'
           + (f'<a href="{root}hypothesis.html">Hypothesis</a>' if hyp else "") + "</nav>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{nav}<h1>{esc(title)}</h1>"
            f"{body}<p class=\"muted\">Generated by raretarget from pseudonymous store data only: patient ids are "
            "keyed pseudonyms, dates are shifted per patient, notes are de-identified.</p></body></html>\n")


def _table(header: Sequence[str], rows: Iterable[Sequence], *, num: Sequence[int] = (), cls: str = "") -> str:
    out = [f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><thead><tr>'
           + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    n = 0
    for r in rows:
        n += 1
        out.append("<tr>" + "".join(
            f'<td class="num">{esc(_fmt(v))}</td>' if i in num else f"<td>{esc(_fmt(v))}</td>"
            for i, v in enumerate(r)) + "</tr>")
    if n == 0:
        out.append(f'<tr><td colspan="{len(header)}" class="empty">none</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _rows(t) -> list[dict]:
    return t.to_pylist()


# ---- population -----------------------------------------------------------------------------------
def _population(engine, patient_links: dict[str, str], n_patients_total: int, ranked_given: bool) -> str:
    q = engine.sql
    parts: list[str] = []
    counts = {name: engine.store.count(name) for name in S.DATA_TABLES}
    n_quar = engine.store.count("quarantine")

    # overview counts: machine-readable (data-count) so tests and scripts can check them
    parts.append("<h2>Store overview</h2>")
    rows = [(name, counts[name]) for name in S.DATA_TABLES] + [("quarantine", n_quar)]
    parts.append('<table id="counts"><thead><tr><th>table</th><th>rows</th></tr></thead><tbody>'
                 + "".join(f'<tr><td>{esc(n)}</td><td class="num" data-count="{esc(n)}">{c}</td></tr>' for n, c in rows)
                 + "</tbody></table>")
    if ranked_given:
        parts.append('<p><a href="hypothesis.html">Hypothesis: ranked candidate genes/targets</a></p>')

    # demographics
    parts.append("<h2>Demographics</h2><div class=\"charts\">")
    sex = _rows(q("select coalesce(sex, 'unknown') as sex, count(*) as n from patients group by 1 order by n desc"))
    parts.append(svg_bars([r["sex"] for r in sex], [r["n"] for r in sex], title="Sex", width=380, label_w=90))
    by = q("select birth_year from patients where birth_year is not null").column("birth_year").to_pylist()
    parts.append(svg_hist(by, title="Birth year", integer=True, width=420))
    n_unknown_by = counts["patients"] - len(by)
    dec = q("select count(*) as n from patients where deceased").column("n")[0].as_py()
    parts.append("</div>" + f'<p class="muted">birth year withheld (age over 89 or missing): {n_unknown_by}; '
                 f"deceased: {dec}</p>")

    # conditions / HPO
    parts.append("<h2>Conditions and HPO phenotypes</h2><div class=\"charts\">")
    hpo = _rows(q("select hpo_id, any_value(display) as display, count(distinct patient_id) as patients "
                  f"from conditions where hpo_id is not null group by hpo_id order by patients desc, hpo_id limit {TOP_N}"))
    parts.append(svg_bars([f"{r['hpo_id']} {r['display'] or ''}" for r in hpo], [r["patients"] for r in hpo],
                          title="Top HPO phenotypes (patients)", width=560, label_w=260))
    cond = _rows(q("select coalesce(display, code) as condition, count(distinct patient_id) as patients "
                   f"from conditions group by 1 order by patients desc, 1 limit {TOP_N}"))
    parts.append(svg_bars([r["condition"] for r in cond], [r["patients"] for r in cond],
                          title="Top conditions (patients)", width=560, label_w=260, color="#c0504d"))
    parts.append("</div>")
    parts.append(_table(["HPO", "phenotype", "patients"], [(r["hpo_id"], r["display"], r["patients"]) for r in hpo],
                        num=(2,)))

    # labs
    parts.append("<h2>Laboratory values (canonical UCUM units)</h2>")
    labs = _rows(q("select loinc, any_value(display) as display, unit, count(*) as n, "
                   "count(distinct patient_id) as patients from observations "
                   "where unit_status in ('canonical', 'converted') and value is not null "
                   "group by loinc, unit order by n desc, loinc"))
    parts.append('<div class="charts">')
    for r in labs[:LAB_CHARTS]:
        vals = q("select value from observations where loinc = ? and unit = ? and unit_status in "
                 "('canonical', 'converted') and value is not null limit 200000",
                 [r["loinc"], r["unit"]]).column("value").to_pylist()
        parts.append(svg_hist(vals, title=f"{r['loinc']} {(r['display'] or '')[:40]}", unit=r["unit"] or ""))
    parts.append("</div>")
    parts.append(_table(["LOINC", "test", "unit", "values", "patients"],
                        [(r["loinc"], r["display"], r["unit"], r["n"], r["patients"]) for r in labs[:40]], num=(3, 4)))
    st = _rows(q("select unit_status, count(*) as n from observations group by 1 order by n desc"))
    parts.append(_table(["unit status", "observations"], [(r["unit_status"], r["n"]) for r in st], num=(1,)))

    # variants
    parts.append("<h2>Variants</h2><div class=\"charts\">")
    genes = _rows(q("select coalesce(gene, '(no gene)') as gene, count(*) as n, count(distinct patient_id) as carriers, "
                    f"count(*) filter (where {plp_sql('clinvar')}) as plp "
                    f"from variants group by 1 order by plp desc, carriers desc, gene limit {TOP_N}"))
    parts.append(svg_bars([r["gene"] for r in genes], [r["carriers"] for r in genes], title="Carriers by gene",
                          width=480, label_w=110, color="#8064a2"))
    clin = _rows(q("select coalesce(clinvar, 'not in ClinVar') as clinvar, count(*) as n from variants "
                   "group by 1 order by n desc"))
    parts.append(svg_bars([r["clinvar"] for r in clin], [r["n"] for r in clin], title="Variants by ClinVar significance",
                          width=560, label_w=230, color="#8064a2"))
    parts.append("</div>")
    parts.append(_table(["gene", "variants", "carriers", "P/LP variants"],
                        [(r["gene"], r["n"], r["carriers"], r["plp"]) for r in genes], num=(1, 2, 3)))

    # imaging
    parts.append("<h2>Imaging</h2><div class=\"charts\">")
    mods = _rows(q("select coalesce(modality, '?') as modality, coalesce(body_part, '?') as body_part, count(*) as n, "
                   "count(distinct patient_id) as patients from images group by 1, 2 order by n desc"))
    mod_tot = Counter()
    for r in mods:
        mod_tot[r["modality"]] += r["n"]
    parts.append(svg_bars(list(mod_tot), list(mod_tot.values()), title="Images by modality", width=380, label_w=90,
                          color="#9bbb59"))
    feats = q("select modality, features from images where features is not null").to_pylist()
    for name in ("entropy", "std"):
        i = S.IMAGE_FEATURES.index(name)
        parts.append(svg_hist([r["features"][i] for r in feats], title=f"Pixel feature: {name}", color="#9bbb59"))
    parts.append("</div>")
    parts.append(_table(["modality", "body part", "images", "patients"],
                        [(r["modality"], r["body_part"], r["n"], r["patients"]) for r in mods], num=(2, 3)))
    by_mod = defaultdict(list)
    for r in feats:
        by_mod[r["modality"]].append(r["features"])
    frows = []
    for m, fs in sorted(by_mod.items(), key=lambda x: str(x[0])):
        med = [sorted(f[i] for f in fs)[len(fs) // 2] for i in range(len(S.IMAGE_FEATURES))]
        frows.append([m, len(fs)] + med)
    parts.append("<p class=\"muted\">Median pixel features per modality (after rescale slope/intercept)</p>")
    parts.append(_table(["modality", "decoded"] + list(S.IMAGE_FEATURES), frows, num=tuple(range(1, 10))))
    ds = _rows(q("select decode_status, count(*) as n from images group by 1 order by n desc"))
    parts.append(_table(["decode status", "images"], [(r["decode_status"], r["n"]) for r in ds], num=(1,)))

    # completeness
    parts.append("<h2>Data completeness</h2>")
    comp = []
    for label, table in (("conditions", "conditions"), ("labs", "observations"), ("notes", "notes"),
                         ("images", "images"), ("variants", "variants"), ("medications", "medications"),
                         ("procedures", "procedures")):
        n = q(f"select count(distinct patient_id) as n from {table} where patient_id in "
              "(select patient_id from patients)").column("n")[0].as_py()
        comp.append((label, n))
    parts.append(svg_bars([c[0] for c in comp], [c[1] for c in comp], title=f"Patients with data (of {counts['patients']})",
                          width=520, label_w=110, color="#f79646"))
    parts.append('<table id="completeness"><thead><tr><th>modality</th><th>patients</th><th>%</th></tr></thead><tbody>'
                 + "".join(f'<tr><td>{esc(m)}</td><td class="num" data-patients="{esc(m)}">{n}</td>'
                           f'<td class="num">{100.0 * n / max(counts["patients"], 1):.0f}</td></tr>' for m, n in comp)
                 + "</tbody></table>")

    # quarantine
    parts.append("<h2>Quarantine</h2>")
    qr = _rows(q("select kind, reason, count(*) as n from quarantine group by 1, 2 order by n desc limit 50"))
    parts.append(f'<p>{n_quar} quarantined record(s); raw records stay on the secure side (link folder).</p>')
    parts.append(_table(["input kind", "reason", "records"],
                        [(r["kind"], (r["reason"] or "")[:200], r["n"]) for r in qr], num=(2,)))

    # patients
    parts.append("<h2>Patients</h2>")
    plist = _rows(q("select p.patient_id, p.sex, p.birth_year, "
                    "(select count(*) from conditions c where c.patient_id = p.patient_id) as conditions, "
                    "(select count(*) from observations o where o.patient_id = p.patient_id) as labs, "
                    "(select count(*) from notes n where n.patient_id = p.patient_id) as notes, "
                    "(select count(*) from images i where i.patient_id = p.patient_id) as images, "
                    "(select count(*) from variants v where v.patient_id = p.patient_id) as variants "
                    "from patients p order by p.patient_id limit 1000"))
    out = ['<table id="patients"><thead><tr>' + "".join(
        f"<th>{h}</th>" for h in ("patient", "sex", "birth year", "conditions", "labs", "notes", "images", "variants"))
        + "</tr></thead><tbody>"]
    for r in plist:
        pid = r["patient_id"]
        cell = (f'<a href="{esc(patient_links[pid])}">{esc(pid)}</a>' if pid in patient_links else esc(pid))
        out.append(f"<tr><td>{cell}</td><td>{esc(r['sex'])}</td><td>{esc(_fmt(r['birth_year']))}</td>"
                   + "".join(f'<td class="num">{r[k]}</td>' for k in ("conditions", "labs", "notes", "images", "variants"))
                   + "</tr>")
    out.append("</tbody></table>")
    parts.append("".join(out))
    if n_patients_total > len(plist) or n_patients_total > len(patient_links):
        parts.append(f'<p class="muted">{n_patients_total} patients; pages written for {len(patient_links)}.</p>')
    return "".join(parts)


# ---- patient pages --------------------------------------------------------------------------------
def _by_patient(engine, table: str, cols: str, pids: list[str], order: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    if not pids:
        return out
    marks = ", ".join("?" for _ in pids)
    for r in engine.sql(f"select patient_id, {cols} from {table} where patient_id in ({marks}) order by {order}",
                        pids).to_pylist():
        out[r["patient_id"]].append(r)
    return out


def _neighbours_fn(engine):
    try:
        st = engine.status()
        if not st.get("index", {}).get("generation"):
            return None, "no search index in this store (run train, embed and build_index)"
    except Exception as e:  # noqa: BLE001
        return None, f"search unavailable ({type(e).__name__})"

    def fn(pid):
        return engine.search(patient=pid, k=5, modalities=["patient"])

    return fn, ""


def _patient_page(pid: str, info: dict, d: dict, neighbours, neigh_msg: str, linked: set[str],
                  hyp: bool = False) -> str:
    parts = []
    parts.append(_table(["sex", "birth year", "deceased"], [(info.get("sex"), info.get("birth_year"), info.get("deceased"))]))
    events = []
    for r in d["conditions"]:
        events.append((r["onset"], "conditions", f"{r['hpo_id'] or r['code']} {r['display'] or ''}"))
    for r in d["observations"]:
        events.append((r["effective"], "labs", f"{r['display'] or r['loinc']}: {_fmt(r['value'])} {r['unit'] or ''}"))
    for r in d["notes"]:
        events.append((r["date"], "notes", r["kind"] or "note"))
    for r in d["images"]:
        events.append((r["acquired"], "images", f"{r['modality'] or ''} {r['body_part'] or ''}"))
    parts.append("<h2>Timeline (shifted dates)</h2>" + svg_timeline(events))

    parts.append(f"<h2>Conditions ({len(d['conditions'])})</h2>")
    parts.append(_table(["onset", "HPO", "code", "display", "status", "abatement"],
                        [(r["onset"], r["hpo_id"], r["code"], r["display"], r["clinical_status"], r["abatement"])
                         for r in d["conditions"]]))

    parts.append(f"<h2>Labs ({len(d['observations'])})</h2>")
    parts.append(_table(["date", "LOINC", "test", "value", "unit", "original", "unit status"],
                        [(r["effective"], r["loinc"], r["display"], r["value"] if r["value"] is not None else r["value_text"],
                          r["unit"], f"{_fmt(r['original_value'])} {r['original_unit'] or ''}".strip(), r["unit_status"])
                         for r in d["observations"]], num=(3,)))

    parts.append(f"<h2>Notes ({len(d['notes'])})</h2>")
    if not d["notes"]:
        parts.append('<p class="empty">none</p>')
    for r in d["notes"]:
        parts.append(f"<h3>{esc(r['kind'] or 'note')} <span class=\"muted\">{esc(_fmt(r['date']))}</span></h3>"
                     f"<pre class=\"note\">{esc(r['text'])}</pre>")

    parts.append(f"<h2>Images ({len(d['images'])})</h2>")
    if not d["images"]:
        parts.append('<p class="empty">none</p>')
    else:
        figs = ['<div class="thumbs">']
        for r in d["images"]:
            cap = f"{r['modality'] or ''} {r['body_part'] or ''} {_fmt(r['acquired'])}".strip()
            th = r.get("thumbnail")
            if th is not None and len(th) == S.THUMB_SIZE * S.THUMB_SIZE:
                img = (f'<img class="thumb" alt="{esc(cap)}" width="128" height="128" '
                       f'src="{_data_uri_png(png_gray(th, S.THUMB_SIZE, S.THUMB_SIZE))}">')
            else:
                img = f'<p class="empty">no thumbnail ({esc(r["decode_status"])})</p>'
            feats = r.get("features")
            ft = (" · ".join(f"{n} {_fmt(float(v))}" for n, v in zip(S.IMAGE_FEATURES, feats) if n in ("mean", "std", "entropy"))
                  if feats else "")
            figs.append(f"<figure>{img}<figcaption>{esc(cap)}<br>{esc(ft)}</figcaption></figure>")
        figs.append("</div>")
        parts.append("".join(figs))

    v = d["variants"]
    parts.append(f"<h2>Variants ({len(v)})</h2>")
    parts.append(_table(["gene", "chrom", "pos", "ref", "alt", "consequence", "impact", "HGVS c.", "HGVS p.", "ClinVar",
                         "AF", "zygosity"],
                        [(r["gene"], r["chrom"], r["pos"], r["ref"], r["alt"], r["consequence"], r["impact"], r["hgvsc"],
                          r["hgvsp"], r["clinvar"], r["af"], r["zygosity"]) for r in v[:500]], num=(2, 10)))
    if len(v) > 500:
        parts.append(f'<p class="muted">{len(v) - 500} more variant(s) not shown</p>')

    parts.append("<h2>Nearest neighbours</h2>")
    if neighbours is None:
        parts.append(f'<p class="empty">{esc(neigh_msg)}</p>')
    else:
        try:
            hits = neighbours(pid).to_pylist()
            rows = []
            for h in hits:
                other = h.get("patient_id")
                cell = (f'<a href="{esc(other)}.html">{esc(other)}</a>' if other in linked else esc(other))
                rows.append(f"<tr><td class=\"num\">{esc(h.get('rank'))}</td><td>{cell}</td>"
                            f"<td class=\"num\">{esc(_fmt(h.get('score')))}</td></tr>")
            parts.append('<table id="neighbours"><thead><tr><th>rank</th><th>patient</th><th>cosine</th></tr></thead>'
                         f"<tbody>{''.join(rows) or '<tr><td colspan=3 class=empty>none</td></tr>'}</tbody></table>")
        except Exception as e:  # noqa: BLE001 - a search failure never stops the report
            parts.append(f'<p class="empty">search failed for this patient ({esc(type(e).__name__)})</p>')
    return _page(f"Patient {pid}", "".join(parts), root="../", hyp=hyp)


# ---- evidence, for a reader ------------------------------------------------------------------------
#: component → (label, role); role colours the bar (relevance: explains the phenotype, tractability: a target)
COMPONENTS = [("phenotype", "phenotype model", "relevance"), ("phenotype_ic", "phenotype similarity (IC)", "display"),
              ("variant", "variants", "relevance"), ("cohort", "cohort enrichment", "relevance"),
              ("embedding", "shared-space embedding", "relevance"), ("knowledge", "gene knowledge", "tractability"),
              ("druggability", "druggability", "tractability")]
_ROLE_COLOR = {"relevance": "#4a7ab5", "tractability": "#d08c2c", "display": "#8aa6c8"}


def _ev(e) -> dict:
    if isinstance(e, dict):
        return e
    if not e:
        return {}
    try:
        d = json.loads(e)
    except (TypeError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _drugs(example: str | None) -> list[dict]:
    """``"NAME:type:mechanism:phase 4|..."`` (the packaged druggability table) → rows."""
    out = []
    for item in (example or "").split("|"):
        parts = [x.strip() for x in item.split(":")]
        if not parts or not parts[0]:
            continue
        phase = next((x for x in parts[1:] if x.lower().startswith("phase")), "")
        rest = [x for x in parts[1:] if x != phase]
        out.append({"drug": parts[0], "type": rest[0] if rest else "", "mechanism": rest[1] if len(rest) > 1 else "",
                    "phase": phase.replace("phase", "").strip()})
    return out


def variant_label(v: dict) -> str:
    bits = [x for x in (v.get("hgvsc"), v.get("hgvsp")) if x]
    if not bits and v.get("chrom") and v.get("pos"):
        bits = [f"{v['chrom']}:{v['pos']} {v.get('ref', '')}>{v.get('alt', '')}"]
    return " ".join(bits) or "variant"


def evidence_summary(evidence) -> dict[str, str]:
    """One-line strings per evidence kind (for tables, TSV and the terminal): disease, terms, variants, drug."""
    ev = _ev(evidence)
    ph = ev.get("phenotype") or ev.get("phenotype_ic") or {}
    dis = (ph.get("best_disease") or {})
    matches = ph.get("matches") or []
    n_exact = sum(1 for m in matches if m.get("exact"))
    terms = (f"{len(matches)}" + (f" ({n_exact} exact)" if "exact" in (matches[0] if matches else {}) else "")
             if matches else "")
    var = ev.get("variant") or {}
    vs = var.get("variants") or []
    vtxt = ""
    if vs:
        v = vs[0]
        vtxt = " ".join(x for x in (variant_label(v), v.get("consequence"),
                                    f"({', '.join(y for y in (v.get('clinvar'), v.get('zygosity')) if y)})"
                                    if v.get("clinvar") or v.get("zygosity") else "") if x)
        if len(vs) > 1:
            vtxt += f" +{len(vs) - 1}"
        if var.get("fit"):
            vtxt += f" [{var['fit']}]"
    dr = ev.get("druggability") or {}
    drug = " ".join(x for x in (dr.get("pharos_tdl"), f"tier {dr['finan_tier']}" if dr.get("finan_tier") else "",
                                f"phase {dr['max_phase']}" if _finite(dr.get("max_phase")) else "") if x)
    return {"disease": " ".join(x for x in (dis.get("name"), f"({dis['id']})" if dis.get("id") else "") if x),
            "terms": terms, "variants": vtxt, "drug": drug}


def svg_scores(row: dict, roles: dict | None = None, width: int = 420) -> str:
    """The score decomposition of one gene: relevance, priority and each component on a fixed 0..1 scale
    (inline SVG); a component without input is drawn as 'no input', never as NaN."""
    roles = roles or {}
    items = [("relevance", "relevance", row.get("relevance"), "relevance"),
             ("priority", "priority", row.get("priority"), "priority")]
    items += [(c, lab, row.get(c), roles.get(c, role)) for c, lab, role in COMPONENTS if c in row]
    bar_h, label_w, top = 14, 170, 4
    plot_w = width - label_w - 50
    h = top + len(items) * (bar_h + 4) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
           f'aria-label="score decomposition" class="chart scores">']
    for i, (key, lab, v, role) in enumerate(items):
        y = top + i * (bar_h + 4)
        f = _finite(v)
        out.append(f'<text x="{label_w - 4}" y="{y + bar_h - 3}" text-anchor="end">{esc(lab)}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" fill="#eee"/>')
        if f is None:
            out.append(f'<text x="{label_w + 4}" y="{y + bar_h - 3}" class="n">no input</text>')
            continue
        w = plot_w * min(max(f, 0.0), 1.0)
        color = {"priority": "#2e7d4f"}.get(key, _ROLE_COLOR.get(role, "#4a7ab5"))
        out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}" '
                   f'data-component="{esc(key)}"><title>{esc(lab)}: {esc(_rnum(f))}</title></rect>')
        out.append(f'<text x="{label_w + plot_w + 4}" y="{y + bar_h - 3}">{esc(_rnum(f))}</text>')
    out.append("</svg>")
    return "".join(out)


def _label_fn(engine):
    if engine is None:
        return lambda t: ""
    try:
        terms = engine.resources.phenotypes.terms
    except Exception:
        return lambda t: ""
    return lambda t: getattr(terms.get(t), "name", "") or ""


def gene_evidence_html(row: dict, *, label=None, roles: dict | None = None, patient_pages: dict | None = None,
                       anchor: bool = True) -> str:
    """One gene's evidence as HTML: matched query terms, variants, cohort carriers (linked to their
    pseudonymous pages when given), druggability, known diseases and the score decomposition chart."""
    label = label or (lambda t: "")
    ev = _ev(row.get("evidence"))
    gene = row.get("gene") or ""
    verdict = row.get("verdict")
    parts = [f'<section class="gene" id="gene-{esc(gene)}" data-gene="{esc(gene)}">' if anchor
             else f'<section class="gene" data-gene="{esc(gene)}">']
    parts.append(f"<h3>{esc(row.get('rank'))}. {esc(gene)}"
                 + (f' <span class="verdict v-{esc(verdict)}">{esc(verdict)}</span>' if verdict else "") + "</h3>")
    parts.append(f'<p class="scores">relevance <b>{esc(_rnum(row.get("relevance")))}</b> · priority '
                 f'<b>{esc(_rnum(row.get("priority")))}</b>'
                 + (f" · tractability {esc(_rnum(row.get('tractability')))}" if _finite(row.get("tractability")) is not None
                    else "") + "</p>")
    parts.append('<div class="evgrid"><div>' + svg_scores(row, roles) + "</div><div>")
    ph = ev.get("phenotype") or ev.get("phenotype_ic") or {}
    dis = ph.get("best_disease") or {}
    matches = ph.get("matches") or []
    if matches:
        rows = []
        for m in matches:
            q = m.get("query") or ""
            g = m.get("gene_term") or ""
            if m.get("exact") or g == q:
                ann = f"{g} {label(g)}".strip() + " (same term)"
            else:
                ann = f"{g} {label(g)}".strip()
                if m.get("common") and m.get("common") not in (g, q):
                    ann += f" — shared ancestor {m['common']} {m.get('common_name') or label(m['common'])}".rstrip()
                elif m.get("common") == q:
                    ann += " (more specific than the query)"
                elif m.get("common") == g:
                    ann += " (more general than the query)"
            rows.append([f"{q} {label(q)}".strip(), ann, _rnum(m.get("ic"), 3),
                         " ".join(x for x in (dis.get("name"), f"({dis['id']})" if dis.get("id") else "") if x)])
        parts.append("<h4>Matched query terms</h4>" + _table(["query term", "matched annotation", "IC", "disease"], rows,
                                                              num=(2,), cls="matches"))
    elif dis:
        parts.append(f"<p>Best disease match: {esc(dis.get('name'))} ({esc(dis.get('id'))})</p>")
    var = ev.get("variant") or {}
    vs = var.get("variants") or []
    if vs:
        vrows = [[variant_label(v), v.get("consequence") or "", v.get("impact") or "", v.get("clinvar") or "",
                  v.get("zygosity") or "", _rnum(v.get("af"), 2), _rnum(v.get("allele_score"), 2)] for v in vs]
        inh = ", ".join(var.get("inheritance") or []) or "unknown"
        parts.append("<h4>Variants</h4>" + _table(["HGVS / position", "consequence", "impact", "ClinVar", "zygosity",
                                                   "allele frequency", "allele score"], vrows, num=(5, 6), cls="variants")
                     + f'<p class="muted">inheritance fit: {esc(var.get("fit") or "none")} '
                       f"(gene's known modes: {esc(inh)})</p>")
    coh = ev.get("cohort") or {}
    if coh.get("n_cases"):
        carriers = coh.get("case_carriers") or []
        links = ", ".join(
            f'<a href="{esc(patient_pages[c])}">{esc(c)}</a>' if patient_pages and c in patient_pages else esc(c)
            for c in carriers[:20])
        parts.append("<h4>Cohort</h4>"
                     f"<p>{esc(coh.get('n_case_carriers'))} of {esc(coh.get('n_cases'))} matching patients carry a rare "
                     f"damaging variant vs {esc(coh.get('n_control_carriers'))} of {esc(coh.get('n_controls'))} others "
                     f"(odds ratio {esc(_rnum(coh.get('odds_ratio')))}, p {esc(_rnum(coh.get('p_value')))})"
                     + (f"; carriers: {links}" if links else "") + "</p>")
    dr = ev.get("druggability") or {}
    if dr:
        drugs = _drugs(dr.get("example_drugs"))
        parts.append("<h4>Druggability</h4>"
                     f"<p>tier {esc(dr.get('finan_tier') or '–')} · TDL {esc(dr.get('pharos_tdl') or '–')} · "
                     f"{esc(_rnum(dr.get('n_drugs')) or '0')} drug(s), max phase {esc(_rnum(dr.get('max_phase')) or '–')}"
                     + (f" · {esc(dr.get('mechanisms'))}" if dr.get("mechanisms") else "") + "</p>"
                     + (_table(["drug", "type", "mechanism", "max phase"],
                               [[d["drug"], d["type"], d["mechanism"], d["phase"]] for d in drugs], cls="drugs")
                        if drugs else ""))
    kn = ev.get("knowledge") or {}
    if kn.get("diseases"):
        parts.append("<h4>Known diseases</h4><p>" + esc("; ".join(kn["diseases"][:8]))
                     + (f" (inheritance: {esc(', '.join(kn.get('inheritance') or []))})" if kn.get("inheritance") else "")
                     + "</p>")
    parts.append("</div></div></section>")
    return "".join(parts)


def explain_text(row: dict, con, label=None) -> None:
    """``raretarget explain``: the same evidence as the hypothesis page, for a terminal (rich)."""
    from rich.table import Table

    label = label or (lambda t: "")
    ev = _ev(row.get("evidence"))
    v = row.get("verdict")
    con.rule(f"[bold]{row.get('gene')}[/bold] — rank {row.get('rank')} for hypothesis {row.get('hypothesis_id', '')}"
             + (f" — {v}" if v else ""))
    con.print(f"relevance {_rnum(row.get('relevance'))} · priority {_rnum(row.get('priority'))}"
              + (f" · tractability {_rnum(row.get('tractability'))}" if _finite(row.get("tractability")) is not None
                 else ""))
    t = Table(title="score decomposition (0..1)", show_header=False, box=None)
    for c, lab, _role in [("relevance", "relevance", ""), ("priority", "priority", "")] + COMPONENTS:
        if c not in row:
            continue
        f = _finite(row.get(c))
        t.add_row(lab, "no input" if f is None else "█" * int(round(20 * min(max(f, 0), 1))) + f" {_rnum(f)}")
    con.print(t)
    ph = ev.get("phenotype") or ev.get("phenotype_ic") or {}
    dis = ph.get("best_disease") or {}
    if ph.get("matches"):
        t = Table(title="matched query terms" + (f" — best disease {dis.get('name')} ({dis.get('id')})" if dis else ""))
        for c in ("query term", "matched annotation", "IC"):
            t.add_column(c)
        for m in ph["matches"]:
            q, g = m.get("query") or "", m.get("gene_term") or ""
            ann = "same term" if m.get("exact") or q == g else f"{g} {label(g)}".strip()
            if not m.get("exact") and m.get("common") not in (None, g, q):
                ann += f" (via {m['common']} {m.get('common_name') or ''})".rstrip()
            t.add_row(f"{q} {label(q)}".strip(), ann, _rnum(m.get("ic")))
        con.print(t)
    var = ev.get("variant") or {}
    if var.get("variants"):
        t = Table(title=f"variants — inheritance fit {var.get('fit') or 'none'} "
                        f"(known: {', '.join(var.get('inheritance') or []) or 'unknown'})")
        for c in ("HGVS", "consequence", "ClinVar", "zygosity", "AF"):
            t.add_column(c)
        for x in var["variants"]:
            t.add_row(variant_label(x), x.get("consequence") or "", x.get("clinvar") or "", x.get("zygosity") or "",
                      _rnum(x.get("af"), 2))
        con.print(t)
    coh = ev.get("cohort") or {}
    if coh.get("n_cases"):
        con.print(f"cohort: {coh.get('n_case_carriers')} of {coh.get('n_cases')} matching patients carry a rare "
                  f"damaging variant vs {coh.get('n_control_carriers')} of {coh.get('n_controls')} others; carriers: "
                  + ", ".join((coh.get("case_carriers") or [])[:10]))
    dr = ev.get("druggability") or {}
    if dr:
        con.print(f"druggability: tier {dr.get('finan_tier') or '–'} · TDL {dr.get('pharos_tdl') or '–'} · "
                  f"{_rnum(dr.get('n_drugs')) or '0'} drug(s), max phase {_rnum(dr.get('max_phase')) or '–'}")
        for d in _drugs(dr.get("example_drugs")):
            con.print(f"  {d['drug']} ({d['type']}, {d['mechanism']}, phase {d['phase']})")
    kn = ev.get("knowledge") or {}
    if kn.get("diseases"):
        con.print("known diseases: " + "; ".join(kn["diseases"][:6]))
    recs = row.get("source_records") or {}
    if recs:
        con.print("source records: " + ", ".join(f"{k} {len(v)}" for k, v in recs.items()))


# ---- hypothesis -----------------------------------------------------------------------------------
def _hypothesis(ranked, top: int = 10, engine=None, patient_pages: dict | None = None) -> str:
    """The hypothesis page: the ranking (relevance, priority, evidence in one line, verdict) and, for the
    top genes, the readable evidence (:func:`gene_evidence_html`)."""
    meta = ranked.schema.metadata or {}
    hid = (meta.get(b"hypothesis_id") or b"").decode()
    try:
        roles = json.loads(meta.get(b"roles", b"{}"))
    except ValueError:
        roles = {}
    rows = ranked.to_pylist()
    label = _label_fn(engine)
    comps = [c for c, _, _ in COMPONENTS if c in ranked.column_names]
    head = ["rank", "gene", "relevance", "priority", "best disease", "matched terms", "variants", "druggability",
            "verdict"]
    body = []
    for i, r in enumerate(rows):
        es = evidence_summary(r.get("evidence"))
        gene = esc(r.get("gene"))
        link = f'<a href="#gene-{gene}">{gene}</a>' if i < top else gene
        cells = [esc(r.get("rank")), link, esc(_rnum(r.get("relevance"))), esc(_rnum(r.get("priority"))),
                 esc(es["disease"]), esc(es["terms"]), esc(es["variants"]), esc(es["drug"]),
                 f'<span class="verdict v-{esc(r.get("verdict"))}">{esc(r.get("verdict"))}</span>'
                 if r.get("verdict") else ""]
        body.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in (0, 2, 3) else f"<td>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    parts = [f'<p>Hypothesis id <code id="hypothesis-id">{esc(hid)}</code>. <b>Relevance</b>: how well the gene '
             "explains the query (sums to 1 over genes); <b>priority</b>: the order, relevance with tractability "
             "(never lifting a clearly less relevant gene). Components: " + esc(", ".join(comps)) + ".</p>",
             f"<h2>Ranked candidate genes/targets ({len(rows)})</h2>",
             '<table class="ranked"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>"]
    if "evidence" in ranked.column_names and rows:
        parts.append(f"<h2>Evidence for the top {min(top, len(rows))}</h2>")
        for r in rows[:top]:
            parts.append(gene_evidence_html(r, label=label, roles=roles, patient_pages=patient_pages))
    return _page("Hypothesis: ranked candidate targets", "".join(parts), hyp=True)


# ---- entry point ----------------------------------------------------------------------------------
def _outcomes(outcomes: Sequence[dict]) -> str:
    """Per-modality vs fused held-out AUROC/accuracy (results of :meth:`Engine.predict_outcome`)."""
    mods = []
    for o in outcomes:
        for m in o.get("results", {}):
            if m not in mods:
                mods.append(m)
    rows = []
    for o in outcomes:
        r = o.get("results", {})
        rows.append([o.get("target"), f"{o.get('n_train')}/{o.get('n_test')}", o.get("positives")]
                    + [(f"{r[m]['auroc']:.3f} / {r[m]['accuracy']:.2f}" if m in r and r[m].get("auroc") is not None
                        else "") for m in mods])
    return ("<h2>Outcome prediction</h2><p>Held-out AUROC / accuracy of a logistic regression on each modality's "
            "embeddings and on their fusion.</p>"
            + _table(["target", "train/test", "positives"] + mods, rows))


def write_report(engine, out_dir, *, ranked=None, max_patients: int = 50,
                 outcomes: Sequence[dict] | None = None) -> Path:
    """Write the static HTML report of ``engine``'s store under ``out_dir``; returns ``index.html``'s path.

    ``ranked``: a :meth:`Engine.rank_targets` table → also ``hypothesis.html``. ``max_patients``: patient
    pages written for the first N patients by pseudonymous id (all patients are listed on the index).
    """
    out = Path(out_dir)
    (out / "patients").mkdir(parents=True, exist_ok=True)
    engine.store.manifest(refresh=True)
    pts = engine.sql("select patient_id, sex, birth_year, deceased from patients order by patient_id").to_pylist()
    chosen = [r["patient_id"] for r in pts[:max(0, int(max_patients))] if r["patient_id"]]
    links = {pid: f"patients/{pid}.html" for pid in chosen}

    # patient pages
    data = {
        "conditions": _by_patient(engine, "conditions", "hpo_id, code, display, clinical_status, onset, abatement",
                                  chosen, "onset nulls last, code"),
        "observations": _by_patient(engine, "observations", "loinc, display, value, unit, original_value, original_unit, "
                                    "unit_status, value_text, effective", chosen, "effective nulls last, loinc"),
        "notes": _by_patient(engine, "notes", "kind, text, date", chosen, "date nulls last"),
        "images": _by_patient(engine, "images", "modality, body_part, decode_status, features, thumbnail, acquired",
                              chosen, "acquired nulls last, modality"),
        "variants": _by_patient(engine, "variants", "gene, chrom, pos, ref, alt, consequence, impact, hgvsc, hgvsp, "
                                "clinvar, af, zygosity",
                                chosen, f"{plp_sql('clinvar')} desc, "
                                "impact = 'HIGH' desc, chrom, pos"),
    }
    neighbours, neigh_msg = _neighbours_fn(engine) if chosen else (None, "")
    info = {r["patient_id"]: r for r in pts}
    linked = set(chosen)
    for pid in chosen:
        d = {k: v.get(pid, []) for k, v in data.items()}
        (out / links[pid]).write_text(_patient_page(pid, info[pid], d, neighbours, neigh_msg, linked,
                                                        hyp=ranked is not None), encoding="utf-8")

    if ranked is not None:
        (out / "hypothesis.html").write_text(_hypothesis(ranked, engine=engine, patient_pages=links),
                                             encoding="utf-8")
    body = _population(engine, links, len(pts), ranked is not None)
    from .drift import drift_page

    drift_body = drift_page(engine.store.root)          # nightly runs with drift figures → drift.html
    if drift_body:
        (out / "drift.html").write_text(_page("Embedding drift of the nightly runs", drift_body, hyp=ranked is not None),
                                        encoding="utf-8")
        body = '<p><a href="drift.html">Embedding drift of the nightly runs</a></p>' + body
    if outcomes:
        body += _outcomes(outcomes)
    index = out / "index.html"
    index.write_text(_page("raretarget cohort report", body, hyp=ranked is not None), encoding="utf-8")
    return index


# ---- command line -----------------------------------------------------------------------------------
def add_parser(sub, common=None):
    """Add ``report`` to an argparse sub-parser set (``common`` adds ``store`` / ``--links``)."""
    sp = sub.add_parser("report", help="write a static HTML report of the store (opens offline)")
    if common is not None:
        common(sp)
    else:
        sp.add_argument("store", help="store folder")
        sp.add_argument("--links", default=None, help="secure link folder (default: <store>.links)")
    sp.add_argument("--out", default=None, help="output folder (default: <store>.report)")
    sp.add_argument("--max-patients", type=int, default=50)
    sp.add_argument("--phenotypes", nargs="*", default=None, help="HPO ids: also rank targets → hypothesis.html")
    sp.add_argument("--query", default=None, help="free-text hypothesis: also rank targets → hypothesis.html")
    sp.set_defaults(func=cmd_report)
    return sp


def cmd_report(args) -> int:
    from raretarget import Engine

    eng = Engine.open(args.store, links=getattr(args, "links", None))
    out = Path(args.out) if getattr(args, "out", None) else Path(str(args.store).rstrip("/") + ".report")
    ranked = None
    phen = getattr(args, "phenotypes", None)
    query = getattr(args, "query", None)
    if phen or query:
        ranked = eng.rank_targets(query, phenotypes=phen or None, k=25)
    index = write_report(eng, out, ranked=ranked, max_patients=getattr(args, "max_patients", 50))
    print(f"report written: {index}")
    return 0
